"""Rank 0's side of a watch: what the log says was done, recovery of what a kill left, the choice
of the next step, and everything after an export (the record, `latest`, the check, the
command, --keep-last). loop.py drives it and shares its decisions with the other ranks."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from nanokern.errors import NanokernError
from nanokern.execute import signals
from nanokern.execute.owned import listing
from nanokern.execute.replace import check_apart, settle
from nanokern.formats.nanotron import steps as S
from nanokern.watch import hooks, outputs, rewrites
from nanokern.watch.events import EventLog, History, read_events
from nanokern.watch.export import ExportOptions, export_dtype, out_of_space
from nanokern.watch.schedule import Scheduler


@dataclass
class WatchOptions:
    checkpoints: Path
    out_root: Path
    export: ExportOptions = field(default_factory=ExportOptions)
    every: int | None = None
    keep_last: int | None = None
    once: bool = False
    poll: float = 30.0
    latest_only: bool = False
    check: str | None = None  # "parity"
    exec_cmd: str | None = None
    give_up: float = 900.0  # seconds a step may stay incomplete and unchanged
    retries: int = 3  # failed exports of a step that still looks complete, before a failed record


class Watcher:
    def __init__(self, o: WatchOptions, say):
        self.o, self.say = o, say
        self.log = EventLog(o.out_root)
        self.sched = Scheduler(o.checkpoints, o.every, o.give_up)
        self.history = History()
        self.attempts: dict[str, int] = {}
        self.started_sig: dict[str, str] = {}
        self.started_reads: dict[str, dict] = {}
        self.retrying: dict[str, str] = {}  # a failed export to be tried again: its error
        self.stamps = rewrites.Stamps(o.checkpoints)
        self.said_links: set[str] = set()
        self.held = contextlib.ExitStack()  # the watch's lock, for the life of the watch
        self.failures = 0  # this run's failed records and suspect checks (--once's exit code)
        self.stop_rc: int | None = None
        self.hooks_due: list[str] = []
        self.said_absent = False
        self.said: dict[str, str] = {}  # the last state printed for each step

    # -- start ------------------------------------------------------------------------------------
    def setup(self) -> None:
        o = self.o
        check_apart(o.checkpoints, o.out_root, "CHECKPOINTS_PATH")
        if o.checkpoints.exists() and not o.checkpoints.is_dir():
            raise NanokernError("is not a directory", o.checkpoints)
        if o.once and not o.checkpoints.is_dir():
            raise NanokernError("does not exist", o.checkpoints)
        if (o.checkpoints / "model").is_dir() or (o.checkpoints / "model_config.json").exists():
            raise NanokernError("is a step folder: watch its parent, the checkpoints_path that holds the steps",
                                o.checkpoints)
        o.out_root.mkdir(parents=True, exist_ok=True)
        self.held.enter_context(outputs.hold_lock(o.out_root))
        self.history = History.of(read_events(o.out_root))
        outputs.check_latest(o.out_root, self.history.made)
        if o.exec_cmd and hooks.quotes_out(o.exec_cmd):
            self.say("warning: --exec writes {out} inside quotes: write it bare (the watch shell-quotes it) or use "
                     "\"$NANOKERN_OUT\"; inside quotes, a folder name holding $(...) or a backquote would run", err=True)
        outputs.finish_removals(o.out_root)
        outputs.clear_stale_locks(o.out_root)
        for name, rec in list(self.history.started.items()):
            self._recover(name, rec)
        h = self.history
        for name, rec in list(h.exported.items()):
            why = rewrites.changed(o.checkpoints, name, rec) if self._wanted(name) else None
            if why:
                self._supersede(name, why)
        for name in h.exported:
            self.stamps.note(name)
        for name in h.ever_exported:
            self.sched.close(name)
        for name, rec in h.failed.items():
            if rec.get("signature") and self._signature(name) == rec["signature"]:
                self.sched.close(name)  # the same bytes failed before: not again
        self.hooks_due = [n for n in sorted(h.exported, key=int) if self._hooks_missing(n)]
        self._keep_last()
        self._point_latest()

    def close(self) -> None:
        """Release the watch's lock (its file removed): the loop returned, however."""
        self.held.close()

    def _signature(self, name: str) -> str | None:
        try:
            return S.observe(S.Step(name, int(name), self.o.checkpoints / name)).source
        except FileNotFoundError:
            return None

    def _recover(self, name: str, rec: dict) -> None:
        """An export was started and no outcome recorded: a kill. Its folder in place means it
        completed (convert renames it there whole, manifest last): it is kept whatever became of
        its step since; recorded when the step is as it was then or gone, moved aside when the
        step was rewritten (then exported again)."""
        out = self.o.out_root / name
        if outputs.is_own_export(self.o.out_root, self.o.checkpoints, name) is None:
            if not (self.o.checkpoints / name).is_dir():
                self._fail(name, "the step was deleted before its export finished")
            elif not self._wanted(name):
                self._fail(name, f"its export was cut short, and --every {self.o.every} skips it now")
            return  # not finished: the next export of it resumes from convert's partial folder
        settle(out)  # (what a kill right after the rename may leave inside it)
        why = rewrites.changed(self.o.checkpoints, name, rec) if self._wanted(name) else None
        if why:
            self._supersede(name, f"{why} (the watch was stopped before recording the export)")
            return
        gone = not (self.o.checkpoints / name).is_dir()
        self.history.add(self.log.append("exported", name, out, None, outputs.folder_bytes(out), recovered=True,
                                         **self._made_from(name, gone)))
        self.say(f"step {name}: found its finished export {out} (the watch was stopped before recording it)"
                 + (": its step folder is gone, this export is now the only copy" if gone else ""))

    def _made_from(self, name: str, gone: bool) -> dict:
        """What an `exported` record says it was made from."""
        rec = self.history.started.get(name, {})
        sig = self.started_sig.get(name) or rec.get("signature")
        return {"checkpoints": os.path.abspath(self.o.checkpoints), "signature": sig, **({"source_gone": True} if gone else {})}

    def _supersede(self, name: str, why: str) -> None:
        """The step was rewritten since its export: the old export is moved aside (kept, named in
        the log) and the step exported again."""
        out = self.o.out_root / name
        with signals.deferred(str(out)):
            aside = outputs.supersede(self.o.out_root, self.o.checkpoints, name)
            self.history.add(self.log.append("superseded", name, out, reason=why,
                                             moved_to=None if aside is None else str(aside)))
            self.sched.reopen(name)
            self._point_latest()
        self.say(f"step {name}: {why}: " + (f"its old export is kept as {aside}; " if aside else "") + "exporting it again")

    def _wanted(self, name: str) -> bool:
        """A step these options export (--every)."""
        return not self.o.every or int(name) % self.o.every == 0

    def _recheck(self) -> None:
        """A poll: exported steps saved again since (model_config.json changed) and now different."""
        for name in self.stamps.moved([n for n in self.history.exported if self._wanted(n)]):
            why = rewrites.changed(self.o.checkpoints, name, self.history.exported[name])
            if why:
                self._supersede(name, why)

    # -- the next step ------------------------------------------------------------------------------
    def decide(self) -> dict:
        """{"do": "export", "step": name} | {"do": "idle"} (after sleeping a poll) | {"do": "stop", "rc": n}."""
        while self.stop_rc is None:
            if self.hooks_due:
                self.run_hooks(self.hooks_due.pop(0))
                continue
            for name, msg in list(self.retrying.items()):  # deleted before it could be tried again
                if not (self.o.checkpoints / name).is_dir():
                    self._fail(name, f"the step was deleted while it was exported ({msg})")
            if not self.o.once:
                self._recheck()
            if not self.o.checkpoints.is_dir() and not self.said_absent:
                self.say(f"waiting for {self.o.checkpoints} to appear")
                self.said_absent = True
            look = self.sched.look(once=self.o.once)
            for name in look.links:
                if name not in self.said_links and not (self.o.every and int(name) % self.o.every):
                    self.said_links.add(name)
                    self.say(f"step {name}: skipped: {self.o.checkpoints / name} is a symlink (the watch exports "
                             "step folders, never what a link points to)")
            for st, v in look.give_up:
                why = "looks complete but is not" if self.o.once else f"incomplete and unchanged for {self.o.give_up:g} s"
                self._fail(st.name, f"{why}: {v.reason}", signature=st.source)
                self.sched.close(st.name)
            for st, v in look.waiting if not self.o.once else ():  # --once: one line each, below
                self._say_waiting(st, v)
            ready = [st.name for st in look.ready]
            if self.o.latest_only and ready:
                newest = max(self.history.ever_exported, key=int, default=None)
                for name in ready[:-1] + [n for n in ready[-1:] if newest is not None and int(n) < int(newest)]:
                    if name in self.retrying or name in self.history.started:  # its export ends with a record
                        self._fail(name, "not tried again: a newer step is ready (--latest-only)"
                                   + (f" ({self.retrying[name]})" if name in self.retrying else ""))
                    else:
                        self.say(f"step {name}: skipped (--latest-only: a newer step is ready)")
                    self.sched.close(name)
                ready = [n for n in ready[-1:] if newest is None or int(n) > int(newest)]
            for name in ready:
                if (self.o.out_root / name).exists() and name not in self.history.started:
                    self._fail(name, f"{self.o.out_root / name}: exists and was not made by this watch: left alone")
                    self.sched.close(name)
                    continue
                st = next(st for st in look.ready if st.name == name)
                self.history.add(self.log.append("started", name, self.o.out_root / name, signature=st.source,
                                                 checkpoints=os.path.abspath(self.o.checkpoints)))
                self.started_sig[name], self.started_reads[name] = st.source, st.reads or {}
                self.retrying.pop(name, None)
                return {"do": "export", "step": name}
            if self.o.once:
                for st, v in look.waiting:
                    self.say(f"step {st.name}: not complete now ({v.reason if v else 'changing'}): left for a later run")
                self.stop_rc = 1 if self.failures else 0
                break
            time.sleep(self.o.poll)
            return {"do": "idle"}
        return {"do": "stop", "rc": self.stop_rc}

    def _say_waiting(self, st: S.Step, v: S.Verdict | None) -> None:
        what = "being written" if v is None else f"incomplete ({v.reason})"
        said = self.said.get(st.name)
        if said != what and (v is not None or said is None):  # each new state once; "being written" once
            self.said[st.name] = what
            self.say(f"step {st.name}: {what}")

    # -- after an export ------------------------------------------------------------------------------
    def exported(self, name: str, plan, report) -> None:
        """execute returned: every file of the step was read. The export is the step's unless a
        file of it was rewritten or added meanwhile (then it is removed and made again); a step
        deleted meanwhile (all of it, or only some files so far) leaves a valid export, kept."""
        out = self.o.out_root / name
        with signals.deferred(str(out)):
            now = rewrites.source_of(self.o.checkpoints / name)
            gone = now is None or S.only_removed(self.started_reads.get(name, {}), now.reads)
            if not gone and now.source != self.started_sig.get(name):
                outputs.remove_export(self.o.out_root, self.o.checkpoints, name)
                self._fail(name, "the step changed while it was exported: export removed", final=False)
                return
            self.history.add(self.log.append("exported", name, out, report.seconds, report.bytes,
                                             source=str(self.o.checkpoints / name),
                                             gbps=round(report.gbps, 4), files=report.files, dtype=export_dtype(plan),
                                             reused_files=report.reused_files, **self._made_from(name, gone)))
            self.sched.close(name)
            self.stamps.note(name)
            self._point_latest()
        self.say(f"step {name}: exported to {out}: {report.files} file(s), {S.human_bytes(report.bytes)} in "
                 f"{report.seconds:.2f} s ({report.gbps:.2f} GB/s)"
                 + ("; its step folder was deleted meanwhile: this export is now the only copy" if gone else ""))
        self.run_hooks(name)

    def export_failed(self, name: str, e: BaseException) -> None:
        msg = str(e) if isinstance(e, NanokernError) else f"{type(e).__name__}: {e}"
        if out_of_space(e):  # convert's line, then the record (which may not fit on that disk either)
            self.stop_rc = 1
            self.say(f"error: {msg}", err=True)
            with contextlib.suppress(OSError):
                self._fail(name, msg, final=False)
            return
        if not (self.o.checkpoints / name).is_dir():
            self._fail(name, f"the step was deleted while it was exported ({msg})")
            return
        self.attempts[name] = self.attempts.get(name, 0) + 1
        if self.attempts[name] < self.o.retries and not self.o.once:
            self.say(f"step {name}: export failed ({msg}); tried {self.attempts[name]} of {self.o.retries} times, "
                     f"trying again once it is unchanged for a poll")
            self.sched.forget(name)
            self.retrying[name] = msg
            return
        self._fail(name, msg, signature=self.started_sig.get(name))
        self.sched.close(name)

    def _fail(self, name: str, error: str, final: bool = True, signature: str | None = None) -> None:
        extra = {"signature": signature} if signature else {}
        self.retrying.pop(name, None)
        self.history.add(self.log.append("failed", name, self.o.out_root / name, error=error, **extra))
        self.failures += 1
        self.say(f"step {name}: failed: {error}")
        if final:
            self.sched.close(name)
        else:
            self.sched.forget(name)

    # -- the check, the command, the old exports, latest ------------------------------------------------
    def _hooks_missing(self, name: str) -> bool:
        return (self.o.check and name not in self.history.checked) or (self.o.exec_cmd and name not in self.history.execd)

    def run_hooks(self, name: str) -> None:
        out = self.o.out_root / name
        src = self.o.checkpoints / name
        if self.o.check == "parity" and name not in self.history.checked:
            dtype = self.history.exported.get(name, {}).get("dtype") or "float32"
            fig, line = hooks.parity_record(src, out, dtype, self.o.export.device)
            secs = fig.pop("seconds", None)
            self.history.add(self.log.append("checked", name, out, secs, None, **fig))
            self.failures += 0 if fig["passed"] else 1
            self.say(f"step {name}: {line}")
        if self.o.exec_cmd and name not in self.history.execd:
            chk = self.history.checked.get(name)
            verdict = "" if chk is None else ("suspect" if chk.get("suspect") else "passed")
            res = hooks.run_exec(self.o.exec_cmd, name, out, src, verdict)
            secs = res.pop("seconds")
            self.history.add(self.log.append("exec", name, out, secs, None, **res))
            self.failures += 0 if res["returncode"] == 0 else 1  # --once: a failed command fails the run
            self.say(f"step {name}: exec exited {res['returncode']}" + (f" ({res['error']})" if res.get("error") else ""))
        self._keep_last()

    def _keep_last(self) -> None:
        k = self.o.keep_last
        if not k:
            return
        mine = sorted(self.history.exported, key=int)
        for name in mine[:-k]:
            out = self.o.out_root / name
            with signals.deferred(str(out)):
                left = outputs.remove_export(self.o.out_root, self.o.checkpoints, name)
                if left is not None:
                    self.history.add(self.log.append("removed", name, out, **({"kept": left} if left else {})))
                    self.say(f"step {name}: removed its export (--keep-last {k})" + (
                        f"; left in {out} what nanokern did not write: {listing(left)}" if left else ""))
                elif not out.exists():
                    self.history.add(self.log.append("removed", name, self.o.out_root / name, error="already gone"))

    def _point_latest(self) -> None:
        live = [n for n in self.history.exported if (self.o.out_root / n).is_dir()]
        outputs.point_latest(self.o.out_root, max(live, key=int) if live else None, self.history.made)
