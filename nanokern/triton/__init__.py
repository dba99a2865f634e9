"""Triton kernels. Importing a kernel module decorates its kernels: set TRITON_INTERPRET=1 first
to run them on CPU tensors (nanokern.ops does that itself when there is no CUDA device)."""
