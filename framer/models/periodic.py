"""Edges and periodic images of a batch, built once per forward and shared by every layer (docs/model.md, "How it
is computed": edges, image boxes, pruning and chunks).

Every ordered pair (i, j) of atoms of one crystal, i = j included, is an edge, with the minimum-image vector
r_ij = (f_j - f_i - k) L (a component within the tie tolerance of +-1/2 becomes +1/2, never decided by rounding).
Its images r_ij + n L inside the crystal's box are pruned (``image_tolerance``) and kept as one packed list sorted
by distance, each with its lattice-index position in the box (``image_label``: frames break ties with it,
:mod:`framer.models.ties`). Each pass cuts the edges, sorted by image count, into padded chunks
(:class:`ImageChunk`) whose temporaries stay below ``chunk_size`` elements. Everything here is geometry and carries
no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from framer.geometry import R0, RHO_LOWER_BOUND, image_offsets
from framer.models.precision import full_precision
from framer.models.ties import segment_reduce, tie_tolerance

MAX_EXPONENT_MAGNITUDE = 0.5 / R0**2  # |a| = rho / (2 R0²) with rho > RHO_LOWER_BOUND: this times RHO_LOWER_BOUND
DEFAULT_IMAGE_TOLERANCE = 1e-9
# the packed kept images (P, ...) of all edges: vectors (Å), squared lengths, self-image flags, edges and labels
PACKED_IMAGE_FIELDS = ("image_vectors", "image_dist2", "image_self", "image_edge", "image_label")
CPU_CHUNK_SIZE = 2**22  # 16 MiB per float32 temporary (docs/model.md, "How it is computed")
CUDA_CHUNK_BYTES_PER_ELEMENT = 256  # a chunk's temporary element per 256 bytes of device memory ...
CUDA_CHUNK_SIZE_RANGE = (2**22, 2**27)  # ... within these bounds: 2**27 (512 MiB per float32 temporary) from 32 GiB


def default_chunk_size(device: torch.device | str) -> int:
    """``CPU_CHUNK_SIZE`` on devices other than CUDA (temporaries stay near the caches). On CUDA, total memory / 256
    bytes rounded down to a power of two, within ``CUDA_CHUNK_SIZE_RANGE``: fewer launches and waits (about one per
    chunk and pass, docs/model.md); the 1-2 ``chunk_size`` elements alive at once take 1/64-1/32 of the memory (at
    most 1 GiB in float32)."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_CHUNK_SIZE
    total = torch.cuda.get_device_properties(device).total_memory
    low, high = CUDA_CHUNK_SIZE_RANGE
    return min(high, max(low, 1 << ((total // CUDA_CHUNK_BYTES_PER_ELEMENT).bit_length() - 1)))


def segment_ids(sizes: Tensor, total: int | None = None) -> Tensor:
    """(total,) each i in 0..len(sizes)-1 repeated sizes[i] times, e.g. the crystal of each atom (with ``total``
    given, a CUDA device is not waited for)."""
    return torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes, output_size=total)


def prune_distance2(image_tolerance: float, exponent_magnitude: float | Tensor) -> float | Tensor:
    """Extra squared distance (Å²) beyond which an image's weight exp(-|a| d²) drops below the tolerance."""
    if image_tolerance <= 0:
        return math.inf
    return -math.log(image_tolerance) / exponent_magnitude


def group_by_box(
    image_box: Tensor, host_boxes: list[tuple[int, ...]], item_crystal: Tensor, items_per_crystal: list[int]
) -> list[tuple[tuple[int, ...], Tensor]]:
    """Items (edges, crystals) grouped by the image box of their crystal, without reading the device:
    ``[(box, items), ...]``, the distinct boxes in lexicographic order, each with its items' ids ascending.
    ``host_boxes`` and ``items_per_crystal`` are the boxes (B, 3) and item counts on the host; ``item_crystal`` (I,),
    sorted, is the crystal of each item."""
    distinct = sorted(set(map(tuple, host_boxes)))
    base = max(max(box) for box in distinct) + 1  # keys (r1 base + r2) base + r3 sort like the boxes
    per_box = dict.fromkeys(distinct, 0)
    for count, box in zip(items_per_crystal, host_boxes):
        per_box[tuple(box)] += count
    crystal_key = (image_box * torch.tensor([base * base, base, 1], device=image_box.device)).sum(1)
    grouped = torch.argsort(crystal_key[item_crystal], stable=True)  # items by box, ascending within a box
    return list(zip(distinct, torch.split(grouped, [per_box[box] for box in distinct])))


@dataclass
class ImageChunk:
    """A block of edges with their images, sorted by distance and padded.

    Attributes:
        edges: (C,) global ids of the edges.
        vectors: (C, m, 3) image vectors r_ij + n L, Å (zero on padding).
        dist2: (C, m) squared image lengths (zero on padding), ascending along each row.
        valid: (C, m) False on padding.
        self_image: (C, m) True for the self image (i = j, n = 0).
        packed: (C, m) positions of the images in the graph's packed lists (0 on padding).
    """

    edges: Tensor
    vectors: Tensor
    dist2: Tensor
    valid: Tensor
    self_image: Tensor
    packed: Tensor

    @cached_property
    def unit(self) -> Tensor:
        """(C, m, 3) unit image vectors; the self image and padding get the zero vector."""
        return self.vectors / self.dist2.clamp_min(1e-30).sqrt().unsqueeze(-1)


class ImageChunks(list):
    """The chunks of one pass over all edges, with the permutation back to global edge order and the number of
    images of each edge (``counts``)."""

    def __init__(self, chunks: list[ImageChunk], num_edges: int, counts: Tensor):
        super().__init__(chunks)
        self.counts = counts  # (E,) images of each edge
        order = torch.cat([c.edges for c in chunks])
        self._inverse = torch.empty_like(order)
        self._inverse[order] = torch.arange(num_edges, device=order.device)

    def to_edge_order(self, chunk_values: list[Tensor]) -> Tensor:
        """Concatenate per-chunk results (in chunk order) and put them in global edge order."""
        return torch.cat(chunk_values).index_select(0, self._inverse)  # deterministic, fast backward


class PeriodicGraph:
    """All atom pairs of a flat batch of crystals and their (pruned) periodic images.

    Args:
        pos: (N, 3) Cartesian positions, Å.
        lattice: (B, 3, 3) lattice vectors as rows.
        sizes: (B,) atoms per crystal (atoms of a crystal are contiguous).
        image_box: (B, 3) half-ranges R_m of each crystal's image box.
        chunk_size: largest number of elements of a per-chunk temporary (edges x images x ``width``); None picks
            :func:`default_chunk_size` for the device of ``pos``.
        width: elements per (edge, image) pair of the largest temporary the caller will build.
        image_tolerance: relative image weight below which images are skipped (0 keeps the whole box).
        per_atom_reference: measure the image weights against the nearest non-self image of the source atom over
            all its edges (a property of the crystal) instead of against each edge's own nearest image (which
            depends on the cell: a supercell splits an edge into several). The kept images of atom i are then
            those within the same sphere around it in every cell of the crystal, provided the image box holds that
            sphere (:func:`framer.geometry.tolerance_image_box`). Edges whose images all lie outside it keep none
            (their lattice sum is 0: z = -inf, no attention).

    The graph is geometry: it is built with autocast off (:mod:`framer.models.precision`), in the dtype of ``pos``.
    The host reads the batch's sizes and image boxes once (one ``tolist``) and computes every size from them; after
    that, building the graph waits for the device once per image box and block of edges (the number of kept
    images), and frames wait once more for the tied nearest images (:attr:`nearest_image`).
    """

    def __init__(
        self,
        pos: Tensor,
        lattice: Tensor,
        sizes: Tensor,
        image_box: Tensor,
        chunk_size: int | None = None,
        width: int = 1,
        image_tolerance: float = DEFAULT_IMAGE_TOLERANCE,
        per_atom_reference: bool = False,
    ):
        self.image_tolerance = image_tolerance
        self.per_atom_reference = per_atom_reference
        self.chunk_size = int(chunk_size) if chunk_size is not None else default_chunk_size(pos.device)
        self.width = max(1, int(width))
        self.num_atoms = int(pos.shape[0])
        device = pos.device
        with torch.no_grad(), full_precision(device):
            sizes, image_box = sizes.to(device), image_box.to(device)
            self.image_box = image_box
            # the host reads the batch's metadata once
            host = torch.cat([sizes.unsqueeze(1), image_box.to(sizes.dtype)], dim=1).tolist()
            host_sizes = [row[0] for row in host]
            host_boxes = [tuple(row[1:]) for row in host]
            atom_start = torch.cumsum(sizes, 0) - sizes
            pairs = sizes * sizes
            pair_start = torch.cumsum(pairs, 0) - pairs
            self.num_edges = sum(n * n for n in host_sizes)
            crystal = segment_ids(pairs, self.num_edges)
            local = torch.arange(self.num_edges, device=device) - pair_start[crystal]
            n = sizes[crystal]
            self.src = atom_start[crystal] + torch.div(local, n, rounding_mode="floor")
            self.dst = atom_start[crystal] + local % n
            self.edge_crystal = crystal

            atom_crystal = segment_ids(sizes, self.num_atoms)
            inverse_lattice = torch.linalg.inv_ex(lattice).inverse[atom_crystal]  # inv_ex: no error check (sync)
            atom_frac = torch.einsum("na,nab->nb", pos, inverse_lattice)
            frac = atom_frac[self.dst] - atom_frac[self.src]
            frac = frac - torch.floor(frac + (0.5 - tie_tolerance(frac.dtype)))  # in [-1/2, 1/2], ties -> +1/2
            self.vectors = torch.einsum("ea,eab->eb", frac, lattice[crystal])  # (E, 3) minimum-image edge vectors
            self._build_images(lattice, image_box, host_sizes, host_boxes)

    def _build_images(self, lattice: Tensor, image_box: Tensor, host_sizes: list[int], host_boxes: list[tuple]):
        """Packed kept images of all edges: ``image_*`` (P, ...), ``image_start/count`` and ``reference`` (E,)."""
        cut = prune_distance2(self.image_tolerance, RHO_LOWER_BOUND * MAX_EXPONENT_MAGNITUDE)
        device = lattice.device
        self.image_start = torch.zeros(self.num_edges, dtype=torch.long, device=device)
        self.image_count = torch.zeros(self.num_edges, dtype=torch.long, device=device)
        self.reference = torch.zeros(self.num_edges, dtype=lattice.dtype, device=device)
        parts = {name: [] for name in PACKED_IMAGE_FIELDS}
        filled = 0
        self.label_span = 1  # more than the largest image label (lattice-index position in a box)
        edges_per_crystal = [n * n for n in host_sizes]
        for box, group in group_by_box(image_box, host_boxes, self.edge_crystal, edges_per_crystal):
            offsets = image_offsets(box, device=device).to(lattice.dtype)
            size = offsets.shape[0]
            self.label_span = max(self.label_span, size)
            block = max(1, self.chunk_size // (8 * size))
            for start in range(0, len(group), block):
                edges = group[start : start + block]
                translations = offsets @ lattice[self.edge_crystal[edges]]  # (C, M, 3)
                vectors = self.vectors[edges].unsqueeze(1) + translations
                dist2 = (vectors * vectors).sum(-1)
                self_image = torch.zeros_like(dist2, dtype=torch.bool)
                self_image[:, 0] = self.src[edges] == self.dst[edges]  # image_offsets puts n = 0 first
                reference = dist2.masked_fill(self_image, torch.inf).amin(dim=1)
                count = (dist2 <= (reference + cut).unsqueeze(1)).sum(1)
                dist2, index = torch.sort(dist2, dim=1, stable=True)
                keep = torch.arange(size, device=device) < count.unsqueeze(1)
                kept = torch.nonzero(keep.view(-1)).squeeze(1)  # the block's one wait for the device
                index = index.view(-1).index_select(0, kept)
                rows = torch.div(kept, size, rounding_mode="floor")
                parts["image_vectors"].append(vectors.view(-1, 3).index_select(0, rows * size + index))
                parts["image_dist2"].append(dist2.view(-1).index_select(0, kept))
                parts["image_self"].append(self_image.view(-1).index_select(0, rows * size + index))
                parts["image_edge"].append(edges.index_select(0, rows))  # packing is in box-group order
                parts["image_label"].append(index.int())  # the position in the box is the lattice-index order
                self.image_start[edges] = filled + torch.cumsum(count, 0) - count
                self.image_count[edges] = count
                self.reference[edges] = reference
                filled += len(kept)
        for name, values in parts.items():
            setattr(self, name, torch.cat(values))
        self.prune_reference = self.reference
        if self.per_atom_reference:
            self._keep_atom_spheres(cut)

    def _keep_atom_spheres(self, cut: float) -> None:
        """Drop the packed images beyond the source atom's sphere: d² > (atom's nearest non-self image)² + cut."""
        nearest = segment_reduce(self.reference, self.src, self.num_atoms, "amin", torch.inf)
        self.prune_reference = nearest[self.src]
        keep = self.image_dist2 <= (self.prune_reference + cut)[self.image_edge]
        kept_before = torch.cumsum(keep, 0) - keep.long()  # packed position after filtering (edges stay contiguous)
        self.image_start = kept_before[self.image_start.clamp_max(len(keep) - 1)]
        self.image_count = torch.zeros_like(self.image_count).index_add_(0, self.image_edge, keep.long())
        kept = torch.nonzero(keep).squeeze(1)
        for name in PACKED_IMAGE_FIELDS:
            setattr(self, name, getattr(self, name).index_select(0, kept))

    @property
    def num_images(self) -> int:
        """Number of kept (edge, image) pairs."""
        return int(self.image_dist2.shape[0])

    def chunks(self, counts: Tensor | None = None) -> ImageChunks:
        """Padded chunks over all edges, each edge with its first ``counts`` (E,) images (default: all kept)."""
        counts = self.image_count if counts is None else counts
        edges = torch.arange(self.num_edges, device=counts.device)
        return ImageChunks(self.subset_chunks(edges, counts), self.num_edges, counts)

    def subset_chunks(self, edges: Tensor, counts: Tensor) -> list[ImageChunk]:
        """Padded chunks over some ``edges`` (ascending ids), each with its first ``counts`` (E,) images, sorted by
        decreasing count (so in the order :meth:`chunks` visits them). The host reads the sorted counts once (one
        ``tolist``) and cuts the chunks from them."""
        order = edges[torch.argsort(counts[edges], descending=True, stable=True)]
        sorted_counts = counts[order].tolist()
        chunks, start = [], 0
        while start < len(sorted_counts):
            m = max(1, sorted_counts[start])  # the largest count of this chunk: the padded width
            edges = order[start : start + max(1, self.chunk_size // (m * self.width))]
            columns = torch.arange(m, device=counts.device)
            valid = columns < counts[edges].unsqueeze(1)
            packed = torch.where(valid, self.image_start[edges].unsqueeze(1) + columns, 0)
            chunks.append(self.packed_chunk(edges, packed, valid))
            start += len(edges)
        return chunks

    def leading_images(self, first: Tensor, count: Tensor, limit: Tensor) -> tuple[Tensor, Tensor]:
        """(R, w) packed positions of the first images of R rows (``count`` (R,) images of an edge from the packed
        position ``first`` (R,)) and the mask of those with d² <= ``limit`` (R,). Images are sorted by length, so
        the mask is a prefix of each row; w doubles from 8 until no row's mask reaches its last column."""
        window = 8
        while True:
            columns = torch.arange(window, device=first.device)
            inside = columns < count.unsqueeze(1)
            position = torch.where(inside, first.unsqueeze(1) + columns, 0)
            near = inside & (self.image_dist2[position] <= limit.unsqueeze(1))
            if not bool(near[:, -1].any()):
                return position, near
            window *= 2

    def packed_chunk(self, edges: Tensor, packed: Tensor, valid: Tensor) -> ImageChunk:
        """The chunk of ``edges`` (C,) whose images are at the packed positions ``packed`` (C, m) where ``valid``."""
        return ImageChunk(
            edges=edges,
            vectors=self.image_vectors[packed] * valid.unsqueeze(-1),
            dist2=self.image_dist2[packed] * valid,
            valid=valid,
            self_image=self.image_self[packed] & valid,
            packed=packed,
        )

    def layer_chunks(self, exponent_magnitude: Tensor) -> ImageChunks:
        """Chunks pruned for a layer whose smallest |a| over the heads of each atom is ``exponent_magnitude`` (N,)."""
        if self.image_tolerance <= 0:
            return self.chunks()
        limit = self.prune_reference + prune_distance2(self.image_tolerance, exponent_magnitude)[self.src]  # (E,)
        keep = (self.image_dist2 <= limit[self.image_edge]).long()
        counts = torch.zeros_like(self.image_count).index_add_(0, self.image_edge, keep)
        return self.chunks(counts)

    @cached_property
    def equal_lengths(self) -> Tensor:
        """(E,) whether two non-self images of the edge have squared lengths within the tie tolerance (only such
        edges can hold two images with equal frame scores)."""
        tolerance = tie_tolerance(self.image_dist2.dtype)
        d2, edge = self.image_dist2, self.image_edge
        same = (edge[1:] == edge[:-1]) & ~self.image_self[:-1] & (d2[1:] - d2[:-1] <= d2[1:].clamp_min(1.0) * tolerance)
        flags = torch.zeros(self.num_edges, dtype=torch.long, device=d2.device)
        return flags.index_add_(0, edge[1:], same.long()) > 0  # no boolean-mask indexing (a sync on CUDA)

    @cached_property
    def nearest_image(self) -> tuple[Tensor, Tensor, Tensor]:
        """(E,) squared length and (E, 3) direction of each edge's shortest non-self image, and (E,) the number of
        images within the tie tolerance of it (the first of them in lattice-index order wins). Edges without
        non-self images get an infinite length and a count of 0."""
        tolerance = tie_tolerance(self.image_dist2.dtype)
        limit = self.reference + self.reference.clamp_min(1.0) * tolerance  # inf for edges without non-self images
        first = self.image_start + (self.src == self.dst).long()  # the self image comes first in its edge's list
        position, near = self.leading_images(first, self.image_count - (self.src == self.dst).long(), limit)
        count = near.sum(1)
        big = torch.iinfo(self.image_label.dtype).max
        pick = torch.where(near, self.image_label[position], big).argmin(dim=1)
        index = position.gather(1, pick.unsqueeze(1)).squeeze(1)
        dist2 = torch.where(count > 0, self.image_dist2[index], torch.inf)
        vectors = self.image_vectors[index]
        return dist2, vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-30), count
