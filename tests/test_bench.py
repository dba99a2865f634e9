"""`nanokern bench convert` on a tiny size: the harness runs, writes a sane CSV row, the naive
baseline is a real conversion (bit-exact with nanokern's), and the synthetic checkpoint is
exactly what the independent reference writer (tests/nt_reference.py) produces."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from nt_reference import write_nanotron
from safetensors import safe_open

from nanokern.bench.common import CSV_COLUMNS, parse_size
from nanokern.bench.harness import Options, append_csv, format_table, run_convert_bench
from nanokern.bench.synthetic import choose_shape


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view({2: torch.int16, 4: torch.int32}[t.element_size()])


@pytest.mark.parametrize("size", ["1GB", "4GB", "20MB"])
def test_shape_choice(size):
    nbytes = parse_size(size)
    s = choose_shape(nbytes, "fp32", 2)
    assert 0.9 * nbytes <= s.params() * 4 <= nbytes
    assert s.vocab % 256 == 0
    if nbytes >= 10**9:  # real LLaMA-3-8B shapes
        assert (s.hidden, s.intermediate, s.heads, s.kv_heads) == (4096, 14336, 32, 8)


@pytest.mark.slow
def test_bench_convert_tiny(tmp_path):
    csv_path = tmp_path / "convert.csv"
    keep = tmp_path / "outputs"
    opts = Options(size="20MB", tp=2, pp=2, dtype="fp32", reps=1, cache_dir=str(tmp_path / "cache"),
                         csv_path=str(csv_path), keep_outputs=str(keep), settle=0)
    res = run_convert_bench(opts, echo=lambda *_: None)
    append_csv(csv_path, res.row)
    table = format_table(res)
    assert "nanokern" in table and "naive" in table and "cp+sync" in table and "whole process" in table

    # the CSV row
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 1 and list(rows[0]) == CSV_COLUMNS
    r = rows[0]
    assert (r["size"], r["tp"], r["pp"], r["dtype"], r["out_dtype"], r["nproc"]) == ("20MB", "2", "2", "fp32", "keep", "1")
    assert r["device"] == "cpu" and r["commit"] and r["machine"] and not r["machine"].startswith("unknown")
    for k in ("floor_s", "nanokern_s", "naive_s", "ratio_floor", "speedup_naive", "peak_anon_mb", "baseline_anon_mb", "largest_tensor_mb"):
        assert math.isfinite(float(r[k])) and float(r[k]) > 0, k
    assert float(r["peak_anon_mb"]) >= float(r["baseline_anon_mb"]) > 10  # python + torch
    # the CSV's times are rounded to 1 ms: at this size that alone moves their ratio by ~1%
    nk_s, floor_s, ratio = float(r["nanokern_s"]), float(r["floor_s"]), float(r["ratio_floor"])
    assert abs(ratio - nk_s / floor_s) <= ratio * (0.0005 / nk_s + 0.0005 / floor_s) * 1.01 + 1e-3
    assert float(r["largest_tensor_mb"]) == pytest.approx(1792 * 512 * 4 / 1e6, abs=0.1)  # gate_proj at hidden 512

    assert r["direction"] == "export" and r["out_tp"] == "" and float(r["whole_s"]) >= nk_s

    # the naive baseline is a real conversion: bit-exact with nanokern, tensor for tensor
    assert res.identical is True
    nk, nv = _tensors(keep / "nanokern"), _tensors(keep / "naive")
    assert set(nk) == set(nv) and len(nk) == 1 + 9 + 1 + 1  # embed, 9 per layer (1 layer), norm, lm_head
    for name in nk:
        assert nk[name].dtype == nv[name].dtype == torch.float32 and nk[name].shape == nv[name].shape, name
        assert torch.equal(_bits(nk[name]), _bits(nv[name])), name

    # the generated checkpoint is byte-for-byte what the reference writer makes of those tensors
    src = next((tmp_path / "cache").glob("nt-*"))
    cfg = json.loads((src / "0" / "model_config.json").read_text())
    ref = write_nanotron(tmp_path / "ref", nk, cfg, tp=2, pp=2)
    ours = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    assert ours == theirs
    for rel in ours:
        a, b = src / rel, ref / rel
        if rel.name == "model_config.json":  # ours has every field of Nanotron HEAD's LlamaConfig, in its order
            got, want = json.loads(a.read_text()), json.loads(b.read_text())
            assert {k: got[k] for k in want} == want and got["is_llama_config"] is True, rel
            continue
        if rel.suffix != ".safetensors":
            assert a.read_text() == b.read_text(), rel
            continue
        with safe_open(str(a), "pt") as ha, safe_open(str(b), "pt") as hb:
            assert ha.metadata() == hb.metadata(), rel
            assert list(ha.keys()) == list(hb.keys()) == ["data"]
            assert torch.equal(_bits(ha.get_tensor("data")), _bits(hb.get_tensor("data"))), rel
        assert a.stat().st_size == b.stat().st_size, rel


@pytest.mark.slow
def test_bench_backends_tiny(tmp_path):
    from click.testing import CliRunner

    from nanokern.bench import bench
    from nanokern.bench.backends import CSV_COLUMNS as BACKEND_COLUMNS

    csv_path = tmp_path / "backends.csv"
    r = CliRunner().invoke(bench, ["backends", "--size", "20MB", "--reps", "2", "--settle", "0", "--backends", "cpu,torch",
                                   "--rope-interleaved", "--cache-dir", str(tmp_path / "cache"), "--csv", str(csv_path)])
    assert r.exit_code == 0, r.output
    assert "identical, bit for bit: yes" in r.output and "q/k rows permuted" in r.output
    rows = list(csv.DictReader(csv_path.open()))
    assert [row["backend"] for row in rows] == ["cpu", "torch"] and list(rows[0]) == BACKEND_COLUMNS
    assert all(row["rope_interleaved"] == "True" for row in rows)
    for row in rows:
        runs = [float(x) for x in row["seconds_all"].split()]
        assert len(runs) == 2 and all(t > 0 for t in runs)
        assert float(row["seconds_median"]) == pytest.approx(sorted(runs)[0] + (sorted(runs)[1] - sorted(runs)[0]) / 2, abs=2e-3)
    torch_row = rows[1]
    assert float(torch_row["vs_torch"]) == 1.0
    # the CSV rounds medians to 1 ms: at this size (tens of ms) that alone moves their ratio by a few %
    t_torch, t_cpu = float(torch_row["seconds_median"]), float(rows[0]["seconds_median"])
    tol = (0.0005 / t_torch + 0.0005 / t_cpu) * 1.01 + 0.001
    assert float(rows[0]["vs_torch"]) == pytest.approx(t_torch / t_cpu, rel=tol)


@pytest.mark.slow
@pytest.mark.parametrize("source,direction", [("hf", "import"), ("nanotron", "reshard")])
def test_bench_convert_import_and_reshard_tiny(tmp_path, source, direction):
    """Each direction against its own floor and its own naive script, whose output matches
    nanokern's (in-process and whole-process runs) tensor for tensor and in metadata."""
    opts = Options(size="20MB", tp=2, pp=2, dtype="float32", to="nanotron", source=source, out_tp=1, out_pp=1, reps=1,
                   cache_dir=str(tmp_path / "cache"), csv_path="", settle=0)
    res = run_convert_bench(opts, echo=lambda *_: None)
    assert res.identical is True, res.problems
    r = res.row
    assert r["direction"] == direction and r["dtype"] == "fp32"
    assert (r["out_tp"], r["out_pp"]) == ((2, 2) if direction == "import" else (1, 1))
    for k in ("whole_s", "naive_whole_s", "whole_ratio_floor", "whole_speedup_naive"):
        assert math.isfinite(r[k]) and r[k] > 0, k
    # whole processes include start-up: never quicker than the same work measured after imports
    assert r["whole_s"] >= r["nanokern_s"] and r["naive_whole_s"] >= r["naive_s"]
    assert f"({direction})" in format_table(res)


def test_csv_header_grows_in_place(tmp_path):
    from nanokern.bench.common import append_csv_rows

    path = tmp_path / "x.csv"
    append_csv_rows(path, ["a", "b"], [{"a": 1, "b": 2}])
    append_csv_rows(path, ["a", "b", "c"], [{"a": 3, "b": 4, "c": 5}])
    assert path.read_text().splitlines() == ["a,b,c", "1,2", "3,4,5"]
    rows = list(csv.DictReader(path.open()))
    assert rows[0]["c"] is None and rows[1]["c"] == "5"


@pytest.mark.slow
@pytest.mark.parametrize("arch_name", ["moe", "smollm3"])
def test_bench_convert_other_families_tiny(tmp_path, arch_name):
    """A synthetic checkpoint of the family, exported and checked tensor for tensor against its
    source (no naive script exists for these); the row says which family."""
    opts = Options(size="20MB", tp=2, pp=2, dtype="bf16", reps=1, cache_dir=str(tmp_path / "cache"), csv_path="", settle=0,
                   arch=arch_name)
    res = run_convert_bench(opts, echo=lambda *_: None)
    assert res.identical is True, res.problems
    assert res.row["arch"] == arch_name and res.row["naive_s"] == "" and res.row["whole_s"] > 0
    cfg = json.loads(next((tmp_path / "cache").glob(f"nt-{arch_name}-*")).joinpath("0", "model_config.json").read_text())
    assert cfg["is_qwen2_config"] is True and (cfg["moe_config"] is not None) == (arch_name == "moe")
    assert f"(export, {arch_name})" in format_table(res)
