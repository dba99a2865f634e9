"""Load HF folders with whichever transformers this interpreter imports and compute their logits in
float32, recording every warning the load and the forward emit. test_hf_compat.py runs it in a
second interpreter whose transformers is 4.57.1, and calls `logits_and_warnings` itself under
the installed transformers 5.

Child usage: python hf_compat_child.py JOB.json, where JOB.json is {"cases": {name: folder},
"ids": ids.safetensors, "out": stem}; writes stem.safetensors (logits per name) and stem.json
({"version": ..., "cases": {name: {"warnings": [...], "config": {...}}}})."""

from __future__ import annotations

import json
import logging
import sys
import warnings

# what a config reads as, in either version's spelling (4.x: top-level rope_theta; 5.x: rope_parameters)
CONFIG_KEYS = ("rope_theta", "rope_parameters", "rope_scaling", "layer_types", "no_rope_layers", "sliding_window",
               "use_sliding_window", "max_window_layers", "mlp_only_layers", "decoder_sparse_step", "norm_topk_prob",
               "qkv_bias", "shared_expert_intermediate_size", "tie_word_embeddings")


class _Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def logits_and_warnings(folder, ids):
    """(float32 logits of `ids`, warnings emitted by loading and running, config values read)."""
    import torch
    import transformers

    rec = _Recorder()
    lib = logging.getLogger("transformers")
    lib.addHandler(rec)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # `dtype=` from 4.56 on (`torch_dtype=` before it, deprecated after)
            new_kw = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)
            kw = {"dtype" if new_kw else "torch_dtype": torch.float32}
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kw)
            model.eval()
            with torch.no_grad():
                logits = model(ids).logits.float()
    finally:
        lib.removeHandler(rec)
    cfg = model.config
    seen = {k: getattr(cfg, k) for k in CONFIG_KEYS if k in cfg.__dict__ or hasattr(type(cfg), k)}
    return logits, rec.messages + [f"{w.category.__name__}: {w.message}" for w in caught], _jsonable(seen)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def main(job_file: str) -> None:
    import transformers
    from safetensors.torch import load_file, save_file

    job = json.loads(open(job_file).read())
    ids = load_file(job["ids"])
    out, info = {}, {"version": transformers.__version__, "cases": {}}
    for name, folder in job["cases"].items():
        logits, msgs, seen = logits_and_warnings(folder, ids[name])
        out[name] = logits.contiguous()
        info["cases"][name] = {"warnings": msgs, "config": seen}
    save_file(out, job["out"] + ".safetensors")
    with open(job["out"] + ".json", "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
