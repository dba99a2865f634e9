"""Measuring a run: subprocess workers, the process tree's RssAnon sampled by a thread, CPU time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click

from nanokern.bench.naive import naive_convert, naive_import, naive_reshard


def rss_anon(pid: int) -> int:
    """RssAnon of one process in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [root], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class AnonSampler(threading.Thread):
    """Peak of the summed RssAnon of a process tree, sampled every `interval` seconds (the tree
    itself is re-listed every `rescan` seconds: cheap enough not to disturb a 2-core machine)."""

    def __init__(self, pid: int, interval: float = 0.02, rescan: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval, self.rescan = pid, interval, rescan
        self.peak = 0
        self._halt = threading.Event()

    def run(self):
        pids, last = [self.pid], 0.0
        while not self._halt.is_set():
            now = time.monotonic()
            if now - last >= self.rescan:
                pids, last = _descendants(self.pid), now
            self.peak = max(self.peak, sum(rss_anon(p) for p in pids))
            self._halt.wait(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def _worker_main(spec_file: str) -> None:
    """Subprocess body: import, note RssAnon, run one conversion + sync, write the timings."""
    spec = json.loads(Path(spec_file).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    if spec["approach"] == "nanokern":
        import nanokern.execute  # noqa: F401
        import nanokern.ops  # noqa: F401
        from nanokern.convert import convert

        def go():
            convert(spec["src"], spec["dst"], to=spec["to"], dtype=spec["out_dtype"], backend=spec["backend"],
                    device=spec["device"], workers=spec["workers"], force=True, progress=False,
                    **spec.get("plan_options", {}))
    elif spec["approach"] == "naive":
        import safetensors.torch  # noqa: F401

        import nanokern.bench.synthetic  # noqa: F401

        direction = spec.get("direction", "export")
        tp, pp = spec.get("plan_options", {}).get("tp") or 1, spec.get("plan_options", {}).get("pp") or 1

        def go():
            if direction == "export":
                naive_convert(spec["src"], spec["dst"], spec["out_dtype"])
            elif direction == "import":
                naive_import(spec["src"], spec["dst"], spec["out_dtype"], tp, pp)
            else:
                naive_reshard(spec["src"], spec["dst"], spec["out_dtype"], tp, pp)
    else:  # "idle": the import baseline only
        import nanokern.convert  # noqa: F401

        def go():
            time.sleep(0.5)
    base = rss_anon(os.getpid())
    c0 = _cpu_self()
    t0 = time.perf_counter()
    go()
    os.sync()
    seconds = time.perf_counter() - t0
    cpu = _cpu_self() - c0
    if int(os.environ.get("RANK", "0")) == 0:
        Path(spec["result"]).write_text(json.dumps({"seconds": seconds, "cpu": cpu, "baseline_anon": base}))


def _cpu_self() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_children() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class Run:
    seconds: float  # the worker's own time (imports excluded) when it reports one, else = wall
    peak_anon: int
    baseline_anon: int
    cpu: float = 0.0  # user + system seconds of the process tree for the measured part
    wall: float = 0.0  # exec of the command to its exit, then sync: what the user waits for
    started: float = 0.0  # time.monotonic() at exec and at exit (the clock the child's phases use)
    exited: float = 0.0
    phases: dict | None = None  # the child's NANOKERN_PHASES report (execute/phases.py), when asked for


def _run_measured(cmd: list[str], env=None, inner_result: Path | None = None, phases_file: Path | None = None) -> Run:
    """Run cmd under the RssAnon sampler. wall = exec to exit, then sync (always); seconds = the
    worker's own time (imports excluded) when it writes one, else the wall time. phases_file:
    the child writes its phase breakdown there (NANOKERN_PHASES). An interrupt (Ctrl-C) stops
    the child before it is raised on, so the caller can remove what it wrote."""
    if inner_result is not None:
        inner_result.unlink(missing_ok=True)
    if phases_file is not None:
        phases_file.unlink(missing_ok=True)
        env = {**(env if env is not None else os.environ), "NANOKERN_PHASES": str(phases_file)}
    c0 = _cpu_children()
    started = time.monotonic()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = AnonSampler(proc.pid)
    sampler.start()
    try:
        out, _ = proc.communicate()
    except BaseException:
        _stop(proc)
        sampler.stop()
        raise
    exited = time.monotonic()
    os.sync()
    wall = time.perf_counter() - t0
    cpu = _cpu_children() - c0
    peak = sampler.stop()
    if proc.returncode != 0:
        raise click.ClickException(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out.decode(errors='replace')[-3000:]}")
    phases = json.loads(phases_file.read_text()) if phases_file is not None and phases_file.is_file() else None
    if inner_result is not None and inner_result.is_file():
        r = json.loads(inner_result.read_text())
        return Run(r["seconds"], peak, r["baseline_anon"], r["cpu"], wall, started, exited, phases)
    return Run(wall, peak, 0, cpu, wall, started, exited, phases)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (nanokern's children clean up their lock and partial folder), then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    for p in path.parent.glob(f"{path.name}.*"):  # nanokern's DST.partial-*, the naive tmp
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    os.sync()
