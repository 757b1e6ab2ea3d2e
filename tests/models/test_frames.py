"""Frame rules on the inputs where they meet ties: right angles, equal lengths, degenerate spectra, half-integer
fractional differences; and the exact image box."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from framer.data.structures import CrystalRecord
from framer.geometry import MAX_SIGMA, image_offsets, tolerance_image_box
from framer.models import CrystalFramer
from framer.models.frames import lattice_frames, max_frames, pca_frames, weighted_pca_frames
from framer.models.moments import PCA, principal_frames
from framer.models.periodic import PeriodicGraph
from framer.models.ties import lexicographic_choice, segment_argmax
from framer.testing import make_batch, random_crystal, random_rotation, rotate

from .structures import bcc_iron, random_centrosymmetric, random_orthogonal, simple_cubic


def _lattice(record) -> torch.Tensor:
    return torch.from_numpy(record.lattice).unsqueeze(0)


@pytest.mark.parametrize("cubic", [False, True])
def test_lattice_frames_rotate_with_orthogonal_cells(cubic: bool) -> None:
    """Right angles (f1.f2 = 0) and equal lengths are ties: the frame must not depend on how rounding falls."""
    for seed in range(6):
        record = random_orthogonal(1, seed=seed, cubic=cubic)
        box = torch.tensor([[2, 2, 2]])
        frame = lattice_frames(_lattice(record), box)[0]
        for turn in range(4):
            rotation = torch.from_numpy(random_rotation(10 * seed + turn))
            turned = lattice_frames(_lattice(rotate(record, rotation.numpy())), box)[0]
            assert torch.allclose(turned, frame @ rotation.T, atol=1e-12)


def test_half_integer_fractional_differences_are_decided_one_way() -> None:
    """bcc: the two atoms differ by exactly (1/2, 1/2, 1/2); the minimum-image vector must be the same (rotated)
    whichever way rounding falls, so that the image box is centred the same way."""
    record = bcc_iron()
    batch = make_batch([record])
    graph = PeriodicGraph(batch.pos, batch.lattice, batch.sizes, batch.image_box)
    for seed in range(8):
        rotation = torch.from_numpy(random_rotation(seed))
        turned = make_batch([rotate(record, rotation.numpy())])
        other = PeriodicGraph(turned.pos, turned.lattice, turned.sizes, turned.image_box)
        assert torch.allclose(other.vectors, graph.vectors @ rotation.T, atol=1e-12)
    assert torch.allclose(graph.vectors[1], torch.full((3,), 2.87 / 2, dtype=torch.float64))  # +1/2, not -1/2


def test_pca_frames_fall_back_to_the_lattice_frame_on_degenerate_spectra() -> None:
    """One- and two-atom cells have no principal axes (equal eigenvalues): the orthonormalised lattice frame."""
    for record in (simple_cubic(), bcc_iron(), random_orthogonal(2, seed=3)):
        batch = make_batch([record])
        frame = pca_frames(batch.pos, batch.sizes, batch.lattice, batch.image_box)[0]
        lattice = lattice_frames(batch.lattice, batch.image_box)[0]
        assert torch.allclose(frame[0], lattice[0], atol=1e-12)
        expected_e2 = lattice[1] - (lattice[1] @ lattice[0]) * lattice[0]
        assert torch.allclose(frame[1], expected_e2 / expected_e2.norm(), atol=1e-12)
        assert torch.allclose(frame @ frame.T, torch.eye(3, dtype=frame.dtype), atol=1e-12)
    generic = make_batch([random_crystal(4, seed=2)])
    frame = pca_frames(generic.pos, generic.sizes, generic.lattice, generic.image_box)[0]
    centred = generic.pos - generic.pos.mean(0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    assert torch.allclose(frame[0].abs(), vectors[:, 2].abs(), atol=1e-12)  # a generic cell keeps its PCA axes


def _moments(points: torch.Tensor) -> torch.Tensor:
    return PCA(points).sum(0)


def test_principal_frames_are_equivariant_in_centrosymmetric_environments() -> None:
    """Every third moment of a centrosymmetric point set vanishes; the fourth moments still orient the axes, so
    the frame of a rotated set is the rotated frame (the old third-moment rule left the signs to rounding)."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        half = torch.from_numpy(rng.normal(size=(4, 3)))
        weights = torch.from_numpy(rng.uniform(0.5, 2.0, size=(4, 1)))
        points, point_weights = torch.cat([half, -half]), torch.cat([weights, weights])
        frame, degenerate = principal_frames((PCA(points) * point_weights).sum(0))
        assert not degenerate
        for seed in range(4):
            rotation = torch.from_numpy(random_rotation(seed))
            turned, _ = principal_frames((PCA(points @ rotation.T) * point_weights).sum(0))
            assert torch.allclose(turned, frame @ rotation.T, atol=1e-10)


def test_principal_frames_flag_degenerate_spectra() -> None:
    cube = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=3)), dtype=torch.float64)
    _, degenerate = principal_frames(_moments(cube))
    assert degenerate  # all three eigenvalues equal
    uniaxial = torch.cat([cube, torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, -3.0]], dtype=torch.float64)])
    assert principal_frames(_moments(uniaxial))[1]  # two equal eigenvalues
    assert not principal_frames(_moments(cube * torch.tensor([1.0, 1.1, 1.3], dtype=torch.float64)))[1]


def test_weighted_pca_uses_the_max_frame_where_the_spectrum_is_degenerate() -> None:
    """A cubic environment (simple cubic, bcc) has an isotropic second moment: the max frame of the same attention."""
    batch = make_batch([simple_cubic(), bcc_iron(), random_crystal(3, seed=4)])
    graph = PeriodicGraph(batch.pos, batch.lattice, batch.sizes, batch.image_box)
    torch.manual_seed(0)
    heads = 2
    a = -(0.2 + 0.1 * torch.rand(graph.num_atoms, heads, dtype=torch.float64))
    logits = torch.zeros(graph.num_edges, heads, dtype=torch.float64)
    chunks = graph.chunks()
    z = torch.zeros_like(logits)
    for chunk in chunks:  # log lattice sums, so that alpha p are the normalised image weights
        z[chunk.edges] = torch.logsumexp(
            (a[graph.src[chunk.edges]].unsqueeze(-1) * chunk.dist2.unsqueeze(1)).masked_fill(
                ~chunk.valid.unsqueeze(1), -torch.inf
            ),
            dim=-1,
        )
    alpha = torch.ones_like(logits) / batch.sizes.repeat_interleave(batch.sizes)[graph.src].unsqueeze(1)
    frames = weighted_pca_frames(graph, chunks, a, z, alpha, logits)
    fallback = max_frames(graph, chunks, a, logits, attention=(z, alpha))
    assert torch.allclose(frames[:3], fallback[:3])  # the cubic atoms
    assert not torch.allclose(frames[3:], fallback[3:])  # the generic crystal keeps its PCA frames


def test_exact_image_box_holds_every_image_above_the_tolerance() -> None:
    """Brute force over a large box: every image within sqrt(d_nn² + 2 sigma_max² ln(1/tol)) of its atom, d_nn the
    atom's nearest neighbour image, lies inside the exact box, including for skewed (unreduced) cells."""
    tolerance = 1e-9
    cut = 2.0 * MAX_SIGMA**2 * np.log(1.0 / tolerance)
    skew = np.array([[1, 2, 0], [0, 1, 0], [1, 1, 1]])
    records = [random_crystal(3, seed=8), random_orthogonal(2, seed=9), random_centrosymmetric(1, seed=10)]
    base = records[0]
    records.append(CrystalRecord("skewed", skew @ base.lattice, base.frac_coords, base.atomic_numbers))
    for record in records:
        box = tolerance_image_box(_lattice(record), tolerance)[0].numpy()
        offsets = image_offsets([int(r) + 3 for r in box]).double().numpy()
        diff = record.frac_coords[None, :, :] - record.frac_coords[:, None, :]
        diff = diff - np.floor(diff + 0.5)
        images = (diff[:, :, None, :] + offsets) @ record.lattice  # (N, N, M, 3)
        d2 = (images**2).sum(-1)
        d2[np.arange(record.num_atoms), np.arange(record.num_atoms), 0] = np.inf  # not the self image
        nearest = d2.min(axis=(1, 2))
        inside = d2 <= (nearest[:, None, None] + cut)
        assert (np.abs(offsets[np.nonzero(inside)[2]]) <= box).all(), record.id


def test_image_box_argument() -> None:
    with pytest.raises(ValueError, match="image_box"):
        CrystalFramer(image_box="large")
    with pytest.raises(ValueError, match="image_tolerance"):
        CrystalFramer(image_box="exact", image_tolerance=0.0)


def test_tie_helpers() -> None:
    scores = torch.tensor([[1.0, 0.0], [1.0 + 1e-12, 2.0], [0.5, 2.0 - 1e-12]], dtype=torch.float64)
    rows, best, tied = segment_argmax(scores, torch.tensor([0, 0, 0]), 1)
    assert best.tolist() == [[1.0 + 1e-12, 2.0]]
    assert rows.tolist() == [[0, 1]] and tied.tolist() == [[True, False], [True, True], [False, True]]
    groups = torch.tensor([0, 0, 0, 1])
    keys = [torch.tensor([1.0, 1.0 - 1e-13, 0.0, 3.0], dtype=torch.float64)]
    keys.append(torch.tensor([0.1, 0.3, 0.9, 0.0], dtype=torch.float64))
    index, still = lexicographic_choice(groups, keys, torch.tensor([5, 7, 1, 0]), 3)
    assert index.tolist() == [1, 3, -1] and still.tolist() == [False, False, False]
    index, still = lexicographic_choice(groups, keys[:1], torch.tensor([5, 7, 1, 0]), 3)
    assert index.tolist() == [0, 3, -1] and still.tolist() == [True, False, False]


def test_pca_axis_order_is_a_relabelling(monkeypatch) -> None:
    """The reference orders PCA axes by ascending eigenvalue, framer by descending: the frames (e_small, -e_mid,
    e_large) and (e_large, e_mid, e_small) give the same outputs once W_1 and W_3 are swapped and W_2 is reversed
    along its basis (b_angl(-c) is b_angl(c) reversed), so the order changes no prediction the model can learn."""
    import framer.models.crystalframer as module

    batch = make_batch([random_crystal(n, seed=10 + n) for n in (3, 4, 5)])
    torch.manual_seed(0)
    model = CrystalFramer.preset("crystalframer-pca", num_layers=2, model_dim=16, num_heads=2, angle_grid=0).double()
    model.eval()
    with torch.no_grad():
        descending = model(batch)
        original = module.pca_frames
        monkeypatch.setattr(
            module,
            "pca_frames",
            lambda *args: original(*args)[:, [2, 1, 0]] * torch.tensor([[1.0], [-1.0], [1.0]], dtype=torch.float64),
        )
        for block in model.blocks:
            weight = block.attention.angle_proj
            weight.copy_(torch.stack([weight[2], weight[1].flip(-1), weight[0]]))
        ascending = model(batch)
    assert (ascending - descending).abs().max() < 1e-12 * descending.abs().max()
