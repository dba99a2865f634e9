"""The registered ops (schemas, fake kernels, opcheck), the one backend resolver, and the Python
entry point's errors."""
import subprocess
import sys

import pytest
import torch

from nanokern.ops import available_backends, gather_cast, resolve_backend

DEVICES = ["cpu", pytest.param("cuda", marks=(pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")))]


def test_schema():
    schema = str(torch.ops.nanokern.gather_cast.default._schema)
    assert schema == "nanokern::gather_cast(Tensor src, Tensor? rows, Tensor(a!) out) -> ()"


def _gather_args(device, with_rows):
    src = torch.randn(6, 40, device=device)
    rows = torch.tensor([5, 0, 0, 3, 2, 1], device=device) if with_rows else None
    return src, rows, torch.empty(6, 40, dtype=torch.bfloat16, device=device)


def _op_cases(device):
    """(name, op, args) for every registered op: the C++ gather_cast and the Triton ops."""
    from nanokern.ops import _extension, attention, decode_attention, gather_cast_op, rms_norm, rope, swiglu

    g = torch.Generator().manual_seed(0)

    def r(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    cos, sin = rope.rope_tables(16, 16, 10000.0, device=device)
    pos = torch.arange(8, device=device).repeat(2)
    q, k = r(2, 9, 4, 16), r(2, 9, 2, 16)
    dq, dk = r(2, 1, 4, 16), r(2, 12, 2, 16)
    kpos, qpos = torch.arange(12, device=device), torch.tensor([11], device=device)
    cases = [
        ("gather_cast_triton", gather_cast_op.gather_cast_triton, _gather_args(device, True)),
        ("gather_cast_triton no rows", gather_cast_op.gather_cast_triton, _gather_args(device, False)),
        ("rms_norm", rms_norm.rms_norm_triton, (r(5, 64), r(64), 1e-5, False)),
        ("rms_norm bf16 fused", rms_norm.rms_norm_triton,
         (r(3, 4, 32, dtype=torch.bfloat16), r(32, dtype=torch.bfloat16), 1e-6, True)),
        ("rope", rope.rope_triton, (r(16, 8 * 16), pos, cos, sin, 6, 16, False, False)),
        ("rope interleaved bf16", rope.rope_triton,
         (r(16, 8 * 16, dtype=torch.bfloat16), pos, cos, sin, 6, 16, True, True)),
        ("swiglu", swiglu.swiglu_triton, (r(7, 2 * 48),)),
        ("attention", attention.attention_triton, (q, k, r(2, 9, 2, 16), True, None)),
        ("attention window", attention.attention_triton, (q, k, r(2, 9, 2, 16), True, 3)),
        ("decode_attention", decode_attention.decode_attention_triton, (dq, dk, r(2, 12, 2, 16), qpos, kpos, None, None)),
        ("decode_attention window k_min", decode_attention.decode_attention_triton,
         (dq, dk, r(2, 12, 2, 16), qpos, kpos, 4, torch.tensor([0, 3], device=device))),
    ]
    if _extension.CPU_ERROR is None:
        for with_rows in (True, False):
            cases.append((f"gather_cast rows={with_rows}", torch.ops.nanokern.gather_cast.default,
                          _gather_args(device, with_rows)))
    return cases


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_registered_op(device):
    """torch.library.opcheck on every registered op: schema (mutation and aliasing as declared),
    autograd registration, the fake kernel against the real one, AOT dispatch."""
    from nanokern.ops import _triton

    if device == "cpu" and not _triton.interpreted():
        pytest.skip("Triton compiles for the GPU here: its ops take CUDA tensors")
    cases = _op_cases(device)
    assert len(cases) >= 11
    for name, op, args in cases:
        try:
            torch.library.opcheck(op, args)
        except Exception as e:  # noqa: BLE001 - name the op that failed
            raise AssertionError(f"opcheck of {name}: {e}") from e


def test_fakes_check_shapes():
    """The fake kernels refuse what the real ones refuse (shapes, dtypes, windows), so a traced
    graph fails where eager would. Fake tensors: no kernel runs, no data is read."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from nanokern.ops import _extension, attention, decode_attention, gather_cast_op, rms_norm, rope, swiglu

    long = torch.long
    with FakeTensorMode():
        src, out = torch.empty(4, 8), torch.empty(4, 7, dtype=torch.float16)
        ops = [gather_cast_op.gather_cast_triton]
        if _extension.CPU_ERROR is None:
            ops.append(torch.ops.nanokern.gather_cast)
        for op in ops:
            with pytest.raises(ValueError, match="same shape"):
                op(src, None, out)
            with pytest.raises(ValueError, match="int64"):
                op(src, torch.zeros(4, dtype=torch.int32), torch.empty(4, 8))
            op(src, None, torch.empty(4, 8, dtype=torch.float16))  # fits: no error
        with pytest.raises(ValueError, match="hidden size"):
            rms_norm.rms_norm_triton(torch.empty(3, 64), torch.empty(32), 1e-5, False)
        with pytest.raises(TypeError, match="float32 and bfloat16"):
            swiglu.swiglu_triton(torch.empty(3, 64, dtype=torch.float16))
        with pytest.raises(ValueError, match="even"):
            swiglu.swiglu_triton(torch.empty(3, 63))
        assert swiglu.swiglu_triton(torch.empty(3, 5, 64)).shape == (3, 5, 32)
        cos = torch.empty(16, 8)
        with pytest.raises(ValueError, match="power-of-two"):
            rope.rope_triton(torch.empty(4, 96), torch.empty(4, dtype=long), cos, cos, 4, 12, False, False)
        with pytest.raises(ValueError, match="n_rot"):
            rope.rope_triton(torch.empty(4, 32), torch.empty(4, dtype=long), cos, cos, 4, 16, False, False)
        got = rope.rope_triton(torch.empty(4, 96), torch.empty(4, dtype=long), cos, cos, 5, 16, False, False)
        assert got.shape == (4, 5, 16)
        q = torch.empty(1, 8, 4, 16)
        with pytest.raises(ValueError, match="multiple"):
            attention.attention_triton(q, torch.empty(1, 8, 3, 16), torch.empty(1, 8, 3, 16), True, None)
        with pytest.raises(ValueError, match="window"):
            attention.attention_triton(q, q, q, False, 4)
        kv = torch.empty(1, 10, 2, 16)
        with pytest.raises(ValueError, match="do not fit"):
            decode_attention.decode_attention_triton(q, kv, kv, torch.empty(3, dtype=long), torch.empty(10, dtype=long),
                                                     None, None)
        with pytest.raises(ValueError, match="k_min"):
            decode_attention.decode_attention_triton(q, kv, kv, torch.empty(8, dtype=long), torch.empty(10, dtype=long),
                                                     None, torch.empty(2, dtype=long))


def test_resolve_backend():
    assert resolve_backend("auto", "cpu") == ("cpu" if "cpu" in available_backends("cpu") else "torch")
    assert resolve_backend("torch", "cpu") == "torch"
    assert available_backends("cpu")[-1] != "cpu"
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        resolve_backend("fast", "cpu")
    with pytest.raises(ValueError, match="'cuda' is not available for cpu tensors"):
        resolve_backend("cuda", "cpu")
    with pytest.raises(ValueError, match="unsupported device"):
        resolve_backend("auto", "meta")
    if not torch.cuda.is_available():
        assert available_backends("cuda") == []
        with pytest.raises(ValueError, match="no backend"):
            resolve_backend("auto", "cuda")


@pytest.mark.parametrize("op", ["rms_norm", "rope", "swiglu", "attention", "decode_attention"])
def test_resolve_backend_of_the_fused_ops(op):
    """The fused ops have torch and triton only; "auto" is torch on the CPU (the Triton kernels
    run there only interpreted), triton on a GPU."""
    assert resolve_backend("auto", "cpu", op) == "torch"
    assert resolve_backend("torch", torch.device("cpu"), op) == "torch"
    with pytest.raises(ValueError, match=f"{op}: unknown backend 'cpu'"):
        resolve_backend("cpu", "cpu", op)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        resolve_backend("cuda", "cuda", op)
    if torch.cuda.is_available():
        assert resolve_backend("auto", "cuda:0", op) == "triton"
        assert available_backends("cuda", op) == ["triton", "torch"]
    else:
        assert resolve_backend("triton", "cpu", op) == "triton"  # interpreted
        assert available_backends("cpu", op) == ["torch", "triton"]
    with pytest.raises(ValueError, match="unknown op"):
        resolve_backend("auto", "cpu", "matmul")


IMPORTS = """
import sys
import nanokern.ops, nanokern.ops.backends
from nanokern.ops import available_backends, resolve_backend
from nanokern.ops import host
host.ERROR = None  # as where the torch-free binding is built
assert resolve_backend("auto", "cpu") == "cpu" and resolve_backend("cpu", "cpu") == "cpu"
assert resolve_backend("torch", "cpu") == "torch" and resolve_backend("auto", "cpu", "rope") == "torch"
assert "torch" not in sys.modules, "torch was imported"
from nanokern.ops import gather_cast
assert callable(gather_cast) and "torch" in sys.modules
print("ok")
"""


def test_package_and_resolver_do_not_import_torch():
    r = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton", "nope"])
@pytest.mark.parametrize("case,match", [
    ("cols", "columns"), ("rows_len", "entries"), ("rows_range", "src has 4 rows"),
    ("rows_negative", "src has 4 rows"), ("rows_int32", "int64"), ("src_3d", "2-D"),
    ("inner_stride", "stride"), ("int_dtype", "dtype"), ("identity_shape", "same shape"),
])
def test_bad_arguments_raise_value_error(backend, case, match):
    src, out = torch.randn(4, 6), torch.empty(3, 6, dtype=torch.bfloat16)
    rows = torch.tensor([0, 1, 3])
    if case == "cols":
        out = torch.empty(3, 5)
    elif case == "rows_len":
        rows = torch.tensor([0, 1])
    elif case == "rows_range":
        rows = torch.tensor([0, 4, 1])
    elif case == "rows_negative":
        rows = torch.tensor([0, -1, 1])
    elif case == "rows_int32":
        rows = rows.to(torch.int32)
    elif case == "src_3d":
        src = src.view(4, 3, 2)
    elif case == "inner_stride":
        src = torch.randn(6, 4).t()
    elif case == "int_dtype":
        out = torch.empty(3, 6, dtype=torch.int16)
    elif case == "identity_shape":
        rows = None
    with pytest.raises(ValueError, match=match):
        gather_cast(src, rows, out, backend=backend)


def test_compiled_op_checks_too():
    """Called directly (bypassing the Python checks) the op still refuses bad input."""
    src, out = torch.randn(4, 6), torch.empty(3, 6)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.nanokern.gather_cast(src, torch.tensor([0, 9, 1]), out)
    with pytest.raises(RuntimeError, match="columns"):
        torch.ops.nanokern.gather_cast(src, torch.tensor([0, 1, 2]), torch.empty(3, 5))
