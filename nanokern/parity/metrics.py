"""Error metrics between a reference tensor and a test tensor (both cast to fp64 for the math).

- max_abs, mean_abs: of |test - ref|
- rel_l2: ||test - ref|| / ||ref||
- cosine: the WORST (smallest) cosine similarity over positions (vectors along the last dim)
- for logits only: kl = mean over positions of KL(softmax(ref) || softmax(test)), kl_max the worst
  position; top-1 agreement counted only where the reference's top-1 logit beats its top-2 by
  more than `margin` (a position whose top two are closer than the noise cannot be judged).
"""

from __future__ import annotations

import torch

ERROR_METRICS = ("max_abs", "mean_abs", "rel_l2", "one_minus_cos")
LOGIT_ERROR_METRICS = ERROR_METRICS + ("kl", "kl_max", "top1_mismatch")


def compare(ref: torch.Tensor, test: torch.Tensor) -> dict:
    if ref.shape != test.shape:
        raise ValueError(f"shape mismatch: reference {tuple(ref.shape)}, test {tuple(test.shape)}")
    r = ref.detach().to("cpu", torch.float64)
    t = test.detach().to("cpu", torch.float64)
    diff = (t - r).abs()
    rn = r.norm()
    r2 = r.reshape(-1, r.shape[-1])
    t2 = t.reshape(-1, t.shape[-1])
    cos = torch.nn.functional.cosine_similarity(r2, t2, dim=-1, eps=1e-30)
    cos_min = float(cos.min())
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "rel_l2": float((t - r).norm() / rn) if rn > 0 else float((t - r).norm()),
        "cosine": cos_min,
        "one_minus_cos": max(0.0, 1.0 - cos_min),
        "scale": float(r.abs().max()),
        "finite": bool(torch.isfinite(t).all()),
    }


def top2_margin(ref: torch.Tensor) -> torch.Tensor:
    top = ref.detach().to("cpu", torch.float64).reshape(-1, ref.shape[-1]).topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def compare_logits(ref: torch.Tensor, test: torch.Tensor, margin: float) -> dict:
    out = compare(ref, test)
    r = ref.detach().to("cpu", torch.float64).reshape(-1, ref.shape[-1])
    t = test.detach().to("cpu", torch.float64).reshape(-1, test.shape[-1])
    lr, lt = r.log_softmax(-1), t.log_softmax(-1)
    kl = (lr.exp() * (lr - lt)).sum(-1)
    counted = top2_margin(ref) > margin
    agree = (r.argmax(-1) == t.argmax(-1)) & counted
    n = int(counted.sum())
    out.update({
        "kl": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1_margin": float(margin),
        "top1_counted": n,
        "top1_positions": int(r.shape[0]),
        "top1_agree": int(agree.sum()),
        "top1": float(agree.sum()) / n if n else 1.0,
        "top1_mismatch": (n - int(agree.sum())) / n if n else 0.0,
    })
    return out
