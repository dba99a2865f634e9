"""Round trips on tiny random HF models of every family (tests/hf_families.py): HF -> Nanotron -> HF
is bit-exact at every TP x PP layout, and Nanotron -> Nanotron -> Nanotron resharding gives back
the same checkpoint. Also the HF models nanokern must refuse, with the offending key named."""

from __future__ import annotations

import json

import pytest
import torch
from hf_families import FAMILIES, REFUSED, build
from helpers import load_dir
from nt_reference import assert_same_weights, step_dir

from nanokern.convert import convert
from nanokern.errors import NanokernError

LAYOUTS = [(tp, pp) for tp in (1, 2, 4) for pp in (1, 2, 3)]

# config attributes that define the model (compared on the loaded configs, so defaults count)
MODEL_KEYS = ["architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "hidden_act",
              "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
              "rope_parameters", "dtype", "attention_bias", "mlp_bias", "use_sliding_window", "layer_types",
              "no_rope_layers", "no_rope_layer_interval", "num_experts", "num_experts_per_tok", "norm_topk_prob",
              "moe_intermediate_size", "shared_expert_intermediate_size", "mlp_only_layers", "decoder_sparse_step",
              "qkv_bias"]
WINDOW_KEYS = ["sliding_window", "max_window_layers"]  # meaningful only with use_sliding_window


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory):
    """hf_source(family) -> folder of its save_pretrained model (built once per module)."""
    done = {}

    def get(family):
        if family not in done:
            done[family] = build(family, tmp_path_factory.mktemp("hf") / family, seed=len(done))
        return done[family]

    return get


def model_settings(folder) -> dict:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder)
    keys = MODEL_KEYS + (WINDOW_KEYS if getattr(cfg, "use_sliding_window", False) else [])
    return {k: getattr(cfg, k, "<absent>") for k in keys}


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp", LAYOUTS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_hf_nanotron_hf_bit_exact(family, tp, pp, hf_source, tmp_path):
    src = hf_source(family)
    convert(src, tmp_path / "nt", to="nanotron", dtype="keep", tp=tp, pp=pp, progress=False)
    assert json.loads((step_dir(tmp_path / "nt") / "model_config.json").read_text())["vocab_size"] == 96
    convert(tmp_path / "nt", tmp_path / "hf", to="hf", dtype="keep", progress=False)
    want, got = load_dir(src), load_dir(tmp_path / "hf")
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and got[k].shape == w.shape, (k, got[k].dtype, got[k].shape)
        assert torch.equal(got[k].view(torch.uint8), w.view(torch.uint8)), k
    got_cfg, want_cfg = model_settings(tmp_path / "hf"), model_settings(src)
    assert got_cfg == want_cfg, {k: (got_cfg[k], want_cfg[k]) for k in want_cfg if got_cfg[k] != want_cfg[k]}


@pytest.mark.parametrize("tp,pp", [(1, 1), (4, 3)])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_nanotron_reshard_round_trip(family, tp, pp, hf_source, tmp_path):
    """Import at TP2 PP2, reshard to (tp, pp), reshard back to TP2 PP2: the same checkpoint."""
    convert(hf_source(family), tmp_path / "a", to="nanotron", dtype="keep", tp=2, pp=2, progress=False)
    convert(tmp_path / "a", tmp_path / "b", to="nanotron", tp=tp, pp=pp, progress=False)
    convert(tmp_path / "b", tmp_path / "c", to="nanotron", tp=2, pp=2, progress=False)
    assert_same_weights(tmp_path / "c", tmp_path / "a")
    assert (step_dir(tmp_path / "c") / "model_config.json").read_text() == \
        (step_dir(tmp_path / "a") / "model_config.json").read_text()


@pytest.mark.parametrize("family", list(REFUSED))
def test_import_refuses_unrepresentable_model(family, tmp_path):
    """Qwen3 (q_norm/k_norm), head_dim != hidden/heads and mlp_bias have no Nanotron equivalent:
    a NanokernError naming the key, and no output left behind."""
    src = build(family, tmp_path / "hf")
    key = REFUSED[family][3]
    with pytest.raises(NanokernError, match=key) as err:
        convert(src, tmp_path / "nt", to="nanotron", tp=1, pp=1, progress=False)
    assert "\n" not in str(err.value).strip()
    assert not (tmp_path / "nt").exists()
