"""Executing a plan: run.py (the run: lock, ranks, worker threads, durability, rename), write.py
(one file), fill.py (one tensor's rows from its pieces), manifest.py (journal, manifest,
fingerprint), durable.py (fsync, syncfs), replace.py (atomic replace, recovery), lock.py (one
run per output), diskspace.py (room before the first byte), staging.py (the GPU pipeline)."""

from nanokern.execute.manifest import MANIFEST, partial_dir, plan_fingerprint
from nanokern.execute.run import Report, execute

__all__ = ["MANIFEST", "Report", "execute", "partial_dir", "plan_fingerprint"]
