"""Loads the compiled ops (nanokern._C, nanokern._C_cuda): torch.ops.nanokern.gather_cast with its CPU
and CUDA kernels. Its fake kernel and checks live with the op, in gather_cast_op.py."""
import torch

CPU_ERROR: str | None = None
CUDA_ERROR: str | None = None

try:
    from nanokern import _C  # noqa: F401  (defines torch.ops.nanokern.*, CPU kernels)
except ImportError as e:  # not built: the "torch" (and "triton") backends still work
    CPU_ERROR = f"nanokern._C is not built ({e}); run `pip install --no-build-isolation -e .`"

if CPU_ERROR is None and torch.version.cuda:
    try:
        from nanokern import _C_cuda  # noqa: F401  (CUDA kernels for the same ops)
    except ImportError as e:
        CUDA_ERROR = f"nanokern._C_cuda is not built ({e})"
elif CPU_ERROR is not None:
    CUDA_ERROR = CPU_ERROR
else:
    CUDA_ERROR = "torch has no CUDA (torch.version.cuda is None): nanokern._C_cuda is not built"
