"""Which gather_cast backends exist on this machine, and which one a name means."""
import torch

from nanokern.ops import _extension, _triton

BACKENDS = ("torch", "cpu", "cuda", "triton")


def _device_type(device) -> str:
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"gather_cast: unsupported device {device!r} (cpu or cuda)")
    return kind


def _unavailable_reason(name: str, device: str) -> str:
    if name == "cpu":
        return _extension.CPU_ERROR or "the 'cpu' backend runs CPU tensors only"
    if name == "cuda":
        if device != "cuda":
            return "the 'cuda' backend runs CUDA tensors only"
        return _extension.CUDA_ERROR or "no CUDA device is available"
    if name == "triton":
        if not _triton.importable():
            return "triton is not installed"
        if device == "cpu":
            return "a CUDA device is present, so Triton kernels are compiled for it, not interpreted"
        return "no CUDA device is available"
    return "unknown reason"


def available_backends(device) -> list[str]:
    """Backends that can run tensors on `device`, fastest first."""
    kind = _device_type(device)
    triton_ok = _triton.importable()
    if kind == "cpu":
        names = ["cpu"] if _extension.CPU_ERROR is None else []
        names.append("torch")
        if triton_ok and _triton.interpreted():
            names.append("triton")
        return names
    if not torch.cuda.is_available():
        return []
    names = ["cuda"] if _extension.CUDA_ERROR is None else []
    if triton_ok:
        names.append("triton")
    names.append("torch")
    return names


def resolve_backend(name: str, device) -> str:
    """'auto' -> the fastest backend for `device`; a named backend -> itself if it can run there.
    Raises ValueError with the reason otherwise."""
    kind = _device_type(device)
    available = available_backends(kind)
    if name == "auto":
        if not available:
            raise ValueError(f"gather_cast: no backend can run on {kind!r} (no CUDA device?)")
        return available[0]
    if name not in BACKENDS:
        raise ValueError(f"gather_cast: unknown backend {name!r}; "
                         f"choose one of auto, {', '.join(BACKENDS)}")
    if name not in available:
        raise ValueError(f"gather_cast: backend {name!r} is not available for {kind} tensors: "
                         f"{_unavailable_reason(name, kind)} (available: {', '.join(available)})")
    return name
