import os
import shutil

# Triton reads TRITON_INTERPRET when a kernel is decorated: set it before anything imports one.
# No nvidia-smi means no usable GPU: run Triton kernels under the interpreter.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_generate_tests(metafunc):
    """Tests taking `device_backend` run for every gather_cast backend: the CPU ones always,
    the CUDA ones (marked gpu) only where a CUDA device is present."""
    if "device_backend" not in metafunc.fixturenames:
        return
    import pytest
    import torch

    no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    no_interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                        reason="Triton compiles for the GPU here (no interpreter)")
    params = [pytest.param(("cpu", b), id=f"cpu-{b}") for b in ("cpu", "torch")]
    params.append(pytest.param(("cpu", "triton"), id="cpu-triton", marks=no_interpreter))
    params += [pytest.param(("cuda", b), id=f"cuda-{b}", marks=(pytest.mark.gpu, no_cuda))
               for b in ("cuda", "triton", "torch")]
    metafunc.parametrize("device_backend", params)
