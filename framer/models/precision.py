"""Mixed precision: under ``torch.autocast`` only the dense per-atom layers (the attention's input and output
projections and the feed-forward blocks) run in bfloat16 / float16; the graph, lattice sums, features, frames,
softmax, message sums and readout run in the parameters' dtype with autocast off (docs/model.md, "Mixed precision",
lists each part and why).
"""

from __future__ import annotations

import contextlib

import torch


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """A block in which autocast is off on ``device`` (so operations run in their inputs' dtype)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
