"""The plan layer: model.py (the logical model every conversion goes through: HF-named tensors
as blocks of on-disk bytes) and pieces.py (what a writer asks for, resolved into row gathers
over source files: the plan the executor runs); fp8.py says which tensors an FP8 export quantizes.
Readers build models, writers build plans."""

from nanokern.plan.pieces import OutFile, OutTensor, Piece, Plan, Source, describe, resolve

__all__ = ["OutFile", "OutTensor", "Piece", "Plan", "Source", "describe", "resolve"]
