"""gather_cast on raw host buffers (numpy arrays over memory maps and staging buffers), through
nanokern._cpu: the same C++ kernel as the torch op's "cpu" backend, bound with pybind11 and
without torch, so that a CPU conversion never waits for `import torch`."""
from __future__ import annotations

ERROR: str | None = None
try:
    from nanokern import _cpu
except ImportError as e:  # not built: CPU conversions go through torch's "cpu"/"torch" backends
    _cpu = None
    ERROR = f"nanokern._cpu is not built ({e}); run `pip install --no-build-isolation -e .`"
