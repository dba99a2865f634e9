"""The MoE block's routing and experts (Nanotron's Qwen2MoELayer, docs/nanotron-format.md §11.6).

Plain torch ops on every backend: there is no Triton kernel for routing or expert dispatch here
(the expert activation goes through the SwiGLU dispatch, so the triton backend runs its SwiGLU
kernel). The shared expert is a TP-sharded dense MLP and runs in the parity forward itself.

- Router: logits = x.float() @ W_r.T with the float32 router weight; softmax over ALL experts
  in float32, then top-k; the top-k weights are NOT renormalised and stay float32.
- Experts (input-major, as stored): h = silu(x @ W_gu[:, :I]) * (x @ W_gu[:, I:]), y = h @ W_d, in
  the model dtype; token output sum_k w_k * y_k accumulated in float32, cast once to x's dtype.
"""

from __future__ import annotations

import torch

from nanokern.ops.swiglu import swiglu


def route(x: torch.Tensor, router: torch.Tensor, top_k: int, renormalize: bool = False):
    """(weights [T, k] float32, expert ids [T, k]) of each token. renormalize divides the top-k
    weights by their sum (HF's norm_topk_prob): wrong for Nanotron, kept for negative controls."""
    probs = torch.softmax(x.to(torch.float32) @ router.to(torch.float32).T, dim=-1, dtype=torch.float32)
    w, idx = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w, idx


def experts(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor, *,
            backend: str = "torch") -> torch.Tensor:
    """sum_k weights[t, k] * expert_{idx[t, k]}(x[t]) for x [T, H]; gate_up [E, H, 2I], down [E, I, H]."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(gate_up.shape[0]):
        tok, slot = torch.nonzero(idx == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        h = swiglu(x[tok] @ gate_up[e], backend=backend)
        y = h @ down[e]
        out.index_add_(0, tok, y.to(torch.float32) * weights[tok, slot][:, None])
    return out.to(x.dtype)
