"""A test "trainer": replays a real Nanotron step folder into a checkpoints folder in the order
Nanotron's save_checkpoint writes it (config.yaml, weights, optimizer, lr_scheduler,
checkpoint_metadata.json, random states, latest.txt, model_config.json last, written by
several ranks without a rename), with pauses mid-weights (a file visible half written) and a
half-written model_config.json, and checks before every write that no watch has touched the
step yet. Also the watch-test helpers: the watcher as a child process, its log, export equality."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from helpers import NANOKERN, tree_bytes

NANOTRON_ORDER = ["config.yaml", "model", "optimizer", "lr_scheduler", "checkpoint_metadata.json", "random"]


def _files(step: Path, part: str) -> list[Path]:
    p = step / part
    return [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())


class Trainer:
    """replay(src_step, step): write src_step's files into root/step; `touched` collects any
    sign of the watch acting on a step before its last byte was written."""

    def __init__(self, root: Path, out_root: Path | None = None, pause: float = 0.6):
        self.root, self.out_root, self.pause = root, out_root, pause
        self.touched: list[str] = []
        root.mkdir(parents=True, exist_ok=True)

    def _watch_acted(self, step: str) -> list[str]:
        if self.out_root is None or not self.out_root.is_dir():
            return []
        seen = [p.name for p in self.out_root.glob(f"{step}*")]
        seen += [f"log: {r['event']}" for r in events(self.out_root) if str(r["step"]) == step]
        return seen

    def _write(self, src: Path, dst: Path, step: str, halves: bool = False) -> None:
        acted = self._watch_acted(step)
        if acted:
            self.touched.append(f"step {step} before {dst.name}: {acted}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()
        with open(dst, "wb") as f:  # plain writes, no rename: as Nanotron (and safetensors) write
            if halves:
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(self.pause)
            f.write(data[len(data) // 2 if halves else 0:])

    def replay(self, src_step: Path, step: str, config_first: bool = False) -> None:
        """config_first: a writer with other timings (model_config.json before the weights):
        then only the shard check stands between the watch and a partial step."""
        dst = self.root / step
        if config_first:
            self._write(src_step / "model_config.json", dst / "model_config.json", step)
        for part in NANOTRON_ORDER:
            files = _files(src_step, part)
            for i, f in enumerate(files):
                mid = part == "model" and i == len(files) // 2
                if mid:
                    time.sleep(self.pause)  # a pause mid-weights ...
                self._write(f, dst / f.relative_to(src_step), step, halves=mid)  # ... with a file half written
        self._write_text(self.root / "latest.txt", step, step)
        if not config_first:
            cfg = (src_step / "model_config.json").read_bytes()
            for _rank in range(2):  # every rank writes it: open(w) truncates, then writes (seen empty or half written)
                self._write_text(dst / "model_config.json", "", step)
                with open(dst / "model_config.json", "wb") as f:
                    f.write(cfg[: len(cfg) // 2])
                    f.flush()
                    time.sleep(self.pause)
                    f.write(cfg[len(cfg) // 2:])
        if self._watch_acted(step):  # the last byte is written: from here the watch may act
            self.touched.append(f"step {step} at its last byte: {self._watch_acted(step)}")

    def _write_text(self, path: Path, text: str, step: str) -> None:
        acted = self._watch_acted(step)
        if acted:
            self.touched.append(f"step {step} before {path.name}: {acted}")
        path.write_text(text)


def events(out_root: Path) -> list[dict]:
    try:
        lines = (Path(out_root) / "nanokern-watch.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def of(out_root: Path, event: str, step=None) -> list[dict]:
    return [r for r in events(out_root) if r["event"] == event and (step is None or r["step"] == int(step))]


def start_watch(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([*NANOKERN, "watch", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the watch ended ({proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def reference(step_dir: Path, dst: Path, *args) -> Path:
    """`nanokern convert STEP DST ARGS`, as a user runs it."""
    from helpers import run_cli

    r = run_cli("convert", step_dir, dst, "-q", *args)
    assert r.returncode == 0, r.stderr
    return dst


def same_export(a: Path, b: Path) -> None:
    """Equal bytes, file for file (the manifest's run fields aside: only its files' entries)."""
    ta, tb = tree_bytes(a), tree_bytes(b)
    ma, mb = (json.loads(t.pop("nanokern-manifest.json")) for t in (ta, tb))
    assert ta == tb, f"{a} differs from {b}: {sorted(set(ta) ^ set(tb)) or [k for k in ta if ta[k] != tb.get(k)]}"
    assert ma["files"] == mb["files"]


def copy_step(src: Path, root: Path, step: str) -> Path:
    shutil.copytree(src, root / step)
    return root / step


def test_trainer_writes_what_nanotron_writes(tmp_path):
    from fixtures_path import fixture

    src = fixture("nanotron", "tp2_pp2") / "0"
    t = Trainer(tmp_path / "ck", pause=0.01)
    t.replay(src, "7")
    assert tree_bytes(tmp_path / "ck" / "7") == tree_bytes(src)
    assert (tmp_path / "ck" / "latest.txt").read_text() == "7" and not t.touched
    assert os.path.getmtime(tmp_path / "ck" / "7" / "model_config.json") >= max(
        os.path.getmtime(f) for f in (tmp_path / "ck" / "7").rglob("*") if f.is_file())
