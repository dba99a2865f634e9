"""HF tensors straight from the TP x PP shards a running Nanotron job holds in memory, collective
over the job's ranks (every rank calls, in the same order), with no checkpoint in between:

    shards = live.load_rank(step_dir, tp_rank=t, pp_rank=p)   # or the Nanotron model itself
    for name, tensor in live.hf_weights(shards, tp_group=tpg, pp_group=ppg, dtype="bf16"): ...
    for bucket in live.hf_buckets(shards, tp_group=tpg, pp_group=ppg, bucket_bytes=1 << 30): ...
    kept = live.BucketBuffers()                               # kept across pushes: the same buffers refilled
    for bucket in live.hf_buckets(shards, tp_group=tpg, pp_group=ppg, buffers=kept): ...
    live.save_hf(shards, out_dir, tp_group=tpg, pp_group=ppg, dtype="bf16")
    live.hf_metadata(shards, tp_group=tpg, pp_group=ppg)      # [(name, shape, dtype)]
    source = live.vllm_source(shards, tp_group=tpg, pp_group=ppg, dtype="bf16")  # a vLLM WeightSource

The conversion is the file converter's: the same architecture table, logical model and HF plan
(layout.py), the same pieces run by the same gather-cast kernel (stream.py; straight into packed
buckets: buckets.py), the same writer, manifest and atomic rename (save.py); only the source
bytes come from the ranks' memory, gathered over TP and broadcast over PP (gather.py, comm.py)
one unit at a time.
"""

from nanokern.errors import NanokernError
from nanokern.live.buckets import Bucket, BucketBuffers, hf_buckets, unpack
from nanokern.live.export import hf_metadata, hf_weights
from nanokern.live.save import save_hf
from nanokern.live.source import LocalParam, RankShards, from_module, load_rank
from nanokern.live.vllm_source import vllm_source

__all__ = ["Bucket", "BucketBuffers", "LocalParam", "NanokernError", "RankShards", "from_module", "hf_buckets", "hf_metadata",
           "hf_weights", "load_rank", "save_hf", "unpack", "vllm_source"]
