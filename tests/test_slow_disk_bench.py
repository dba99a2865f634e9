"""bench convert's disk figures: the output disk's speed with one request in flight (bench/disk.py)
and nanokern's writes in flight, computed from the phases the whole process reports (injected
here, nothing is timed)."""

from nanokern.bench.disk import qd1_speed
from nanokern.bench.measure import Run
from nanokern.bench.report import in_flight, phase_seconds


def _run(writing: float, pwrite_s: float, byte_s: float) -> Run:
    phases = {"seconds": {"writing": writing, "pwrite s": pwrite_s, "pwrite byte s": byte_s, "pwrites": 10},
              "marks": {"plan": 1.0, "end": 2.0}}
    return Run(seconds=1.0, peak_anon=0, baseline_anon=0, wall=1.5, started=0.5, exited=2.0, phases=phases)


def test_writes_in_flight_are_the_pwrites_busy_time_over_the_writing_time():
    p = phase_seconds(_run(2.0, 5.0, 5.0 * 16e6))  # 5 s of pwrites of 16 MB each within 2 s of writing
    assert p["writes in flight"] == 2.5 and p["MB in flight"] == 40.0
    assert in_flight([_run(2.0, 5.0, 80e6), _run(2.0, 3.0, 48e6), _run(2.0, 4.0, 64e6)]) == (2.0, 32.0)  # medians
    assert in_flight([_run(2.0, 0.0, 0.0)]) is None  # no pwrites reported (small files only, an older nanokern)


def test_the_disk_probe_writes_and_removes_its_own_file(tmp_path):
    (tmp_path / "keep").write_bytes(b"x")
    probe = qd1_speed(tmp_path, nbytes=32 << 20)
    assert probe.mbps > 0 and probe.nbytes == 32 << 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
