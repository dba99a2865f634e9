"""`bench generate`: tokens/s of the native decoder (straight from the Nanotron shards, KV cache)
against transformers' generate() on the exported model: same prompt, same machine, same run,
the two alternating rep by rep after a warm-up; medians. Greedy, exactly N new tokens (EOS
never stops transformers). Prefill: prompt tokens / time to the first new token; decode: the
N - 1 later tokens / the time from the first new token to the last (transformers' timed with
a streamer that notes when each token comes). The tokens of the two are compared too.
Appends one row per run to the CSV --csv names (benchmarks/results/generate.csv for the
README's figures).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import click

from nanokern.bench.common import append_csv_rows, default_cache_dir, device_name, parse_size, schema, stamp

CSV_COLUMNS = schema(["model", "tp", "pp", "dtype", "threads", "batch", "prompt_len", "new_tokens", "backend", "hf_attn",
                      "native_prefill_tok_s", "hf_prefill_tok_s", "native_decode_tok_s", "hf_decode_tok_s", "decode_ratio",
                      "native_decode_all", "hf_decode_all", "tokens_equal"])


def run_generate_bench(ckpt, batch: int, prompt_len: int, new_tokens: int, reps: int, dtype: str, backend: str,
                       device: str, attn: str, threads: int | None, echo=click.echo) -> dict:
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _bench(ckpt, batch, prompt_len, new_tokens, reps, dtype, backend, device, attn, echo)
    finally:
        torch.set_num_threads(before)


def _bench(ckpt, batch, prompt_len, new_tokens, reps, dtype, backend, device, attn, echo) -> dict:
    import torch

    from nanokern.convert import convert
    from nanokern.formats.nanotron import read_checkpoint
    from nanokern.generate.decoder import Decoder
    from nanokern.generate.reference import hf_generate
    from nanokern.parity.native import NativeModel, torch_dtype
    from nanokern.parity.reference import load_hf

    ck = read_checkpoint(ckpt)
    dt = torch_dtype(dtype)
    with tempfile.TemporaryDirectory(prefix="nanokern-bench-gen-") as tmp:
        hf_dir = Path(tmp) / "hf"
        convert(ck.step_dir, hf_dir, to="hf", dtype="keep", force=True, progress=False)
        hf = load_hf(hf_dir, dt, torch.device(device), attn)
    native = NativeModel(ck, dtype, backend, device)
    vocab = min(ck.spec.vocab_size, hf.config.vocab_size)
    dec = Decoder(native, vocab=vocab)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
    n_pre, n_dec = batch * prompt_len, batch * (new_tokens - 1)
    nat_pre, nat_dec, hf_pre, hf_dec, equal = [], [], [], [], True
    dec.generate(ids, min(new_tokens, 4))  # warm-up, both sides
    hf_generate(hf, ids, min(new_tokens, 4))
    for rep in range(reps):
        sides = ("native", "hf") if rep % 2 == 0 else ("hf", "native")
        for side in sides:
            if side == "native":
                g = dec.generate(ids, new_tokens)
                nat_pre.append(n_pre / g.prefill_s)
                nat_dec.append(n_dec / g.decode_s if n_dec else 0.0)
                got = g.new_ids
            else:
                r = hf_generate(hf, ids, new_tokens)
                hf_pre.append(n_pre / r.prefill_s)
                hf_dec.append(n_dec / r.decode_s if n_dec else 0.0)
                want = r.new_ids
        equal &= got == want
        echo(f"  rep {rep + 1}/{reps}: native decode {nat_dec[-1]:8.1f} tok/s, transformers {hf_dec[-1]:8.1f} tok/s")
    med = statistics.median
    sp = ck.spec
    model = f"{Path(ck.step_dir).parent.name} (L{sp.num_hidden_layers} H{sp.hidden_size} V{sp.vocab_size})"
    return {
        **stamp(device_name(device), reps), "model": model, "tp": ck.tp, "pp": ck.pp, "dtype": dtype,
        "threads": torch.get_num_threads(), "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "backend": native.backend, "hf_attn": attn, "native_prefill_tok_s": round(med(nat_pre), 1),
        "hf_prefill_tok_s": round(med(hf_pre), 1), "native_decode_tok_s": round(med(nat_dec), 1),
        "hf_decode_tok_s": round(med(hf_dec), 1), "decode_ratio": round(med(nat_dec) / med(hf_dec), 3) if med(hf_dec) else None,
        "native_decode_all": " ".join(f"{x:.1f}" for x in nat_dec), "hf_decode_all": " ".join(f"{x:.1f}" for x in hf_dec),
        "tokens_equal": equal,
    }


@click.command("generate")
@click.argument("ckpt", required=False, type=click.Path(exists=True))
@click.option("--size", default="100MB", show_default=True, help="Without CKPT: a synthetic checkpoint of this size.")
@click.option("--arch", "arch_name", type=click.Choice(["llama", "qwen2", "smollm3", "moe"]), default="llama", show_default=True,
              help="Without CKPT: the synthetic checkpoint's family.")
@click.option("--tp", type=click.IntRange(1), default=2, show_default=True, help="Without CKPT: its TP.")
@click.option("--pp", type=click.IntRange(1), default=1, show_default=True, help="Without CKPT: its PP.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True)
@click.option("--prompt-len", type=click.IntRange(1), default=17, show_default=True)
@click.option("--new-tokens", type=click.IntRange(2), default=64, show_default=True)
@click.option("--reps", type=click.IntRange(1), default=5, show_default=True)
@click.option("--backend", type=click.Choice(["torch", "triton", "auto"]), default="auto", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--attn", type=click.Choice(["sdpa", "eager"]), default="sdpa", show_default=True,
              help="transformers' attention implementation.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads (default: torch's own).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Synthetic checkpoints [default: nanokern-bench-cache/ in the temporary folder].")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Append the row to this CSV (e.g. benchmarks/results/generate.csv) [default: no CSV].")
@click.option("--no-csv", is_flag=True, hidden=True)  # (the default now; kept for old scripts)
def generate_cmd(ckpt, size, arch_name, tp, pp, dtype, batch, prompt_len, new_tokens, reps, backend, device, attn, threads,
                 cache_dir, csv_path, no_csv):
    """Native decoding tokens/s (straight from the Nanotron shards) vs transformers' generate()
    on the exported model, side by side in one run."""
    if ckpt is None:
        from nanokern.bench.synthetic import cached_checkpoint

        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        ckpt, _ = cached_checkpoint(cache, parse_size(size), tp, pp, dtype, click.echo, arch_name)
    row = run_generate_bench(ckpt, batch, prompt_len, new_tokens, reps, dtype, backend, device, attn, threads)
    click.echo(f"{row['model']} TP={row['tp']} PP={row['pp']} {dtype} batch {batch} prompt {prompt_len} new {new_tokens} "
               f"({row['device']}, {row['threads']} threads, backend {row['backend']}, transformers {attn})")
    click.echo(f"  prefill tok/s: native {row['native_prefill_tok_s']}, transformers {row['hf_prefill_tok_s']}")
    click.echo(f"  decode  tok/s: native {row['native_decode_tok_s']}, transformers {row['hf_decode_tok_s']} "
               f"(ratio {row['decode_ratio']}); tokens equal: {row['tokens_equal']}")
    if csv_path:
        append_csv_rows(Path(csv_path), CSV_COLUMNS, [row])
        click.echo(f"appended a row to {Path(csv_path).absolute()}")


generate = generate_cmd

if __name__ == "__main__":
    generate_cmd()
