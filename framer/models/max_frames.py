"""Max frames (model-spec §4.1) and static local frames (§4.2), with ties decided independently of the cell.

A frame is a (..., 3, 3) tensor whose row m is the axis f_m. f1 is the direction of the image with the best score
s_ijn = q_i k_j / sqrt(d) + a_ih d²_ijn (static frame: a_ih d²_ijn); f2 that of the best image by
s + log(max(1 - |cos(r, f1)|, 1e-5)) among images with |cos(r, f1)| < 0.9999, orthogonalised against f1;
f3 = f1 x f2. Self images are never candidates. Both maximisations run in two stages: best image per edge and
head, then best edge per atom and head.

Ties. Scores within the tie tolerance (:mod:`framer.models.ties`) are ties. A fast first pass takes the first
candidate (lattice-index order of the images, then edge order), which is independent of the orientation but not of
the cell or of the atom order. The (atom, head) pairs that met a tie are then decided again (:func:`decide_ties`)
with keys computed from the moments of the atom's weighted images, which every cell and atom order share.
"""

from __future__ import annotations

import torch
from torch import Tensor

from framer.models.encodings import exp_
from framer.models.moments import Monomials
from framer.models.periodic import ImageChunk, ImageChunks, PeriodicGraph
from framer.models.ties import first_best, lexicographic_choice, near_max, segment_argmax, tie_tolerance

COLLINEAR_COS = 0.9999  # second-axis candidates must satisfy |cos(r, f1)| < this
MIN_ONE_MINUS_COS = 1e-5  # floor inside log(1 - |cos|)
ENVIRONMENT = Monomials((1, 2, 3))  # first, second and third moments of an atom's weighted images
BOUNDS = 2  # channels after the moments: sum w |r| and sum w |r|^3 (the second moment's bound is its trace)
ODD_IN_F3 = [(2,), (2, 2, 2), (0, 0, 2), (1, 1, 2), (0, 1, 2)]  # moments along the axes that change sign with f3


def normalize(v: Tensor, eps: float = 1e-12) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def least_aligned_axis(v: Tensor) -> Tensor:
    """The Cartesian unit vector least aligned with each v (deterministic fallback direction)."""
    return torch.nn.functional.one_hot(v.abs().argmin(dim=-1), 3).to(v.dtype)


def complete_frame(e1: Tensor, raw2: Tensor, valid2: Tensor) -> Tensor:
    """Gram-Schmidt on (e1, raw2), e3 = e1 x e2; an invalid raw2 is replaced by the least aligned Cartesian axis."""
    raw2 = torch.where(valid2.unsqueeze(-1), raw2, least_aligned_axis(e1))
    e2 = normalize(raw2 - (raw2 * e1).sum(-1, keepdim=True) * e1)
    return torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=-2)


@torch.no_grad()
def max_frames(
    graph: PeriodicGraph,
    chunks: ImageChunks,
    a: Tensor,
    logits: Tensor | None = None,
    tie_logits: Tensor | None = None,
    attention: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Max frames (N, H, 3, 3), or static local frames when ``logits`` is None.

    Args:
        graph: edges and images of the batch.
        chunks: the images to consider (``graph.chunks()`` or ``graph.layer_chunks(...)``).
        a: (N, H) Gaussian exponents a_ih < 0 (detached).
        logits: (E, H) q_i k_j / sqrt(d), or None for the static local frame (score a d² only).
        tie_logits: (E, H) logits that only break ties (the static frame's first tie-breaker: among equally near
            images, the one the head attends to most).
        attention: (z, alpha), each (E, H): the layer's log lattice sums and attention weights. With them, ties
            are decided by :func:`decide_ties`; without them the first candidate wins.
    """
    src, n = graph.src, graph.num_atoms
    near_d2, near_unit, near_count = graph.nearest_image
    score1 = first_axis_scores(a[src], near_d2, logits)
    edge1, best1, tied1 = segment_argmax(score1, src, n, tie_logits)
    heads = torch.arange(a.shape[1], device=a.device)
    e1 = near_unit[edge1, :]  # (N, H, 3)
    e1 = torch.where(torch.isfinite(best1).unsqueeze(-1), e1, torch.eye(3, dtype=a.dtype, device=a.device)[0])

    image_scores, image_units = [], []
    for chunk in chunks:
        score = second_axis_scores(chunk, e1[src[chunk.edges]], a[src[chunk.edges]])
        best = torch.argmax(score, dim=2)  # (C, H); ties are looked at below, for the edges that matter
        image_scores.append(torch.gather(score, 2, best.unsqueeze(-1)).squeeze(-1))
        image_units.append(chunk.unit[torch.arange(len(best), device=best.device).unsqueeze(1), best])
    score2 = chunks.to_edge_order(image_scores)
    if logits is not None:
        score2 = score2 + logits
    edge2, best2, tied2 = segment_argmax(score2, src, n, tie_logits)
    raw2 = chunks.to_edge_order(image_units)[edge2, heads]
    # within the candidate edges (tied2), images tied with the edge's best: the first in lattice-index order wins
    edge, head = torch.nonzero(tied2 & graph.equal_lengths.unsqueeze(1), as_tuple=True)
    chunk = graph.edge_chunk(edge, chunks.counts)
    score = second_axis_scores(chunk, e1[src[edge], head].unsqueeze(1), a[src[edge], head].unsqueeze(1))[:, 0]
    pick, ties = first_best(score, chunk.row_labels)
    winner = edge == edge2[src[edge], head]
    raw2[src[edge[winner]], head[winner]] = chunk.unit[winner.nonzero().squeeze(1), pick[winner]]
    frames = complete_frame(e1, raw2, torch.isfinite(best2))
    if attention is None:
        return frames
    # more than one candidate within the tolerance for f1 or f2 (counting the tied images of each tied edge)
    count1 = torch.zeros_like(a).index_add_(0, src, tied1 * near_count.unsqueeze(1).to(a.dtype))
    count2 = torch.zeros_like(a).index_add_(0, src, tied2.to(a.dtype))  # tied edges, then their tied images
    count2 = count2.index_put_((src[edge], head), ties.to(a.dtype) - 1.0, accumulate=True)
    tied = (count1 > 1) | (count2 > 1)
    if not tied.any():
        return frames
    return decide_ties(graph, chunks, a, logits, tie_logits, attention, tied, frames)


def first_axis_scores(a_edge: Tensor, dist2: Tensor, logits: Tensor | None) -> Tensor:
    """(E, H) scores a_ih d² (+ logits) of each edge's nearest image; ``a_edge`` is a of the edge's source."""
    score = a_edge * dist2.unsqueeze(1)
    return score if logits is None else score + logits


def second_axis_scores(chunk: ImageChunk, e1: Tensor, a: Tensor) -> Tensor:
    """(C, H, m) scores a d² + log(max(1 - |cos(r, f1)|, 1e-5)) of a chunk's images; -inf where not admissible.

    Args:
        chunk: the images.
        e1: (C, H, 3) f1 of the source atom of each edge.
        a: (C, H) Gaussian exponents of the source atoms.
    """
    cos = torch.bmm(e1, chunk.unit.transpose(1, 2)).abs_()  # (C, H, m): |cos(r, f1)|
    invalid = (chunk.self_image | ~chunk.valid).unsqueeze(1) | (cos >= COLLINEAR_COS)
    score = cos.neg_().add_(1.0).clamp_(min=MIN_ONE_MINUS_COS).log_()
    return score.add_(a.unsqueeze(-1) * chunk.dist2.unsqueeze(1)).masked_fill_(invalid, -torch.inf)


@torch.no_grad()
def environment_moments(
    graph: PeriodicGraph, chunks: ImageChunks, atoms: Tensor, a: Tensor, z: Tensor, alpha: Tensor
) -> Tensor:
    """(N, H, 21): the moments of degree 1-3 of the images of each of the ``atoms`` (N,) weighted by
    alpha_ij p_ijn (zero for the other atoms), then sum w |r| and sum w |r|^3."""
    src = graph.src
    total = a.new_zeros(graph.num_atoms, a.shape[1], ENVIRONMENT.size + BOUNDS)
    for whole in chunks:
        rows = torch.nonzero(atoms[src[whole.edges]]).squeeze(1)
        if len(rows) == 0:
            continue
        chunk = whole.select(rows)
        edges = chunk.edges
        logp = a[src[edges]].unsqueeze(-1) * chunk.dist2.unsqueeze(1) - z[edges].unsqueeze(-1)
        weight = exp_(logp).mul_(alpha[edges].unsqueeze(-1)).masked_fill_(~chunk.valid.unsqueeze(1), 0.0)
        length = chunk.dist2.sqrt()
        values = torch.cat([ENVIRONMENT(chunk.vectors), torch.stack([length, length * chunk.dist2], -1)], dim=-1)
        total.index_add_(0, src[edges], torch.bmm(weight, values))
    return total


def direction_keys(moments: Tensor, unit: Tensor) -> list[Tensor]:
    """The first, second and third moments (K,) of environments ``moments`` (K, 21) along directions ``unit``
    (K, 3), each divided by its bound (so in [-1, 1])."""
    tiny = torch.finfo(moments.dtype).tiny
    sums = moments[:, : ENVIRONMENT.size]
    first = ENVIRONMENT.along(sums, 1, unit.unsqueeze(1))[:, 0] / moments[:, -2].clamp_min(tiny)
    second = ENVIRONMENT.along(sums, 2, unit.unsqueeze(1))[:, 0, 0]
    second = second / ENVIRONMENT.full(sums, 2).diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(tiny)
    third = ENVIRONMENT.along(sums, 3, unit.unsqueeze(1))[:, 0, 0, 0] / moments[:, -1].clamp_min(tiny)
    return [first, second, third]


def decide_ties(
    graph: PeriodicGraph,
    chunks: ImageChunks,
    a: Tensor,
    logits: Tensor | None,
    tie_logits: Tensor | None,
    attention: tuple[Tensor, Tensor],
    tied: Tensor,
    frames: Tensor,
) -> Tensor:
    """The frames of the ``tied`` (N, H) (atom, head) pairs decided with keys shared by every cell and atom order.

    Among the candidates within the tie tolerance of the best score (for f1, then for f2 given the new f1), keys
    are compared in turn: ``tie_logits``, then the first, second and third moments of the atom's images weighted
    by alpha_ij p_ijn along the candidate direction (:func:`direction_keys`); only then the first candidate in
    edge and lattice-index order. Candidates still tied after every key are related by a symmetry of the
    environment: a rotation gives the same angle features, a mirror the features of the frame with f3 negated. So
    for those frames f3 = +-(f1 x f2) is chosen to make the first non-vanishing weighted moment among sum w (r.f3),
    sum w (r.f3)^3, sum w (r.f1)^2 (r.f3), sum w (r.f2)^2 (r.f3) and sum w (r.f1)(r.f2)(r.f3) positive (such a
    frame may be left-handed), and every choice among the ties gives the same features.
    """
    src, atoms, heads = graph.src, graph.num_atoms, a.shape[1]
    moments = environment_moments(graph, chunks, tied.any(dim=1), a, *attention)
    span = int(graph.image_label.max()) + 1 if graph.num_images else 1

    def choose(edge: Tensor, head: Tensor, unit: Tensor, label: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
        keys = [score] + ([tie_logits[edge, head]] if tie_logits is not None else [])
        keys += direction_keys(moments[src[edge], head], unit)
        index, still = lexicographic_choice(src[edge] * heads + head, keys, edge * span + label.long(), atoms * heads)
        picked = torch.where(index >= 0, index, 0)
        return torch.where((index >= 0).unsqueeze(-1), unit[picked], torch.nan), still

    e1, still1 = choose(*_first_axis_candidates(graph, a, logits, tied))
    e1 = torch.where(tied.view(-1, 1), e1, frames[..., 0, :].reshape(-1, 3)).view(atoms, heads, 3)
    raw2, still2 = choose(*_second_axis_candidates(graph, chunks, a, logits, tied, e1))
    valid2 = ~torch.isnan(raw2).any(-1).view(atoms, heads)
    decided = complete_frame(e1, torch.nan_to_num(raw2).view(atoms, heads, 3), valid2)
    frames = torch.where(tied.unsqueeze(-1).unsqueeze(-1), decided, frames)
    return orient_f3(frames, tied & (still1 | still2).view(atoms, heads), moments)


def _first_axis_candidates(graph: PeriodicGraph, a: Tensor, logits: Tensor | None, tied: Tensor):
    """(edge, head, unit, label, score) of every f1 candidate of the tied pairs: the images tied with the nearest
    one of each edge whose score ties with the best."""
    edges = torch.nonzero(tied.any(dim=1)[graph.src]).squeeze(1)  # the edges of the atoms with ties
    src = graph.src[edges]
    near_d2, _, near_count = graph.nearest_image
    score = first_axis_scores(a[src], near_d2[edges], None if logits is None else logits[edges])
    best = torch.full_like(a, -torch.inf).scatter_reduce(
        0, src.unsqueeze(1).expand_as(score), score, "amax", include_self=True
    )
    candidate = near_max(score, best[src]) & tied[src] & (near_count[edges] > 0).unsqueeze(1)
    row, head = torch.nonzero(candidate, as_tuple=True)
    count = near_count[edges[row]]
    repeat = torch.repeat_interleave(torch.arange(len(row), device=row.device), count)
    offset = torch.arange(len(repeat), device=row.device) - (torch.cumsum(count, 0) - count)[repeat]
    first_near = graph.image_start + (graph.src == graph.dst).long()  # the self image comes first in its list
    row, head = row[repeat], head[repeat]
    image = first_near[edges[row]] + offset
    return edges[row], head, normalize(graph.image_vectors[image]), graph.image_label[image], score[row, head]


def _second_axis_candidates(
    graph: PeriodicGraph, chunks: ImageChunks, a: Tensor, logits: Tensor | None, tied: Tensor, e1: Tensor
):
    """(edge, head, unit, label, score) of every f2 candidate of the tied pairs given their f1 (N, H, 3)."""
    src, heads = graph.src, a.shape[1]
    atoms = tied.any(dim=1)
    head_ids = torch.arange(heads, device=a.device)
    best = torch.full((graph.num_atoms * heads,), -torch.inf, dtype=a.dtype, device=a.device)
    parts = []
    for whole in chunks:  # scores of the images of the tied atoms' edges, and the best per (atom, head)
        rows = torch.nonzero(atoms[src[whole.edges]]).squeeze(1)
        if len(rows) == 0:
            continue
        chunk = whole.select(rows)
        score = second_axis_scores(chunk, e1[src[chunk.edges]], a[src[chunk.edges]])
        if logits is not None:
            score = score + logits[chunk.edges].unsqueeze(-1)
        group = src[chunk.edges].unsqueeze(1) * heads + head_ids  # (C, H)
        best.scatter_reduce_(0, group.flatten(), score.amax(dim=2).flatten(), "amax")
        parts.append((chunk, score, group))
    edges, head_list, units, labels, scores = [], [], [], [], []
    for chunk, score, group in parts:
        candidate = near_max(score, best[group].unsqueeze(-1)) & torch.isfinite(score)
        row, head, column = torch.nonzero(candidate & tied.view(-1)[group].unsqueeze(-1), as_tuple=True)
        edges.append(chunk.edges[row])
        head_list.append(head)
        units.append(chunk.unit[row, column])
        labels.append(chunk.label[row, column])
        scores.append(score[row, head, column])
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=a.device)
        return empty, empty, a.new_zeros(0, 3), empty, a.new_zeros(0)
    return tuple(torch.cat(values) for values in (edges, head_list, units, labels, scores))


def orient_f3(frames: Tensor, which: Tensor, moments: Tensor) -> Tensor:
    """Negate f3 of the frames ``which`` (N, H) whose first non-vanishing moment odd in f3 (``ODD_IN_F3``) is
    negative."""
    if not which.any():
        return frames
    tolerance = tie_tolerance(frames.dtype)
    sums = moments[..., : ENVIRONMENT.size]
    first = ENVIRONMENT.along(sums, 1, frames)
    third = ENVIRONMENT.along(sums, 3, frames)
    sign = torch.zeros(frames.shape[:-2], dtype=frames.dtype, device=frames.device)
    for combo in ODD_IN_F3:
        value = first[..., combo[0]] if len(combo) == 1 else third[(..., *combo)]
        bound = moments[..., -2] if len(combo) == 1 else moments[..., -1]
        sign = torch.where((sign == 0) & (value.abs() > tolerance * bound), torch.sign(value), sign)
    flip = torch.where(which & (sign < 0), -1.0, 1.0).to(frames.dtype)
    return torch.cat([frames[..., :2, :], (frames[..., 2, :] * flip.unsqueeze(-1)).unsqueeze(-2)], dim=-2)
