"""GPU execution of pieces: stage sources through pinned host buffers, gather and cast on the
device, copy back into the output mapping.

Each piece is cut into row chunks that fit the staging budget (so a tensor larger than the
budget converts correctly, just in more steps). Two slots, each with its own pinned input and
output buffers and its own CUDA stream, alternate: while the device works on chunk i (H2D copy,
gather_cast, D2H copy, all asynchronous on slot i%2's stream), the CPU fills the other slot's
pinned buffer with chunk i+1 and drains chunk i-1 into the output file.

With device="cpu" the same pipeline runs on plain tensors with no streams: that is how the
chunking and row-span logic is tested on machines without a GPU.
"""

from __future__ import annotations

import threading

import numpy as np
import torch


class Stager:
    def __init__(self, device: str, budget_bytes: int, backend: str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.slot_bytes = max(budget_bytes // 4, 1024)  # 2 slots x (in + out)
        self.backend = backend
        self.local = threading.local()

    def _slots(self):
        s = getattr(self.local, "slots", None)
        if s is None:
            pin = self.cuda
            s = []
            for _ in range(2):
                s.append({
                    "in": torch.empty(self.slot_bytes, dtype=torch.uint8, pin_memory=pin),
                    "out": torch.empty(self.slot_bytes, dtype=torch.uint8, pin_memory=pin),
                    "dev_in": torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device),
                    "dev_out": torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device),
                    "stream": torch.cuda.Stream(self.device) if self.cuda else None,
                    "event": None,
                    "pending": None,
                })
            self.local.slots = s
        return s

    def run_piece(self, src: torch.Tensor, rows: np.ndarray | None, dst: torch.Tensor) -> None:
        """dst[:] = cast(src[rows]) (rows None: src itself), src/dst CPU views, via the device."""
        from nanokern.ops import gather_cast

        n, cols = dst.shape
        if n == 0 or cols == 0:
            return
        row_bytes = cols * max(src.element_size(), dst.element_size())
        chunk = max(1, self.slot_bytes // row_bytes // 2)  # leave room for a row span wider than the chunk
        if chunk * cols * src.element_size() > self.slot_bytes or chunk * cols * dst.element_size() > self.slot_bytes:
            raise ValueError(f"staging budget too small for one row of {cols} columns")
        slots = self._slots()
        for i, a in enumerate(range(0, n, chunk)):
            b = min(n, a + chunk)
            slot = slots[i % 2]
            self._drain(slot)
            if rows is None:
                lo, idx = a, None
                span = b - a
            else:
                r = rows[a:b]
                lo, hi = int(r.min()), int(r.max()) + 1
                span, idx = hi - lo, r - lo
                if span * cols * src.element_size() > self.slot_bytes:  # scattered rows: gather on the host
                    lo, span, idx = None, b - a, r
            host_in = slot["in"][: span * cols * src.element_size()].view(src.dtype).view(span, cols)
            if lo is None:
                torch.index_select(src, 0, torch.from_numpy(idx), out=host_in)
                idx = None
            else:
                host_in.copy_(src[lo : lo + span])
            host_out = slot["out"][: (b - a) * cols * dst.element_size()].view(dst.dtype).view(b - a, cols)
            dev_in = slot["dev_in"][: host_in.numel() * src.element_size()].view(src.dtype).view(span, cols)
            dev_out = slot["dev_out"][: host_out.numel() * dst.element_size()].view(dst.dtype).view(b - a, cols)
            ctx = torch.cuda.stream(slot["stream"]) if self.cuda else _null()
            with ctx:
                dev_in.copy_(host_in, non_blocking=True)
                dev_rows = None if idx is None else torch.from_numpy(np.ascontiguousarray(idx)).to(self.device, non_blocking=True)
                gather_cast(dev_in, dev_rows, dev_out, backend=self.backend)
                host_out.copy_(dev_out, non_blocking=True)
                if self.cuda:
                    slot["event"] = torch.cuda.Event()
                    slot["event"].record(slot["stream"])
            slot["pending"] = (host_out, dst[a:b], dev_rows)
        for slot in slots:
            self._drain(slot)

    @staticmethod
    def _drain(slot) -> None:
        if slot["pending"] is None:
            return
        if slot["event"] is not None:
            slot["event"].synchronize()
        host_out, dst, _ = slot["pending"]
        dst.copy_(host_out)
        slot["pending"] = None
        slot["event"] = None


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
