"""Interleaved RoPE permutes q/k biases like q/k weights: an import with --rope-interleaved true
holds, per head, the interleaved order of the HF rows (the tests' own interleave_rows), for the
weight and the bias alike; and the export undoes it."""

from __future__ import annotations

import torch
from hf_families import build
from nt_reference import assemble, interleave_rows, step_dir
from safetensors.torch import load_file

from nanokern.convert import convert


def test_interleaved_import_permutes_qk_bias_rows(tmp_path):
    hf = build("qwen2_bias", tmp_path / "hf")
    convert(hf, tmp_path / "nt", to="nanotron", tp=2, pp=1, rope_interleaved="true", force=True, progress=False)
    nt = assemble(step_dir(tmp_path / "nt"))
    src = load_file(str(hf / "model.safetensors"))
    d = 64 // 8
    for i in (0, 5):
        p = f"model.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            q, k, v = (src[p + f"{x}_proj.{kind}"] for x in "qkv")
            perm = [interleave_rows(t[:, None] if kind == "bias" else t, d) for t in (q, k)]
            want = torch.cat([perm[0].reshape(q.shape), perm[1].reshape(k.shape), v])
            got = nt[f"model.decoder.{i}.pp_block.attn.qkv_proj.{kind}"]
            assert torch.equal(got, want), (i, kind)
    convert(tmp_path / "nt", tmp_path / "back", to="hf", dtype="keep", force=True, progress=False)
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    for name, t in src.items():
        assert torch.equal(back[name], t), name
