"""The one loader of the Triton kernels (nanokern/ops/triton/*.py) and their launch settings.

`kernels(name)` imports nanokern.ops.triton.<name> once. Triton decides when a kernel is
decorated whether it is compiled or interpreted, so on a machine without a CUDA device the
interpreter is switched on (TRITON_INTERPRET=1) before the first kernel module is imported,
and every loaded kernel is checked to be interpreted. With a CUDA device the environment is
left as it is: the kernels are compiled for the GPU.

`tiles(t, config)` is the one switch between the two tile sets every launcher carries: "gpu"
(bandwidth tiles and num_warps) and "cpu" (few large programs: the interpreter costs about
1-3 ms per program). The default follows the tensor's device; the tests force "gpu" on CPU to
run the GPU tiling in the interpreter.

Importing this module imports neither torch nor triton.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import threading

KERNELS = ("gather_cast", "fp8_quant", "rms_norm", "rope", "swiglu", "attention", "decode_attention")
# Importing triton from two threads at once fails (a circular import inside triton), and the
# interpreter patches triton.language globally while a kernel runs: both are serialised.
LOCK = threading.RLock()
_loaded: dict = {}


@functools.cache
def importable() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def interpreted() -> bool:
    """Whether the kernels run (or, none imported yet, will run) under the Triton interpreter."""
    if not _has_cuda():
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernels(name: str):
    """The kernel module nanokern.ops.triton.<name>, imported once (interpreted without CUDA)."""
    if name not in KERNELS:
        raise ValueError(f"no Triton kernel module {name!r} (one of {', '.join(KERNELS)})")
    mod = _loaded.get(name)
    if mod is not None:
        return mod
    with LOCK:
        if name not in _loaded:
            if not _has_cuda():
                os.environ["TRITON_INTERPRET"] = "1"
            mod = importlib.import_module(f"nanokern.ops.triton.{name}")
            if not _has_cuda():
                _check_interpreted(mod)
            _loaded[name] = mod
        return _loaded[name]


def _check_interpreted(mod) -> None:
    from triton.runtime.interpreter import InterpretedFunction

    jitted = [v for k, v in vars(mod).items() if k.endswith("_kernel") and hasattr(v, "fn")]
    bad = [getattr(k, "__name__", "?") for k in jitted if not isinstance(k, InterpretedFunction)]
    if not jitted or bad:
        raise RuntimeError(
            f"{mod.__name__} was imported before the Triton interpreter was switched on and there is no CUDA "
            f"device, so its kernels ({', '.join(bad) or 'none found'}) cannot run: import it through "
            "nanokern.ops._triton.kernels(), or start Python with TRITON_INTERPRET=1")


def tiles(t, config: str | None = None) -> str:
    """'gpu' or 'cpu': which tile set a launcher uses for tensor t (config forces one)."""
    if config is None:
        return "gpu" if t.is_cuda else "cpu"
    if config not in ("cpu", "gpu"):
        raise ValueError(f"config must be cpu or gpu, got {config!r}")
    return config


def launch_lock(t):
    """A context manager around a launch: the interpreter is serialised (see LOCK)."""
    import contextlib

    return LOCK if not t.is_cuda else contextlib.nullcontext()


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()
