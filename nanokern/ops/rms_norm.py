"""RMSNorm: the torch reference (LlamaRMSNorm's numerics), the Triton op and the dispatch.

numerics "hf": fp32 variance, x * rsqrt(var + eps) in fp32, rounded to the input dtype, THEN
times the weight (LlamaRMSNorm); "fused": the weight multiply in fp32 and one rounding
(flash-attn's RMSNorm). Both are the same in fp32 (up to fp32 rounding).
Registered op: torch.ops.nanokern.rms_norm(x, weight, eps, fused) -> Tensor (the Triton kernel,
nanokern/ops/triton/rms_norm.py; float32 and bfloat16).
"""
import torch

from nanokern.ops import _triton
from nanokern.ops.backends import resolve_backend

NUMERICS = ("hf", "fused")


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, numerics: str = "hf") -> torch.Tensor:
    dtype = x.dtype
    h = x.to(torch.float32)
    var = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(var + eps)
    if numerics == "fused":
        return (h * weight.to(torch.float32)).to(dtype)
    return weight.to(dtype) * h.to(dtype)


def check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"triton rms_norm supports float32 and bfloat16, got {x.dtype}")
    if x.dim() < 1 or tuple(weight.shape) != (x.shape[-1],):
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match hidden size of x {tuple(x.shape)}")
    if weight.device != x.device:
        raise ValueError(f"rms_norm: x is on {x.device} but weight on {weight.device}")


@torch.library.custom_op("nanokern::rms_norm", mutates_args=(),
                         schema="(Tensor x, Tensor weight, float eps, bool fused) -> Tensor")
def rms_norm_triton(x, weight, eps, fused):
    check(x, weight)
    return _triton.kernels("rms_norm").rms_norm(x, weight, eps, fused=fused)


@rms_norm_triton.register_fake
def _(x, weight, eps, fused):
    check(x, weight)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, backend: str = "torch",
             numerics: str = "hf") -> torch.Tensor:
    """RMSNorm over the last dim of x (any leading shape); backend "torch", "triton" or "auto"."""
    if numerics not in NUMERICS:
        raise ValueError(f"unknown numerics {numerics!r}: choose one of {', '.join(NUMERICS)}")
    if resolve_backend(backend, x.device, "rms_norm") == "triton":
        return rms_norm_triton(x, weight, float(eps), numerics == "fused")
    return rms_norm_ref(x, weight, eps, numerics)
