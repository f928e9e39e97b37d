"""One quantized weight as a ``torch.nn.utils.parametrize`` parametrization: its codebook
(``centroids``), its per-weight ``indices``, its mode and (optionally) its outliers, with the
autograd rules that train the codebook (a centroid's gradient is the sum of its members') or
pass the gradient straight through to the latent weight. Pure torch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from speechbrain_quads.codebook.kmeans import assign, kmeans_1d

MODES = ("off", "train", "frozen", "ste")
"""Quantizer modes: latent weights unchanged / ``centroids[indices]`` trained / ... frozen /
``centroids[indices]`` in the forward, gradient straight through to the latent weights
(quantization-aware training of the latents; the codebook does not train)."""

MAX_BITS = 16
"""Widest index width: 2**16 = 65536 centroids per codebook."""


def index_dtype(bits: int) -> torch.dtype:
    """dtype of the stored indices of ``bits``-bit codebooks: uint8 up to 8 bits, else int32.

    int32 rather than int16 above 8 bits: 16-bit indices reach 65535 (beyond int16), torch's
    uint16 lacks most ops, and gloo, which broadcasts the codebooks under DDP, has no 16-bit
    integers. The cost is bounded: 4 bytes per weight, half of the int64 flat-index cache that
    the forward pass keeps anyway.
    """
    return torch.uint8 if bits <= 8 else torch.int32


def outlier_positions(latent: torch.Tensor, count: int,
                      sensitivity: torch.Tensor | None = None) -> torch.Tensor:
    """Flat positions (sorted, int64, ``(count,)``) of the ``count`` weights of ``latent`` kept
    exactly: the largest ``|w|``, or with ``sensitivity`` (same shape) the largest
    ``sensitivity * w**2``."""
    flat = latent.detach().reshape(-1)
    score = flat.abs() if sensitivity is None else (
        sensitivity.detach().reshape(-1).to(flat.device) * flat.square())
    return torch.topk(score.float(), count).indices.sort().values


class _CodebookGather(torch.autograd.Function):
    """``table.flatten()[index]`` whose backward sums member gradients per centroid.

    The backward is one ``scatter_add_`` over the flat indices: the gradient of a centroid is
    the sum of the gradients of the weights assigned to it (QUADS' indicator rule). Measured on
    2 CPU threads it beats ``index_add_``, ``bincount(weights=...)`` and autograd's generic
    advanced-indexing backward (``benchmarks/quantization.py`` reports the four).
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.table_shape = table.shape
        return table.reshape(-1).index_select(0, index).view(shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        numel = ctx.table_shape.numel()
        grad_table = grad.new_zeros(numel).scatter_add_(0, index, grad.reshape(-1))
        return grad_table.view(ctx.table_shape), None, None


class _StraightThrough(torch.autograd.Function):
    """``table.flatten()[index]`` in the forward; the backward hands the gradient unchanged to
    the latent weight (straight-through estimator) and none to the table."""

    @staticmethod
    def forward(ctx, latent: torch.Tensor, table: torch.Tensor, index: torch.Tensor):
        return table.reshape(-1).index_select(0, index).view(latent.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


class CodebookParametrization(nn.Module):
    """Parametrization of one weight: ``W = centroids[group, indices]`` when enabled.

    State (all in the owning model's ``state_dict``):
        centroids: (groups, k) parameter in the weight's dtype, k = 2**bits.
        indices: buffer with the weight's shape, dtype :func:`index_dtype` (uint8 up to 8
            bits, int32 above); values in ``[0, k)``.
        mode: uint8 scalar buffer, index into :data:`MODES`.
        clustered: uint8 scalar buffer, 1 once k-means has run.

    Groups are contiguous blocks of output channels (dim 0): weight row ``r`` uses codebook
    ``r // (rows / groups)``.
    """

    def __init__(self, weight: torch.Tensor, bits: int, groups: int, outliers: int = 0) -> None:
        super().__init__()
        self.bits = bits
        self.groups = groups
        factory = {"device": weight.device}
        self.centroids = nn.Parameter(torch.zeros(groups, 2**bits, dtype=weight.dtype, **factory))
        indices = torch.zeros(weight.shape, dtype=index_dtype(bits), **factory)
        self.register_buffer("indices", indices)
        self.outliers = outliers
        if outliers:  # flat positions of the weights kept exactly (sorted)
            self.register_buffer("outlier_index",
                                 torch.arange(outliers, dtype=torch.int64, device=weight.device))
        self.register_buffer("mode", torch.zeros((), dtype=torch.uint8, **factory))
        self.register_buffer("clustered", torch.zeros((), dtype=torch.uint8, **factory))
        self._index_cache: tuple[torch.Tensor, int, torch.Tensor] | None = None
        self._mode_cache: tuple[torch.Tensor, int, str] | None = None

    @property
    def k(self) -> int:
        """Codebook size 2**bits."""
        return 2**self.bits

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Map the latent weight (any shape) to the weight the module uses (same shape)."""
        mode = self.current_mode()
        if mode == "off":
            return latent
        if mode == "ste":
            used = _StraightThrough.apply(latent, self.centroids.detach(), self.flat_indices())
        else:
            table = self.centroids if mode == "train" else self.centroids.detach()
            used = _CodebookGather.apply(table, self.flat_indices(), latent.shape)
        return self.with_outliers(used, latent)

    def with_outliers(self, quantized: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """``quantized`` with the outlier positions holding ``latent``'s values (differentiable
        w.r.t. both); ``quantized`` itself when there are no outliers."""
        if not self.outliers:
            return quantized
        index = (self.outlier_index,)
        flat = quantized.reshape(-1).index_put(index, latent.reshape(-1)[index])
        return flat.view(quantized.shape)

    def quantized(self) -> torch.Tensor:
        """``centroids[indices]`` with the weight's shape, differentiable w.r.t. centroids
        (outliers not applied: see :meth:`with_outliers`)."""
        return _CodebookGather.apply(self.centroids, self.flat_indices(), self.indices.shape)

    def current_mode(self) -> str:
        """The mode stored in the ``mode`` buffer (cached until the buffer changes)."""
        cache = self._mode_cache
        if cache is None or cache[0] is not self.mode or cache[1] != self.mode._version:
            cache = (self.mode, self.mode._version, MODES[int(self.mode)])
            self._mode_cache = cache
        return cache[2]

    def flat_indices(self) -> torch.Tensor:
        """(numel,) int64 positions into ``centroids.flatten()`` (cached until indices change).

        uint8 indices cannot be used to index directly (torch reads them as a boolean mask).
        """
        cache = self._index_cache
        if cache is None or cache[0] is not self.indices or cache[1] != self.indices._version:
            per_group = self.indices.numel() // self.groups
            offsets = torch.arange(self.groups, device=self.indices.device) * self.k
            flat = self.indices.reshape(self.groups, per_group).long() + offsets.unsqueeze(1)
            cache = (self.indices, self.indices._version, flat.reshape(-1))
            self._index_cache = cache
        return cache[2]

    def invalidate(self) -> None:
        """Drop cached copies of ``indices`` and ``mode`` (after writes outside autograd)."""
        self._index_cache = None
        self._mode_cache = None

    @torch.no_grad()
    def resize(self, bits: int) -> None:
        """Change the index width of a codebook that has not been clustered yet (its centroids
        and indices are re-created; build optimizers afterwards)."""
        if int(self.clustered):
            raise RuntimeError("resize(): the codebook is already clustered")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
            raise ValueError(f"bits: expected an integer in [1, {MAX_BITS}], got {bits!r}")
        self.bits = bits
        factory = {"device": self.centroids.device}
        self.centroids = nn.Parameter(torch.zeros(self.groups, 2**bits,
                                                  dtype=self.centroids.dtype, **factory))
        self.indices = torch.zeros(self.indices.shape, dtype=index_dtype(bits), **factory)
        self.invalidate()

    @torch.no_grad()
    def reassign(self, latent: torch.Tensor) -> None:
        """Keep the centroids (sorted, so the optimizer of a new phase starts afresh) and point
        every weight of ``latent`` at its nearest one."""
        centroids = torch.sort(self.centroids.detach(), dim=1).values
        self.centroids.copy_(centroids)
        values = latent.detach().reshape(self.groups, -1).to(centroids.dtype)
        self.indices.copy_(assign(values, centroids).reshape(self.indices.shape))
        self.invalidate()

    @torch.no_grad()
    def fit(self, latent: torch.Tensor, *, init: str, iters: int, seed: int,
            clip_percentile: float = 0.5, warm_start: bool = True,
            sensitivity: torch.Tensor | None = None) -> None:
        """Run k-means on ``latent`` (the weight's shape; weighted by ``sensitivity``, same
        shape, if given) and store centroids and indices (arguments: see
        :class:`~speechbrain_quads.codebook.quantization.QuantizationConfig`)."""
        values = latent.detach().reshape(self.groups, -1)
        weights = None if sensitivity is None else sensitivity.detach().reshape(self.groups, -1)
        if self.outliers:
            chosen = outlier_positions(latent, self.outliers, sensitivity)
            self.outlier_index.copy_(chosen)
            weights = torch.ones_like(values, dtype=torch.float64) if weights is None else (
                weights.double().clone())
            weights.view(-1)[chosen] = 0.0  # left out of the k-means (floored at 1e-6 x mean)
        warm = warm_start and bool(int(self.clustered)) and init != "optimal"
        centroids, indices = kmeans_1d(
            values,
            self.k,
            init=init,
            iters=iters,
            seed=seed,
            clip_percentile=clip_percentile,
            initial=self.centroids.detach() if warm else None,
            weights=weights,
        )
        self.centroids.copy_(centroids)
        self.indices.copy_(indices.reshape(self.indices.shape))
        self.clustered.fill_(1)
        self.invalidate()

    def broadcast_from_rank0(self) -> None:
        """Make every rank's codebook equal to rank 0's (no-op without torch.distributed)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        for tensor in (self.centroids.data, self.indices, self.clustered):
            dist.broadcast(tensor, src=0)
        self.invalidate()

