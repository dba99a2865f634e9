"""SwiGLU on the fused gate_up projection output: the torch reference, the Triton op, the dispatch.

gu [..., 2I] holds [gate | up] (gate = the first half: Nanotron's GLUActivation and HF's LlamaMLP
order) -> silu(gate) * up [..., I], as LlamaMLP's act_fn(gate) * up (in bf16 silu's result is
rounded before the multiply). Registered op: torch.ops.nanokern.swiglu(gu) -> Tensor (the Triton
kernel, nanokern/ops/triton/swiglu.py; float32 and bfloat16).
"""
import torch
import torch.nn.functional as F

from nanokern.ops import _triton
from nanokern.ops.backends import resolve_backend


def swiglu_ref(gu: torch.Tensor) -> torch.Tensor:
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


def check(gu: torch.Tensor) -> None:
    if gu.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"triton swiglu supports float32 and bfloat16, got {gu.dtype}")
    if gu.dim() < 1 or gu.shape[-1] % 2:
        raise ValueError(f"gate_up last dim must be even, got shape {tuple(gu.shape)}")


@torch.library.custom_op("nanokern::swiglu", mutates_args=(), schema="(Tensor gu) -> Tensor")
def swiglu_triton(gu):
    check(gu)
    return _triton.kernels("swiglu").swiglu(gu)


@swiglu_triton.register_fake
def _(gu):
    check(gu)
    return gu.new_empty((*gu.shape[:-1], gu.shape[-1] // 2))


def swiglu(gu: torch.Tensor, *, backend: str = "torch") -> torch.Tensor:
    """silu(gu[..., :I]) * gu[..., I:]; backend "torch", "triton" or "auto"."""
    if resolve_backend(backend, gu.device, "swiglu") == "triton":
        return swiglu_triton(gu)
    return swiglu_ref(gu)
