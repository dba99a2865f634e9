"""The Triton kernels of the ops in nanokern/ops/ (one module per op, plus rounding.py, the bf16
rounding they share). Importing a module decorates its kernels, compiled or interpreted as the
environment says at that moment: load them through nanokern.ops._triton.kernels(name), which
switches the interpreter on where there is no CUDA device."""
