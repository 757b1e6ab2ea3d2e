"""Periodic multi-head attention of Crystalformer with CrystalFramer's frame-based angle features (docs/model.md,
"What the model computes": a, z, p, psi and alpha below are its symbols).

The image sums are the expensive part. They run over chunks of edges under ``torch.no_grad()`` (never
materialising an edges x images x heads x basis tensor for the whole batch). Since z and psi depend on the
parameters only through the scalar a_ih of each (edge, head), their exact derivatives d/da are accumulated in the
same pass, dz/da = E_p[d²] and dF/da = sum_n p_ijn (d²_ijn - E_p[d²]) F_n, and attached to the graph as
``F + (a - a.detach()) dF/da``: the value is F and the first derivative is exact (no double backward). Positions
are treated as constants (no forces). When the per-edge image features of a layer would be large (500-atom cells),
each chunk runs under activation checkpointing. Under mixed precision only the input and output projections follow
autocast (:mod:`framer.models.precision`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from framer.geometry import R0, RHO_LOWER_BOUND
from framer.models.angles import chunk_angle_features, cosine_grid, projected_tables
from framer.models.encodings import cosine_basis, distance_basis, exp_, logsumexp_
from framer.models.frames import max_frames, weighted_pca_frames
from framer.models.max_frames import ENVIRONMENT, LayerAttention, first_axis
from framer.models.periodic import ImageChunk, ImageChunks, PeriodicGraph
from framer.models.precision import full_precision
from framer.models.ties import segment_reduce

FrameType = Literal["none", "max", "static", "weighted_pca", "pca", "lattice"]
SIGMA_BETA = 0.1  # `positive_func_beta`
RECOMPUTE_ABOVE = 2**25  # stored image-feature elements per layer above which chunks are checkpointed


def segment_softmax(logits: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Softmax of ``logits`` (E, H) over the rows that share a segment ``index`` (E,)."""
    peak = segment_reduce(logits.detach(), index, num_segments, "amax", -torch.inf)
    weights = torch.exp(logits - peak[index])
    total = weights.new_zeros(num_segments, logits.shape[1]).index_add(0, index, weights)
    return weights / total.index_select(0, index)


def _with_derivative(value: Tensor, derivative: Tensor, a: Tensor) -> Tensor:
    """``value`` (computed without a graph at a) carrying the first derivative ``derivative`` w.r.t. a."""
    shift = a - a.detach()
    return value + shift.view(shift.shape + (1,) * (value.dim() - shift.dim())) * derivative


class PeriodicAttention(nn.Module):
    """One periodic multi-head self-attention layer over all atoms of each crystal; the arguments are those of
    :class:`~framer.models.CrystalFramer` of the same names (``dim`` is its ``model_dim``)."""

    def __init__(
        self,
        dim: int = 128,
        num_heads: int = 8,
        frame: FrameType = "max",
        dist_basis: int = 64,
        dist_max: float = 10 * R0,
        angle_basis: int = 64,
        angle_width: float = 4.0,
        dist_coef: float = 1.0,
        angle_coef: float = 1.0,
        recompute: bool | None = None,
        angle_grid: int = 256,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.frame = frame
        self.dist_coef, self.angle_coef = dist_coef, angle_coef
        self.recompute = recompute
        self.angle_grid = angle_grid

        self.in_proj = nn.Linear(dim, 3 * dim)  # W_q, W_k, W_v stacked, one packed bias
        self.out_proj = nn.Linear(dim, dim)
        self.sigma_weight = nn.Parameter(torch.empty(num_heads, self.head_dim))  # w_h
        # Standardisation of u = q . w, frozen after the first training batch (non-trainable).
        self.sigma_mean = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.sigma_inv_std = nn.Parameter(torch.ones(()), requires_grad=False)
        self.sigma_ready = nn.Parameter(torch.zeros(()), requires_grad=False)
        self._stats_frozen = False

        self.dist_basis = distance_basis(dist_basis, dist_max)
        self.dist_proj = nn.Parameter(torch.empty(num_heads, self.head_dim, dist_basis))  # W0
        if frame != "none":
            self.angle_basis = cosine_basis(angle_basis, angle_width)
            self.angle_proj = nn.Parameter(torch.empty(3, num_heads, self.head_dim, angle_basis))  # W_1..3
            if angle_grid > 0:
                self.angle_grid_points, self.angle_spacing = cosine_grid(self.angle_basis, angle_grid)
                self._grid_basis_cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        else:
            self.angle_basis = None
            self.register_parameter("angle_proj", None)
        self.reset_parameters()

    @property
    def pair_width(self) -> int:
        """Elements per (edge, image) pair of the largest temporary built in the image sums."""
        width = max(self.dist_proj.shape[-1], 2 * self.num_heads)
        if self.angle_proj is not None and self.angle_grid > 0:
            width = max(width, 24 * self.num_heads)  # per kept (image, head): 6 table entries, weights and ids
        elif self.angle_proj is not None:
            width = max(width, self.num_heads * 3 * self.angle_proj.shape[-1])
        return width

    def reset_parameters(self, value_gain: float = 1.0) -> None:
        """Xavier-uniform projections (W_v and out_proj scaled by ``value_gain``), zero biases, the reference's
        initialisation of w_h and of the basis projections."""
        d = self.dim
        for block in range(3):
            nn.init.xavier_uniform_(self.in_proj.weight[block * d : (block + 1) * d])
        nn.init.xavier_uniform_(self.out_proj.weight)
        with torch.no_grad():
            self.in_proj.weight[2 * d :].mul_(value_gain)
            self.out_proj.weight.mul_(value_gain)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)
        nn.init.normal_(self.sigma_weight, 0.0, self.head_dim**-0.5)
        _xavier_per_head(self.dist_proj)
        if self.angle_proj is not None:
            for axis in self.angle_proj:
                _xavier_per_head(axis)

    # --- sigma ---------------------------------------------------------------------------------------------------
    def gaussian_exponent(self, q: Tensor) -> Tensor:
        """a_ih = -rho(u_ih) / (2 r0²) < 0 from the queries (N, H, d_h)."""
        u = self._standardize((q * self.sigma_weight).sum(-1))
        b = RHO_LOWER_BOUND
        rho = (1.0 - b) * F.elu(u * (SIGMA_BETA / (1.0 - b))) + 1.0
        return rho * (-0.5 / R0**2)

    def _standardize(self, u: Tensor) -> Tensor:
        if not self._stats_frozen:
            self._stats_frozen = bool(self.sigma_ready.item() > 0.5)
        if self._stats_frozen:
            return (u - self.sigma_mean) * self.sigma_inv_std
        with torch.no_grad():
            mean = u.mean()
            std = u.std() if u.numel() > 1 else torch.ones_like(mean)
            stats = torch.stack([mean, 1.0 / std.clamp_min(1e-6)])
            if self.training:
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    torch.distributed.all_reduce(stats)
                    stats /= torch.distributed.get_world_size()
                self.sigma_mean.copy_(stats[0])
                self.sigma_inv_std.copy_(stats[1])
                self.sigma_ready.fill_(1.0)
                self._stats_frozen = True
        return (u - stats[0]) * stats[1]

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._stats_frozen = False  # re-read the flag on the next forward

    # --- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, graph: PeriodicGraph, frames: Tensor | None = None) -> Tensor:
        """(N, dim) atom features -> (N, dim); ``frames`` (N, H, 3, 3) are the fixed frames for "pca"/"lattice"
        (dynamic frames are built here when None)."""
        n, h, dh = x.shape[0], self.num_heads, self.head_dim
        projected = self.in_proj(x)  # follows autocast: bfloat16 / float16 under mixed precision
        with full_precision(x.device):
            q, k, v = projected.to(self.dist_proj.dtype).view(n, 3, h, dh).unbind(1)
            out = self._attend(q, k, v, graph, frames)
        return self.out_proj(out.reshape(n, self.dim))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, graph: PeriodicGraph, frames: Tensor | None) -> Tensor:
        """sum_j alpha_ij (v_j + psi_ij) (N, H, d_h) from the queries, keys and values (N, H, d_h)."""
        n, dh = q.shape[0], self.head_dim
        a = self.gaussian_exponent(q)  # (N, H)
        src, dst = graph.src, graph.dst
        # index_select, not q[src]: its backward (index_add) is deterministic with several threads and faster
        logits = (q.index_select(0, src) * k.index_select(0, dst)).sum(-1) / math.sqrt(dh)  # (E, H)
        a_edge = a.index_select(0, src)

        chunks = graph.layer_chunks(-a.detach().amax(dim=1))  # prune with this layer's widest Gaussians
        first, tied_atoms = None, None  # max frames: f1, and the atoms where it is a tie (environments summed below)
        if self.frame in ("max", "static") and frames is None:
            scored = (logits.detach(), None) if self.frame == "max" else (None, logits.detach())
            first = first_axis(graph, a.detach(), *scored)
            tied_atoms = first.tied.any(dim=1) if first.any_tied else None
        z0, mean_d2, edge_moments = self._log_lattice_sums(graph, chunks, a.detach(), tied_atoms)
        z = _with_derivative(z0, mean_d2, a_edge)
        alpha = segment_softmax(logits + z, src, n)

        if self.frame != "none" and frames is None:
            attention = LayerAttention(z0, alpha.detach(), edge_moments, tied_atoms, first)
            frames = self.dynamic_frames(graph, chunks, a.detach(), logits.detach(), attention)
        psi = self._value_encoding(graph, chunks, a_edge, z0, mean_d2, alpha.detach(), frames)
        messages = alpha.unsqueeze(-1) * (v.index_select(0, dst) + psi)
        return messages.new_zeros(n, self.num_heads, dh).index_add(0, src, messages)

    def dynamic_frames(
        self, graph: PeriodicGraph, chunks: ImageChunks, a: Tensor, logits: Tensor, attention: LayerAttention
    ) -> Tensor:
        """Frames (N, H, 3, 3) of this layer built from its own (detached) attention."""
        if self.frame == "max":
            return max_frames(graph, chunks, a, logits, attention=attention)
        if self.frame == "static":
            return max_frames(graph, chunks, a, None, tie_logits=logits, attention=attention)
        if self.frame == "weighted_pca":
            return weighted_pca_frames(graph, chunks, a, attention.z, attention.alpha, logits)
        raise ValueError(f"frame {self.frame!r} is not built per layer; pass fixed frames")

    @torch.no_grad()
    def _log_lattice_sums(
        self, graph: PeriodicGraph, chunks: ImageChunks, a: Tensor, moment_atoms: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """z_ij = log sum_n exp(a d²) and its derivative E_p[d²], both (E, H), at the given a; and, for the edges of
        ``moment_atoms`` (N,), the first and second moments of their images weighted by p_ijn (E, H, 9)."""
        z_parts, d2_parts = [], []
        moments = None if moment_atoms is None else a.new_zeros(graph.num_edges, a.shape[1], ENVIRONMENT.size)
        for chunk in chunks:
            logits = a[graph.src[chunk.edges]].unsqueeze(-1) * chunk.dist2.unsqueeze(1)  # (C, H, M)
            z, p = logsumexp_(logits, chunk.valid.unsqueeze(1))
            z_parts.append(z)
            d2_parts.append(torch.bmm(p, chunk.dist2.unsqueeze(-1)).squeeze(-1))
            if moments is not None:
                rows = torch.nonzero(moment_atoms[graph.src[chunk.edges]]).squeeze(1)
                moments[chunk.edges[rows]] = torch.bmm(p[rows], ENVIRONMENT(chunk.vectors[rows]))
        return chunks.to_edge_order(z_parts), chunks.to_edge_order(d2_parts), moments

    def _value_encoding(
        self, graph: PeriodicGraph, chunks: ImageChunks, a_edge: Tensor, z: Tensor, mean_d2: Tensor, alpha: Tensor,
        frames: Tensor | None,
    ) -> Tensor:  # fmt: skip
        """psi (E, H, d_h), one chunk of edges at a time: distance features and, with ``frames`` (N, H, 3, 3), angle
        features, exact or (``angle_grid`` > 0) read from tables of c_angl W_m b_angl (:mod:`framer.models.angles`).
        ``a_edge`` (E, H), a of each edge's source atom, carries the gradient; ``z``, ``mean_d2`` (E_p[d²]) and
        ``alpha`` (E, H) are detached."""
        tabulated = frames is not None and self.angle_grid > 0
        exact = frames is not None and not tabulated
        width = self.dist_proj.shape[-1] + (3 * self.angle_proj.shape[-1] if exact else 0)
        recompute = self.recompute
        if recompute is None:
            recompute = graph.num_edges * self.num_heads * width * 2 > RECOMPUTE_ABOVE  # stored elements
        recompute = recompute and torch.is_grad_enabled()
        if tabulated:
            table = self._angle_table()
            basis = self.grid_basis(table.dtype, table.device)
            log_tolerance = math.log(graph.image_tolerance) if graph.image_tolerance > 0 else -math.inf
            with_derivative = torch.is_grad_enabled() and a_edge.requires_grad
            a, log_alpha = a_edge.detach(), alpha.log()
        parts = []
        for chunk in chunks:
            edges = chunk.edges
            chunk_frames = frames[graph.src[edges]] if frames is not None else None
            exact_frames = chunk_frames if exact else None
            args = (a_edge.index_select(0, edges), z.index_select(0, edges), mean_d2[edges], exact_frames, chunk)
            if recompute:
                psi = checkpoint(self._chunk_value_encoding, *args, use_reentrant=False)
            else:
                psi = self._chunk_value_encoding(*args)
            if tabulated:
                value, derivative = chunk_angle_features(
                    self.angle_proj, table, basis, self.angle_coef, self.angle_spacing, a[edges], z[edges],
                    mean_d2[edges], log_alpha[edges], chunk_frames, chunk, log_tolerance, with_derivative,
                )  # fmt: skip
                if derivative is not None:
                    value = _with_derivative(value, derivative, a_edge.index_select(0, edges))
                psi = psi + value
            parts.append(psi)
        return chunks.to_edge_order(parts)

    def grid_basis(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """(G, D) angle basis at the tabulation grid points (float64) with centres in ``dtype``, cast to ``dtype``
        (cached per dtype and device)."""
        key = (dtype, device)
        if key not in self._grid_basis_cache:
            basis = self.angle_basis(self.angle_grid_points.to(device), centers_dtype=dtype)
            self._grid_basis_cache[key] = basis.to(dtype)
        return self._grid_basis_cache[key]

    def _angle_table(self) -> Tensor:
        """Rows c_angl W_hm b_angl(grid point), axis-major then head then grid point: (3, H * G, d_h), built without
        a graph (:class:`framer.models.angles._AngleBagSum` gives W's gradient). Without a gradient for W it is
        reused until W changes (in-place updates bump its version counter; ``.to()``/``.double()`` give a new one).
        """
        weight = self.angle_proj
        needs_grad = torch.is_grad_enabled() and weight.requires_grad
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, self.angle_coef)
        key += (torch.is_inference_mode_enabled(),)  # inference tensors must not leak into other modes
        cached = getattr(self, "_table_cache", None)
        if not needs_grad and cached is not None and cached[0] == key:
            return cached[1]
        table = projected_tables(weight, self.grid_basis(weight.dtype, weight.device), self.angle_coef)
        self._table_cache = None if needs_grad else (key, table)
        return table

    def _chunk_value_encoding(
        self, a: Tensor, z: Tensor, mean_d2: Tensor, frames: Tensor | None, chunk: ImageChunk
    ) -> Tensor:
        """psi (C, H, d_h) for one chunk: a, z, mean_d2 (C, H); frames (C, H, 3, 3) or None. Head-major layouts
        (H, C, ...) keep the per-head projections free of copies."""
        c, h = a.shape
        with torch.no_grad():
            d2 = chunk.dist2
            p = exp_(a.detach().t().unsqueeze(-1) * d2 - z.t().unsqueeze(-1))  # (H, C, m)
            p.masked_fill_(~chunk.valid, 0.0)
            weights = torch.stack([p, p * (d2 - mean_d2.t().unsqueeze(-1))], dim=2)  # (H, C, 2, m): p, dp/da
            dist_weights = weights.transpose(0, 1).reshape(c, 2 * h, -1)
            dist_features = _contract(dist_weights, self.dist_basis(d2.sqrt())).view(c, h, 2, -1)
            if frames is not None:
                cos = torch.matmul(chunk.unit, frames.permute(1, 0, 3, 2))  # (H, C, m, 3)
                basis = self.angle_basis(cos).view(h * c, cos.shape[2], -1)  # (HC, m, 3D)
                weights.masked_fill_(chunk.self_image.unsqueeze(1), 0.0)  # the self image has no angle
                angle_features = _contract(weights.view(h * c, 2, -1), basis).view(h, c, 2, -1)
        dist = _with_derivative(dist_features[:, :, 0], dist_features[:, :, 1], a)
        psi = self.dist_coef * torch.einsum("chk,hok->cho", dist, self.dist_proj)
        if frames is not None:
            angle = _with_derivative(angle_features[:, :, 0], angle_features[:, :, 1], a.t())  # (H, C, 3D)
            projection = self.angle_proj.permute(1, 0, 3, 2).reshape(h, -1, self.head_dim)  # (H, 3D, d_h)
            psi = psi + self.angle_coef * torch.bmm(angle, projection).transpose(0, 1)
        return psi

    def extra_repr(self) -> str:
        return f"frame={self.frame!r}, dist_coef={self.dist_coef}, angle_coef={self.angle_coef}"


def _contract(weights: Tensor, basis: Tensor) -> Tensor:
    """Batched (B, R, m) @ (B, m, F); a broadcast product when m = 1 (much faster than a batched GEMM there)."""
    if weights.shape[-1] == 1:
        return weights * basis
    return torch.bmm(weights, basis)


def _xavier_per_head(weight: Tensor) -> None:
    """Xavier-uniform on the (heads * d_h, basis) view with gain basis^-1/2 (the reference's initialisation)."""
    with torch.no_grad():
        view = weight.view(-1, weight.shape[-1])
        nn.init.xavier_uniform_(view, gain=weight.shape[-1] ** -0.5)
