import os
import shutil

import pytest

# Triton reads TRITON_INTERPRET when a kernel is decorated. nanokern.ops._triton switches the
# interpreter on itself where there is no CUDA device; set here too, before anything (transformers
# does) imports triton, so that triton's own jitted helpers are interpreted as well.
# No nvidia-smi means no usable GPU: run Triton kernels under the interpreter.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """exports(name): nanokern.convert's HF export (dtype keep) of the Nanotron fixture `name`,
    made once per test session (tests copy it before changing anything)."""
    from fixtures_path import fixture

    from nanokern.convert import convert

    made = {}

    def get(name):
        if name not in made:
            dst = tmp_path_factory.mktemp("hf") / name
            convert(fixture("nanotron", name), dst, to="hf", dtype="keep", force=True, progress=False)
            made[name] = dst
        return made[name]

    return get


def pytest_generate_tests(metafunc):
    """Tests taking `device_backend` run for every gather_cast backend (cpu, torch, triton, cuda);
    tests taking `kernel_backend` for every backend of the fused ops (torch, triton). Each runs on
    the CPU always (Triton there only under its interpreter), and on CUDA (marked gpu) where a
    CUDA device is present. The parameter is (device, backend), its id "device-backend"."""
    names = {"device_backend": ("cpu", "torch", "triton", "cuda"), "kernel_backend": ("torch", "triton")}
    fixture = next((n for n in names if n in metafunc.fixturenames), None)
    if fixture is None:
        return
    import torch

    from nanokern.ops import _triton

    backends = names[fixture]
    no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    no_interpreter = pytest.mark.skipif(not _triton.interpreted(),
                                        reason="Triton compiles for the GPU here (no interpreter)")
    params = [pytest.param(("cpu", b), id=f"cpu-{b}", marks=no_interpreter if b == "triton" else ())
              for b in backends if b != "cuda"]
    params += [pytest.param(("cuda", b), id=f"cuda-{b}", marks=(pytest.mark.gpu, no_cuda))
               for b in backends if b != "cpu"]
    metafunc.parametrize(fixture, params)
