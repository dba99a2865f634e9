"""The watch's loop. Rank 0 decides (watcher.py) and shares each decision; under torchrun every
rank then takes part in the export (convert's distributed execute splits the files), so a
multi-node watch exports as fast as convert does. The ranks meet once per poll even when idle,
so an idle watch never outlasts the process group's timeout."""

from __future__ import annotations

from nanokern.errors import NanokernError
from nanokern.execute import distributed, signals
from nanokern.watch.export import export_step
from nanokern.watch.watcher import Watcher, WatchOptions


def _share(dist, obj):
    """Rank 0's object, on every rank."""
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run(o: WatchOptions, say) -> int:
    """Watch until stopped (or, with --once, until what is complete now is done): the exit code."""
    rank, ws = distributed.world()
    dist = distributed.init(o.export.device) if ws > 1 else None
    lead = rank == 0
    w = Watcher(o, say) if lead else None
    try:
        return _run(o, say, dist, lead, ws, w)
    finally:
        if w is not None:
            w.close()  # the watch's lock: released on every way out, a refused start included


def _run(o: WatchOptions, say, dist, lead: bool, ws: int, w: Watcher | None) -> int:
    error = None
    if lead:
        try:
            w.setup()
        except NanokernError as e:
            error = e
    shared = _share(dist, None if error is None else str(error))
    if error is not None:
        raise error
    if shared is not None:
        raise NanokernError(shared)
    if lead:
        what = [f"every {o.every} steps" if o.every else "", f"keeping the last {o.keep_last}" if o.keep_last else "",
                "--latest-only" if o.latest_only else "", f"check {o.check}" if o.check else "",
                "--once" if o.once else f"polling every {o.poll:g} s"]
        say(f"watching {o.checkpoints} -> {o.out_root} ({', '.join(x for x in what if x)}"
            + (f", {ws} processes" if ws > 1 else "") + ")")
    broken = None  # rank 0's own error: the other ranks are told to stop before it is raised
    with signals.raising():  # a signal anywhere from here raises Interrupted (execute keeps its files)
        while True:
            d = None
            if lead and broken is None:
                try:
                    d = w.decide()
                except Exception as e:  # noqa: BLE001 - shared as a stop, then raised
                    broken = e
            if lead and broken is not None:
                d = {"do": "stop", "rc": 1}
            d = _share(dist, d)
            if d["do"] == "stop":
                if broken is not None:
                    raise broken
                return d["rc"]
            if d["do"] != "export":
                continue
            name = d["step"]
            try:
                plan, report = export_step(o.checkpoints / name, o.out_root / name, o.export, dist,
                                           say=say if lead else None)
            except (NanokernError, OSError, ValueError, RuntimeError) as e:
                if lead:
                    broken = _guard(w.export_failed, name, e)
                continue
            if lead:
                broken = _guard(w.exported, name, plan, report)


def _guard(fn, *args) -> Exception | None:
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - raised once the other ranks are told to stop
        return e
    return None
