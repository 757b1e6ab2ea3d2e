"""A brute-force transcription of one attention layer as the reference implementation formulates it, with switches
for each of its differences from framer, to measure what each one changes (docs/model.md, "Deviations").

The reference's differences in one layer:

- ``per_head_box``: each (atom, head) sums its own box R_m = max(2, ceil((3.5 sigma_ih + 0.01) / h_m)) instead of
  one box per crystal (framer: ``batch.image_box``, built for the widest sigma).
- ``raw_centre``: the box is centred on the raw difference p_j - p_i instead of the minimum-image difference.
- ``truncated_gaussians``: the kernels evaluate only the Gaussians within 4 widths of each value: 9 of the 64
  distance Gaussians and 33 of the 64 angle Gaussians (D = 64, s_a = 4); terms below e^-8 are dropped.

Frames are given (the same for both), so frame rules are not compared here. Run
``python -m bench.model_checks.reference_formulation`` from the repository root to print the measured effects on the
reference batch and on real crystals (pymatgen's and ase's test structures, from ``tests/models/structures.py``);
``tests/models/test_reference.py`` checks the transcription on small crystals.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from framer.geometry import CUTOFF_IN_SIGMAS, MIN_IMAGE_RANGE, image_offsets, interplanar_spacings
from framer.models import PeriodicAttention
from framer.models.encodings import GaussianBasis

KERNEL_CUT = 4.0  # the kernels' CUT_SIGMA: Gaussians evaluated within 4 widths of the value


def _basis(basis: GaussianBasis, x: torch.Tensor, truncated: bool) -> torch.Tensor:
    """Exact Gaussians exp(-(x - mu)² / (2 width²)); with ``truncated`` zero beyond 4 widths of x."""
    centers = basis.centers(x.dtype)
    offset = (x.unsqueeze(-1) - centers) / basis.width
    values = torch.exp(-0.5 * offset**2)
    return torch.where(offset.abs() <= KERNEL_CUT, values, 0.0) if truncated else values


def reference_layer(
    layer: PeriodicAttention,
    x: torch.Tensor,
    records,
    frames: torch.Tensor | None = None,
    per_head_box: bool = True,
    raw_centre: bool = True,
    truncated_gaussians: bool = True,
) -> torch.Tensor:
    """Layer output (N, dim) for the atoms of ``records`` (in order), computed with explicit loops.

    With every switch off this is framer's formulation with every image of each crystal's ``image_box`` summed
    and every Gaussian evaluated (framer with ``image_tolerance=0, angle_grid=0``).
    """
    n, h, dh = x.shape[0], layer.num_heads, layer.head_dim
    with torch.no_grad():
        q, k, v = layer.in_proj(x).view(n, 3, h, dh).unbind(1)
        a = layer.gaussian_exponent(q)
    out = torch.zeros(n, h, dh, dtype=x.dtype)
    start = 0
    for record in records:
        atoms = range(start, start + record.num_atoms)
        lattice = torch.tensor(record.lattice)
        pos = torch.from_numpy(record.frac_coords @ record.lattice)
        spacing = interplanar_spacings(record.lattice)
        for i in atoms:
            diff = torch.from_numpy(record.frac_coords - record.frac_coords[i - start])
            if not raw_centre:
                diff = diff - torch.floor(diff + (0.5 - 1e-9))
            base = diff @ lattice if not raw_centre else pos - pos[i - start]
            for head in range(h):
                if per_head_box:
                    sigma = math.sqrt(-0.5 / float(a[i, head]))
                    cutoff = CUTOFF_IN_SIGMAS * sigma + 0.01
                    box = np.maximum(MIN_IMAGE_RANGE, np.ceil(cutoff / spacing)).astype(int)
                else:
                    box = record.image_box
                translations = image_offsets(box).to(x.dtype) @ lattice  # (M, 3), zero first
                images = base.unsqueeze(1) + translations  # (n_c, M, 3)
                d2 = (images * images).sum(-1)
                logits = a[i, head] * d2
                z = torch.logsumexp(logits, dim=1)  # (n_c,)
                p = torch.exp(logits - z.unsqueeze(1))
                basis = _basis(layer.dist_basis, d2.sqrt(), truncated_gaussians)  # (n_c, M, K)
                psi = layer.dist_coef * torch.einsum("jm,jmk,ok->jo", p, basis, layer.dist_proj[head])
                if frames is not None:
                    nonself = d2 > 1e-10
                    unit = images / d2.clamp_min(1e-30).sqrt().unsqueeze(-1)
                    weight = p * nonself
                    for m in range(3):
                        cos = unit @ frames[i, head, m]
                        angle = _basis(layer.angle_basis, cos, truncated_gaussians)
                        psi = psi + layer.angle_coef * torch.einsum(
                            "jm,jmd,od->jo", weight, angle, layer.angle_proj[m, head]
                        )
                logit = (k[list(atoms), head] @ q[i, head]) / math.sqrt(dh) + z
                alpha = torch.softmax(logit, dim=0)
                out[i, head] = alpha @ (v[list(atoms), head] + psi)
        start += record.num_atoms
    return layer.out_proj(out.reshape(n, -1))


def measure(records=None, seed: int = 0) -> dict[str, float]:
    """Relative change (max |difference| / max |output|) of one layer's output (float64, default frames "max",
    D = 64, s_a = 4) caused by each reference formulation switch, and framer's agreement with the transcription."""
    from framer.models.periodic import PeriodicGraph
    from framer.testing import make_batch

    if records is None:
        records = _reference_records()
    torch.manual_seed(seed)
    layer = PeriodicAttention(frame="max", angle_grid=0).double().eval()
    batch = make_batch(records)
    x = torch.randn(batch.num_atoms, layer.dim, dtype=torch.float64)
    used = []
    build = layer.dynamic_frames
    layer.dynamic_frames = lambda *args: used.append(build(*args)) or used[-1]
    with torch.no_grad():
        graph = PeriodicGraph(batch.pos, batch.lattice, batch.sizes, batch.image_box, image_tolerance=0)
        exact = layer(x, graph)
        frames = used[0]
        pruned_graph = PeriodicGraph(batch.pos, batch.lattice, batch.sizes, batch.image_box)
    default = _default_path(layer, x, pruned_graph, frames)

    def run(**switches) -> torch.Tensor:
        with torch.no_grad():
            return reference_layer(layer, x, records, frames, **switches)

    off = {"per_head_box": False, "raw_centre": False, "truncated_gaussians": False}
    framer_formulation = run(**off)
    scale = float(exact.abs().max())

    def rel(y: torch.Tensor) -> float:
        return float((y - framer_formulation).abs().max()) / scale

    return {
        "framer exact path vs transcription": rel(exact),
        "framer default path (pruning 1e-9, tabulated angles) vs transcription": rel(default),
        "per-(atom, head) 3.5 sigma box": rel(run(**{**off, "per_head_box": True})),
        "box centred on raw p_j - p_i": rel(run(**{**off, "raw_centre": True})),
        "9/64 distance and 33/64 angle Gaussians": rel(run(**{**off, "truncated_gaussians": True})),
        "all three": rel(run()),
    }


def _default_path(layer: PeriodicAttention, x, graph, frames) -> torch.Tensor:
    """Framer's default path (pruning, tabulated angles) with the given frames."""
    from framer.models.angles import cosine_grid

    layer.angle_grid = 256
    layer.angle_grid_points, layer.angle_spacing = cosine_grid(layer.angle_basis, layer.angle_grid)
    layer._grid_basis_cache = {}
    try:
        with torch.no_grad():
            return layer(x, graph, frames)
    finally:
        layer.angle_grid = 0


def _reference_records():
    """The reference batch of docs/model.md (16 random crystals) as records."""
    from bench.gpu_check.crystals import reference_records

    return reference_records()


def frame_candidate_box_effect(records, seed: int = 0) -> float:
    """Fraction of (atom, head) max frames (f1, f2 by exhaustive search, first candidate on ties) that change when
    the candidates come from each (atom, head)'s own 3.5 sigma box (reference) instead of the crystal's box."""
    from framer.testing import make_batch

    torch.manual_seed(seed)
    layer = PeriodicAttention(frame="max").double().eval()
    batch = make_batch(records)
    x = torch.randn(batch.num_atoms, layer.dim, dtype=torch.float64)
    with torch.no_grad():
        q, k, _ = layer.in_proj(x).view(batch.num_atoms, 3, layer.num_heads, layer.head_dim).unbind(1)
        a = layer.gaussian_exponent(q)
    changed = total = 0
    start = 0
    for record in records:
        atoms = list(range(start, start + record.num_atoms))
        lattice = torch.tensor(record.lattice)
        spacing = interplanar_spacings(record.lattice)
        for i in atoms:
            diff = torch.from_numpy(record.frac_coords - record.frac_coords[i - start])
            base = (diff - torch.floor(diff + (0.5 - 1e-9))) @ lattice
            for head in range(layer.num_heads):
                sigma = math.sqrt(-0.5 / float(a[i, head]))
                own = np.maximum(MIN_IMAGE_RANGE, np.ceil((CUTOFF_IN_SIGMAS * sigma + 0.01) / spacing)).astype(int)
                logits = (k[atoms, head] @ q[i, head]) / math.sqrt(layer.head_dim)
                frames = [_brute_max_frame(base, lattice, box, logits, a[i, head]) for box in (record.image_box, own)]
                changed += int(not torch.allclose(frames[0], frames[1], atol=1e-9))
                total += 1
        start += record.num_atoms
    return changed / total


def _brute_max_frame(base, lattice, box, logits, a) -> torch.Tensor:
    images = base.unsqueeze(1) + image_offsets(box).to(base.dtype) @ lattice  # (n_c, M, 3)
    d2 = (images * images).sum(-1)
    score = (logits.unsqueeze(1) + a * d2).masked_fill(d2 < 1e-10, -torch.inf).flatten()
    unit = (images / d2.clamp_min(1e-30).sqrt().unsqueeze(-1)).reshape(-1, 3)
    f1 = unit[int(score.argmax())]
    cos = (unit @ f1).abs()
    second = (score + torch.log((1 - cos).clamp_min(1e-5))).masked_fill(cos >= 0.9999, -torch.inf)
    raw = unit[int(second.argmax())]
    f2 = raw - (raw @ f1) * f1
    return torch.stack([f1, f2 / f2.norm()])


if __name__ == "__main__":
    from tests.models.structures import dcdft_crystals, pymatgen_crystals, rock_salt

    torch.set_num_threads(1)
    for title, records in [
        ("reference batch (16 random crystals, 4-30 atoms)", None),
        (
            "real crystals (pymatgen and ase test structures, 1-16 atoms)",
            pymatgen_crystals() + dcdft_crystals() + [rock_salt()],
        ),
    ]:
        print(title)
        for name, value in measure(records).items():
            print(f"  {name:75s} {value:.2e}")
        share = frame_candidate_box_effect(records if records is not None else _reference_records())
        print(f"  {'max frames changed by per-(atom, head) candidate boxes (share of frames)':75s} {share:.2e}")
