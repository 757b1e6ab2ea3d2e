"""CrystalFramer (ICLR 2025) and Crystalformer (ICLR 2024, ``frame="none"``) as one plain ``nn.Module``.

Architecture (docs/model.md, "What the model computes"): one-hot(Z) atom embedding -> ``num_layers`` post-residual
blocks without LayerNorm (T-Fixup initialisation) of periodic attention + ReLU FFN -> mean over the atoms of each
crystal -> MLP -> (B,). Where it deviates from the reference implementation, it follows the papers' stated intent;
docs/model.md, "Deviations from the reference implementation", lists each deviation with its measured effect.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from framer.data.batch import CrystalBatch
from framer.data.structures import MAX_ATOMIC_NUMBER
from framer.geometry import R0, tolerance_image_box
from framer.models.attention import FrameType, PeriodicAttention
from framer.models.frames import lattice_frames, pca_frames
from framer.models.periodic import PeriodicGraph, segment_ids
from framer.models.precision import full_precision

T_FIXUP_GAIN = 0.67
ANGLE_FEATURES = {"angle_basis": 64, "angle_width": 4.0, "dist_coef": 1.0, "angle_coef": 1.0}  # the paper's
LIGHTWEIGHT_ANGLE_FEATURES = {"angle_basis": 16, "angle_width": 1.0, "dist_coef": 1.5, "angle_coef": 6.0}
ImageBox = Literal["paper", "exact"]


class EncoderBlock(nn.Module):
    """x <- x + attention(x); x <- x + W2 relu(W1 x + b1) + b2 (no normalisation)."""

    def __init__(self, dim: int, ff_dim: int, attention: PeriodicAttention):
        super().__init__()
        self.attention = attention
        self.feed_forward = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, dim))

    def forward(self, x: Tensor, graph: PeriodicGraph, frames: Tensor | None = None) -> Tensor:
        x = x + self.attention(x, graph, frames)
        return x + self.feed_forward(x)


class CrystalFramer(nn.Module):
    """Crystal property regressor: ``model(batch)`` maps a :class:`CrystalBatch` to predictions of shape (B,).

    Args:
        frame: frame for the angle features: "max" (CrystalFramer), "static", "weighted_pca", "pca", "lattice",
            or "none" (Crystalformer: distance features only, angle arguments ignored).
        angle_basis: number D of Gaussians per frame axis for the angle cosines.
        angle_width: width scale s_a of the angle Gaussians (width s_a * 2 / (D - 1)).
        dist_coef: coefficient c_dist of the distance features in the value encoding.
        angle_coef: coefficient c_angl of the angle features in the value encoding.
        num_layers: number of attention blocks.
        model_dim: width of the atom features.
        num_heads: attention heads (model_dim must be divisible by it).
        ff_dim: hidden width of the feed-forward blocks.
        dist_basis: number K of distance Gaussians.
        dist_max: largest distance centre r_max, Å (centres k r_max / K, width r_max / K).
        head_dim: hidden width of the readout MLP.
        image_tolerance: skip periodic images whose Gaussian weight is below this fraction of the weight of the
            edge's nearest image (bounded for every sigma the model can produce); 0 sums over the whole image box.
        chunk_size: largest number of elements of a per-chunk temporary in the image sums (memory knob; results
            do not depend on it). None (default): 2**22 on CPU, on CUDA scaled with the device's memory (2**26 on
            16-31 GiB, 2**27 from 32 GiB; :func:`framer.models.periodic.default_chunk_size`).
        recompute: recompute the image features in the backward pass instead of storing them; None decides per
            layer from their size (stores them for typical batches, recomputes for very large cells).
        angle_grid: grid points per angle-Gaussian width of the tabulated angle features (linear interpolation,
            error below 1 / (8 angle_grid²) of a Gaussian's peak); 0 evaluates every Gaussian exactly (slow).
        image_box: "paper" (default) sums each crystal's image box ``batch.image_box``, the paper's truncation at
            3.5 sigma_max, with images pruned relative to each edge's nearest image. "exact" sums, around every
            atom, all images whose weight is above ``image_tolerance`` of the atom's nearest neighbour image (the
            box is recomputed from ``batch.lattice`` to hold them): every cell of a crystal (primitive,
            conventional, supercell, any basis) then gives the same prediction for the frames "none", "max",
            "static" and "weighted_pca", at a higher cost (see docs/model.md, "Invariance").
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "crystalformer": {"frame": "none"},
        "crystalframer": {"frame": "max", **ANGLE_FEATURES},
        "crystalframer-lightweight": {"frame": "max", **LIGHTWEIGHT_ANGLE_FEATURES},
        **{f"crystalframer-{f}": {"frame": f, **ANGLE_FEATURES} for f in ("pca", "lattice", "static", "weighted_pca")},
    }

    def __init__(
        self,
        frame: FrameType = "max",
        angle_basis: int = 64,
        angle_width: float = 4.0,
        dist_coef: float = 1.0,
        angle_coef: float = 1.0,
        num_layers: int = 4,
        model_dim: int = 128,
        num_heads: int = 8,
        ff_dim: int = 512,
        dist_basis: int = 64,
        dist_max: float = 10 * R0,
        head_dim: int = 128,
        image_tolerance: float = 1e-9,
        chunk_size: int | None = None,
        recompute: bool | None = None,
        angle_grid: int = 256,
        image_box: ImageBox = "paper",
    ):
        arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        #: the constructor arguments (plain data), so modules built in Python can be saved and rebuilt from checkpoints
        self.init_args = arguments
        if frame not in ("none", "max", "static", "weighted_pca", "pca", "lattice"):
            raise ValueError(f"unknown frame {frame!r}")
        for name in ("num_layers", "model_dim", "num_heads", "ff_dim", "dist_basis", "head_dim", "chunk_size"):
            if arguments[name] is not None and arguments[name] < 1:
                raise ValueError(f"{name} must be at least 1, got {arguments[name]}")
        if not dist_max > 0:
            raise ValueError(f"dist_max must be positive, got {dist_max}")
        if frame != "none" and angle_basis < 2:
            raise ValueError(f"angle_basis must be at least 2 (Gaussian centres from -1 to 1), got {angle_basis}")
        if frame != "none" and not angle_width > 0:
            raise ValueError(f"angle_width must be positive, got {angle_width}")
        self.frame = frame
        self.image_tolerance = image_tolerance
        self.chunk_size = chunk_size
        self.atom_embedding = nn.Linear(MAX_ATOMIC_NUMBER, model_dim, bias=False)  # one-hot(Z = 1..98) -> x
        attention = (model_dim, num_heads, frame, dist_basis, dist_max, angle_basis, angle_width, dist_coef, angle_coef)
        self.blocks = nn.ModuleList(
            EncoderBlock(model_dim, ff_dim, PeriodicAttention(*attention, recompute, angle_grid))
            for _ in range(num_layers)
        )
        self.head = nn.Sequential(nn.Linear(model_dim, head_dim), nn.ReLU(), nn.Linear(head_dim, 1))
        if image_box not in ("paper", "exact") or (image_box == "exact" and not 0 < image_tolerance < 1):
            raise ValueError(f"image_box={image_box!r} needs 'paper', or 'exact' with 0 < image_tolerance < 1")
        self.image_box = image_box
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """T-Fixup initialisation (docs/model.md, "What the model computes"); the readout MLP keeps PyTorch's
        default initialisation."""
        num_layers = len(self.blocks)
        model_dim = self.atom_embedding.out_features
        nn.init.normal_(self.atom_embedding.weight, 0.0, model_dim**-0.5 * (9 * num_layers) ** -0.25)
        gain = T_FIXUP_GAIN * num_layers**-0.25
        for block in self.blocks:
            block.attention.reset_parameters(value_gain=gain)
            for linear in (block.feed_forward[0], block.feed_forward[2]):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)
                with torch.no_grad():
                    linear.weight.mul_(gain)

    @staticmethod
    def preset_kwargs(name: str) -> dict[str, Any]:
        """Init arguments of a named preset (see ``CrystalFramer.PRESETS``)."""
        try:
            return copy.deepcopy(CrystalFramer.PRESETS[name])
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(CrystalFramer.PRESETS)}") from None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> CrystalFramer:
        """Build a named preset, e.g. ``CrystalFramer.preset("crystalframer-lightweight")``."""
        return cls(**{**cls.preset_kwargs(name), **overrides})

    def graph(self, batch: CrystalBatch) -> PeriodicGraph:
        """Edges and periodic images of ``batch`` (shared by all layers) in the boxes of ``image_box``."""
        exact = self.image_box == "exact"
        boxes = tolerance_image_box(batch.lattice, self.image_tolerance) if exact else batch.image_box
        width = self.blocks[0].attention.pair_width
        return PeriodicGraph(
            batch.pos, batch.lattice, batch.sizes, boxes, self.chunk_size, width, self.image_tolerance, exact
        )

    def prepare(self, batch: CrystalBatch) -> CrystalBatch:
        """``batch`` on the model's device, its floating tensors in the model's dtype (no copy when they are)."""
        weight = self.atom_embedding.weight
        return batch.to(weight.device, weight.dtype)

    def encode(self, batch: CrystalBatch) -> Tensor:
        """Atom features (N, model_dim) after the last block (the batch is first cast as in :meth:`prepare`).

        Under ``torch.autocast`` the graph and the frames are built with autocast off, in the model's dtype, and the
        blocks run their projections in low precision (:mod:`framer.models.precision`); the features stay in the
        model's dtype.
        """
        batch = self.prepare(batch)
        with full_precision(batch.pos.device):
            graph = self.graph(batch)
            frames = self._fixed_frames(batch, graph.image_box)
        # = one-hot(Z) @ W^T; index_select (not advanced indexing) keeps its backward deterministic on CPU threads
        x = self.atom_embedding.weight.index_select(1, batch.atomic_numbers - 1).t()
        for block in self.blocks:
            x = block(x, graph, frames)
        return x

    def forward(self, batch: CrystalBatch) -> Tensor:
        """Predictions (B,) for the crystals of ``batch``.

        The batch's floating tensors are cast to the model's dtype and every tensor is moved to its device first
        (a float32 batch works with a float64 model, and the other way round). The predictions are in the model's
        dtype also under ``torch.autocast``: the readout runs with autocast off.
        """
        batch = self.prepare(batch)
        x = self.encode(batch)
        with full_precision(x.device):
            pooled = x.new_zeros(len(batch.sizes), x.shape[1]).index_add(0, segment_ids(batch.sizes, len(x)), x)
            pooled = pooled / batch.sizes.to(x.device, x.dtype).unsqueeze(1)
            return self.head(pooled).squeeze(-1)

    def _fixed_frames(self, batch: CrystalBatch, image_boxes: Tensor) -> Tensor | None:
        """(N, H, 3, 3) frames for "pca"/"lattice" (the same for every layer, atom of a crystal and head)."""
        if self.frame == "pca":
            per_crystal = pca_frames(batch.pos, batch.sizes, batch.lattice, image_boxes)
        elif self.frame == "lattice":
            per_crystal = lattice_frames(batch.lattice, image_boxes)
        else:
            return None
        heads = self.blocks[0].attention.num_heads
        return per_crystal[segment_ids(batch.sizes, batch.num_atoms)].unsqueeze(1).expand(-1, heads, 3, 3)
