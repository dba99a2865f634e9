"""vllm_source: a running Nanotron job's weights as a vLLM `WeightSource` (vLLM's weight-transfer
API: `metadata` of `ParamMeta`, `iter_full()`, `iter_local()`), the HF tensors of the export.

Ownership: each HF tensor is owned by the TP group of the PP stage that holds it (global
ranks, in TP order), so each stage sends its own layers and nothing crosses PP. Layout: a
tensor that is a plain `torch.chunk` of the TP ranks' memory (vllm_plan.py) is declared
`Shard(dim)` over its owners and `iter_local()` builds each chunk on its rank with no
communication; any other tensor is declared replicated (`iter_local()` yields it whole,
gathered over TP where it needs other ranks' shards). vLLM is imported only when called.

With TP > 1, shard to shard (`Shard(d)`, each rank's chunk from its own memory): q/k/v_proj
weights (and Qwen2's q/k/v biases) d=0, o_proj d=1, gate/up_proj d=0 and down_proj d=1 (dense
MLP and MoE shared expert), the embedding and lm_head d=0 (the padded vocab, as exported by
default), and what every TP rank holds whole, cut at the chunk bounds: norms, the MoE router and
each expert's gate/up/down_proj d=0, the shared-expert gate ([1, hidden]) d=1. Replicated and
gathered over TP: the embedding and lm_head when vocab_size trims the padded vocab (their rows no
longer split at the shard bounds), and any tensor whose TP shards are not a plain chunk. dtype
"fp8": a quantized weight (and its weight_scale_inv) goes shard to shard, quantized on its
rank, when each chunk holds whole 128 x 128 blocks (e.g. q/o/gate/up/down at hidden 256, TP2),
else it is replicated and gathered (k/v there: 64-row chunks). With TP = 1 every tensor is
whole on its one owner.
"""

from __future__ import annotations

import functools

from nanokern.errors import NanokernError
from nanokern.live.export import setup, state_dict_order
from nanokern.live.guard import watching
from nanokern.live.vllm_iter import full_pass, local_pass, stage_plan
from nanokern.live.vllm_plan import SHARD, place


class Layout:
    """What the source declares and runs, vLLM-free: the plan placed over the grid, this rank's
    stage's tensors, and the two passes."""

    def __init__(self, s, placed, members: list[int], timeout: float | None):
        self.s, self.placed, self.timeout = s, placed, timeout
        tp = s.g.tp_size
        self.owners = {p.t.name: tuple(members[p.stage * tp + t] for t in range(tp)) for p in placed}
        self.mine = [p for p in placed if p.stage == s.g.pp]
        self.lp = stage_plan(s.lp)

    def rows(self) -> list[tuple]:
        """[(HF name, torch dtype, shape, owners, chunked dim or None)], identical on every rank."""
        return [(p.t.name, p.t.dtype.torch, tuple(p.t.shape), self.owners[p.t.name], p.dim if p.kind == SHARD else None)
                for p in self.placed]

    def kinds(self) -> dict[str, str]:
        """{HF name: "shard" | "local" | "gather"} (vllm_plan.py)."""
        return {p.t.name: p.kind for p in self.placed}

    def iter_full(self):
        return full_pass(self.s, self.lp, self.mine, self.timeout)

    def iter_local(self):
        return local_pass(self.s, self.lp, self.mine, self.timeout)


@functools.cache
def source_class():
    """vLLM's WeightSource subclass (vLLM imported here, on first use)."""
    try:
        from vllm.distributed.weight_transfer.base import ParamMeta, Shard, WeightSource
    except ImportError as e:
        raise NanokernError(f"live.vllm_source needs vLLM's weight-transfer API (vllm 0.33 or later): {e}") from None

    class NanotronWeightSource(WeightSource):
        """The HF tensors of a running Nanotron job (nanokern.live.vllm_source)."""

        def __init__(self, layout: Layout):
            self.layout = layout

        @functools.cached_property
        def metadata(self) -> list:
            return [ParamMeta(name, dtype, shape, owners=owners, placements=None if dim is None else (Shard(dim),))
                    for name, dtype, shape, owners, dim in self.layout.rows()]

        def iter_full(self):
            """Yield (HF name, whole tensor) for each name this rank owns, in metadata order.
            Collective over this rank's TP group (the owners of the same tensors)."""
            return self.layout.iter_full()

        def iter_local(self):
            """Yield (HF name, this rank's piece, shaped by the placements) for each name this
            rank owns, in metadata order: a Shard tensor's chunk, from this rank's memory alone."""
            return self.layout.iter_local()

    return NanotronWeightSource


def vllm_source(src, tp_group=None, pp_group=None, dtype: str = "bf16", *, parallel_context=None,
                vocab_size: int | None = None, backend: str = "auto", rope_interleaved: bool | None = None,
                hf_arch: str | None = None, fp8_scale: str = "float", timeout: float | None = 60.0):
    """A vLLM `WeightSource` over the job's shards: the tensors, names, order and bytes of
    `hf_weights` (`nanokern convert --to hf`). Collective over the TP x PP grid (the start
    handshake within `timeout` seconds, then metadata objects only; no tensor moves).

    src, tp_group / pp_group (or parallel_context=), dtype (fp8 too, with fp8_scale), vocab_size,
    rope_interleaved, hf_arch, backend: as hf_weights. The source's `metadata` is identical on every rank; each
    call of `iter_full()` / `iter_local()` is a fresh pass, collective over the TP group of the
    calling rank's stage (every rank of it iterates to the end, in the same order; a rank that
    stops or fails stops the others, and a wait longer than `timeout` between steps raises, as
    in hf_weights). Yielded tensors are the consumer's to keep.
    """
    cls = source_class()
    s = setup(src, tp_group, pp_group, parallel_context, dtype, vocab_size, "5GB", None, rope_interleaved, hf_arch, backend,
              call=("vllm_source", ()), timeout=60.0 if timeout is None else timeout, step_timeout=timeout, fp8_scale=fp8_scale)
    with watching(s.g.guard):
        members = s.g.all_gather_object(s.g.rank)
        return cls(Layout(s, place(state_dict_order(s.lp), s.lp.params, s.g.tp_size), members, timeout))
