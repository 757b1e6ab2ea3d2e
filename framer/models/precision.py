"""Mixed precision: what follows ``torch.autocast`` and what always runs in the parameters' dtype.

Under ``torch.autocast`` (what Lightning's ``precision="bf16-mixed"`` and ``"16-mixed"`` turn on) only the dense
per-atom layers run in bfloat16 / float16: the attention's input and output projections (W_q, W_k, W_v stacked, and
out_proj) and the feed-forward blocks. Everything else runs in the dtype of the parameters (float32 in mixed
precision), with autocast switched off:

- the periodic graph (edge vectors, image boxes, the lattice sums' images) and the fixed frames;
- inside each attention layer, everything between the projections: the sigma standardisation and the Gaussian
  exponents a, the query-key logits, the lattice sums (exp, log-sum-exp), the image weights, the distance and
  angle features (Gaussian bases, the angle tables and their bag sums), the frames and their tie decisions, the
  softmax over atoms and the message sums;
- the readout (mean over atoms and MLP), so that predictions and the loss are float32: a bfloat16 prediction
  would be rounded to 2^-8 of its size, a visible fraction of the paper's errors.

Why: exp(a d²) with d² up to ~100 Å² and the log-sum-exp over images lose their accuracy in 8 (bfloat16) or 11
(float16) mantissa bits; squared lengths that decide frame ties and image pruning need more resolution than that;
and the scatter sums (index_add over edges) would accumulate in low precision. The projections are plain matrix
products whose low-precision kernels accumulate in float32.
"""

from __future__ import annotations

import contextlib

import torch


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """A block in which autocast is off on ``device`` (so operations run in their inputs' dtype)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
