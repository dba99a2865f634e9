"""The benchmarks: the figures they compute from known runs, the measurement of a child of known
duration and memory, the one results schema of every CSV; and `nanokern bench convert` on a
tiny size: the harness runs, writes a sane CSV row, the naive baseline is a real conversion
(bit-exact with nanokern's), and the synthetic checkpoint is exactly what the independent
reference writer (tests/nt_reference.py) produces."""

import csv
import importlib.metadata
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import bits, load_dir
from nt_reference import write_nanotron
from safetensors import safe_open

from nanokern.bench.common import CSV_COLUMNS, LEADING, append_csv_rows, migrate_csv, parse_size, stamp
from nanokern.bench.harness import Options, Result, run_convert_bench
from nanokern.bench.measure import Run, _run_measured
from nanokern.bench.report import append_csv, convert_row, format_table
from nanokern.bench.synthetic import choose_shape

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


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
    t0 = time.perf_counter()
    res = run_convert_bench(opts, echo=lambda *_: None)
    elapsed = time.perf_counter() - t0
    append_csv(csv_path, res.row)
    table = format_table(res)
    assert "nanokern" in table and "naive" in table and "cp+sync" in table and "whole process" in table

    # the CSV row
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 1 and list(rows[0]) == CSV_COLUMNS
    r = rows[0]
    assert (r["size"], r["tp"], r["pp"], r["dtype"], r["out_dtype"], r["nproc"]) == ("20MB", "2", "2", "fp32", "keep", "1")
    assert r["device"] == "cpu" and r["commit"] and r["machine"] and not r["machine"].startswith("unknown")
    assert (r["torch"], r["reps"]) == (importlib.metadata.version("torch"), "1")
    for k in ("floor_s", "nanokern_s", "naive_s", "ratio_floor", "speedup_naive", "peak_anon_mb", "baseline_anon_mb", "largest_tensor_mb"):
        assert math.isfinite(float(r[k])) and float(r[k]) > 0, k
    assert float(r["peak_anon_mb"]) >= float(r["baseline_anon_mb"]) > 10  # python + torch
    # against the test's own clock: the four timed runs (one rep each) happened inside this call
    nk_s = float(r["nanokern_s"])
    assert float(r["floor_s"]) + nk_s + float(r["whole_s"]) + float(r["naive_whole_s"]) < elapsed
    assert float(r["largest_tensor_mb"]) == pytest.approx(1792 * 512 * 4 / 1e6, abs=0.1)  # gate_proj at hidden 512

    assert r["direction"] == "export" and r["out_tp"] == ""

    # the naive baseline is a real conversion: bit-exact with nanokern, tensor for tensor
    assert res.identical is True
    nk, nv = load_dir(keep / "nanokern"), load_dir(keep / "naive")
    assert set(nk) == set(nv) and len(nk) == 1 + 9 + 1 + 1  # embed, 9 per layer (1 layer), norm, lm_head
    for name in nk:
        assert nk[name].dtype == nv[name].dtype == torch.float32 and nk[name].shape == nv[name].shape, name
        assert torch.equal(bits(nk[name]), bits(nv[name])), name

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
            assert torch.equal(bits(ha.get_tensor("data")), bits(hb.get_tensor("data"))), rel
        assert a.stat().st_size == b.stat().st_size, rel


@pytest.mark.slow
def test_bench_backends_tiny(tmp_path):
    from click.testing import CliRunner

    from nanokern.bench import bench
    from nanokern.bench.backends import CSV_COLUMNS as BACKEND_COLUMNS

    csv_path = tmp_path / "backends.csv"
    t0 = time.perf_counter()
    r = CliRunner().invoke(bench, ["backends", "--size", "20MB", "--reps", "2", "--settle", "0", "--backends", "cpu,torch",
                                   "--rope-interleaved", "--cache-dir", str(tmp_path / "cache"), "--csv", str(csv_path)])
    elapsed = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    assert "identical, bit for bit: yes" in r.output and "q/k rows permuted" in r.output
    rows = list(csv.DictReader(csv_path.open()))
    assert [row["backend"] for row in rows] == ["cpu", "torch"] and list(rows[0]) == BACKEND_COLUMNS
    assert all(row["rope_interleaved"] == "True" for row in rows)
    runs = [float(x) for row in rows for x in row["seconds_all"].split()]
    assert len(runs) == 4 and all(t > 0 for t in runs)
    # against the test's own clock: the four conversions ran one after another inside the call
    assert sum(runs) < elapsed
    assert float(rows[1]["vs_torch"]) == 1.0 and rows[0]["reps"] == "2" and rows[0]["device"] == "cpu"


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
    assert f"({direction})" in format_table(res)


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


# ---------------------------------------------------------------------------------------------
# figures from known runs, a measurement of a known child, the results schema


def _runs(seconds, walls=None, peak=0, base=0):
    return [Run(t, peak, base, 0.0, w) for t, w in zip(seconds, walls or seconds)]


def test_convert_row_from_known_runs():
    """Medians (not means, not the last run) and the ratios the README quotes, from runs whose
    answer is known: floor 2 s, nanokern 4 s, whole process 6 s, naive 9 s / 11 s."""
    res = Result(options={"size": "1GB", "tp": 2, "pp": 2, "dtype": "fp32", "out_dtype": "keep", "workers": None,
                          "backend": "auto", "nproc": 1, "reps": 3, "direction": "export", "arch": "llama",
                          "out_tp": 1, "out_pp": 1},
                 shape={}, source_bytes=10**9, largest_tensor="lm_head", largest_tensor_bytes=100 * 10**6)
    # medians unlike the means, the first and the last runs
    res.runs = {"floor": _runs([6.0, 2.0, 1.0]),
                "nanokern": [Run(11.0, 400 * 10**6, 150 * 10**6), Run(4.0, 300 * 10**6, 100 * 10**6),
                             Run(3.0, 200 * 10**6, 120 * 10**6)],
                "cli": _runs([1.0, 1.0, 1.0], walls=[9.0, 6.0, 2.0]),
                "naive": _runs([15.0, 9.0, 8.0], walls=[20.0, 11.0, 10.0])}
    row = res.row = convert_row(res, "cpu", None, timestamp="2026-01-02T03:04:05Z")
    assert list(row) == CSV_COLUMNS
    assert {k: row[k] for k in LEADING if k not in ("commit", "machine", "torch", "triton")} == {
        "timestamp": "2026-01-02T03:04:05Z", "device": "cpu", "reps": 3}
    assert (row["floor_s"], row["nanokern_s"], row["naive_s"], row["whole_s"], row["naive_whole_s"]) == (2.0, 4.0, 9.0, 6.0, 11.0)
    assert (row["ratio_floor"], row["speedup_naive"], row["whole_ratio_floor"], row["whole_speedup_naive"]) == (2.0, 2.25, 3.0, 1.833)
    # peak = the highest run's, baseline = the median run's: (400 - 120) MB / 100 MB
    assert (row["peak_anon_mb"], row["baseline_anon_mb"], row["mem_ratio"]) == (400.0, 120.0, 2.8)
    assert (row["workers"], row["out_tp"], row["out_pp"], row["largest_tensor_mb"]) == ("auto", "", "", 100.0)
    table = format_table(res)
    assert "<= 1.2x its floor: 3.00 MISSED" in table and ">= 2.5x faster than the naive script: 1.83 MISSED" in table
    assert "<= 2x largest tensor: 2.80 MISSED" in table


def test_backend_rows_from_known_times():
    from nanokern.bench.backends import CSV_COLUMNS as BACKEND_COLUMNS, backend_rows

    rows = backend_rows({"cpu": [5.0, 1.0, 2.0], "torch": [8.0, 6.0, 1.0]}, {**stamp("cpu", 3), "timestamp": "t"},
                        {"size": "1GB", "tp": 2, "pp": 2, "dtype": "fp32", "out_dtype": "bf16", "rope_interleaved": False,
                         "scratch_fs": "tmpfs"})
    assert [list(r) for r in rows] == [BACKEND_COLUMNS] * 2
    assert [(r["backend"], r["seconds_median"], r["vs_torch"]) for r in rows] == [("cpu", 2.0, 3.0), ("torch", 6.0, 1.0)]
    assert rows[0]["seconds_all"] == "5.000 1.000 2.000"


def test_measured_child_of_known_duration_and_memory(tmp_path):
    """_run_measured against a grandchild that holds 200 MB of anonymous memory for 0.6 s: the
    wall time covers the sleep, the peak covers the grandchild's memory (the whole tree is
    sampled) without counting anything near twice; a worker's own time is taken from its file."""
    hold = "import time; b = b'x' * (200 << 20); time.sleep(0.6)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {hold!r}], check=True)"
    run = _run_measured([sys.executable, "-c", parent])
    assert 0.6 <= run.wall < 6 and run.seconds == run.wall
    assert 200 << 20 <= run.peak_anon < (200 << 20) + (80 << 20)
    result = tmp_path / "r.json"
    worker = f"import json; open({str(result)!r}, 'w').write(json.dumps({{'seconds': 0.125, 'cpu': 0.5, 'baseline_anon': 7}}))"
    run = _run_measured([sys.executable, "-c", worker], inner_result=result)
    assert (run.seconds, run.cpu, run.baseline_anon) == (0.125, 0.5, 7) and run.wall > 0


def test_append_migrates_an_older_header(tmp_path):
    """A CSV under an older header is rewritten under LEADING + its columns, every value under its
    own name, the values it never had empty; new rows get the installed torch and triton."""
    path = tmp_path / "x.csv"
    path.write_text("timestamp,machine,commit,what,reps,median_s,gone\r\n"
                    "2026-01-01T00:00:00Z,cpu x2,abc123,help,5,0.5,kept\r\n"
                    "2026-01-02T00:00:00Z,cpu x2,def456,help,7\r\n")
    append_csv_rows(path, ["what", "median_s"], [{**stamp("cpu", 3), "what": "convert", "median_s": 1.5}])
    rows = list(csv.DictReader(path.open(newline="")))
    assert list(rows[0]) == LEADING + ["what", "median_s", "gone"]
    assert rows[0] == {"timestamp": "2026-01-01T00:00:00Z", "commit": "abc123", "machine": "cpu x2", "device": "",
                       "torch": "", "triton": "", "reps": "5", "what": "help", "median_s": "0.5", "gone": "kept"}
    assert (rows[1]["reps"], rows[1]["median_s"], rows[1]["gone"]) == ("7", "", "")
    assert (rows[2]["what"], rows[2]["device"], rows[2]["reps"]) == ("convert", "cpu", "3")
    assert rows[2]["torch"] == importlib.metadata.version("torch") and rows[2]["triton"] == importlib.metadata.version("triton")
    # a row from a script that sets no versions still gets them; a second append changes no header
    append_csv_rows(path, ["what", "median_s"], [{"timestamp": "t", "what": "x"}])
    last = list(csv.DictReader(path.open(newline="")))[-1]
    assert (last["torch"], last["reps"]) == (importlib.metadata.version("torch"), "")
    assert migrate_csv(path) is False


@pytest.mark.parametrize("name", sorted(p.name for p in RESULTS.glob("*.csv")))
def test_results_csvs_follow_the_schema(name):
    with open(RESULTS / name, newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header[: len(LEADING)] == LEADING and len(set(header)) == len(header)
    assert rows and all(len(r) == len(header) for r in rows)
    assert all(r[0] and r[1] and r[2] for r in rows)  # timestamp, commit, machine: every row has them


def test_results_csvs_have_their_writers_columns():
    from nanokern.bench.backends import CSV_COLUMNS as BACKEND_COLUMNS
    from nanokern.bench.generate import CSV_COLUMNS as GENERATE_COLUMNS

    for name, columns in (("convert", CSV_COLUMNS), ("backends", BACKEND_COLUMNS), ("generate", GENERATE_COLUMNS)):
        with open(RESULTS / f"{name}.csv", newline="") as f:
            assert next(csv.reader(f)) == columns, name


def test_stamp_imports_no_torch():
    code = ("import sys; from nanokern.bench.common import stamp; s = stamp('cpu', 1); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(s['torch'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == importlib.metadata.version("torch"), out.stderr
