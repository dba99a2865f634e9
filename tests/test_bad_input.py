"""Damaged input is refused before any output appears (issue 8).

Every case damages a copy of a real Nanotron fixture (or a HF folder) in tmp_path, runs
`nanokern convert SRC DST` through click's CliRunner, and checks: exit code 1, exactly one line
on stderr, starting `error:`, naming the damaged file (or folder) and the problem, no traceback,
and neither DST nor any `DST.partial-*` beside it.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fixtures_path import fixture
from safetensors import safe_open
from safetensors.torch import save_file

from nanokern.cli import cli

LAYER0 = "model/model/decoder/0/pp_block"
QKV = LAYER0 + "/attn/qkv_proj/model_weight_pp-rank-0-of-2_tp-rank-{}-of-2.safetensors"
O_PROJ = LAYER0 + "/attn/o_proj/model_weight_pp-rank-0-of-2_tp-rank-{}-of-2.safetensors"
GATE_UP = LAYER0 + "/mlp/gate_up_proj/model_weight_pp-rank-0-of-2_tp-rank-{}-of-2.safetensors"
EMBED = "model/model/token_position_embeddings/pp_block/token_embedding/model_weight_pp-rank-0-of-2_tp-rank-{}-of-2.safetensors"
NORM1 = "model/model/decoder/1/pp_block/input_layernorm/model_weight.safetensors"
FINAL_NORM = "model/model/final_layer_norm/pp_block/model_weight.safetensors"


# ---------------------------------------------------------------------------------------------
# helpers


def run(*args: str):
    return CliRunner().invoke(cli, ["convert", *map(str, args), "-q"])


def assert_refused(res, dst: Path, where: Path | str, *words: str) -> str:
    """Exit 1, one `error:` line naming `where` and containing `words`, no traceback, no output."""
    err = res.stderr
    assert isinstance(res.exception, SystemExit), f"unexpected {type(res.exception).__name__}: {res.exception}"
    assert res.exit_code == 1, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    line = lines[0]
    assert str(where) in line, f"{where} not named in: {line}"
    for w in words:
        assert w.lower() in line.lower(), f"{w!r} not in: {line}"
    assert not dst.exists() and not dst.is_symlink()
    assert not list(dst.parent.glob(f"{dst.name}.partial-*"))
    return line


def read_st(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_st(path: Path, header: dict, data: bytes) -> None:
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def edit_header(path: Path, fn) -> None:
    header, data = read_st(path)
    fn(header)
    write_st(path, header, data)


def set_meta(path: Path, **kv) -> None:
    """Change `__metadata__` entries (None deletes the key)."""

    def fn(h):
        md = h.setdefault("__metadata__", {})
        for k, v in kv.items():
            if v is None:
                md.pop(k, None)
            else:
                md[k] = v

    edit_header(path, fn)


def meta(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def edit_config(step: Path, **kv) -> None:
    f = step / "model_config.json"
    cfg = json.loads(f.read_text())
    cfg.update(kv)
    f.write_text(json.dumps(cfg))


def resave(path: Path, dtype: torch.dtype) -> None:
    """The same shard stored in another dtype, metadata kept."""
    with safe_open(str(path), "pt") as f:
        t, md = f.get_tensor("data"), f.metadata()
    save_file({"data": t.to(dtype)}, str(path), metadata=md)


@pytest.fixture
def ck(tmp_path) -> Path:
    """A private copy of the real TP=2 x PP=2 fixture (a checkpoints_path with latest.txt)."""
    dst = tmp_path / "ck"
    # the optimizer / lr_scheduler / random-state pickles play no part here: not copied
    shutil.copytree(fixture("nanotron", "tp2_pp2"), dst, ignore=shutil.ignore_patterns("optimizer", "lr_scheduler", "random"))
    return dst


@pytest.fixture(scope="module")
def hf_sharded(tmp_path_factory) -> Path:
    """A HF folder with an index (several shards), converted once from the real fixture."""
    out = tmp_path_factory.mktemp("hf") / "hf"
    res = run(fixture("nanotron", "tp2_pp2"), out, "--max-shard-size", "60KB", "--dtype", "keep")
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors.index.json").is_file()
    return out


@pytest.fixture
def hf(tmp_path, hf_sharded) -> Path:
    dst = tmp_path / "hf"
    shutil.copytree(hf_sharded, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# Nanotron sources: each case damages the copy `ck` (step folder ck/0) and returns
# (path the error must name, words it must contain)


def truncate_data(ck):
    f = ck / "0" / QKV.format(1)
    f.write_bytes(f.read_bytes()[:-10])
    return f, ["truncated"]


def truncate_header(ck):
    f = ck / "0" / QKV.format(0)
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    f.write_bytes(raw[: 8 + n // 2])
    return f, ["truncated"]


def truncate_length(ck):
    f = ck / "0" / NORM1
    f.write_bytes(f.read_bytes()[:5])
    return f, ["truncated"]


def empty_file(ck):
    f = ck / "0" / FINAL_NORM
    f.write_bytes(b"")
    return f, ["truncated"]


def garbage_random(ck):
    f = ck / "0" / O_PROJ.format(0)
    f.write_bytes(random.Random(0).randbytes(f.stat().st_size))
    return f, ["header"]


def header_not_json(ck):
    f = ck / "0" / O_PROJ.format(1)
    raw = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    raw[8 : 8 + n] = b"\x00not json" + b"?" * (n - 9)
    f.write_bytes(bytes(raw))
    return f, ["not JSON"]


def header_json_list(ck):
    f = ck / "0" / GATE_UP.format(0)
    _, data = read_st(f)
    write_st(f, [1, 2, 3], data)  # type: ignore[arg-type]
    return f, ["not a JSON object"]


def offsets_vs_shape(ck):
    f = ck / "0" / GATE_UP.format(1)
    edit_header(f, lambda h: h["data"].update(data_offsets=[0, h["data"]["data_offsets"][1] - 2]))
    return f, ["data_offsets"]


def shape_vs_offsets(ck):
    f = ck / "0" / QKV.format(0)
    edit_header(f, lambda h: h["data"].update(shape=[h["data"]["shape"][0] * 2, h["data"]["shape"][1]]))
    return f, ["needs"]


def shape_not_list(ck):
    f = ck / "0" / QKV.format(0)
    edit_header(f, lambda h: h["data"].update(shape="64"))
    return f, ["shape"]


def shape_floats(ck):
    f = ck / "0" / QKV.format(0)
    edit_header(f, lambda h: h["data"].update(shape=[float(s) for s in h["data"]["shape"]]))
    return f, ["shape"]


def dtype_missing(ck):
    f = ck / "0" / EMBED.format(0)
    edit_header(f, lambda h: h["data"].pop("dtype"))
    return f, ["dtype"]


def entry_not_object(ck):
    f = ck / "0" / EMBED.format(1)
    edit_header(f, lambda h: h.update(data=[0, 1]))
    return f, ["not an object"]


def metadata_not_strings(ck):
    f = ck / "0" / EMBED.format(1)
    edit_header(f, lambda h: h["__metadata__"].update(version=1.5))
    return f, ["__metadata__"]


def tensor_renamed(ck):
    f = ck / "0" / EMBED.format(1)
    edit_header(f, lambda h: h.update(weight=h.pop("data")))
    return f, ["'data'"]


def missing_tp_shard(ck):
    f = ck / "0" / QKV.format(1)
    f.unlink()
    return f, ["missing TP shard"]


def missing_norm(ck):
    f = ck / "0" / NORM1
    f.unlink()
    return f.parent, ["missing parameter", "input_layernorm"]


def missing_norm_folder(ck):
    f = ck / "0" / NORM1
    shutil.rmtree(f.parent)
    return f.parent, ["missing parameter"]


def slices_overlap(ck):
    f0, f1 = ck / "0" / QKV.format(0), ck / "0" / QKV.format(1)
    set_meta(f1, local_global_slices_pairs=meta(f0)["local_global_slices_pairs"])
    return f0.parent, ["overlap"]


def slices_overlap_within_shard(ck):
    # rank 1's V chunk claims K's global rows: overlaps rank 0's K... and leaves V rows empty
    f = ck / "0" / QKV.format(1)
    pairs = meta(f)["local_global_slices_pairs"].split(";")
    pairs[2] = pairs[2].replace("#112,128,None", "#80,96,None")
    set_meta(f, local_global_slices_pairs=";".join(pairs))
    return f.parent, ["overlap"]


def slices_leave_holes(ck):
    for t in range(2):
        set_meta(ck / "0" / EMBED.format(t), unsharded_shape="(300, 64)")
    return (ck / "0" / EMBED.format(0)).parent, ["holes"]


def local_slices_partial(ck):
    # the local side covers only half of the stored rows (and the global side half as many)
    f = ck / "0" / EMBED.format(1)
    set_meta(f, local_global_slices_pairs="0,64,None|None,None,None#128,192,None|None,None,None")
    return f, ["cover"]


def local_slices_duplicated(ck):
    f = ck / "0" / EMBED.format(1)
    set_meta(f, local_global_slices_pairs="0,64,None|None,None,None#128,192,None|None,None,None;"
                                          "0,64,None|None,None,None#192,256,None|None,None,None")
    return f, ["overlap"]


def unsharded_shape_wrong(ck):
    f = ck / "0" / O_PROJ.format(1)
    set_meta(f, unsharded_shape="(64, 96)")
    return f, ["unsharded_shape", "disagrees"]


def unsharded_shape_garbage(ck):
    f = ck / "0" / O_PROJ.format(0)
    set_meta(f, unsharded_shape="(64, sixty-four)")
    return f, ["unsharded_shape"]


def unsharded_shape_wrong_dims(ck):
    f = ck / "0" / O_PROJ.format(0)
    set_meta(f, unsharded_shape="(64, 64, 1)")
    return f, ["dims"]


def slice_wrong_size(ck):
    f = ck / "0" / O_PROJ.format(1)
    set_meta(f, local_global_slices_pairs="None,None,None|None,None,None#None,None,None|32,60,None")
    return f, ["sizes differ"]


def slice_out_of_range(ck):
    f = ck / "0" / O_PROJ.format(1)
    set_meta(f, local_global_slices_pairs="None,None,None|None,None,None#None,None,None|48,80,None")
    return f, ["outside"]


def slices_not_parsable(ck):
    f = ck / "0" / GATE_UP.format(0)
    set_meta(f, local_global_slices_pairs="0,80,None|None,None,None")
    return f, ["local#global"]


def metadata_no_pairs(ck):
    f = ck / "0" / GATE_UP.format(1)
    set_meta(f, local_global_slices_pairs=None)
    return f, ["local_global_slices_pairs"]


def metadata_no_shape(ck):
    f = ck / "0" / GATE_UP.format(1)
    set_meta(f, unsharded_shape=None)
    return f, ["unsharded_shape"]


def metadata_empty(ck):
    f = ck / "0" / EMBED.format(0)
    edit_header(f, lambda h: h.update({"__metadata__": {}}))
    return f, ["metadata"]


def metadata_bad_version(ck):
    f = ck / "0" / EMBED.format(0)
    set_meta(f, version="one point five")
    return f, ["version"]


def stale_tp1_shard(ck):
    src = fixture("nanotron", "tp1_pp1", "0", LAYER0, "attn", "qkv_proj", "model_weight_pp-rank-0-of-1_tp-rank-0-of-1.safetensors")
    dst = ck / "0" / LAYER0 / "attn" / "qkv_proj" / src.name
    shutil.copy(src, dst)
    return dst.name, ["stale", "TP 1"]


def stale_other_pp(ck):
    f = ck / "0" / QKV.format(0)
    shutil.copy(f, f.with_name("model_weight_pp-rank-0-of-1_tp-rank-0-of-2.safetensors"))
    return "model_weight_pp-rank-0-of-1_tp-rank-0-of-2.safetensors", ["stale"]


def whole_param_other_layout(ck):
    folder = ck / "0" / LAYER0 / "attn" / "qkv_proj"
    shutil.rmtree(folder)
    shutil.copytree(fixture("nanotron", "tp1_pp1", "0", LAYER0, "attn", "qkv_proj"), folder)
    return folder, ["TP 1 x PP 1", "TP 2 x PP 2"]


def config_missing(ck):
    f = ck / "0" / "model_config.json"
    f.unlink()
    return f, ["missing model_config.json"]


def config_not_json(ck):
    f = ck / "0" / "model_config.json"
    f.write_text('{"hidden_size": 64,')
    return f, ["not valid JSON"]


def config_not_utf8(ck):
    f = ck / "0" / "model_config.json"
    f.write_bytes(b"\xff\xfe{}")
    return f, ["UTF-8"]


def config_not_object(ck):
    f = ck / "0" / "model_config.json"
    f.write_text("[64, 160]")
    return f, ["not a JSON object"]


def config_hidden_size(ck):
    edit_config(ck / "0", hidden_size=128)
    return ck / "0" / "model_config.json", ["does not match"]


def config_kv_heads(ck):
    edit_config(ck / "0", num_key_value_heads=1)
    return ck / "0" / "model_config.json", ["does not match", "qkv_proj"]


def config_kv_heads_not_divisor(ck):
    edit_config(ck / "0", num_key_value_heads=3)
    return ck / "0" / "model_config.json", ["num_key_value_heads"]


def config_vocab(ck):
    edit_config(ck / "0", vocab_size=250)
    return ck / "0" / "model_config.json", ["does not match"]


def config_fewer_layers(ck):
    edit_config(ck / "0", num_hidden_layers=3)
    return ck / "0" / "model/model/decoder/3", ["does not belong"]


def config_more_layers(ck):
    edit_config(ck / "0", num_hidden_layers=5)
    return ck / "0" / "model/model/decoder/4", ["missing parameter"]


def config_zero_heads(ck):
    edit_config(ck / "0", num_attention_heads=0)
    return ck / "0" / "model_config.json", ["num_attention_heads"]


def config_string_size(ck):
    edit_config(ck / "0", hidden_size="64")
    return ck / "0" / "model_config.json", ["hidden_size"]


def config_missing_field(ck):
    f = ck / "0" / "model_config.json"
    cfg = json.loads(f.read_text())
    del cfg["intermediate_size"]
    f.write_text(json.dumps(cfg))
    return f, ["intermediate_size"]


def config_bad_rope_theta(ck):
    edit_config(ck / "0", rope_theta="ten thousand")
    return ck / "0" / "model_config.json", ["rope_theta"]


def config_rope_interleaved_string(ck):
    edit_config(ck / "0", rope_interleaved="false")
    return ck / "0" / "model_config.json", ["rope_interleaved"]


def config_rope_scaling_string(ck):
    edit_config(ck / "0", rope_scaling="linear")
    return ck / "0" / "model_config.json", ["rope_scaling"]


def config_odd_head_dim(ck):
    edit_config(ck / "0", num_attention_heads=64, num_key_value_heads=64)  # head_dim 1
    return ck / "0" / "model_config.json", ["even"]


def config_yaml_garbage(ck):
    f = ck / "0" / "config.yaml"
    f.write_text("model: [unclosed\n  - x: {")
    return f, ["YAML"]


def starcoder2(ck):
    edit_config(ck / "0", is_starcoder2_config=True, is_llama_config=False)
    return ck / "0" / "model_config.json", ["unsupported architecture"]


def attention_bias(ck):
    edit_config(ck / "0", attention_bias=True)
    return ck / "0" / "model_config.json", ["attention_bias"]


def dtype_i32(ck):
    f = ck / "0" / GATE_UP.format(0)
    resave(f, torch.int32)
    return f, ["unsupported dtype"]


def dtype_f64(ck):
    f = ck / "0" / NORM1
    resave(f, torch.float64)
    return f, ["unsupported dtype"]


def dtype_unknown(ck):
    f = ck / "0" / NORM1
    edit_header(f, lambda h: h["data"].update(dtype="F8_E5M2"))
    return f, ["unsupported dtype"]


def dtype_mixed_siblings(ck):
    f = ck / "0" / O_PROJ.format(1)
    resave(f, torch.float32)
    return f, ["dtype", "disagrees"]


def dtype_mixed_params(ck):
    f = ck / "0" / NORM1
    resave(f, torch.float32)
    return f, ["mixed dtypes"]


def empty_model_folder(ck):
    m = ck / "0" / "model"
    shutil.rmtree(m)
    m.mkdir()
    return m, ["empty"]


def no_model_folder(ck):
    shutil.rmtree(ck / "0" / "model")
    return ck / "0", ["empty"]


def latest_missing_step(ck):
    f = ck / "latest.txt"
    f.write_text("7")
    return f, ["step '7'", "does not exist"]


def latest_path(ck):
    f = ck / "latest.txt"
    f.write_text("../../etc")
    return f, ["step number"]


def latest_empty(ck):
    f = ck / "latest.txt"
    f.write_text("")
    return f, ["empty"]


def latest_binary(ck):
    f = ck / "latest.txt"
    f.write_bytes(b"\xff\xfe\x00")
    return f, ["UTF-8"]


def unexpected_file(ck):
    f = ck / "0" / LAYER0 / "attn" / "qkv_proj" / "model_weight_pp-rank-0-of-2_tp-rank-0-of-2_exp-rank-0-of-2.safetensors"
    shutil.copy(ck / "0" / QKV.format(0), f)
    return f, ["expert-parallel"]


def rank_out_of_range(ck):
    f = ck / "0" / QKV.format(1)
    f.rename(f.with_name("model_weight_pp-rank-0-of-2_tp-rank-2-of-2.safetensors"))
    return f.with_name("model_weight_pp-rank-0-of-2_tp-rank-2-of-2.safetensors"), ["rank"]


def duplicate_rank_bad_naming(ck):
    f = ck / "0" / QKV.format(1)
    shutil.copy(f, f.with_name("model_model_weight.safetensors_pp-rank-0-of-2_tp-rank-1-of-2.safetensors"))
    return f.parent, ["TP rank 1"]


def extra_bias(ck):
    f = ck / "0" / LAYER0 / "attn" / "qkv_proj" / "model_bias_pp-rank-0-of-2_tp-rank-0-of-2.safetensors"
    shutil.copy(ck / "0" / QKV.format(0), f)
    return f, ["bias"]


def directory_named_like_shard(ck):
    f = ck / "0" / QKV.format(1)
    f.unlink()
    f.mkdir()
    return f, ["not a regular file (a directory)"]


NANOTRON_CASES = [
    truncate_data, truncate_header, truncate_length, empty_file, garbage_random, header_not_json, header_json_list,
    offsets_vs_shape, shape_vs_offsets, shape_not_list, shape_floats, dtype_missing, entry_not_object,
    metadata_not_strings, tensor_renamed,
    missing_tp_shard, missing_norm, missing_norm_folder, slices_overlap, slices_overlap_within_shard, slices_leave_holes,
    local_slices_partial, local_slices_duplicated, unsharded_shape_wrong, unsharded_shape_garbage,
    unsharded_shape_wrong_dims, slice_wrong_size, slice_out_of_range, slices_not_parsable, metadata_no_pairs,
    metadata_no_shape, metadata_empty, metadata_bad_version, stale_tp1_shard, stale_other_pp, whole_param_other_layout,
    config_missing, config_not_json, config_not_utf8, config_not_object, config_hidden_size, config_kv_heads,
    config_kv_heads_not_divisor, config_vocab, config_fewer_layers, config_more_layers, config_zero_heads,
    config_string_size, config_missing_field, config_bad_rope_theta, config_rope_interleaved_string,
    config_rope_scaling_string, config_odd_head_dim, config_yaml_garbage,
    starcoder2, attention_bias, dtype_i32, dtype_f64, dtype_unknown, dtype_mixed_siblings, dtype_mixed_params,
    empty_model_folder, no_model_folder, latest_missing_step, latest_path, latest_empty, latest_binary,
    unexpected_file, rank_out_of_range, duplicate_rank_bad_naming, extra_bias, directory_named_like_shard,
]


@pytest.mark.parametrize("damage", NANOTRON_CASES, ids=lambda f: f.__name__)
def test_damaged_nanotron_refused(damage, ck, tmp_path):
    where, words = damage(ck)
    dst = tmp_path / "out"
    assert_refused(run(ck, dst), dst, where, *words)


@pytest.mark.parametrize("to", ["hf", "nanotron"])
def test_damaged_step_folder_refused_for_every_target(to, ck, tmp_path):
    """The step folder given directly, and a reshard target: the same refusal."""
    where, words = slices_overlap(ck)
    dst = tmp_path / "out"
    args = ["--to", to] + (["--tp", "1"] if to == "nanotron" else [])
    assert_refused(run(ck / "0", dst, *args), dst, where, *words)


def test_undamaged_copy_converts(ck, tmp_path):
    """Control: the copy the cases damage converts cleanly."""
    res = run(ck, tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_empty_checkpoint_folder(tmp_path):
    src = tmp_path / "empty"
    src.mkdir()
    dst = tmp_path / "out"
    assert_refused(run(src, dst), dst, src, "empty")


def test_missing_source(tmp_path):
    dst = tmp_path / "out"
    assert_refused(run(tmp_path / "nope", dst), dst, tmp_path / "nope", "does not exist")


def test_debug_shows_traceback(ck, tmp_path):
    truncate_data(ck)
    res = CliRunner().invoke(cli, ["convert", str(ck), str(tmp_path / "out"), "-q", "--debug"])
    assert res.exit_code == 1
    assert "Traceback" in res.stderr and "NanokernError" in res.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# HF sources (converted to Nanotron)


def hf_index_parent(hf):
    idx = hf / "model.safetensors.index.json"
    j = json.loads(idx.read_text())
    name = next(iter(j["weight_map"]))
    j["weight_map"][name] = "../x.safetensors"
    idx.write_text(json.dumps(j))
    return idx, ["outside its folder"]


def hf_index_absolute(hf):
    idx = hf / "model.safetensors.index.json"
    j = json.loads(idx.read_text())
    name = next(iter(j["weight_map"]))
    j["weight_map"][name] = str(hf / j["weight_map"][name])
    idx.write_text(json.dumps(j))
    return idx, ["outside its folder"]


def hf_index_not_map(hf):
    idx = hf / "model.safetensors.index.json"
    idx.write_text(json.dumps({"metadata": {}, "weight_map": [["a", 1]]}))
    return idx, ["weight_map"]


def hf_index_missing_tensor(hf):
    idx = hf / "model.safetensors.index.json"
    j = json.loads(idx.read_text())
    del j["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    idx.write_text(json.dumps(j))
    return idx, ["missing tensor model.layers.1.mlp.up_proj.weight"]


def hf_file_missing_tensor(hf):
    idx = json.loads((hf / "model.safetensors.index.json").read_text())
    name = "model.layers.2.self_attn.k_proj.weight"
    f = hf / idx["weight_map"][name]
    with safe_open(str(f), "pt") as h:
        tensors = {k: h.get_tensor(k) for k in h.keys() if k != name}
    save_file(tensors, str(f), metadata={"format": "pt"})
    return f, ["missing tensor " + name]


def hf_index_names_missing_file(hf):
    idx = json.loads((hf / "model.safetensors.index.json").read_text())
    f = hf / idx["weight_map"]["model.norm.weight"]
    f.unlink()
    return f, ["cannot read"]


def hf_truncated(hf):
    idx = json.loads((hf / "model.safetensors.index.json").read_text())
    f = hf / idx["weight_map"]["model.embed_tokens.weight"]
    f.write_bytes(f.read_bytes()[:-1])
    return f, ["truncated"]


def hf_config_not_json(hf):
    f = hf / "config.json"
    f.write_text("{'model_type': 'llama'}")
    return f, ["not valid JSON"]


def hf_config_mistral(hf):
    f = hf / "config.json"
    cfg = json.loads(f.read_text())
    cfg.update(model_type="mistral", architectures=["MistralForCausalLM"])
    f.write_text(json.dumps(cfg))
    return f, ["unsupported architecture"]


def hf_config_attention_bias(hf):
    f = hf / "config.json"
    cfg = json.loads(f.read_text())
    cfg.update(attention_bias=True)
    f.write_text(json.dumps(cfg))
    return f, ["attention_bias"]


def hf_config_zero_heads(hf):
    f = hf / "config.json"
    cfg = json.loads(f.read_text())
    cfg.update(num_attention_heads=0)
    f.write_text(json.dumps(cfg))
    return f, ["num_attention_heads"]


def hf_config_shape(hf):
    f = hf / "config.json"
    cfg = json.loads(f.read_text())
    cfg.update(intermediate_size=128)
    f.write_text(json.dumps(cfg))
    return f, ["does not match"]


def hf_one_tensor_shape(hf):
    idx = json.loads((hf / "model.safetensors.index.json").read_text())
    name = "model.layers.1.self_attn.v_proj.weight"
    f = hf / idx["weight_map"][name]
    with safe_open(str(f), "pt") as h:
        tensors = {k: h.get_tensor(k) for k in h.keys()}
    tensors[name] = tensors[name][:16].clone()
    save_file(tensors, str(f), metadata={"format": "pt"})
    return f, [name, "config.json implies"]


def hf_dtype_f64(hf):
    idx = json.loads((hf / "model.safetensors.index.json").read_text())
    f = hf / idx["weight_map"]["model.norm.weight"]
    with safe_open(str(f), "pt") as h:
        tensors = {k: h.get_tensor(k).double() for k in h.keys()}
    save_file(tensors, str(f), metadata={"format": "pt"})
    return f, ["unsupported dtype"]


HF_CASES = [
    hf_index_parent, hf_index_absolute, hf_index_not_map, hf_index_missing_tensor, hf_file_missing_tensor,
    hf_index_names_missing_file, hf_truncated, hf_config_not_json, hf_config_mistral, hf_config_attention_bias,
    hf_config_zero_heads, hf_config_shape, hf_one_tensor_shape, hf_dtype_f64,
]


@pytest.mark.parametrize("damage", HF_CASES, ids=lambda f: f.__name__)
def test_damaged_hf_refused(damage, hf, tmp_path):
    where, words = damage(hf)
    dst = tmp_path / "out"
    assert_refused(run(hf, dst, "--tp", "2"), dst, where, *words)


def test_undamaged_hf_converts(hf, tmp_path):
    res = run(hf, tmp_path / "out", "--tp", "2")
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------------------------------------
# existing output, non-finite weights


def test_existing_dst_untouched_without_force(ck, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "sentinel").write_text("keep me")
    res = run(ck, dst)
    assert isinstance(res.exception, SystemExit) and res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(dst) in lines[0] and "not written by nanokern" in lines[0]
    assert (dst / "sentinel").read_text() == "keep me"
    assert sorted(p.name for p in dst.iterdir()) == ["sentinel"]
    assert not list(tmp_path.glob("out.partial-*"))


def poison(ck) -> str:
    """A NaN and an inf in layer 0's o_proj (TP rank 1), data bytes rewritten in place."""
    f = ck / "0" / O_PROJ.format(1)
    with safe_open(str(f), "pt") as h:
        t, md = h.get_tensor("data"), h.metadata()
    t[3, 5] = float("nan")
    t[7, 1] = float("inf")
    save_file({"data": t}, str(f), metadata=md)
    return "model.layers.0.self_attn.o_proj.weight"


def test_non_finite_weights_warn(ck, tmp_path):
    name = poison(ck)
    res = run(ck, tmp_path / "out")
    assert res.exit_code == 0, res.output
    warn = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:") and "non-finite" in ln]
    assert warn and name in warn[0], res.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_non_finite_weights_strict_refused(ck, tmp_path):
    name = poison(ck)
    dst = tmp_path / "out"
    res = run(ck, dst, "--strict")
    line = assert_refused(res, dst, "", "non-finite")
    assert name in line
