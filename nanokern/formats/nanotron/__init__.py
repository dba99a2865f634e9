"""Nanotron's training layout: reading (files.py: the step folder and configs; shards.py: one
parameter's files and their slice metadata; checkpoint.py: the whole checkpoint of a step;
steps.py: a checkpoints folder's steps, complete or not; resolve.py: which step a path means; mapping.py: as
the logical HF-convention model), writing (writer.py), and the file names and PP placement both
share (layout.py)."""

from nanokern.formats.nanotron.checkpoint import NanotronCheckpoint, expected_shapes, nt_params
from nanokern.formats.nanotron.files import read_model_config, source_extras
from nanokern.formats.nanotron.mapping import to_model
from nanokern.formats.nanotron.resolve import find_step_dir, is_nanotron, read_checkpoint
from nanokern.formats.nanotron.shards import NtParam, Shard

__all__ = ["NanotronCheckpoint", "NtParam", "Shard", "expected_shapes", "find_step_dir", "is_nanotron", "nt_params",
           "read_checkpoint", "read_model_config", "source_extras", "to_model"]
