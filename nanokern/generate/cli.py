"""`nanokern generate`: decode straight from a Nanotron checkpoint (any TP x PP layout, any
family) or from a HF folder, with the same KV-cache decoder (nanokern/generate/decoder.py)."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import click

from nanokern.cli_report import json_option, json_stdout, write_json
from nanokern.errors import NanokernError


def load_model(path, dtype: str, backend: str, device: str | None):
    """(NativeModel, kind, TP) for a Nanotron checkpoint ("nanotron") or a HF folder ("hf", TP 1)."""
    import torch

    from nanokern.formats.hf import is_hf
    from nanokern.parity.native import NativeModel

    if is_hf(path):
        from nanokern.formats.hf import read_hf
        from nanokern.generate.hf_model import hf_native_model

        if dtype == "auto":
            dtype = "bf16" if read_hf(path).dtype.torch == torch.bfloat16 else "fp32"
        return hf_native_model(path, dtype, backend, device), "hf", 1
    from nanokern.formats.nanotron import read_checkpoint

    ck = read_checkpoint(path)
    if dtype == "auto":
        dtype = "bf16" if next(iter(ck.params.values())).dtype.torch == torch.bfloat16 else "fp32"
    return NativeModel(ck, dtype, backend, device), "nanotron", ck.tp


def _parse_ids(text: str) -> list[int]:
    """Token ids separated by commas and/or spaces ("1,2,3", "1 2 3", "1, 2, 3"); anything else is refused."""
    parts = [x for x in re.split(r"[,\s]+", text) if x]
    if not all(x.isdigit() for x in parts):
        raise click.BadParameter(f"{text!r}: give token ids (non-negative integers) separated by commas or spaces, "
                                 "such as 1,2,3 or '1 2 3'", param_hint="--prompt-ids")
    if not parts:
        raise click.BadParameter("no token ids", param_hint="--prompt-ids")
    return [int(x) for x in parts]


def _default_tokenizer(ckpt) -> tuple[str | None, str]:
    """No --tokenizer: a HF CKPT's own, else the one a Nanotron CKPT's config.yaml names (a folder,
    or a hub id in the local HF cache: said in one line); (None, why there is none) otherwise."""
    from nanokern.formats.tokenizer import has_tokenizer, of_checkpoint

    if (Path(ckpt) / "tokenizer_config.json").is_file() or has_tokenizer(ckpt):
        return str(ckpt), ""
    folder, why = of_checkpoint(ckpt)
    if folder is not None:
        click.echo(f"tokenizer: {why}", err=True)
        return str(folder), ""
    return None, why


def _tokenizer(folder):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise NanokernError(f"cannot load a tokenizer: {str(e).splitlines()[0]}", folder) from None


@click.command("generate")
@click.argument("ckpt", type=click.Path(exists=True))
@click.option("--prompt", "prompts", multiple=True,
              help="Prompt text (repeat for a batch; prompts of different lengths are left-padded).")
@click.option("--prompt-ids", "prompt_ids", multiple=True,
              help="Prompt as token ids separated by commas or spaces, e.g. 1,2,3 or '1 2 3' (repeat for a batch).")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), default=None,
              help="Tokenizer folder [default: CKPT itself when it is a HF folder with one; for a Nanotron CKPT the "
                   "one its config.yaml's tokenizer_name_or_path names, a folder or a hub id in the local HF cache].")
@click.option("--max-new-tokens", type=click.IntRange(1), default=32, show_default=True)
@click.option("--greedy", is_flag=True, help="Argmax decoding (the default unless --temperature is given).")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=None, help="Sample at this temperature.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True, help="Nucleus sampling.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--backend", type=click.Choice(["torch", "triton", "auto"]), default="auto", show_default=True,
              help="Fused ops: torch references or Triton kernels (auto: triton on CUDA, torch on CPU).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: cuda when available.")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "float32", "bfloat16"]), default="auto", show_default=True,
              help="Compute dtype (auto: the checkpoint's, fp32 for fp16 files).")
@click.option("--vocab-size", type=click.IntRange(1), default=None,
              help="Choose only among the first N ids (Nanotron pads the vocab; default: the tokenizer's size, else all rows).")
@click.option("--stop-at-eos", is_flag=True, help="Stop once every sequence has produced the tokenizer's EOS.")
@json_option("the prompt ids, the new ids per sequence and the timings")
def generate(ckpt, prompts, prompt_ids, tokenizer, max_new_tokens, greedy, temperature, top_p, seed, backend, device, dtype,
             vocab_size, stop_at_eos, json_path):
    """Generate text straight from a Nanotron checkpoint in any TP x PP layout (or from a HF
    folder, e.g. its export, with the same decoder), without converting it: each TP rank's part
    is computed from its own shards, with a KV cache per layer (a rolling window on sliding-window
    layers), prefill of the prompt then one token at a time. Streams the text; prints prefill and
    decode tokens/s on stderr.

    \b
    nanokern generate CKPT --prompt TEXT --tokenizer DIR [--max-new-tokens N]
    nanokern generate CKPT --prompt-ids 1,2,3 [--temperature 0.8 --top-p 0.9 --seed 1]
    """
    _own_signal_line()
    json_stdout(json_path)
    from nanokern.generate.decoder import Decoder
    from nanokern.generate.sampling import Sampler

    if not prompts and not prompt_ids:
        raise click.UsageError("no prompt: give --prompt TEXT (with a tokenizer) or --prompt-ids 1,2,3")
    if prompts and prompt_ids:
        raise click.UsageError("give --prompt TEXT or --prompt-ids 1,2,3, not both")
    if greedy and temperature is not None:
        raise click.UsageError("--greedy and --temperature exclude each other")
    if tokenizer is None:
        tokenizer, why = _default_tokenizer(ckpt)
        if tokenizer is None and prompts:
            raise click.UsageError(f"--prompt needs a tokenizer and {why}: give --tokenizer DIR (or use --prompt-ids)")
    tok = _tokenizer(tokenizer) if tokenizer else None
    if prompts:
        rows = [tok(p)["input_ids"] for p in prompts]  # as tokenizer(prompt) does (its special tokens)
    else:
        rows = [_parse_ids(p) for p in prompt_ids]
    if any(not r for r in rows):
        raise click.UsageError("a prompt encodes to no tokens")
    try:
        model, kind, tp = load_model(ckpt, dtype, backend, device)
        if tp > 1 and str(model.dtype) == "torch.bfloat16":
            click.echo(f"note: bf16 at TP{tp}: the TP partial sums are rounded to bf16 before they are added, as Nanotron "
                       "does, so the tokens may differ from a TP1 checkpoint's (--dtype fp32 to compare)", err=True)
        vocab = vocab_size or (len(tok) if tok is not None else None)
        dec = Decoder(model, vocab=vocab)
        sampler = Sampler(greedy=temperature is None, temperature=temperature or 1.0, top_p=top_p, seed=seed)
        eos = tok.eos_token_id if (tok is not None and stop_at_eos) else None
        if stop_at_eos and eos is None:
            raise click.UsageError("--stop-at-eos needs a tokenizer with an EOS token")
        stream = _Stream(tok, len(rows))
        g = dec.generate(rows, max_new_tokens, sampler, on_token=stream, eos_id=eos)  # unequal lengths: left-padded
    except ValueError as e:
        raise NanokernError(str(e), ckpt) from None
    stream.finish(g.new_ids)
    B, S = len(rows), max(len(r) for r in rows)
    n_dec = sum(max(0, len(x) - 1) for x in g.new_ids)
    click.echo(f"[{kind} {Path(ckpt).name}: {model.dtype}, {model.backend} on {model.device}] prefill {B}x{S} tokens"
               f"{'' if len({len(r) for r in rows}) == 1 else ' (left-padded)'} "
               f"in {1e3 * g.prefill_s:.1f} ms ({g.prefill_tok_s:.1f} tok/s); decode {n_dec} tokens in "
               f"{1e3 * g.decode_s:.1f} ms ({g.decode_tok_s:.1f} tok/s)", err=True)
    if json_path:
        out = {"ckpt": str(ckpt), "source": kind, "dtype": str(model.dtype).replace("torch.", ""), "backend": model.backend,
               "device": str(model.device), **g.to_dict()}
        if tok is not None:
            out["text"] = [tok.decode(x) for x in g.new_ids]
        write_json(json_path, out)


def _own_signal_line() -> None:
    """Until the command ends, Ctrl-C / SIGTERM print one line about generating (the converter's
    "nothing kept" means nothing here) after the text streamed so far, and exit 128 + the signal
    number. Nothing is written to disk, so there is nothing to clean up."""
    import threading

    from nanokern.execute import signals

    def stop(signum, _frame):
        try:
            sys.stdout.write("\n")
        except Exception:  # noqa: BLE001 - leaving anyway
            pass
        signals.leave(signum, f"interrupted ({signal.Signals(signum).name}): generation stopped")

    if threading.current_thread() is not threading.main_thread():
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in before:
        signal.signal(s, stop)
    click.get_current_context().call_on_close(lambda: [signal.signal(s, h) for s, h in before.items()])


class _Stream:
    """Prints the new text as it is made (batch 1), or each sequence when done (batch > 1)."""

    def __init__(self, tok, batch: int):
        self.tok, self.batch, self.ids, self.shown = tok, batch, [], ""

    def __call__(self, _step: int, ids) -> None:
        if self.batch != 1:
            return
        self.ids.append(int(ids[0]))
        if self.tok is None:
            sys.stdout.write(("" if len(self.ids) == 1 else " ") + str(self.ids[-1]))
        else:
            text = self.tok.decode(self.ids)
            if text.startswith(self.shown) and not text.endswith("\ufffd"):  # whole characters only
                sys.stdout.write(text[len(self.shown):])
                self.shown = text
        sys.stdout.flush()

    def finish(self, new_ids: list[list[int]]) -> None:
        if self.batch == 1:
            if self.tok is not None:
                text = self.tok.decode(new_ids[0])
                if text.startswith(self.shown):
                    sys.stdout.write(text[len(self.shown):])
            sys.stdout.write("\n")
        else:
            for b, ids in enumerate(new_ids):
                body = self.tok.decode(ids) if self.tok is not None else " ".join(map(str, ids))
                sys.stdout.write(f"[{b}] {body}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    generate()
