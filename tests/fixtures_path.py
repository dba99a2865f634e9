"""Where the real Nanotron fixtures live (../shared/fixtures beside the repo), and the rule for
their absence: skip with a reason outside CI, fail under CI=true."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / ".." / "shared" / "fixtures"
NANOTRON_FIXTURES = ["tp1_pp1", "tp1_pp1_fp32", "tp2_pp2", "tp2_pp1_tied"]
# Qwen2Config checkpoints (is_qwen2_config), README "Qwen2Config set": name -> (TP, PP).
QWEN2_FIXTURES = {"qwen2_dense_tp1_pp1": (1, 1), "qwen2_dense_tp1_pp1_bf16": (1, 1), "qwen2_bias_tp1_pp2": (1, 2),
                  "smollm3_nope_tp1_pp1_tied": (1, 1), "qwen2_swa_tp2_pp1": (2, 1), "qwen2_moe_tp1_pp2": (1, 2)}


def fixture(*parts: str) -> Path:
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        msg = f"fixture {p} is absent (expected ../shared/fixtures beside the repo)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return p
