"""The registered op (schema, fake kernel, opcheck) and the Python entry point's errors."""
import pytest
import torch

from nanokern.ops import available_backends, gather_cast, resolve_backend

DEVICES = ["cpu", pytest.param("cuda", marks=(pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")))]


def test_schema():
    schema = str(torch.ops.nanokern.gather_cast.default._schema)
    assert schema == "nanokern::gather_cast(Tensor src, Tensor? rows, Tensor(a!) out) -> ()"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_rows", [True, False])
def test_opcheck(device, with_rows):
    src = torch.randn(6, 40, device=device)
    rows = torch.tensor([5, 0, 0, 3, 2, 1], device=device) if with_rows else None
    out = torch.empty(6, 40, dtype=torch.bfloat16, device=device)
    torch.library.opcheck(torch.ops.nanokern.gather_cast.default, (src, rows, out))


def test_fake_tensors_do_not_run_the_kernel():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        src, out = torch.empty(4, 8), torch.empty(4, 8, dtype=torch.float16)
        torch.ops.nanokern.gather_cast(src, None, out)
        assert out.shape == (4, 8)


def test_resolve_backend():
    assert resolve_backend("auto", "cpu") == "cpu"
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
