"""Small things: sizes in human units (decimal, as the progress bar), no progress bar when stderr
is not a terminal, one summary note for a comparison across dtypes."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from fixtures_path import fixture

from nanokern.cli import cli


@pytest.mark.parametrize("n, text", [(0, "0 B"), (999, "999 B"), (1000, "1.00 kB"), (419_775, "420 kB"),
                                     (20_500_000, "20.5 MB"), (1_073_741_824, "1.07 GB"), (4 * 10**12, "4.00 TB")])
def test_human_bytes(n, text):
    from nanokern.io.units import human_bytes

    assert human_bytes(n) == text


def test_small_conversion_sizes_are_not_zero_gb(tmp_path):
    ck = fixture("nanotron", "tp2_pp2")
    for args in (["--dry-run"], ["-q"]):
        r = CliRunner().invoke(cli, ["convert", str(ck), str(tmp_path / f"o{len(args[0])}"), *args])
        assert r.exit_code == 0, r.output
        assert "0.000 GB" not in r.output and " kB" in r.output, r.output


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capfd):
    from nanokern.convert import convert

    convert(fixture("nanotron", "tp2_pp2"), tmp_path / "o", backend="cpu", progress=True)
    out, err = capfd.readouterr()
    assert err == "" and out == ""


def test_progress_bar_units_are_decimal(tmp_path, monkeypatch):
    """On a terminal the bar counts in the same units as the lines (GB = 10^9 bytes)."""
    import io
    import sys

    from nanokern.convert import convert

    class Tty(io.StringIO):
        def isatty(self):
            return True

    seen = {}
    import tqdm.auto

    real = tqdm.auto.tqdm

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **{**k, "file": Tty()})

    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.setattr(tqdm.auto, "tqdm", spy)
    convert(fixture("nanotron", "tp2_pp2"), tmp_path / "o", backend="cpu", progress=True)
    assert seen and seen["unit_divisor"] == 1000 and seen["unit"] == "B"


def test_verify_across_dtypes_one_note(tmp_path):
    from nanokern.convert import convert
    from nanokern.verify import verify

    ck = fixture("nanotron", "tp2_pp2")
    convert(ck, tmp_path / "hf", dtype="fp32", backend="cpu", progress=False)  # the fixture is bf16
    rep = verify(tmp_path / "hf", ck)
    assert rep.ok, rep.problems
    dtype_notes = [n for n in rep.notes if "dtype" in n]
    assert len(dtype_notes) == 1, rep.notes
    assert str(rep.tensors) in dtype_notes[0] and "bfloat16" in dtype_notes[0]
