"""Forward-pass parity: a forward over Nanotron's sharded tensors as stored (every family:
LLaMA, Qwen2, SmolLM3, Qwen2-MoE), compared layer by layer with transformers (run_parity),
with Nanotron's own logits (reproduce_logits), and the fused kernels against transformers'
functions (check_kernels).

Importing this package imports neither transformers nor the Triton kernels.
"""

from nanokern.parity.check import LogitsReport, make_tokens, reproduce_logits, run_parity
from nanokern.parity.kernel_check import KernelCheck, check_kernels
from nanokern.parity.native import NativeModel
from nanokern.parity.report import ParityReport, Row

__all__ = [
    "run_parity", "reproduce_logits", "check_kernels", "make_tokens", "NativeModel", "ParityReport", "Row",
    "LogitsReport", "KernelCheck",
]
