"""Readers and writers of on-disk layouts (Nanotron, HuggingFace, safetensors)."""
