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


# Slow tests of files that do not import pytest (a decorator there would need the import too),
# marked here: each a long run whose behaviour the fast loop covers more cheaply elsewhere.
SLOW_ELSEWHERE = {
    # 7-13 s each, a watch exporting steps with a parity check; the hooks' logic stays in the
    # loop (test_parity_dtype_is_the_exported_one, test_failing_check_marks_suspect_...)
    "tests/test_watch_hooks.py::test_check_in_the_default_export_dtype",
    "tests/test_watch_hooks.py::test_check_and_exec_after_each_export",
    # ~8 s, a watch beside a writer; a running watch stays in the loop:
    # test_watch_safety.py::test_b_a_running_watch_sees_a_step_saved_again
    "tests/test_watch_run.py::test_watch_exports_each_step_once_never_a_partial_one",
    # ~6 s of repeated kill -9; a kill's leftovers: test_a_lock_left_by_a_kill_after_the_rename...
    "tests/test_watch_options.py::test_kill_9_at_any_moment_then_the_same_command",
    # 4-6 s, two ranks
    "tests/test_live_safety.py::test_save_hf_cleans_up_its_own_partials_and_refuses_different_out_dirs",
    # ~25 s, four ranks
    "tests/test_live_faults.py::test_one_rank_stopping_stops_every_rank",
}


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("[")[0] in SLOW_ELSEWHERE:
            item.add_marker(pytest.mark.slow)
