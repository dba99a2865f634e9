"""Inference straight from the training layout: a KV-cache decoder over the parity forward's
per-rank weights (decoder.py), the same decoder over a HF folder (hf_model.py), sampling, and
transformers' generate() as the reference (reference.py). `nanokern generate` is cli.py."""
