"""The decode path's pieces against their torch references: attention of new queries over a KV
cache (Triton kernel vs SDPA), RoPE at an offset (the parity forward's kernel at absolute
positions), the cache itself (full and rolling window), sampling. Kernel tests run for every
backend on every device (`kernel_backend`); small shapes: on the CPU the Triton kernels run
under the interpreter. Inputs are made on the CPU and moved to the device under test; the
references run on the CPU."""

from __future__ import annotations

import pytest
import torch

from nanokern.generate.cache import LayerCache
from nanokern.generate.sampling import Sampler
from nanokern.ops import attention as A
from nanokern.ops import decode_attention as DA
from nanokern.ops import rope as R

CASES = [  # B, T, nq, nkv, d, L, window
    (2, 1, 4, 2, 16, 9, None),
    (2, 1, 6, 2, 16, 6, 6),  # 3 q heads per kv head (a non-power-of-two group), a full ring
    (1, 1, 4, 4, 32, 1, None),  # the first decode step of a 0-token cache + itself
    (1, 3, 4, 1, 16, 20, 5),  # a chunk of 3 queries
    (2, 1, 4, 2, 16, 40, None),  # more keys than one interpreter block? (block = next pow2)
]


def _on(device, *ts):
    return tuple(t.to(device) for t in ts)


def _case(B, T, nq, nkv, d, L, window, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, nq, d, generator=g).to(dtype)
    # views into a longer buffer, as the cache hands them over
    k = torch.randn(B, L + 3, nkv, d, generator=g).to(dtype)[:, :L]
    v = torch.randn(B, L + 3, nkv, d, generator=g).to(dtype)[:, :L]
    k_pos = torch.randperm(L, generator=g)  # ring order
    if L > 2:
        k_pos[1] = -1  # an empty slot
    q_pos = torch.arange(L - T, L)
    return q, k, v, q_pos, k_pos


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_decode_attention_vs_reference(kernel_backend, case, dtype):
    device, backend = kernel_backend
    q, k, v, qp, kp = _case(*case, dtype)
    window = case[-1]
    got = DA.decode_attention(*_on(device, q, k, v, qp, kp), window=window, backend=backend).cpu()
    ref = DA.decode_attention_ref(q, k, v, qp, kp, window)
    assert got.shape == ref.shape and got.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, rtol=0, atol=2e-6)  # fp32 sums in another order
    else:  # one rounding of the fp32 result: at most one bf16 step apart (measured: equal)
        diff = (got.float() - ref.float()).abs()
        assert float((diff / ref.float().abs().clamp_min(1e-3)).max()) <= 2 ** -7


def test_decode_attention_window_is_w_keys(kernel_backend):
    """Query at position p sees exactly positions p-w+1..p: a value of 1 on each visible slot, and
    the weights sum to 1, so the output is 1 only over the visible set; off by one it is not."""
    device, backend = kernel_backend
    L, w = 12, 5
    q, k, kp = _on(device, torch.zeros(1, 1, 1, 16), torch.zeros(1, L, 1, 16), torch.arange(L))
    for p in (5, 8, 11):  # p >= w: one key more than the window exists
        v = torch.zeros(1, L, 1, 16)
        v[0, p - w + 1:p + 1] = 1.0
        v, qp = _on(device, v, torch.tensor([p]))
        o = DA.decode_attention(q, k, v, qp, kp, window=w, backend=backend)
        assert torch.allclose(o, torch.ones_like(o)), p
        o2 = DA.decode_attention(q, k, v, qp, kp, window=w + 1, backend=backend)  # a wider window sees a 0 value
        assert not torch.allclose(o2, torch.ones_like(o2))


def test_decode_mask_matches_the_forward_mask():
    """Over a full cache in order, the decode mask of every query is its row of the forward's
    causal window mask (nanokern/ops/attention.attention_mask)."""
    S = 10
    for w in (None, 1, 3, 10):
        want = A.attention_mask(S, True, w)
        got = DA.decode_mask(torch.arange(S), torch.arange(S), w)
        assert torch.equal(got, want)


@pytest.mark.parametrize("numerics", ["hf", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rope_at_an_offset_bit_exact(kernel_backend, dtype, numerics):
    """A decode step's RoPE: one token per sequence at position start (and a chunk of 3 at
    start..start+2): every backend equals the torch reference bit for bit."""
    device, backend = kernel_backend
    d, nq, nkv = 16, 4, 2
    cos, sin = R.rope_tables(1100, d, 10000.0, dtype)
    g = torch.Generator().manual_seed(1)

    def rope(qkv, pos, interleaved):
        return R.rope(*_on(device, qkv, pos, cos, sin), n_rot=nq + nkv, head_dim=d, interleaved=interleaved,
                      backend=backend, numerics=numerics).cpu()

    for start, T, B in ((0, 1, 2), (17, 1, 2), (1000, 1, 1), (31, 3, 2)):
        qkv = torch.randn(B * T, (nq + 2 * nkv) * d, generator=g).to(dtype)
        pos = torch.arange(start, start + T).repeat(B)
        for interleaved in (False, True):
            ref = R.rope_ref(qkv, pos, cos, sin, nq + nkv, d, interleaved, numerics)
            assert torch.equal(rope(qkv, pos, interleaved), ref), (start, T, interleaved)
    # and the offset matters: position 17 is not position 0
    qkv = torch.randn(1, (nq + 2 * nkv) * d, generator=g).to(dtype)
    assert not torch.equal(rope(qkv, torch.tensor([17]), False), rope(qkv, torch.tensor([0]), False))


def test_rope_one_token_equals_the_same_position_in_a_sequence():
    """RoPE of one token at position p equals row p of RoPE over positions 0..p (the forward)."""
    d, n = 16, 3
    cos, sin = R.rope_tables(64, d, 10000.0)
    x = torch.randn(40, n * d)
    full = R.rope_ref(x, torch.arange(40), cos, sin, n, d, False)
    for p in (0, 9, 39):
        one = R.rope_ref(x[p:p + 1], torch.tensor([p]), cos, sin, n, d, False)
        assert torch.equal(one[0], full[p])


def test_full_cache_positions_and_fault():
    c = LayerCache(1, 1, 4, capacity=8, window=None, dtype=torch.float32, device="cpu")
    k = torch.arange(3.0).reshape(1, 3, 1, 1).expand(1, 3, 1, 4)
    c.store(k, k, torch.arange(3))
    kk, vv, kp = c.attend(torch.full((1, 1, 1, 4), 7.0), torch.full((1, 1, 1, 4), 7.0), torch.tensor([3]))
    assert kp is None and kk[0, :, 0, 0].tolist() == [0, 1, 2, 7]  # one query past every slot: no mask
    kk, _, kp = c.attend(torch.full((1, 2, 1, 4), 8.0), torch.full((1, 2, 1, 4), 8.0), torch.tensor([4, 5]))
    assert kp.tolist() == [0, 1, 2, 3, 4, 5] and kk[0, :, 0, 0].tolist() == [0, 1, 2, 7, 8, 8]  # a chunk: masked
    bad = LayerCache(1, 1, 4, capacity=8, window=None, dtype=torch.float32, device="cpu", fault="cache_slot")
    bad.store(k, k, torch.arange(3))
    kk, _, kp = bad.attend(torch.full((1, 1, 1, 4), 7.0), torch.full((1, 1, 1, 4), 7.0), torch.tensor([3]))
    assert kk[0, :, 0, 0].tolist() == [0, 1, 2, 0]  # its own key went one slot too far


def test_rolling_cache_keeps_the_last_w_positions():
    w = 4
    c = LayerCache(1, 1, 2, capacity=100, window=w, dtype=torch.float32, device="cpu")
    val = lambda ps: torch.tensor(ps, dtype=torch.float32).reshape(1, -1, 1, 1).expand(1, len(ps), 1, 2)  # noqa: E731
    c.store(val(list(range(6))), val(list(range(6))), torch.arange(6))  # a prefill longer than the window
    assert sorted(c.pos.tolist()) == [2, 3, 4, 5]
    assert all(float(c.k[0, s, 0, 0]) == p for s, p in enumerate(c.pos.tolist()))
    kk, _, kp = c.attend(val([6]), val([6]), torch.tensor([6]))  # one token: evicts position 2
    assert sorted(kp.tolist()) == [3, 4, 5, 6] and sorted(kk[0, :, 0, 0].tolist()) == [3, 4, 5, 6]
    kk, _, kp = c.attend(val([7, 8]), val([7, 8]), torch.tensor([7, 8]))  # a chunk: sees the ring before its update
    assert sorted(kp.tolist()) == [3, 4, 5, 6, 7, 8]
    assert sorted(c.pos.tolist()) == [5, 6, 7, 8]


def test_sampling():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    assert Sampler()(logits).tolist() == [1, 0]
    # top-p so small that only the top token is left: sampling equals greedy whatever the seed
    assert all(Sampler(greedy=False, temperature=1.0, top_p=1e-6, seed=s)(logits).tolist() == [1, 0] for s in range(5))
    draws = lambda seed: [Sampler(greedy=False, temperature=2.0, seed=seed)(logits.repeat(50, 1)).tolist()]  # noqa: E731
    assert draws(3) == draws(3) and draws(3) != draws(4)
    # nucleus: p = 0.6 keeps tokens 1 and 3 (0.39 + 0.35 >= 0.6), never 0 or 2
    picks = set(Sampler(greedy=False, top_p=0.6, seed=0)(logits[:1].repeat(400, 1)).tolist())
    assert picks == {1, 3}
    with pytest.raises(ValueError):
        Sampler(greedy=False, temperature=0.0)


def test_ring_longer_than_the_generation_is_cut_to_it_and_attends_over_filled_slots():
    c = LayerCache(2, 1, 2, capacity=5, window=4096, dtype=torch.float32, device="cpu")
    assert c.k.shape[1] == 5
    x = torch.ones(2, 3, 1, 2)
    c.store(x, x, torch.arange(3))
    kk, _, kp = c.attend(x[:, :1], x[:, :1], torch.tensor([3]))
    assert kk.shape[1] == 4 and kp.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_attention_left_padding_vs_reference(kernel_backend, dtype):
    """k_min (left padding): batch b's real queries never see its first k_min[b] slots; a padding
    query sees only itself (finite). Triton equals the reference; the pads really are masked
    (changing their keys and values changes no real query's output)."""
    device, backend = kernel_backend
    g = torch.Generator().manual_seed(4)
    for B, T, nq, nkv, d, L, w in [(3, 1, 4, 2, 16, 9, None), (2, 5, 6, 2, 16, 5, 3), (3, 4, 4, 1, 16, 7, None)]:
        q = torch.randn(B, T, nq, d, generator=g).to(dtype)
        k, v = (torch.randn(B, L, nkv, d, generator=g).to(dtype) for _ in range(2))
        kp, qp = torch.arange(L), torch.arange(L - T, L)
        k_min = torch.tensor([0, 3, L - 1][:B])
        ref = DA.decode_attention_ref(q, k, v, qp, kp, w, k_min=k_min)
        got = DA.decode_attention(*_on(device, q, k, v, qp, kp), window=w, backend=backend,
                                  k_min=k_min.to(device)).cpu()
        assert torch.isfinite(ref).all() and torch.isfinite(got).all()
        tol = 2e-6 if dtype == torch.float32 else 2 ** -7
        assert float((got.float() - ref.float()).abs().max()) <= tol * max(1.0, float(ref.float().abs().max()))
        k2, v2 = k.clone(), v.clone()
        for b in range(B):
            k2[b, : int(k_min[b])] = 7.0
            v2[b, : int(k_min[b])] = -7.0
        ref2 = DA.decode_attention_ref(q, k2, v2, qp, kp, w, k_min=k_min)
        real = qp[None, :] >= k_min[:, None]  # [B, T] real queries
        assert torch.equal(ref2[real], ref[real])
        assert not torch.equal(DA.decode_attention_ref(q, k2, v2, qp, kp, w), DA.decode_attention_ref(q, k, v, qp, kp, w))
