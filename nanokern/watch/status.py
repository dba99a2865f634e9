"""`nanokern watch --status OUT_ROOT`: a table of the steps from the watch's log (exported,
seconds, GB/s, parity figures, the command's exit code) and a plot of conversion time and
parity error over the steps."""

from __future__ import annotations

from pathlib import Path

from nanokern.errors import NanokernError
from nanokern.io.units import human_bytes
from nanokern.watch.events import LOG, name_of, read_events


def rows(root: Path) -> list[dict]:
    """One row per step, from the last record of each kind."""
    by: dict[str, dict] = {}
    for r in read_events(root):
        row = by.setdefault(name_of(r), {"step": name_of(r), "state": "", "seconds": None, "bytes": None, "gbps": None,
                                        "parity": None, "passed": None, "exec": None, "error": None})
        ev = r["event"]
        if ev == "started":
            row["state"] = row["state"] or "exporting"
        elif ev == "exported":
            row.update(state="exported", seconds=r.get("seconds"), bytes=r.get("bytes"), gbps=r.get("gbps"), error=None)
        elif ev == "failed":
            if row["state"] != "exported":
                row.update(state="failed", error=r.get("error"))
        elif ev == "removed":
            row["state"] = "removed" if row["state"] == "exported" else row["state"]
        elif ev == "superseded":  # exported again from the new bytes: a fresh row, the old export noted
            row.update(state="", seconds=None, bytes=None, gbps=None, parity=None, passed=None, exec=None,
                       error=f"superseded: old export kept as {r.get('moved_to')}" if r.get("moved_to") else None)
        elif ev == "checked":
            row.update(parity=r.get("logits_max_abs"), passed=r.get("passed"))
            if not r.get("passed"):
                row["error"] = r.get("error") or f"parity: first failing row {r.get('first_failure')}"
        elif ev == "exec":
            row["exec"] = r.get("returncode")
    return [by[k] for k in sorted(by, key=lambda n: (int(n), n))]


def table(root: Path) -> str:
    rs = rows(root)
    if not rs and not (root / LOG).is_file():
        raise NanokernError(f"no {LOG} here: not a watch's OUT_ROOT (yet)", root)
    head = f"{'step':>8}  {'state':<9} {'seconds':>8} {'size':>9} {'GB/s':>7}  {'parity max|diff|':>16}  {'exec':>4}  note"
    lines = [head]
    for r in rs:
        par = "" if r["parity"] is None and r["passed"] is None else \
            (f"{r['parity']:.3g}" if r["parity"] is not None else "-") + ("" if r["passed"] else " SUSPECT")
        lines.append(f"{r['step']:>8}  {r['state']:<9} {_num(r['seconds'], '.2f'):>8} "
                     f"{'' if r['bytes'] is None else human_bytes(r['bytes']):>9} {_num(r['gbps'], '.2f'):>7}  "
                     f"{par:>16}  {'' if r['exec'] is None else r['exec']:>4}  {r['error'] or ''}")
    n = {s: sum(r["state"] == s for r in rs) for s in ("exported", "failed", "removed")}
    lines.append(f"{len(rs)} step(s): {n['exported']} exported, {n['failed']} failed, {n['removed']} removed (--keep-last), "
                 f"{sum(r['passed'] is False for r in rs)} suspect")
    return "\n".join(lines)


def _num(x, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def plot(root: Path, path: Path) -> Path | None:
    """Conversion seconds and parity logits max|diff| per step (PNG); None when nothing to plot."""
    rs = [r for r in rows(root) if r["seconds"] is not None or r["parity"] is not None]
    if not rs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    pts = [(int(r["step"]), r["seconds"]) for r in rs if r["seconds"] is not None]
    a.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
    a.set_ylabel("export seconds")
    a.set_title(f"nanokern watch: {root}")
    par = [(int(r["step"]), r["parity"], r["passed"]) for r in rs if r["parity"] is not None]
    if par:
        b.semilogy([p[0] for p in par], [max(p[1], 1e-12) for p in par], "o-", label="logits max|diff|")
        bad = [p for p in par if not p[2]]
        if bad:
            b.semilogy([p[0] for p in bad], [max(p[1], 1e-12) for p in bad], "rx", markersize=10, label="suspect")
        b.legend()
    else:
        b.text(0.5, 0.5, "no parity checks (--check parity)", ha="center", va="center", transform=b.transAxes)
    b.set_ylabel("parity logits max|diff|")
    b.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
