"""Max frames and static local frames (docs/model.md, "What the model computes"), with ties decided independently
of the cell.

A frame is a (..., 3, 3) tensor whose row m is the axis f_m. f1 is the direction of the image with the best score
s_ijn = q_i k_j / sqrt(d) + a_ih d²_ijn (static frame: a_ih d²_ijn); f2 that of the best image by
s + log(max(1 - |cos(r, f1)|, 1e-5)) among images with |cos(r, f1)| < 0.9999, orthogonalised against f1;
f3 = f1 x f2. Self images are never candidates. Both maximisations run in two stages: best image per edge and
head, then best edge per atom and head.

Ties. Scores within the tie tolerance (:mod:`framer.models.ties`) are ties; symmetric crystals are full of them.
Without the layer's attention the first candidate wins (lattice-index order of the images, then edge
order): that is independent of the orientation, but not of the cell or of the order of the atoms. With it (as in
the model), the candidates of a tied (atom, head) pair are compared by keys that every cell and atom order share
(:meth:`_Ties.decide`), and frames still tied after every key get their f3 oriented (:func:`orient_f3`). The
environments are the first and second moments of each atom's images weighted by its attention, alpha_ij p_ijn,
computed only for atoms with ties: those of the first axis are known before the layer's lattice-sum pass
(:func:`first_axis`), which then sums their edges' moments with the weights it computes anyway
(:class:`LayerAttention`); the others get a pass of their own (:meth:`_Ties.decide`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from framer.models.moments import Monomials, attention_moments
from framer.models.periodic import ImageChunk, ImageChunks, PeriodicGraph, segment_ids
from framer.models.ties import lexicographic_choice, near_max, segment_argmax, tie_tolerance

COLLINEAR_COS = 0.9999  # second-axis candidates must satisfy |cos(r, f1)| < this
MIN_ONE_MINUS_COS = 1e-5  # floor inside log(1 - |cos|)
ENVIRONMENT = Monomials((1, 2))  # first and second moments of an atom's weighted images
# moments along the frame axes that change sign with f3, in the order they decide (degree 2 first: in
# centrosymmetric environments the first moment vanishes)
ODD_IN_F3 = [(0, 2), (1, 2), (2,)]


def normalize(v: Tensor, eps: float = 1e-12) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def least_aligned_axis(v: Tensor) -> Tensor:
    """The Cartesian unit vector least aligned with each v (deterministic fallback direction)."""
    axes = torch.arange(3, device=v.device)
    return (v.abs().argmin(dim=-1, keepdim=True) == axes).to(v.dtype)  # one_hot would check the indices (a sync)


def complete_frame(e1: Tensor, raw2: Tensor, valid2: Tensor) -> Tensor:
    """Gram-Schmidt on (e1, raw2), e3 = e1 x e2; an invalid raw2 is replaced by the least aligned Cartesian axis."""
    raw2 = torch.where(valid2.unsqueeze(-1), raw2, least_aligned_axis(e1))
    e2 = normalize(raw2 - (raw2 * e1).sum(-1, keepdim=True) * e1)
    return torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=-2)


class LayerAttention(NamedTuple):
    """A layer's attention, from which frame ties are decided.

    Attributes:
        z: (E, H) log lattice sums, so that p_ijn = exp(a_ih d²_ijn - z_ijh); alpha: (E, H) attention weights.
        edge_moments: (E, H, 9) the ``ENVIRONMENT`` moments of each edge's images weighted by p_ijn, for the edges
            of the atoms ``moment_atoms`` (N,) (zero elsewhere); or None.
        first: :func:`first_axis` of the layer, if already computed.
    """

    z: Tensor
    alpha: Tensor
    edge_moments: Tensor | None = None
    moment_atoms: Tensor | None = None
    first: FirstAxis | None = None


class FirstAxis(NamedTuple):
    """f1 by the first candidate (see :func:`first_axis`)."""

    score: Tensor  # (E, H) scores of the edges' nearest images
    edge: Tensor  # (N, H) the best edge
    best: Tensor  # (N, H) its score
    tied_edges: Tensor  # (E, H) the edges tied with it
    tied: Tensor  # (N, H) whether the pair has more than one candidate (counting each edge's tied images)
    any_tied: bool  # whether any pair is tied (read once on the host)


class _Candidates(NamedTuple):
    """Tied candidate directions: (K,) edge, head, label (lattice-index order), score and (K, 3) unit vectors."""

    edge: Tensor
    head: Tensor
    label: Tensor
    score: Tensor
    unit: Tensor


@torch.no_grad()
def max_frames(
    graph: PeriodicGraph,
    chunks: ImageChunks,
    a: Tensor,
    logits: Tensor | None = None,
    tie_logits: Tensor | None = None,
    attention: LayerAttention | tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Max frames (N, H, 3, 3), or static local frames when ``logits`` is None.

    Args:
        chunks: the images to consider (``graph.chunks()`` or ``graph.layer_chunks(...)``).
        a: (N, H) Gaussian exponents a_ih < 0 (detached).
        logits: (E, H) q_i k_j / sqrt(d), or None for the static local frame (score a d² only).
        tie_logits: (E, H) logits that only break ties (the static frame's first tie-breaker: among equally near
            images, the one the head attends to most).
        attention: the layer's attention (:class:`LayerAttention`, or the pair (z, alpha)); with it ties are decided
            by keys shared by every cell and atom order, without it by lattice-index and edge order.
    """
    src, n, heads = graph.src, graph.num_atoms, a.shape[1]
    head_ids = torch.arange(heads, device=a.device)
    attention = LayerAttention(*attention) if attention is not None else None
    ties = _Ties(graph, chunks, a, tie_logits, attention) if attention is not None else None

    # f1: the best edge by the score of its nearest image
    _, near_unit, near_count = graph.nearest_image
    first = attention.first if attention is not None else None
    score1, edge1, best1, tied1, tied, any_tied = first or first_axis(graph, a, logits, tie_logits)
    e1 = near_unit[edge1, :]  # (N, H, 3)
    e1 = torch.where(torch.isfinite(best1).unsqueeze(-1), e1, torch.eye(3, dtype=a.dtype, device=a.device)[0])
    if ties is not None and any_tied:
        e1 = ties.decide(tied, _first_axis_candidates(graph, score1, tied1 & tied[src], near_count), e1)

    # f2: the best image of each edge, then the best edge
    image_scores, image_units, image_packed = [], [], []
    for chunk in chunks:
        score = second_axis_scores(chunk, e1[src[chunk.edges]], a[src[chunk.edges]])
        best_score, best = score.max(dim=2)  # (C, H); ties within an edge are looked at below, where they matter
        rows = torch.arange(len(best), device=best.device).unsqueeze(1)
        image_scores.append(best_score)
        image_units.append(chunk.unit[rows, best])
        image_packed.append(chunk.packed[rows, best])
    score2 = chunks.to_edge_order(image_scores)
    if logits is not None:
        score2 = score2 + logits
    edge2, best2, tied2 = segment_argmax(score2, src, n, tie_logits)
    units = chunks.to_edge_order(image_units)
    raw2 = units[edge2, head_ids]

    # the tied images within the candidate edges that have images of equal lengths (only those can tie)
    edge, head = torch.nonzero(tied2 & graph.equal_lengths.unsqueeze(1), as_tuple=True)
    best_image = score2[edge, head] - (0.0 if logits is None else logits[edge, head])
    count, first_tied, within = _tied_images(graph, chunks.counts, e1, a, logits, edge, head, best_image)
    if ties is None:  # the first in lattice-index order
        winner = edge == edge2[src[edge], head]
        raw2[src[edge[winner]], head[winner]] = first_tied[winner]
        return complete_frame(e1, raw2, torch.isfinite(best2))

    per_edge = torch.ones_like(score2, dtype=torch.long).index_put_((edge, head), count)
    tied = torch.zeros_like(a).index_add_(0, src, (tied2 * per_edge).to(a.dtype)) > 1
    if tied.any():
        # candidates: the best image of each tied edge without equal lengths, all tied images of the others
        e, h = torch.nonzero(tied2 & ~graph.equal_lengths.unsqueeze(1) & tied[src], as_tuple=True)
        labels = graph.image_label[chunks.to_edge_order(image_packed)[e, h]]
        single = _Candidates(e, h, labels, score2[e, h], units[e, h])
        # ``within`` may hold candidates of pairs that are not tied: their choices are not used (no filtering: a sync)
        raw2 = ties.decide(tied, _Candidates(*map(torch.cat, zip(single, within))), raw2)
    return orient_f3(complete_frame(e1, raw2, torch.isfinite(best2)), ties.undecided, ties.environment)


def _tied_images(
    graph: PeriodicGraph,
    counts: Tensor,
    e1: Tensor,
    a: Tensor,
    logits: Tensor | None,
    edge: Tensor,
    head: Tensor,
    best: Tensor,
) -> tuple[Tensor, Tensor, _Candidates]:
    """The images tied for the best second-axis score ``best`` (R,) (without logits) within each row (edge, head):
    per row, their number (R,) and the first of them in lattice-index order (R, 3); and all of them as candidates.
    A score a d² + log(1 - |cos|) is at most a d², so only the first images of each edge, with d² <= best / a, can
    tie (:meth:`PeriodicGraph.leading_images`)."""
    src = graph.src
    s = src[edge]
    margin = 2.0 * tie_tolerance(a.dtype) * (best.abs() + (0.0 if logits is None else logits[edge, head].abs()) + 1.0)
    limit = (best - margin) / a[s, head]  # d² of the farthest image that could tie (a < 0)
    chunk = graph.packed_chunk(edge, *graph.leading_images(graph.image_start[edge], counts[edge], limit))
    score = second_axis_scores(chunk, e1[s, head].unsqueeze(1), a[s, head].unsqueeze(1))[:, 0]  # (R, window)
    if logits is not None:
        score = score + logits[edge, head].unsqueeze(1)
    near = near_max(score, score.amax(dim=1, keepdim=True)) & torch.isfinite(score)
    labels = graph.image_label[chunk.packed]  # lattice-index order of each image within its edge's box
    pick = torch.where(near, labels, torch.iinfo(labels.dtype).max).argmin(dim=1)
    first = chunk.unit[torch.arange(len(edge), device=edge.device), pick]
    r, c = torch.nonzero(near, as_tuple=True)
    return near.sum(dim=1), first, _Candidates(edge[r], head[r], labels[r, c], score[r, c], chunk.unit[r, c])


class _Ties:
    """Decides the ties of the (atom, head) pairs of one max-frame computation."""

    def __init__(
        self, graph: PeriodicGraph, chunks: ImageChunks, a: Tensor, tie_logits: Tensor | None, attention: LayerAttention
    ):
        self.graph, self.chunks, self.a, self.tie_logits, self.attention = graph, chunks, a, tie_logits, attention
        self.undecided = torch.zeros_like(a, dtype=torch.bool)
        if attention.edge_moments is None:
            self.environment = a.new_zeros(graph.num_atoms, a.shape[1], ENVIRONMENT.size)
            self.computed = torch.zeros(graph.num_atoms, dtype=torch.bool, device=a.device)
        else:
            weighted = attention.edge_moments * attention.alpha.unsqueeze(-1)
            self.environment = torch.zeros_like(weighted[: graph.num_atoms]).index_add_(0, graph.src, weighted)
            self.computed = attention.moment_atoms.clone()

    def decide(self, tied: Tensor, candidates: _Candidates, current: Tensor) -> Tensor:
        """The directions (N, H, 3) of ``current`` with those of the ``tied`` pairs chosen among ``candidates``.

        Per (atom, head): the candidate best in its score, then in ``tie_logits``, then in the first and second
        moments of the atom's weighted images along its direction, each compared within the tie tolerance; only then
        the first in edge and lattice-index order. Pairs whose candidates are still tied after every key (related by
        a symmetry of the environment: a rotation, or a mirror that :func:`orient_f3` accounts for) are recorded in
        ``undecided``.
        """
        needed = tied.any(dim=1) & ~self.computed
        if needed.any():  # sum the environments of the atoms that the layer's lattice-sum pass did not cover
            edges = torch.nonzero(needed[self.graph.src]).squeeze(1)
            chunks = self.graph.subset_chunks(edges, self.chunks.counts)
            z, alpha = self.attention.z, self.attention.alpha
            self.environment += attention_moments(self.graph, chunks, ENVIRONMENT, self.a, z, alpha)
            self.computed |= needed
        src, heads = self.graph.src, tied.shape[1]
        edge, head = candidates.edge, candidates.head
        keys = [candidates.score] + ([self.tie_logits[edge, head]] if self.tie_logits is not None else [])
        keys += direction_keys(self.environment[src[edge], head], candidates.unit)
        order = edge * self.graph.label_span + candidates.label.long()
        index, still = lexicographic_choice(src[edge] * heads + head, keys, order, self.graph.num_atoms * heads)
        self.undecided |= tied & still.view_as(tied)
        chosen = candidates.unit[index.clamp_min(0)].view_as(current)  # pairs without candidates keep ``current``
        return torch.where((tied & (index >= 0).view_as(tied)).unsqueeze(-1), chosen, current)


@torch.no_grad()
def first_axis(graph: PeriodicGraph, a: Tensor, logits: Tensor | None, tie_logits: Tensor | None) -> FirstAxis:
    """f1 by the first candidate, and where it is a tie (the layer can compute it before its lattice sums, to
    sum the environments of the atoms with ties there)."""
    near_d2, _, near_count = graph.nearest_image
    score = a[graph.src] * near_d2.unsqueeze(1)  # a_ih d² (+ logits) of each edge's nearest image
    if logits is not None:
        score = score + logits
    edge, best, tied_edges = segment_argmax(score, graph.src, graph.num_atoms, tie_logits)
    count = torch.zeros_like(a).index_add_(0, graph.src, tied_edges * near_count.unsqueeze(1).to(a.dtype))
    tied = count > 1
    return FirstAxis(score, edge, best, tied_edges, tied, bool(tied.any()))


def second_axis_scores(chunk: ImageChunk, e1: Tensor, a: Tensor) -> Tensor:
    """(C, H, m) scores a d² + log(max(1 - |cos(r, f1)|, 1e-5)) of a chunk's images; -inf where not admissible.
    ``e1`` (C, H, 3) and ``a`` (C, H) are f1 and the Gaussian exponents of each edge's source atom."""
    cos = torch.bmm(e1, chunk.unit.transpose(1, 2)).abs_()  # (C, H, m): |cos(r, f1)|
    invalid = (chunk.self_image | ~chunk.valid).unsqueeze(1) | (cos >= COLLINEAR_COS)
    score = cos.neg_().add_(1.0).clamp_(min=MIN_ONE_MINUS_COS).log_()
    return score.add_(a.unsqueeze(-1) * chunk.dist2.unsqueeze(1)).masked_fill_(invalid, -torch.inf)


def _first_axis_candidates(graph: PeriodicGraph, score: Tensor, tied_edges: Tensor, near_count: Tensor) -> _Candidates:
    """The f1 candidates of the ``tied_edges`` (E, H): every image tied with the edge's nearest one."""
    edge, head = torch.nonzero(tied_edges & (near_count > 0).unsqueeze(1), as_tuple=True)
    count = near_count[edge]
    repeat = segment_ids(count)
    offset = torch.arange(len(repeat), device=edge.device) - (torch.cumsum(count, 0) - count)[repeat]
    first_near = graph.image_start + (graph.src == graph.dst).long()  # the self image comes first in its list
    edge, head = edge[repeat], head[repeat]
    image = first_near[edge] + offset
    return _Candidates(edge, head, graph.image_label[image], score[edge, head], normalize(graph.image_vectors[image]))


def _bounds(environment: Tensor) -> dict[int, Tensor]:
    """Bounds of the moments along a unit vector: |sum w (r.u)| <= sqrt(sum w |r|²) (the weights sum to at most
    1) and |sum w (r.u)(r.v)| <= sum w |r|²."""
    trace = ENVIRONMENT.full(environment, 2).diagonal(dim1=-2, dim2=-1).sum(-1)
    trace = trace.clamp_min(torch.finfo(environment.dtype).tiny)
    return {1: trace.sqrt(), 2: trace}


def direction_keys(environment: Tensor, unit: Tensor) -> list[Tensor]:
    """The first and second moments (K,) of environments (K, 9) along directions ``unit`` (K, 3), each divided by
    its bound (so in [-1, 1])."""
    axis = unit.unsqueeze(1)
    bounds = _bounds(environment)
    first = ENVIRONMENT.along(environment, 1, axis)[:, 0] / bounds[1]
    second = ENVIRONMENT.along(environment, 2, axis)[:, 0, 0] / bounds[2]
    return [first, second]


def orient_f3(frames: Tensor, which: Tensor, environment: Tensor) -> Tensor:
    """Negate f3 of the frames ``which`` (N, H) whose first non-vanishing moment odd in f3 (``ODD_IN_F3``:
    sum w (r.f1)(r.f3), sum w (r.f2)(r.f3), sum w (r.f3)) is negative.

    Candidates tied in every key are related by a symmetry of the environment: a rotation gives the same angle
    features, a mirror those of the frame with f3 negated (f3 = f1 x f2 flips relative to the mirrored environment).
    Orienting f3 by a moment odd in it makes every choice give the same features (the frame may be left-handed).
    """
    tolerance = tie_tolerance(frames.dtype)  # computed for every frame and applied to ``which``: no sync
    along = {k: ENVIRONMENT.along(environment, k, frames) for k in (1, 2)}
    bounds = _bounds(environment)
    sign = torch.zeros(which.shape, dtype=frames.dtype, device=frames.device)
    for combo in ODD_IN_F3:
        value = along[len(combo)][(..., *combo)]
        sign = torch.where((sign == 0) & (value.abs() > tolerance * bounds[len(combo)]), torch.sign(value), sign)
    flip = torch.where(which & (sign < 0), -1.0, 1.0).to(frames.dtype)
    return torch.cat([frames[..., :2, :], frames[..., 2:, :] * flip.unsqueeze(-1).unsqueeze(-1)], dim=-2)
