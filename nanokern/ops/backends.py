"""Which backends run each op on this machine, and which one a name means: the one resolver.

Backends per op:
- gather_cast: "torch" (the reference), "cpu" (the C++ kernel), "cuda" (the CUDA C++ kernel),
  "triton".
- gather_quant_fp8 (FP8 block quantization fused into the gather): the same four, resolved as gather_cast.
- rms_norm, rope, swiglu, attention, decode_attention (the parity forward's and the decoder's
  fused ops): "torch" (the reference) and "triton"; they have no C++ kernel.

"auto" means the fastest backend that runs the op on the device:
- gather_cast on cpu: "cpu" when the C++ kernel is built, else "torch"; on cuda: "cuda" when the
  CUDA kernel is built, else "triton" when triton is installed, else "torch".
- the other ops on cpu: "torch" (their Triton kernels run there only under the interpreter, a
  correctness tool); on cuda: "triton" when triton is installed, else "torch".
A named backend resolves to itself where it can run on the device, else ValueError says why.

Importing this module does not import torch, and neither does resolving "auto", "cpu" or
"torch" for gather_cast on cpu when the torch-free C++ binding (nanokern.ops.host) is built.
"""
from __future__ import annotations

from nanokern.ops import _triton

GATHER_CAST = ("torch", "cpu", "cuda", "triton")
KERNEL = ("torch", "triton")
OPS = {"gather_cast": GATHER_CAST, "gather_quant_fp8": GATHER_CAST, "rms_norm": KERNEL, "rope": KERNEL, "swiglu": KERNEL, "attention": KERNEL,
       "decode_attention": KERNEL}
BACKENDS = GATHER_CAST  # every backend name, for the command lines


def _device_type(device, op: str) -> str:
    kind = device.type if hasattr(device, "type") else str(device).split(":", 1)[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"{op}: unsupported device {device!r} (cpu or cuda)")
    return kind


def _op_backends(op: str) -> tuple[str, ...]:
    try:
        return OPS[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}: one of {', '.join(OPS)}") from None


def _cpu_error() -> str | None:
    """Why the C++ "cpu" backend cannot run (None: it can). The torch-free binding decides
    without importing torch; without it, the torch extension nanokern._C does."""
    from nanokern.ops import host

    if host.ERROR is None:
        return None
    from nanokern.ops import _extension

    return _extension.CPU_ERROR


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _unavailable_reason(name: str, device: str) -> str:
    if name == "cpu":
        return _cpu_error() or "the 'cpu' backend runs CPU tensors only"
    if name == "cuda":
        if device != "cuda":
            return "the 'cuda' backend runs CUDA tensors only"
        from nanokern.ops import _extension

        return _extension.CUDA_ERROR or "no CUDA device is available"
    if name == "triton":
        if not _triton.importable():
            return "triton is not installed"
        if device == "cpu":
            return "a CUDA device is present, so Triton kernels are compiled for it, not interpreted"
        return "no CUDA device is available"
    return "no CUDA device is available"


def available_backends(device, op: str = "gather_cast") -> list[str]:
    """Backends that can run `op` on tensors of `device`, fastest first."""
    names = _op_backends(op)
    kind = _device_type(device, op)
    triton_ok = "triton" in names and _triton.importable()
    if kind == "cpu":
        out = ["cpu"] if "cpu" in names and _cpu_error() is None else []
        out.append("torch")
        if triton_ok and _triton.interpreted():
            out.append("triton")
        return out
    if not _cuda_available():
        return []
    out = []
    if "cuda" in names:
        from nanokern.ops import _extension

        if _extension.CUDA_ERROR is None:
            out.append("cuda")
    if triton_ok:
        out.append("triton")
    out.append("torch")
    return out


def resolve_backend(name: str, device, op: str = "gather_cast") -> str:
    """'auto' -> the fastest backend for `op` on `device` (see the module docstring); a named
    backend -> itself if it can run there. Raises ValueError with the reason otherwise."""
    names = _op_backends(op)
    kind = _device_type(device, op)
    if name != "auto" and name not in names:
        raise ValueError(f"{op}: unknown backend {name!r}; choose one of auto, {', '.join(names)}")
    if kind == "cpu" and name in ("auto", "cpu", "torch"):  # decided without importing torch
        if name == "torch" or (name == "auto" and "cpu" not in names):
            return "torch"
        if _cpu_error() is None:
            return "cpu"
        if name == "auto":
            return "torch"
    available = available_backends(kind, op)
    if name == "auto":
        if not available:
            raise ValueError(f"{op}: no backend can run on {kind!r} (no CUDA device?)")
        return available[0]
    if name not in available:
        raise ValueError(f"{op}: backend {name!r} is not available for {kind} tensors: "
                         f"{_unavailable_reason(name, kind)} (available: {', '.join(available) or 'none'})")
    return name
