"""live.vllm_source against vLLM's own weight-transfer classes and checks.

The torchrun worker (tests/test_live_vllm_worker.py) runs every check with vLLM 0.33.0 imported
from a folder at the repo root (.vllm-compat/, ignored by git), made once from PyPI under a file
lock: vLLM's wheel and the few packages its weight-transfer modules import beyond .venv's, all
with --no-deps (vLLM's weight-transfer Python runs on the CPU with .venv's torch). Importing it
costs about 10 s per process, so those launches are slow tests; the fast loop checks the new
part, which needs no vLLM and no process group: every rank's iter_local chunks, built from that
rank's own memory, reassembled by the declared placements, equal the `nanokern convert` export.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pip_env import pinned_env
from fixtures_path import REPO, fixture
from marks import slow_except
from test_live_worker import reference, same
from test_live_vllm_worker import want_dim

from nanokern import live
from nanokern.bench.synthetic import Shape, write_checkpoint
from nanokern.convert import convert
from nanokern.formats import hf_plan
from nanokern.formats.nanotron import to_model
from nanokern.live.comm import Grid
from nanokern.live.export import state_dict_order
from nanokern.live.layout import LivePlan, checkpoint, describe
from nanokern.live.stream import fill, out_view
from nanokern.live.vllm_iter import Own
from nanokern.live.vllm_plan import GATHER, LOCAL, SHARD, local_tensor, place

# vLLM 0.33.0 and what its weight-transfer modules import beyond .venv's packages
PINS = ["vllm==0.33.0", "psutil==7.2.2", "pyzmq==27.3.0", "urllib3==2.8.0", "cbor2==6.3.0", "aiohttp==3.14.5",
        "requests==2.34.2", "openai==3.63.0", "openai-harmony==0.0.8", "multidict==7.2.1", "attrs==26.1.0", "yarl==1.25.1",
        "propcache==0.5.4", "aiohappyeyeballs==2.7.1", "aiosignal==1.4.0", "frozenlist==1.8.0",
        "certifi==2026.10.19.post1", "sniffio==1.3.1", "pybase64==1.5.1"]
ENV_DIR = REPO / ".vllm-compat" / "vllm-0.33.0"
WORKER = Path(__file__).with_name("test_live_vllm_worker.py")


def vllm_env() -> Path:
    """The folder vLLM is imported from (made once, under a lock)."""
    return pinned_env(ENV_DIR, PINS, "vLLM 0.33.0", 1800)


# ---- fast: the chunks, in-process (every rank's memory from load_rank; no vLLM, no process group) ----

def _plan(fx: Path, tp: int, pp: int, dtype: str, **opts):
    """Every rank's shards and the live plan over them (what setup() builds from the gathered metadata)."""
    shards = [live.load_rank(fx, t, p) for p in range(pp) for t in range(tp)]
    ck, infos = checkpoint([describe(s) for s in shards], shards[0].config, Grid(None, None, 0, 0, tp, pp, 0), shards[0].step_dir)
    model = to_model(ck, opts.get("rope_interleaved"), None)
    return shards, LivePlan(hf_plan.plan_hf(model, dtype, opts.get("vocab_size"), "5GB", None), infos, model)


# (fixture, dtype, options as pairs); the fast one has per-head row gathers inside each rank's rows
FAST = [("tp2_pp2", "keep", (("rope_interleaved", True),))]
CASES = [*FAST, ("tp2_pp2", "bf16", ()), ("tp2_pp2", "keep", (("vocab_size", 250),)), ("qwen2_swa_tp2_pp1", "bf16", ()),
         ("tp2_pp1_tied", "keep", ())]


@pytest.mark.parametrize("name,dtype,opts", slow_except(CASES, FAST))
def test_each_ranks_chunks_reassemble_to_the_export(name, dtype, opts, tmp_path):
    fx, opts = fixture("nanotron", name), dict(opts)
    tp, pp = {"tp2_pp2": (2, 2), "qwen2_swa_tp2_pp1": (2, 1), "tp2_pp1_tied": (2, 1)}[name]
    convert(fx, tmp_path / "ref", to="hf", dtype=dtype, progress=False, **opts)
    want = reference(tmp_path / "ref")
    shards, lp = _plan(fx, tp, pp, dtype, **opts)
    placed = place(state_dict_order(lp), lp.params, tp)
    assert sorted(p.t.name for p in placed) == sorted(want)
    trimmed = "vocab_size" in opts
    for p in placed:
        dim = want_dim(p.t.name, tp, trimmed)
        assert (p.kind, p.dim) == ((SHARD, dim) if dim is not None else (GATHER, None)), p.t.name
        if p.kind == GATHER:
            continue  # (gathered over TP: the torchrun tests)
        chunks = []
        for r in range(tp):
            t = local_tensor(p, r, tp, lp.params)
            out = out_view(torch.empty(t.nbytes, dtype=torch.uint8), t)
            fill(t, out, Own(shards[p.stage * tp + r]), "cpu")
            chunks.append(out.view(t.shape))
        assert same(torch.cat(chunks, dim=p.dim), want[p.t.name]), p.t.name
    assert {p.kind for p in placed} == ({SHARD, GATHER} if trimmed else {SHARD})
    assert LOCAL not in {p.kind for p in placed}


# ---- slow: torchrun, vLLM's own classes and checks, every family ------------------------------

def _reshard(fx: Path, root: Path, tp: int) -> Path:
    """A TP1 fixture as a TP x PP2 checkpoint (through HF, by nanokern convert)."""
    convert(fx, root / "hf", to="hf", dtype="keep", progress=False)
    convert(root / "hf", root / "nt", to="nanotron", tp=tp, pp=2, progress=False)
    return root / "nt"


def _launch(tmp_path: Path, cases: list[dict]) -> str:
    env_dir = vllm_env()
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps({"vllm_path": str(env_dir), "cases": cases}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", str(WORKER), str(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert r.returncode == 0 and not fails, "\n".join(fails[:20]) + "\n" + r.stderr[-4000:]
    assert "vllm checks: 0 failure(s)" in r.stdout
    return r.stdout


@pytest.mark.slow
def test_vllm_source_on_tp2_pp2(tmp_path):
    """The LLaMA fixture at its own TP2 x PP2, keep; after a change of the shards; a rank that
    stops iter_full early stops its TP group, and the next pass is whole."""
    fx = fixture("nanotron", "tp2_pp2")
    convert(fx, tmp_path / "ref", to="hf", dtype="keep", progress=False)
    _launch(tmp_path, [{"fixture": str(fx), "tp": 2, "pp": 2, "dtype": "keep", "ref": str(tmp_path / "ref"), "change": True,
                        "stop": True}])


@pytest.mark.slow
def test_vllm_source_on_every_family_and_dtype(tmp_path):
    """Every family (LLaMA, Qwen2 with bias, SmolLM3 NoPE, MoE, sliding window, tied), at its own
    TP x PP and a TP1 fixture resharded to TP2 x PP2 (SmolLM3, one KV head: TP1 x PP2), keep and
    bf16; a trimmed vocab; interleaved RoPE; FP8 (both scale formats) of synthetic LLaMA and MoE
    checkpoints whose Linear weights divide by 128."""
    cases = []
    native = {"tp1_pp1": (1, 1), "tp2_pp2": (2, 2), "tp2_pp1_tied": (2, 1), "qwen2_bias_tp1_pp2": (1, 2),
              "smollm3_nope_tp1_pp1_tied": (1, 1), "qwen2_swa_tp2_pp1": (2, 1), "qwen2_moe_tp1_pp2": (1, 2)}
    for name, (tp, pp) in native.items():
        fx = fixture("nanotron", name)
        sources = [(fx, tp, pp)]
        if tp == 1:
            t = 1 if name.startswith("smollm3") else 2
            sources.append((_reshard(fx, tmp_path / name, t), t, 2))
        for src, t, p in sources:
            for dtype in ("keep", "bf16"):
                ref = tmp_path / "ref" / f"{name}-tp{t}-pp{p}-{dtype}"
                convert(src, ref, to="hf", dtype=dtype, progress=False)
                cases.append({"fixture": str(src), "tp": t, "pp": p, "dtype": dtype, "ref": str(ref)})
    fx = fixture("nanotron", "tp2_pp2")
    for opts in ({"vocab_size": 250}, {"rope_interleaved": True}):
        ref = tmp_path / "ref" / f"tp2_pp2-{'-'.join(opts)}"
        convert(fx, ref, to="hf", dtype="keep", progress=False, **opts)
        cases.append({"fixture": str(fx), "tp": 2, "pp": 2, "dtype": "keep", "ref": str(ref), **opts})
    for arch in ("llama", "moe"):  # FP8: a synthetic checkpoint whose Linear weights divide by 128
        src = write_checkpoint(tmp_path / f"fp8-{arch}", Shape(2, 256, 512, 4, 2, 512, arch), tp=2, pp=2, dtype="bf16", seed=3)
        for scale in ("float", "ue8m0"):
            ref = tmp_path / "ref" / f"fp8-{arch}-{scale}"
            convert(src, ref, to="hf", dtype="fp8", fp8_scale=scale, progress=False)
            cases.append({"fixture": str(src), "tp": 2, "pp": 2, "dtype": "fp8", "fp8_scale": scale, "ref": str(ref)})
    out = _launch(tmp_path, cases)
    print("\n".join(line for line in out.splitlines() if line.startswith("LAYOUT")))


def test_without_vllm_it_is_one_line(monkeypatch):
    """No vLLM importable: one NanokernError line, before any collective."""
    from nanokern.live.vllm_source import source_class

    source_class.cache_clear()
    monkeypatch.setitem(sys.modules, "vllm", None)  # (an import of vllm.* now raises ImportError)
    try:
        with pytest.raises(live.NanokernError, match="needs vLLM's weight-transfer API") as e:
            live.vllm_source(live.RankShards({}, {}))
        assert "\n" not in str(e.value)
    finally:
        source_class.cache_clear()
