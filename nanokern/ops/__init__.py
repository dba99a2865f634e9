"""The kernels, one home per op: its torch reference (the oracle), its dispatch over backends and
its registered torch.library ops (nanokern/ops/triton/ holds the Triton kernels).

- gather_cast_op.py: gather_cast, the one kernel of a conversion (backends torch, cpu, cuda, triton);
  host.py: the same C++ kernel on numpy buffers, without torch (what a CPU conversion runs)
- fp8_quant.py: gather_quant_fp8, FP8 128 x 128-block quantization fused into the gather (same
  four backends; host.gather_quant_fp8 without torch)
- rms_norm.py, rope.py, swiglu.py, attention.py: the parity forward's fused ops (torch, triton)
- decode_attention.py: attention of new queries over a KV cache (the decoder; torch, triton)
- backends.py: the one backend resolver; _triton.py: the one Triton loader and tile switch

`from nanokern.ops import gather_cast, resolve_backend, available_backends`. Importing this
package does not import torch: gather_cast is loaded (with torch) on first use.
"""
from nanokern.ops.backends import available_backends, resolve_backend

__all__ = ["gather_cast", "available_backends", "resolve_backend"]


def __getattr__(name):
    if name == "gather_cast":
        from nanokern.ops.gather_cast_op import gather_cast

        globals()["gather_cast"] = gather_cast
        return gather_cast
    raise AttributeError(f"module 'nanokern.ops' has no attribute {name!r}")
