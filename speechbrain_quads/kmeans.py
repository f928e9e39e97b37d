"""Fast one-dimensional k-means for weight codebooks (pure torch).

Every routine works on a batch of independent 1-D problems: ``values`` has shape
``(groups, m)`` (one row per codebook, ``m`` values each) and centroids have shape
``(groups, k)``. A per-tensor codebook is the case ``groups == 1``.

1-D k-means needs no distance matrix. The values are sorted once; with sorted centroids the
cluster of a value is decided by the midpoints between neighbouring centroids, so one Lloyd
iteration is a ``searchsorted`` of the ``k - 1`` midpoints into the sorted values plus a
difference of prefix sums: ``O(groups * k * log m)`` per iteration after an
``O(m log m)`` sort.
"""

from __future__ import annotations

import torch

INITS = ("linear", "density", "kmeans++", "range")
"""Centroid initialisations accepted by :func:`kmeans_1d` (see :func:`init_centroids`)."""

KMEANS_PP_SAMPLE = 16384
"""Values per group that the ``kmeans++`` initialisation samples from (a seeded subsample)."""


def init_centroids(
    sorted_values: torch.Tensor,
    k: int,
    init: str,
    generator: torch.Generator,
    clip_percentile: float = 0.5,
) -> torch.Tensor:
    """Initial centroids for 1-D k-means.

    Args:
        sorted_values: (groups, m) values sorted along the last dimension.
        k: number of centroids.
        init: ``linear`` (evenly spaced between each row's min and max; Deep Compression's
            best), ``density`` (the ``(i + 0.5) / k`` quantiles), ``kmeans++`` (D^2 sampling
            on a seeded subsample of at most :data:`KMEANS_PP_SAMPLE` values) or ``range``
            (see below).
        generator: seeded generator; only ``kmeans++`` draws from it.
        clip_percentile: for ``range``: percent of values clipped at each end.

    ``range`` is a range-calibrated, asymmetric initialisation for 1-2 bits: the low and high
    clipping points are the ``clip_percentile`` and ``100 - clip_percentile`` percentiles of
    the row, computed independently (so a skewed tensor gets an asymmetric range), and the
    ``k`` centroids sit at the centres of ``k`` equal bins of that clipped range. A few outlier
    weights then no longer pull the initial codebook into the empty tails, which matters most
    when there are only 2 or 4 centroids.

    Returns:
        (groups, k) float64 centroids, sorted along the last dimension.
    """
    data = sorted_values.double()
    m = data.shape[1]
    if init == "linear":
        steps = torch.linspace(0.0, 1.0, k, dtype=torch.float64)
        low, high = data[:, :1], data[:, -1:]
        return low + (high - low) * steps
    if init == "density":
        positions = ((torch.arange(k, dtype=torch.float64) + 0.5) / k * (m - 1)).round().long()
        return data[:, positions]
    if init == "range":
        fraction = clip_percentile / 100.0
        low = data[:, round(fraction * (m - 1))].unsqueeze(1)
        high = data[:, round((1.0 - fraction) * (m - 1))].unsqueeze(1)
        centres = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        return low + (high - low) * centres
    if init == "kmeans++":
        return _kmeans_plus_plus(data, k, generator)
    raise ValueError(f"init: unknown initialisation {init!r}; expected one of {INITS}")


def _kmeans_plus_plus(data: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """kmeans++ seeding (D^2 sampling) per row of ``data`` (groups, m); returns (groups, k).

    A draw is an inverse-CDF lookup (searchsorted into the cumulative squared distances); when
    every distance is 0 (fewer distinct values than k) it picks the last value again.
    """
    groups, m = data.shape
    if m > KMEANS_PP_SAMPLE:
        pick = torch.randperm(m, generator=generator)[:KMEANS_PP_SAMPLE]
        data = data[:, pick]
    rows = torch.arange(groups)
    first = torch.randint(data.shape[1], (groups,), generator=generator)
    chosen = [data[rows, first]]
    nearest = (data - chosen[0].unsqueeze(1)).square()
    last = data.shape[1] - 1
    for _ in range(1, k):
        cumulative = nearest.cumsum(dim=1)
        draw = torch.rand(groups, 1, generator=generator, dtype=torch.float64)
        pick = torch.searchsorted(cumulative, draw * cumulative[:, -1:], right=True)
        chosen.append(data[rows, pick.squeeze(1).clamp_max(last)])
        nearest = torch.minimum(nearest, (data - chosen[-1].unsqueeze(1)).square())
    return torch.stack(chosen, dim=1).sort(dim=1).values


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for every value.

    Args:
        values: (groups, m) values (any order).
        centroids: (groups, k) centroids sorted along the last dimension.

    Returns:
        (groups, m) int64 indices in ``[0, k)``; a value exactly on a midpoint goes to the
        upper centroid.
    """
    boundaries = _midpoints(centroids.to(values.dtype))
    return torch.searchsorted(boundaries, values.contiguous(), right=True)


def _midpoints(centroids: torch.Tensor) -> torch.Tensor:
    """(groups, k) sorted centroids -> (groups, k - 1) decision boundaries."""
    return ((centroids[:, 1:] + centroids[:, :-1]) / 2).contiguous()


def lloyd(
    sorted_values: torch.Tensor,
    centroids: torch.Tensor,
    iters: int,
    tol: float = 0.0,
) -> torch.Tensor:
    """Lloyd iterations on sorted 1-D data via searchsorted and prefix sums.

    Args:
        sorted_values: (groups, m) values sorted along the last dimension.
        centroids: (groups, k) float64 initial centroids, sorted along the last dimension.
        iters: maximum number of iterations.
        tol: stop early once no centroid moves by more than ``tol`` (same unit as the values).

    Returns:
        (groups, k) float64 centroids, sorted. A centroid whose cluster is empty keeps its
        value (order is preserved: the neighbouring means cannot cross it).
    """
    groups, m = sorted_values.shape
    data = sorted_values.double().contiguous()
    prefix = torch.zeros(groups, m + 1, dtype=torch.float64)
    torch.cumsum(data, dim=1, out=prefix[:, 1:])
    first = torch.zeros(groups, 1, dtype=torch.long)
    last = torch.full((groups, 1), m, dtype=torch.long)
    for _ in range(iters):
        cuts = torch.searchsorted(data, _midpoints(centroids))
        edges = torch.cat([first, cuts, last], dim=1)
        counts = edges[:, 1:] - edges[:, :-1]
        sums = prefix.gather(1, edges[:, 1:]) - prefix.gather(1, edges[:, :-1])
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        updated = updated.sort(dim=1).values
        moved = (updated - centroids).abs().max().item()
        centroids = updated
        if moved <= tol:
            break
    return centroids


def kmeans_1d(
    values: torch.Tensor,
    k: int,
    init: str = "linear",
    iters: int = 30,
    seed: int = 0,
    clip_percentile: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster each row of ``values`` into ``k`` centroids.

    Args:
        values: (groups, m) floating values; rows are clustered independently.
        k: number of centroids (codebook size).
        init: initialisation, one of :data:`INITS` (see :func:`init_centroids`).
        iters: maximum Lloyd iterations (0 keeps the initialisation).
        seed: seed of the generator used by ``kmeans++``; the result is deterministic.
        clip_percentile: outlier percent clipped at each end by ``init="range"``.

    Returns:
        ``(centroids, indices)``: (groups, k) centroids in ``values.dtype``, sorted per row, and
        (groups, m) int64 indices of the nearest centroid of every value.
    """
    if values.dim() != 2:
        raise ValueError(f"values: expected a (groups, m) tensor, got shape {tuple(values.shape)}")
    if init not in INITS:
        raise ValueError(f"init: unknown initialisation {init!r}; expected one of {INITS}")
    data = values.detach().to("cpu")
    sorted_values = data.sort(dim=1).values
    generator = torch.Generator().manual_seed(seed)
    centroids = init_centroids(sorted_values, k, init, generator, clip_percentile)
    centroids = lloyd(sorted_values, centroids, iters)
    rounded = centroids.to(values.dtype)
    indices = assign(data, rounded)
    return rounded.to(values.device), indices.to(values.device)
