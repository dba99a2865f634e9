"""Choosing the next token from the last position's logits: greedy (argmax), or temperature and
nucleus (top-p) sampling with a seeded generator. As transformers' TopPLogitsWarper: the
smallest set of most likely tokens whose probabilities sum to at least p is kept (the top token
always), the rest get probability 0."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sampler:
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {self.temperature}); use greedy decoding instead")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (got {self.top_p})")
        self._gen: torch.Generator | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] -> token ids [B]."""
        if self.greedy:
            return logits.argmax(-1)
        if self._gen is None:
            self._gen = torch.Generator(device=logits.device).manual_seed(self.seed)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1:
            p, idx = probs.sort(-1, descending=True)
            drop = p.cumsum(-1) - p >= self.top_p  # the mass before a token already reaches p
            p = p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, idx, p)
        return torch.multinomial(probs, 1, generator=self._gen)[:, 0]
