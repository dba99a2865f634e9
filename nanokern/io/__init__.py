"""The bottom layer: bytes on disk and nothing about models. dtypes.py (the one dtype table),
safetensors.py (headers, memory-mapped views), slices.py (Nanotron's slice metadata),
direct.py (sequential O_DIRECT writing)."""
