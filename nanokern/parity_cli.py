"""`nanokern parity`: the click command (registered by nanokern/cli.py with cli.add_command)."""

from __future__ import annotations

import click

from nanokern.cli_report import json_option, json_stdout, write_json
from nanokern.errors import NanokernError


@click.command("parity")
@click.argument("ckpt", required=False, type=click.Path())
@click.option("--hf", "hf_dir", type=click.Path(), default=None,
              help="HF folder to compare with (default: convert CKPT into a temporary folder first).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "float32", "bfloat16"]), default="fp32", show_default=True,
              help="fp32 (float32): logits max|diff| <= 1e-4, top-1 100%. bf16 (bfloat16): within 2x transformers' "
                   "own bf16 error.")
@click.option("--backend", type=click.Choice(["torch", "triton", "auto"]), default="auto", show_default=True,
              help="Fused ops: torch references or Triton kernels (auto: triton on CUDA, torch on CPU).")
@json_option("the full report")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write a PNG of the error per layer.")
@click.option("--seq-len", type=click.IntRange(1), default=32, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random token ids.")
@click.option("--logits", "logits_file", type=click.Path(), default=None,
              help="Also reproduce Nanotron's own logits from this file (input_ids + logits).")
@click.option("--attn", "attn_implementation", type=click.Choice(["eager", "sdpa"]), default="eager", show_default=True,
              help="transformers' attention implementation for the reference.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--kernels", is_flag=True, help="Check each fused kernel against transformers' own functions (CKPT optional).")
@click.option("--generate", "n_generate", type=click.IntRange(1), default=None, metavar="N",
              help="Also decode N greedy tokens after each parity prompt (KV cache, one token at a time) and compare "
                   "them with transformers' generate(), token by token: a difference fails where the reference's "
                   "margin is above the dtype's noise floor.")
def parity(ckpt, hf_dir, dtype, backend, json_path, plot_path, seq_len, batch, seed, logits_file, attn_implementation,
           device, kernels, n_generate):
    """Forward-pass parity for every family (LLaMA, Qwen2 with q/k/v bias or sliding window,
    SmolLM3 NoPE layers, Qwen2-MoE): a forward over the Nanotron checkpoint's shards as stored
    (per TP rank, row-parallel partial sums added) against the HF folder's transformers class
    (LlamaForCausalLM, Qwen2ForCausalLM, SmolLM3ForCausalLM or Qwen2MoeForCausalLM), layer by
    layer. Exit 0 on pass, 1 on fail.

    \b
    nanokern parity CKPT [--hf DIR] [--dtype fp32|bf16] [--backend torch|triton|auto]
    nanokern parity CKPT --hf DIR --generate 32
    nanokern parity --kernels [--backend ...]
    """
    json_stdout(json_path)
    if n_generate and not ckpt:
        raise click.UsageError("--generate needs a Nanotron checkpoint (CKPT)")
    if not ckpt and not kernels:
        raise click.UsageError("give a Nanotron checkpoint (CKPT) or --kernels")
    ok = True
    out: dict = {}
    if kernels:
        from nanokern.parity.kernel_check import check_kernels, format_checks

        rows = check_kernels(backend)
        click.echo(format_checks(rows))
        out["kernels"] = [r.to_dict() for r in rows]
        ok &= all(r.passed for r in rows)
    if ckpt:
        from nanokern.parity.check import reproduce_logits, run_parity

        try:
            rep = run_parity(ckpt, hf_dir, dtype=dtype, backend=backend, seed=seed, seq_len=seq_len, batch=batch,
                             device=device, attn_implementation=attn_implementation)
        except ValueError as e:
            raise NanokernError(str(e), ckpt) from None
        if kernels:
            click.echo("")
        click.echo(rep.table())
        out["parity"] = rep.to_dict()
        ok &= rep.passed
        if plot_path:
            rep.plot(plot_path)
            click.echo(f"plot: {plot_path}")
        if logits_file:
            lr = reproduce_logits(ckpt, logits_file, backend=backend, device=device)
            click.echo(f"Nanotron logits: {lr.line()}")
            out["nanotron_logits"] = {**lr.__dict__, "passed": lr.passed}
            ok &= lr.passed
        if n_generate:
            from nanokern.generate.check import run_generate_parity

            try:
                gr = run_generate_parity(ckpt, hf_dir, n_generate, dtype=dtype, backend=backend, seed=seed, seq_len=seq_len,
                                         batch=batch, device=device, attn_implementation=attn_implementation)
            except ValueError as e:
                raise NanokernError(str(e), ckpt) from None
            click.echo("")
            click.echo(gr.table())
            out["generate"] = gr.to_dict()
            ok &= gr.passed
    write_json(json_path, {"passed": ok, **out}, default=float)
    click.get_current_context().exit(0 if ok else 1)
