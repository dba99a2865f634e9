"""`bench convert`'s results (Result: what harness.py measured): the CSV row (medians and ratios of a Result's runs), the rep lines
and the printed table (the same labels, ROWS), where the whole process's time goes (its phases),
each target's verdict, and the plot."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nanokern.bench.common import CSV_COLUMNS, MB, append_csv_rows, machine, stamp

if TYPE_CHECKING:
    from nanokern.bench.measure import Run


@dataclass
class Result:
    """One `bench convert`: its options, the synthetic source, every run of every approach."""

    options: dict
    shape: dict
    source_bytes: int
    largest_tensor: str
    largest_tensor_bytes: int
    runs: dict[str, list[Run]] = field(default_factory=dict)
    identical: bool | None = None
    problems: list[str] = field(default_factory=list)
    row: dict = field(default_factory=dict)
    load_before: str = ""
    disk: dict = field(default_factory=dict)  # bench/disk.py's Probe of the output disk

    def median(self, approach: str) -> float:
        return statistics.median(r.seconds for r in self.runs[approach])

    def median_wall(self, approach: str) -> float:
        return statistics.median(r.wall for r in self.runs[approach])

    def peak(self, approach: str) -> int:
        return max(r.peak_anon for r in self.runs[approach])

    def baseline(self, approach: str) -> int:
        return int(statistics.median(r.baseline_anon for r in self.runs[approach]))


# (approach, label, figure): what each run measures, under one name in the rep lines, the table and
# the plot. wall = exec of the command to its exit, then sync; else the run's own (in-process) time.
ROWS = (("floor", "cp+sync", "wall"), ("nanokern", "nanokern in-process", "seconds"),
        ("cli", "nanokern whole process", "wall"), ("naive", "naive in-process", "seconds"),
        ("naive", "naive whole process", "wall"))


def figures(approach: str, run: Run) -> list[tuple[str, float]]:
    """(label, seconds) of one run, as the table names them."""
    return [(label, getattr(run, fig)) for a, label, fig in ROWS if a == approach]


def rep_line(rep: int, reps: int, approach: str, run: Run) -> str:
    figs = ", ".join(f"{label} {t:.2f} s" for label, t in figures(approach, run))
    return f"  rep {rep}/{reps}: {figs} (cpu {run.cpu:.2f} s, peak anon {run.peak_anon / MB:.1f} MB)"


# the whole process's phases, in order (execute/phases.py): (key, label)
PHASES = (("plan", "plan"), ("prepare", "prepare (lock, checks)"), ("writing", "writing"), ("finish", "configs+manifest"),
          ("sync", "sync"), ("rename", "rename"))

INNER = ("read+kernel", "write", "batch syncs", "batch sync", "writes in flight", "MB in flight")  # within `writing`, not phases of their own


def phase_seconds(run: Run) -> dict[str, float] | None:
    """The whole process's wall time cut into phases: start-up (exec to planning), the command's
    phases, exit (the end to the process's exit) and the sync after it; plus read+kernel and
    write (waiting for the writer threads), summed over the worker threads within `writing`, and
    the number and seconds of the syncs that made finished files durable beside them."""
    p = run.phases
    if not p or not run.started:
        return None
    sec, marks = p.get("seconds", {}), p.get("marks", {})
    out = {"start-up": marks.get("plan", run.started) - run.started}
    for key, label in PHASES:
        out[label] = sec.get(key, 0.0)
    out["exit"] = run.exited - marks.get("end", run.exited)
    out["sync after exit"] = max(0.0, run.wall - (run.exited - run.started))
    out["read+kernel"], out["write"] = sec.get("kernel", 0.0), sec.get("write", 0.0)
    out["batch syncs"], out["batch sync"] = sec.get("batch syncs", 0), sec.get("batch sync", 0.0)
    # the writer threads' pwrites (O_DIRECT or buffered), summed: their mean number and bytes in flight while writing
    busy = out["writing"] or 1.0
    out["writes in flight"] = sec.get("pwrite s", 0.0) / busy
    out["MB in flight"] = sec.get("pwrite byte s", 0.0) / busy / MB
    return out


def in_flight(runs: list[Run]) -> tuple[float, float] | None:
    """(writes, MB) in flight on average while writing, the median over the runs that report them."""
    got = [p for p in (phase_seconds(r) for r in runs) if p and p["writes in flight"]]
    if not got:
        return None
    return statistics.median(p["writes in flight"] for p in got), statistics.median(p["MB in flight"] for p in got)


def disk_line(res: Result) -> str:
    """The output disk's speed with one request in flight beside the floor and nanokern's writes in flight."""
    d = res.disk
    if not d:
        return ""
    gb = res.source_bytes / 1e9
    line = (f"output disk, {'O_DIRECT' if d['direct'] else 'buffered (no O_DIRECT here)'} writes of 16 MiB one at a time "
            f"({d['nbytes'] >> 20} MiB + fsync): {d['mbps']:.0f} MB/s, {gb * 1e3 / d['mbps']:.2f} s for the source's {gb:.2f} GB; "
            f"the floor (cp + sync, page-cache writeback) {res.median_wall('floor'):.2f} s")
    got = in_flight(res.runs.get("cli", []))
    if got:
        line += (f"; nanokern whole process: {got[0]:.1f} writes ({got[1]:.0f} MB) in flight on average while writing "
                 f"(its writer threads' pwrites)")
    return line


def phase_line(runs: list[Run]) -> str:
    """One line: the median of each phase over the runs that reported them."""
    got = [p for p in (phase_seconds(r) for r in runs) if p]
    if not got:
        return ""
    med = {k: statistics.median(p[k] for p in got) for k in got[0]}
    top = [k for k in med if k not in INNER]
    parts = [f"{k} {med[k]:.2f} s" + (f" (per worker thread, summed: read+kernel {med['read+kernel']:.2f} s, "
                                       f"write {med['write']:.2f} s; beside them {med['batch syncs']:.0f} sync(s) of "
                                       f"finished files, {med['batch sync']:.2f} s)" if k == "writing" else "")
             for k in top]
    return ("where the time goes (nanokern whole process, medians): " + ", ".join(parts)
            + f"; the phases sum to {sum(med[k] for k in top):.2f} s")


def convert_row(res: Result, device: str, target: tuple[int, int] | None, timestamp: str | None = None) -> dict:
    """The results/convert.csv row of a finished run: medians over the reps, rounded (times to
    1 ms, memory to 0.1 MB), ratios from the unrounded medians."""
    o = res.options
    floor, nk = res.median("floor"), res.median("nanokern")
    whole = res.median_wall("cli")
    naive, naive_whole = (res.median("naive"), res.median_wall("naive")) if "naive" in res.runs else (None, None)
    ratio = lambda a, b: "" if a is None else round(a / b, 3)  # noqa: E731
    peak, base = res.peak("nanokern"), res.baseline("nanokern")
    big_bytes = res.largest_tensor_bytes
    flight = in_flight(res.runs.get("cli", []))
    return {
        **stamp(device, o["reps"], timestamp), "size": o["size"],
        "tp": o["tp"], "pp": o["pp"], "dtype": o["dtype"], "out_dtype": o["out_dtype"],
        "workers": o["workers"] if o["workers"] else "auto", "backend": o["backend"], "nproc": o["nproc"],
        "floor_s": round(floor, 3), "nanokern_s": round(nk, 3), "naive_s": "" if naive is None else round(naive, 3),
        "ratio_floor": round(nk / floor, 3), "speedup_naive": ratio(naive, nk),
        "peak_anon_mb": round(peak / MB, 1), "baseline_anon_mb": round(base / MB, 1),
        "largest_tensor_mb": round(big_bytes / MB, 1), "mem_ratio": round((peak - base) / big_bytes, 3),
        "direction": o["direction"], "out_tp": "" if target is None else target[0],
        "out_pp": "" if target is None else target[1],
        "whole_s": round(whole, 3), "naive_whole_s": "" if naive_whole is None else round(naive_whole, 3),
        "whole_ratio_floor": round(whole / floor, 3), "whole_speedup_naive": ratio(naive_whole, whole), "arch": o["arch"],
        "disk_qd1_mbps": round(res.disk["mbps"], 1) if res.disk else "",
        "writes_in_flight": "" if flight is None else round(flight[0], 2),
        "mb_in_flight": "" if flight is None else round(flight[1], 1),
    }


TARGETS = {  # whole process vs its floor (at most), vs the naive script's whole process (at least)
    "export": (1.2, 2.5),
    "import": (1.3, None),
    "reshard": (1.3, None),
}


def format_table(res: Result) -> str:
    o = res.options
    d = o.get("direction", "export")
    floor = res.median("floor")
    has_naive = "naive" in res.runs
    naive = res.median("naive") if has_naive else None
    naive_whole = res.median_wall("naive") if has_naive else None
    layout = f"TP{o['tp']}xPP{o['pp']}"
    what = {"export": f"Nanotron {layout} -> HF", "import": f"HF -> Nanotron {layout}",
            "reshard": f"Nanotron {layout} -> Nanotron TP{o.get('out_tp', 1)}xPP{o.get('out_pp', 1)}"}[d]
    arch = o.get("arch", "llama")
    lines = [f"nanokern bench convert ({d}{'' if arch == 'llama' else ', ' + arch}): {o['size']} {o['dtype']} {what} ({o['out_dtype']}), "
             f"{o['reps']} rep(s), medians; {machine()}",
             f"{'approach':<22} {'time s':>8} {'GB/s':>7} {'x floor':>8} {'vs naive':>9} {'cpu s':>7} {'peak anon MB':>13} {'(peak-base)/largest':>20}"]
    for a, label, fig in ROWS:
        if a not in res.runs:
            continue
        wall = fig == "wall"
        t = statistics.median(getattr(r, fig) for r in res.runs[a])
        peak = res.peak(a)
        mem = "-" if a in ("floor", "cli") else f"{(peak - res.baseline(a)) / res.largest_tensor_bytes:.2f}"
        cpu = statistics.median(r.cpu for r in res.runs[a])
        vs = f"{(naive_whole if wall else naive) / t:8.2f}x" if has_naive else f"{'-':>9}"
        lines.append(f"{label:<22} {t:8.2f} {res.source_bytes / t / 1e9:7.2f} {t / floor:8.2f} {vs} "
                     f"{cpu:7.2f} {peak / MB:13.1f} {mem:>20}")
    lines.append(f"whole process = exec of the command to its exit, then sync (start-up included); in-process = after imports. "
                 f"baseline anon after imports: nanokern {res.baseline('nanokern') / MB:.1f} MB"
                 + (f", naive {res.baseline('naive') / MB:.1f} MB; " if has_naive else " (no naive script for this family); ") +
                 f"largest tensor {res.largest_tensor} {res.largest_tensor_bytes / MB:.1f} MB; GB/s = source GB / time; "
                 f"cpu = user+sys of the process (kernel writeback not included); load average before: {res.load_before}")
    if res.identical is not None:
        against = "naive output" if has_naive else "the source (nanokern verify --against)"
        lines.append(f"nanokern outputs (in-process and whole process) == {against}, tensor for tensor, bit-exact: "
                     + ("yes" if res.identical else f"NO ({len(res.problems)}): " + "; ".join(res.problems[:5])))
    line = phase_line(res.runs.get("cli", []))
    if line:
        lines.append(line)
    line = disk_line(res)
    if line:
        lines.append(line)
    r = res.row
    verdict = lambda ok: "ok" if ok else "MISSED"  # noqa: E731
    most, least = TARGETS[d]
    line = f"targets: whole process <= {most}x its floor: {r['whole_ratio_floor']:.2f} {verdict(r['whole_ratio_floor'] <= most)}"
    if least and has_naive:
        line += f"; >= {least}x faster than the naive script: {r['whole_speedup_naive']:.2f} {verdict(r['whole_speedup_naive'] >= least)}"
    line += f"; (peak - baseline) <= 2x largest tensor: {r['mem_ratio']:.2f} {verdict(r['mem_ratio'] <= 2)}"
    lines.append(line)
    return "\n".join(lines)


def append_csv(path: Path, row: dict) -> None:
    append_csv_rows(path, CSV_COLUMNS, [row])


def plot(res: Result, path) -> None:
    """A PNG: the median seconds of each row of the table, the floor as a line, the whole
    process's phases stacked beside it when they were measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(label, statistics.median(getattr(r, fig) for r in res.runs[a])) for a, label, fig in ROWS if a in res.runs]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.8))
    ax.barh([label for label, _ in rows][::-1], [t for _, t in rows][::-1], color="#4c72b0")
    if "floor" in res.runs:
        ax.axvline(res.median_wall("floor"), color="#c44e52", linestyle="--", label="cp+sync floor")
    phases = [p for p in (phase_seconds(r) for r in res.runs.get("cli", [])) if p]
    if phases:
        left = 0.0
        colors = plt.get_cmap("tab10").colors
        for i, k in enumerate(k for k in phases[0] if k not in INNER):
            w = statistics.median(p[k] for p in phases)
            ax.barh(["nanokern whole process: phases"], [w], left=left, color=colors[i % 10], label=k)
            left += w
    o = res.options
    ax.set_xlabel("seconds (medians)")
    ax.set_title(f"bench convert ({o.get('direction', 'export')}): {o['size']} {o['dtype']} TP{o['tp']}xPP{o['pp']}, "
                 f"{o['reps']} rep(s)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
