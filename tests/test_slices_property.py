"""Property-based tests of Nanotron's shard metadata (nanokern/io/slices.py) and of the
reader's coverage check (nanokern/formats/nanotron/shards.py).

- Valid layouts (random shapes, TP sizes, row/column splits, chunked qkv/gate_up-like splits)
  round-trip through format -> parse, and their shards tile the unsharded tensor.
- Corrupted metadata strings are either refused with SliceFormatError, or parse to boxes that
  an independent parser (Python slice semantics) agrees with.
- Through the full reader, on small synthetic checkpoints written by tests/nt_reference.py:
  valid layouts read back to the original weights, and corrupted metadata is either refused
  with a NanokernError naming a file, or accepted only when an independent assembly of the
  corrupted shards tiles every tensor exactly once and gives the same values.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from nt_reference import hf_from_nt, interleave_rows, random_hf, write_nanotron
from safetensors import safe_open

from nanokern.errors import NanokernError
from nanokern.formats import nanotron
from nanokern.io.safetensors import map_tensor
from nanokern.io.slices import (
    SliceFormatError,
    check_tiling,
    format_pairs,
    format_unsharded_shape,
    parse_pairs,
    parse_unsharded_shape,
)

FAST = settings(max_examples=300, deadline=None)
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
READER = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------------------------------------
# layouts as Nanotron builds them (parallel/sharded_parameters.py), written independently here


def layout(shape: tuple[int, ...], split_dim: int, tp: int, chunks: list[int] | None):
    """Per TP rank: (local shape, pairs). chunks: sizes along split_dim, each divisible by tp."""
    sizes = chunks or [shape[split_dim]]
    ranks = []
    for r in range(tp):
        pairs, loc0, g0 = [], 0, 0
        for c in sizes:
            n = c // tp
            glo = [(0, s) for s in shape]
            glo[split_dim] = (g0 + r * n, g0 + (r + 1) * n)
            loc = [(0, s) for s in shape]
            loc[split_dim] = (loc0, loc0 + n)
            pairs.append((tuple(loc), tuple(glo)))
            loc0 += n
            g0 += c
        local = list(shape)
        local[split_dim] = shape[split_dim] // tp
        ranks.append((tuple(local), pairs))
    return ranks


@st.composite
def layouts(draw):
    tp = draw(st.sampled_from([1, 2, 3, 4, 8]))
    ndim = draw(st.sampled_from([1, 2, 2, 2]))
    split_dim = draw(st.integers(0, ndim - 1))
    chunked = draw(st.booleans()) and split_dim == 0
    if chunked:
        chunks = draw(st.lists(st.integers(0, 6).map(lambda k: k * tp), min_size=2, max_size=4))
        assume(sum(chunks) > 0)
        split = sum(chunks)
    else:
        chunks = None
        split = draw(st.integers(1, 12)) * tp
    shape = [draw(st.integers(1, 40)) for _ in range(ndim)]
    shape[split_dim] = split
    return tuple(shape), split_dim, tp, chunks


@FAST
@given(layouts())
def test_valid_layouts_round_trip(lay):
    shape, split_dim, tp, chunks = lay
    ranks = layout(shape, split_dim, tp, chunks)
    all_global = []
    for local, pairs in ranks:
        text = format_pairs(pairs, split_dim, chunked=chunks is not None)
        assert parse_pairs(text, local, shape) == pairs
        assert _oracle_pairs(text, local, shape) == pairs
        check_tiling([loc for loc, _ in pairs], local, "local")
        all_global += [glo for _, glo in pairs]
    check_tiling(all_global, shape, "global")
    assert parse_unsharded_shape(format_unsharded_shape(shape)) == shape


@FAST
@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=4), st.data())
def test_unsharded_shape_forms(shape, data):
    shape = tuple(shape)
    assert parse_unsharded_shape(str(shape)) == shape  # "(5,)" for one dim
    assert parse_unsharded_shape(format_unsharded_shape(shape)) == shape
    assert parse_unsharded_shape(str(tuple(np.int64(s) for s in shape))) == shape  # numpy >= 2 repr
    wrapped = [data.draw(st.booleans()) for _ in shape]
    text = "(" + ", ".join(f"np.int64({s})" if w else str(s) for s, w in zip(shape, wrapped)) + ("," if len(shape) == 1 else "") + ")"
    assert parse_unsharded_shape(text) == shape


# ---------------------------------------------------------------------------------------------
# corruptions of the strings


NUM = re.compile(r"-?\d+")
ALPHABET = "0123456789,|#;()- Nonenp.int64_+"


@st.composite
def corrupt(draw, text: str, rounds: int = 2) -> str:
    for _ in range(draw(st.integers(1, rounds))):
        kind = draw(st.sampled_from(["delete", "duplicate", "insert", "renumber", "swap", "dims", "pairs", "none"]))
        nums = list(NUM.finditer(text))
        if kind in ("delete", "duplicate", "insert") or (kind in ("renumber", "swap") and len(nums) < 2):
            i = draw(st.integers(0, max(0, len(text) - 1)))
            if kind == "insert" or not text:
                text = text[:i] + draw(st.sampled_from(ALPHABET)) + text[i:]
            elif kind == "delete":
                text = text[:i] + text[i + 1 :]
            else:
                text = text[:i] + text[i] + text[i:]
        elif kind == "renumber":
            m = draw(st.sampled_from(nums))
            v = draw(st.one_of(st.integers(-3, 300), st.just(2**63), st.sampled_from([0, 1])))
            text = text[: m.start()] + str(v) + text[m.end() :]
        elif kind == "swap":
            a, b = sorted(draw(st.lists(st.sampled_from(range(len(nums))), min_size=2, max_size=2, unique=True)))
            ma, mb = nums[a], nums[b]
            text = text[: ma.start()] + mb.group() + text[ma.end() : mb.start()] + ma.group() + text[mb.end() :]
        elif kind == "dims":
            segs = text.split("|")
            if draw(st.booleans()) and len(segs) > 1:
                segs.pop(draw(st.integers(0, len(segs) - 1)))
            else:
                segs.insert(draw(st.integers(0, len(segs))), "None,None,None")
            text = "|".join(segs)
        elif kind == "pairs":
            parts = text.split(";")
            j = draw(st.integers(0, len(parts) - 1))
            if draw(st.booleans()) and len(parts) > 1:
                parts.pop(j)
            else:
                parts.insert(j, parts[j])
            text = ";".join(parts)
        else:  # "None" <-> a number
            if "None" in text and draw(st.booleans()):
                i = draw(st.sampled_from([m.start() for m in re.finditer("None", text)]))
                text = text[:i] + str(draw(st.integers(0, 64))) + text[i + 4 :]
            elif nums:
                m = draw(st.sampled_from(nums))
                text = text[: m.start()] + "None" + text[m.end() :]
    return text


@st.composite
def remap(draw, text: str) -> str:
    """Semantic corruptions of a well-formed pairs string: one pair's local or global part
    copied from, or swapped with, another pair's; a range shifted; a pair dropped or repeated."""
    pairs = [p.split("#") for p in text.split(";")]
    side = draw(st.integers(0, 1))  # 0: local, 1: global
    kind = draw(st.sampled_from(["copy", "swap", "shift", "drop", "repeat"] if len(pairs) > 1 else ["shift", "repeat"]))
    j, k = draw(st.lists(st.integers(0, len(pairs) - 1), min_size=2, max_size=2, unique=len(pairs) > 1))
    if kind == "copy":
        pairs[j][side] = pairs[k][side]
    elif kind == "swap":
        pairs[j][side], pairs[k][side] = pairs[k][side], pairs[j][side]
    elif kind == "shift":
        dims = pairs[j][side].split("|")
        explicit = [i for i, d in enumerate(dims) if not d.startswith("None")]
        if explicit:
            i = draw(st.sampled_from(explicit))
            a, b, c = dims[i].split(",")
            by = draw(st.sampled_from([-4, -1, 1, 4]))
            dims[i] = f"{int(a) + by},{int(b) + by},{c}"
            pairs[j][side] = "|".join(dims)
    elif kind == "drop":
        pairs.pop(j)
    else:
        pairs.insert(j, list(pairs[j]))
    return ";".join("#".join(p) for p in pairs)


def _oracle_slice(text: str, size: int):
    """Python's own slice semantics, as Nanotron's loader applies them."""
    s = slice(*(None if x.strip() == "None" else int(x) for x in text.split(",")))
    start, stop, step = s.indices(size)
    if step != 1:
        raise ValueError("step")
    return (start, max(start, stop))


def _oracle_pairs(text, local_shape, global_shape):
    out = []
    for chunk in text.split(";"):
        loc, glo = chunk.split("#")
        lb = tuple(_oracle_slice(p, n) for p, n in zip(loc.split("|"), local_shape, strict=True))
        gb = tuple(_oracle_slice(p, n) for p, n in zip(glo.split("|"), global_shape, strict=True))
        out.append((lb, gb))
    return out


def _oracle_shape(text):
    body = text.strip()[1:-1]
    return tuple(int(re.sub(r"^np\.int64\((.*)\)$", r"\1", p.strip())) for p in body.split(",") if p.strip())


@FAST
@given(st.data())
def test_corrupted_pairs_refused_or_consistent(data):
    shape, split_dim, tp, chunks = data.draw(layouts())
    ranks = layout(shape, split_dim, tp, chunks)
    local, pairs = ranks[data.draw(st.integers(0, tp - 1))]
    text = data.draw(corrupt(format_pairs(pairs, split_dim, chunked=chunks is not None), rounds=3))
    try:
        got = parse_pairs(text, local, shape)
    except SliceFormatError as e:
        assert str(e)
        return
    # accepted: Python's slicing reads the same boxes, each inside the shapes, equal sizes
    assert got == _oracle_pairs(text, local, shape)
    for loc, glo in got:
        for (a, b), (c, d), n, m in zip(loc, glo, local, shape):
            assert 0 <= a <= b <= n and 0 <= c <= d <= m and b - a == d - c


@FAST
@given(st.data())
def test_corrupted_shape_refused_or_consistent(data):
    shape = tuple(data.draw(st.lists(st.integers(0, 5000), min_size=1, max_size=3)))
    base = data.draw(st.sampled_from([str(shape), str(tuple(np.int64(s) for s in shape))]))
    text = data.draw(corrupt(base))
    try:
        got = parse_unsharded_shape(text)
    except SliceFormatError as e:
        assert str(e)
        return
    assert got == _oracle_shape(text) and all(type(s) is int and s >= 0 for s in got)
    assert parse_unsharded_shape(format_unsharded_shape(got)) == got


@FAST
@given(st.text(max_size=60), st.text(max_size=30))
def test_arbitrary_text_never_crashes(pairs_text, shape_text):
    for fn in (lambda: parse_pairs(pairs_text, (4, 6), (8, 6)), lambda: parse_unsharded_shape(shape_text)):
        try:
            fn()
        except SliceFormatError:
            pass


@FAST
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6), st.integers(0, 6)), max_size=6))
def test_check_tiling_matches_counting(rects):
    """check_tiling accepts exactly the box sets that cover a 6x6 grid once."""
    boxes = [((min(a, b), max(a, b)), (min(c, d), max(c, d))) for a, b, c, d in rects]
    count = np.zeros((6, 6), dtype=int)
    for (a, b), (c, d) in boxes:
        count[a:b, c:d] += 1
    try:
        check_tiling(boxes, (6, 6), "test")
        ok = True
    except SliceFormatError:
        ok = False
    assert ok == bool((count == 1).all())


# ---------------------------------------------------------------------------------------------
# the full reader on synthetic checkpoints


def _cfg(H, nq, nkv, I, V, L, tied):
    return dict(num_hidden_layers=L, hidden_size=H, intermediate_size=I, num_attention_heads=nq,
                num_key_value_heads=nkv, vocab_size=V, tie_word_embeddings=tied)


def materialize(model) -> dict[str, torch.Tensor]:
    """Every logical tensor from its blocks, checking that the blocks write each element once."""
    maps: dict = {}
    out = {}
    try:
        for name, t in model.tensors.items():
            rows, cols = t.shape2d
            full = torch.zeros((rows, cols), dtype=t.dtype.torch)
            seen = torch.zeros((rows, cols), dtype=torch.int32)
            for b in t.blocks:
                src = map_tensor(b.ref, maps)[:, b.src_col0 : b.src_col0 + b.ncols]
                dst_rows = torch.from_numpy(b.dst_rows)
                full[dst_rows, b.dst_col0 : b.dst_col0 + b.ncols] = src[torch.from_numpy(b.src_rows)]
                seen[dst_rows, b.dst_col0 : b.dst_col0 + b.ncols] += 1
            assert bool((seen == 1).all()), f"{name}: blocks do not tile the tensor"
            out[name] = full.view(t.shape)
    finally:
        for m in maps.values():
            if m is not None:
                m.close()
    return out


@SLOW
@given(
    tp=st.sampled_from([1, 2, 4]), pp=st.sampled_from([1, 2, 3]), d=st.sampled_from([2, 4]), nkv=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2]), i_mult=st.integers(1, 3), v_mult=st.integers(1, 4), layers=st.integers(1, 3),
    tied=st.booleans(), interleaved=st.booleans(), np_int64=st.booleans(), bad_naming=st.booleans(),
)
def test_reader_valid_layouts_round_trip(tmp_path_factory, tp, pp, d, nkv, groups, i_mult, v_mult, layers, tied,
                                         interleaved, np_int64, bad_naming):
    nkv_t = max(nkv, tp)  # every chunk must split over TP
    nq_t = nkv_t * groups
    cfg = _cfg(nq_t * d, nq_t, nkv_t, i_mult * tp * 2, v_mult * tp * 2, layers, tied)
    hf = random_hf(cfg, seed=tp * 100 + pp)
    root = tmp_path_factory.mktemp("valid")
    write_nanotron(root, hf, cfg, tp=tp, pp=pp, interleaved=interleaved, np_int64=np_int64, bad_naming=bad_naming)
    ck = nanotron.read_checkpoint(root)
    assert (ck.tp, ck.pp) == (tp, pp) and ck.rope_interleaved == interleaved
    got = materialize(nanotron.to_model(ck))
    assert set(got) == set(hf)
    for name, t in hf.items():
        assert torch.equal(got[name], t), name
    shutil.rmtree(root)


# --- corrupted metadata through the full reader

BASE_CFG = _cfg(16, 4, 2, 24, 40, 1, False)  # d=4, GQA, qkv chunks (16, 8, 8), gate_up (24, 24)
SHARDED = ["attn/qkv_proj", "mlp/gate_up_proj", "attn/o_proj", "mlp/down_proj", "token_embedding", "lm_head"]
CHUNKED = ["attn/qkv_proj", "mlp/gate_up_proj"]


@pytest.fixture(scope="module")
def base_ck(tmp_path_factory):
    root = tmp_path_factory.mktemp("base") / "ck"
    write_nanotron(root, random_hf(BASE_CFG, seed=7), BASE_CFG, tp=2, pp=1)
    files = {}
    for f in sorted((root / "0" / "model").rglob("*_tp-rank-*.safetensors")):
        key = next(k for k in SHARDED if f"/{k}/" in f.as_posix())
        files.setdefault(key, []).append(f)
    return root, files


def _rewrite_meta(path: Path, md: dict) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = md
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n :])


def oracle_assemble(step: Path) -> dict[str, torch.Tensor] | None:
    """Independent assembly with Python slicing; None when the shards do not tile each
    parameter exactly once (an overlap, a hole, a local element unused or used twice)."""
    shards: dict[str, list] = {}
    for f in sorted((step / "model").rglob("*.safetensors")):
        name = ".".join(f.parent.relative_to(step / "model").parts) + ".weight"
        with safe_open(str(f), "pt") as h:
            shards.setdefault(name, []).append((h.get_tensor("data"), h.metadata() or {}, "tp-rank" in f.name))
    out = {}
    for name, parts in shards.items():
        if not parts[0][2]:
            out[name] = parts[0][0]
            continue
        shapes = {_oracle_shape(m["unsharded_shape"]) for _, m, _ in parts}
        if len(shapes) != 1:
            return None
        shape = shapes.pop()
        full = torch.zeros(shape, dtype=parts[0][0].dtype)
        count = torch.zeros(shape, dtype=torch.int32)
        for t, m, _ in parts:
            lcount = torch.zeros(t.shape, dtype=torch.int32)
            for chunk in m["local_global_slices_pairs"].split(";"):
                loc, glo = chunk.split("#")
                ls = tuple(slice(*_oracle_slice(p, n)) for p, n in zip(loc.split("|"), t.shape, strict=True))
                gs = tuple(slice(*_oracle_slice(p, n)) for p, n in zip(glo.split("|"), shape, strict=True))
                if full[gs].shape != t[ls].shape:
                    return None
                full[gs] = t[ls]
                count[gs] += 1
                lcount[ls] += 1
            if not bool((lcount == 1).all()):
                return None
        if not bool((count == 1).all()):
            return None
        out[name] = full
    return out


def _expected_hf_or_none(step: Path, cfg: dict):
    try:
        nt = oracle_assemble(step)
    except (ValueError, TypeError, IndexError, RuntimeError):  # Python itself cannot read the metadata
        return "unreadable"
    return None if nt is None else hf_from_nt(nt, cfg)


@READER
@given(st.data())
def test_reader_corrupted_metadata_refused_or_exact(base_ck, data):
    root, files = base_ck
    param = data.draw(st.sampled_from(SHARDED + CHUNKED))  # chunked params have the richest metadata
    field = data.draw(st.sampled_from(["local_global_slices_pairs", "local_global_slices_pairs", "unsharded_shape"]))
    semantic = field == "local_global_slices_pairs" and data.draw(st.booleans())
    targets = files[param]
    if data.draw(st.booleans()):  # the same corruption in every shard of the parameter, or in one
        targets = [data.draw(st.sampled_from(targets))]
    saved = {f: f.read_bytes() for f in targets}
    try:
        bad = None
        for f in targets:
            with safe_open(str(f), "pt") as h:
                md = dict(h.metadata())
            if bad is None or field == "local_global_slices_pairs":  # siblings share one unsharded_shape
                bad = data.draw(remap(md[field]) if semantic else corrupt(md[field], rounds=2))
            md[field] = bad
            _rewrite_meta(f, md)
        try:
            model = nanotron.to_model(nanotron.read_checkpoint(root))
        except NanokernError as e:
            assert e.path and e.message, str(e)
            assert Path(e.path).resolve().is_relative_to(root.resolve()), str(e)
            event("refused")
            return
        event("accepted")
        # accepted: the corrupted metadata must still describe a correct tiling, and the reader
        # must read exactly what an independent assembly reads
        expected = _expected_hf_or_none(root / "0", BASE_CFG)
        assert expected is not None, f"reader accepted a layout that does not tile: {field}={bad!r}"
        assert expected != "unreadable", f"reader accepted metadata Python cannot read: {field}={bad!r}"
        got = materialize(model)
        for name, t in expected.items():
            assert torch.equal(got[name], t), f"{name} differs after {field}={bad!r}"
    finally:
        for f, b in saved.items():
            f.write_bytes(b)


def test_base_checkpoint_reads_back(base_ck):
    """Control for the corruption test: the untouched base reads back to the oracle's tensors."""
    root, _ = base_ck
    got = materialize(nanotron.to_model(nanotron.read_checkpoint(root)))
    expected = _expected_hf_or_none(root / "0", BASE_CFG)
    assert isinstance(expected, dict)
    for name, t in expected.items():
        assert torch.equal(got[name], t), name
    assert torch.equal(got["model.layers.0.self_attn.q_proj.weight"], random_hf(BASE_CFG, seed=7)["model.layers.0.self_attn.q_proj.weight"])


def test_interleave_helper_is_a_permutation():
    """Sanity of the reference helper used by the round-trip test (interleaved checkpoints)."""
    w = torch.arange(8 * 3, dtype=torch.float32).view(8, 3)
    assert sorted(interleave_rows(w, 4)[:, 0].tolist()) == sorted(w[:, 0].tolist())
