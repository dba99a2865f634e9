"""Executing a plan: run.py (the run: lock, ranks, worker threads, durability, rename), write.py
(one file), fill.py (one tensor's rows from its pieces), manifest.py (journal, manifest,
fingerprint), durable.py (fsync, syncfs), replace.py (atomic replace, recovery), lock.py (one
run per output), diskspace.py (room before the first byte), staging.py (the GPU pipeline).

`execute`, `Report` and the manifest names are loaded on first use, so that the CLI can take
the output's lock (lock.py) before anything heavy is imported."""

_NAMES = {"execute": "run", "Report": "run", "MANIFEST": "manifest", "partial_dir": "manifest",
          "plan_fingerprint": "manifest"}


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'nanokern.execute' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"nanokern.execute.{_NAMES[name]}"), name)


__all__ = list(_NAMES)
