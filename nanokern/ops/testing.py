"""Bit-level comparison helpers for gather_cast results (used by the tests, usable elsewhere)."""
import torch

_INT = {4: torch.int32, 2: torch.int16}


def raw_bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float tensor, as non-negative int64 (16-bit patterns zero-extended)."""
    b = t.contiguous().view(_INT[t.element_size()]).to(torch.int64)
    return b & (0xFFFFFFFF if t.element_size() == 4 else 0xFFFF)


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, nan_payload: bool = True,
                     context: str = "") -> None:
    """Equal bit for bit; with nan_payload=False a NaN only has to meet a NaN (any payload)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (
        f"{context}: {actual.dtype}{tuple(actual.shape)} vs {expected.dtype}{tuple(expected.shape)}")
    a, e = raw_bits(actual), raw_bits(expected)
    differ = a != e
    if not nan_payload:
        a_nan, e_nan = torch.isnan(actual), torch.isnan(expected)
        differ = torch.where(a_nan & e_nan, False, differ)
    if differ.any():
        idx = differ.nonzero()[:5].tolist()
        width = 8 if actual.element_size() == 4 else 4
        shown = ", ".join(f"{tuple(i)}: 0x{int(a[tuple(i)]):0{width}x} != 0x{int(e[tuple(i)]):0{width}x}"
                          for i in idx)
        raise AssertionError(f"{context}: {int(differ.sum())} of {differ.numel()} elements differ "
                             f"(actual != expected) e.g. {shown}")
