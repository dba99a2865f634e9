"""nanokern.live under torchrun (gloo, CPU), one launch for every fixture: world = TP x PP of
each, every rank's shards from live.load_rank. Every rank's hf_weights yields the names, dtypes
and bytes of the `nanokern convert` export, in hf_metadata's order; save_hf's folder equals
convert's (tensors, config, index, tokenizer, manifest); bf16 and keep; one destination rank;
a second call after the shards changed yields the change; peak bytes within the bound; what a
consumer keeps (a list, not cloned) stays valid; hf_buckets unpacked gives the same tensors.
The checks themselves run in tests/test_live_worker.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_path import NANOTRON_FIXTURES, QWEN2_FIXTURES, fixture
from test_live_vllm import vllm_env

from nanokern.convert import convert

TP_PP = {"tp1_pp1": (1, 1), "tp1_pp1_fp32": (1, 1), "tp2_pp2": (2, 2), "tp2_pp1_tied": (2, 1), **QWEN2_FIXTURES}
WORKER = Path(__file__).with_name("test_live_worker.py")


def _export(fx: Path, dst: Path, dtype: str, **kw) -> str:
    convert(fx, dst, to="hf", dtype=dtype, progress=False, **kw)
    return str(dst)


def state_dict_order(hf_dir: str) -> list[str]:
    """The names of transformers' own model of the export, in its state_dict order (built on the
    meta device: no weights), tied lm_head left out: the order hf_weights must follow."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(hf_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    names = list(model.state_dict())
    return [n for n in names if not (n == "lm_head.weight" and cfg.tie_word_embeddings)]


def cases(tmp: Path) -> list[dict]:
    from test_tokenizer import make_tokenizer

    out = []
    for name in [*NANOTRON_FIXTURES, *QWEN2_FIXTURES]:
        fx = fixture("nanotron", name)
        tp, pp = TP_PP[name]
        refs = {d: _export(fx, tmp / "ref" / f"{name}-{d}", d) for d in ("bf16", "keep")}
        out.append({"fixture": str(fx), "tp": tp, "pp": pp, "dtypes": refs, "save": True, "change": True,
                    "dst": tp * pp - 1})
        if "moe" not in name:  # (transformers 5 holds a MoE layer's experts fused: no per-expert order to compare)
            out[-1]["order"] = state_dict_order(refs["keep"])
    # several files over the ranks, an index, a tokenizer, a trimmed vocab; and a model in-process
    tok = tmp / "tok"
    make_tokenizer(tok)
    fx = fixture("nanotron", "tp2_pp2")
    kw = {"tokenizer": str(tok), "max_shard_size": "40KB", "vocab_size": 250}
    out.append({"fixture": str(fx), "tp": 2, "pp": 2, "save": True, **kw,
                "dtypes": {"bf16": _export(fx, tmp / "ref" / "tp2_pp2-files", "bf16", **kw)}})
    out.append({"fixture": str(fx), "tp": 2, "pp": 2, "broken": True})
    for name, tied in (("tp2_pp1_tied", True), ("qwen2_moe_tp1_pp2", False)):
        fx = fixture("nanotron", name)
        tp, pp = TP_PP[name]
        out.append({"fixture": str(fx), "tp": tp, "pp": pp, "module": True, "tied_lm_head": tied, "save": True, "change": True,
                    "dtypes": {"keep": str(tmp / "ref" / f"{name}-keep")}})
    return out


def _launch(tmp_path: Path, cases_: list[dict], vllm: bool = False) -> None:
    """vllm: also through vLLM 0.33.0's own pack_tensors / unpack_tensor (its packed_tensor.py)."""
    spec = tmp_path / "cases.json"
    packer = str(vllm_env() / "vllm" / "distributed" / "weight_transfer" / "packed_tensor.py") if vllm else None
    spec.write_text(json.dumps({"out": str(tmp_path / "live"), "cases": cases_, "vllm_packer": packer}))
    (tmp_path / "live").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", str(WORKER), str(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert r.returncode == 0 and not fails, "\n".join(fails[:20]) + "\n" + r.stderr[-4000:]
    assert "live checks: 0 failure(s)" in r.stdout


@pytest.mark.slow
def test_live_matches_convert_on_every_fixture(tmp_path):
    _launch(tmp_path, cases(tmp_path), vllm=True)


@pytest.mark.slow
def test_live_kept_tensors_and_buckets_on_tp2_pp2(tmp_path):
    """TP2 x PP2 alone, bf16 and keep, every rank and one rank: hf_weights kept in a
    list and hf_buckets unpacked equal the convert export."""
    fx = fixture("nanotron", "tp2_pp2")
    refs = {d: _export(fx, tmp_path / "ref" / d, d) for d in ("bf16", "keep")}
    _launch(tmp_path, [{"fixture": str(fx), "tp": 2, "pp": 2, "dtypes": refs, "dst": 2}])
