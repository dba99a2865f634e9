"""Where the real Nanotron fixtures live (../shared/fixtures beside the repo), and the rule for
their absence: skip with a reason outside CI, fail under CI=true."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / ".." / "shared" / "fixtures"
NANOTRON_FIXTURES = ["tp1_pp1", "tp1_pp1_fp32", "tp2_pp2", "tp2_pp1_tied"]


def fixture(*parts: str) -> Path:
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        msg = f"fixture {p} is absent (expected ../shared/fixtures beside the repo)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return p
