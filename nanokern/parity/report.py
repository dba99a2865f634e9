"""Parity results: per-row metrics, limits and verdict; a text table, JSON and a PNG plot."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    name: str  # "layer 0", ..., "final_norm", "logits"
    metrics: dict  # test vs reference
    floor: dict | None = None  # low precision: HF in that dtype vs the same reference
    limits: dict = field(default_factory=dict)  # metric -> largest allowed value
    failed: list = field(default_factory=list)  # metrics over their limit

    @property
    def passed(self) -> bool:
        return not self.failed

    def check(self) -> None:
        self.failed = [m for m, lim in self.limits.items() if not (self.metrics.get(m, math.inf) <= lim)]
        if not self.metrics.get("finite", True):
            self.failed.append("finite")


@dataclass
class ParityReport:
    ckpt: str
    hf_dir: str | None
    dtype: str
    backend: str
    device: str
    numerics: str
    attn_implementation: str
    tokens_shape: list
    seed: int | None
    vocab_compared: int
    rows: list[Row]
    rule: str
    tp: int = 1
    pp: int = 1
    rope_interleaved: bool = False
    notes: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    direct: dict | None = None  # low precision: test vs HF run in the same dtype (information only)
    hf_class: str = ""  # the transformers class of the reference (e.g. Qwen2MoeForCausalLM)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def logits(self) -> Row:
        return self.rows[-1]

    def first_failure(self) -> Row | None:
        return next((r for r in self.rows if not r.passed), None)

    def to_dict(self) -> dict:
        d = asdict(self)
        for row, rd in zip(self.rows, d["rows"]):
            rd["passed"] = row.passed
        d["passed"] = self.passed
        return d

    def write_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, default=float)
            f.write("\n")

    # -- text ----------------------------------------------------------------------------------
    def table(self) -> str:
        low = self.dtype != "fp32"
        lines = [
            f"parity  {self.ckpt}  (TP={self.tp} PP={self.pp}, rope {'interleaved' if self.rope_interleaved else 'half-split'})",
            f"  vs transformers {self.hf_class or 'model'} {self.hf_dir or '(temporary export)'}  [{self.attn_implementation}]",
            f"  dtype {self.dtype}  backend {self.backend}  device {self.device}  numerics {self.numerics}  "
            f"tokens {'x'.join(map(str, self.tokens_shape))} (seed {self.seed})  vocab compared {self.vocab_compared}",
            f"  rule: {self.rule}",
            "",
        ]
        head = f"{'':12s} {'max|diff|':>10s} {'mean|diff|':>10s} {'rel L2':>9s} {'1-cos':>9s}"
        if low:
            head += f" {'floor max':>10s} {'floor L2':>9s}"
        head += f" {'KL':>9s} {'top-1':>11s}  verdict"
        lines.append(head)
        for r in self.rows:
            m = r.metrics
            s = f"{r.name:12s} {m['max_abs']:10.3e} {m['mean_abs']:10.3e} {m['rel_l2']:9.2e} {m['one_minus_cos']:9.2e}"
            if low:
                f = r.floor or {}
                s += f" {f.get('max_abs', float('nan')):10.3e} {f.get('rel_l2', float('nan')):9.2e}"
            if "kl" in m:
                s += f" {m['kl']:9.2e} {m['top1_agree']:>4d}/{m['top1_counted']:<4d}  "
            else:
                s += f" {'':9s} {'':11s}  "
            s += "ok" if r.passed else "FAIL (" + ", ".join(_why(r, k) for k in r.failed) + ")"
            lines.append(s)
        lg = self.logits.metrics
        lines.append("")
        lines.append(
            f"top-1 counted where the reference's top-1 margin > {lg['top1_margin']:.2e} "
            f"({lg['top1_counted']} of {lg['top1_positions']} positions)"
        )
        if self.direct:
            lines.append(
                f"{self.dtype} native vs {self.dtype} transformers (information): logits max|diff| "
                f"{self.direct['max_abs']:.3e}, rel L2 {self.direct['rel_l2']:.2e}"
            )
        for n in self.notes:
            lines.append(f"note: {n}")
        bad = self.first_failure()
        lines.append("PASS" if self.passed else f"FAIL (first failing row: {bad.name})")
        return "\n".join(lines)

    # -- plot ----------------------------------------------------------------------------------
    def plot(self, path: str | os.PathLike) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [r.name.replace("layer ", "L") for r in self.rows]
        x = list(range(len(self.rows)))
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(x) + 3), 4))
        tiny = 1e-12
        for key, label, style in (("max_abs", "max |diff|", "o-"), ("rel_l2", "relative L2", "s-")):
            ax.plot(x, [max(r.metrics[key], tiny) for r in self.rows], style, label=f"{label} ({self.dtype} native)")
            if any(r.floor for r in self.rows):
                ax.plot(x, [max((r.floor or {}).get(key, float("nan")), tiny) for r in self.rows], style[0] + "--",
                        alpha=0.6, label=f"{label} floor (transformers {self.dtype})")
        lim = [r.limits.get("max_abs") for r in self.rows]
        if any(v is not None for v in lim):
            ax.plot(x, [v if v is not None else float("nan") for v in lim], "k:", label="max |diff| limit")
        bad = [i for i, r in enumerate(self.rows) if not r.passed]
        if bad:
            ax.plot(bad, [max(self.rows[i].metrics["max_abs"], tiny) for i in bad], "rx", markersize=12, label="fails")
        ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=45, ha="right")
        ax.set_ylabel("error vs transformers fp32")
        ax.set_title(f"parity {display_name(self.ckpt)}: {self.dtype}, {self.backend} "
                     f"-> {'PASS' if self.passed else 'FAIL'}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def display_name(step_dir: str) -> str:
    """'tp2_pp2/0' for a checkpoints_path/step folder, else the folder name."""
    p = os.path.normpath(step_dir)
    base = os.path.basename(p)
    return f"{os.path.basename(os.path.dirname(p))}/{base}" if base.isdigit() else base


def _why(r: Row, k: str) -> str:
    if k == "finite":
        return "non-finite values"
    return f"{k} {r.metrics.get(k, float('nan')):.2e} > {r.limits[k]:.2e}"
