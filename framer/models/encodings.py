"""Gaussian basis expansions of distances and angle cosines (docs/model.md, "What the model computes")."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Subnormal floats (below ~1.2e-38) are 10-100x slower than normal ones on x86 CPUs, both as exp() results and as
# products of two tiny numbers (a Gaussian weight times a Gaussian basis value in the image sums): clamping every
# exponent at -35 keeps the values, and their pairwise products (>= e^-70), normal. e^-35 ~ 6e-16 is zero for every
# purpose of the model (float32 resolves 1e-7 relative to a feature's scale); measured on the reference batch,
# it makes a Crystalformer training step about 1.7x faster than clamping at -80.
MIN_EXPONENT = -35.0


def exp_(x: Tensor) -> Tensor:
    """In-place exp with the exponent clamped at ``MIN_EXPONENT`` (no autograd)."""
    return x.clamp_(min=MIN_EXPONENT).exp_()


def logsumexp_(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(log sum exp x, softmax x) along the last dim over the entries where ``mask`` is True; overwrites x (no
    autograd). Rows with no unmasked entry give -inf and all-zero weights."""
    peak = x.masked_fill_(~mask, -torch.inf).amax(dim=-1, keepdim=True)
    weights = exp_(x.sub_(peak)).masked_fill_(~mask, 0.0)
    total = weights.sum(dim=-1, keepdim=True).clamp_min_(1.0)  # >= 1 (the peak) unless nothing is unmasked
    return (total.log() + peak).squeeze(-1), weights.div_(total)


class GaussianBasis(nn.Module):
    """Expand scalars x into exp(-(x - mu_k)^2 / (2 width^2)) for ``num`` evenly spaced centres mu_k from ``start``
    to ``stop`` (both included).

    The centres are built in the dtype and on the device of the input at each call (and cached), never stored
    in one dtype and cast: a float64 evaluation uses float64 centres whether the model was built in float32 and
    moved with ``.double()`` or built under float64 defaults.

    The expansion is evaluated in place to keep the large per-image temporaries to one allocation, so call it on
    tensors that need no gradient (all image features are built under ``torch.no_grad()``). Values below
    e^-35 are returned as e^-35 (see ``MIN_EXPONENT``).
    """

    def __init__(self, start: float, stop: float, num: int, width: float):
        super().__init__()
        self.start, self.stop, self.num, self.width = float(start), float(stop), num, float(width)
        self.scale = 1.0 / (width * math.sqrt(2.0))
        self._scaled_centers: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def centers(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
        """(num,) centres in ``dtype`` on ``device``."""
        return torch.linspace(self.start, self.stop, self.num, dtype=dtype, device=device)

    def forward(self, x: Tensor, centers_dtype: torch.dtype | None = None) -> Tensor:
        """(...,) -> (..., num), with centres in ``centers_dtype`` (default: the dtype of x)."""
        bound = math.sqrt(-MIN_EXPONENT)
        key = (centers_dtype or x.dtype, x.device)
        if key not in self._scaled_centers:  # computed once per dtype and device
            self._scaled_centers[key] = self.centers(*key) * self.scale
        out = (x * self.scale).unsqueeze(-1) - self._scaled_centers[key]  # (x - mu) / (sqrt(2) width)
        return out.clamp_(-bound, bound).square_().neg_().exp_()

    def extra_repr(self) -> str:
        return f"num={self.num}, centers=[{self.start:.4g}, {self.stop:.4g}], width={self.width:.4g}"


def distance_basis(num: int, max_distance: float) -> GaussianBasis:
    """Distance basis: centres k r_max / K for k = 1..K and width r_max / K (the first centre is not 0)."""
    step = max_distance / num
    return GaussianBasis(step, max_distance, num, step)


def cosine_basis(num: int, width_scale: float) -> GaussianBasis:
    """Cosine basis on [-1, 1]: centres -1 + 2d/(D-1) for d = 0..D-1 (ends included), width s_a 2/(D-1)."""
    step = 2.0 / (num - 1)
    return GaussianBasis(-1.0, 1.0, num, width_scale * step)
