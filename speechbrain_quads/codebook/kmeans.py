"""Fast one-dimensional k-means for weight codebooks (torch in, torch out; numpy inside).

Every routine works on a batch of independent 1-D problems: ``values`` has shape
``(groups, m)`` (one row per codebook, ``m`` values each) and centroids have shape
``(groups, k)``. A per-tensor codebook is the case ``groups == 1``.

1-D k-means needs no distance matrix. The values are sorted once; with sorted centroids the
cluster of a value is decided by the midpoints between neighbouring centroids, so one Lloyd
iteration is a ``searchsorted`` of the ``k - 1`` midpoints into the sorted values plus a
difference of prefix sums: ``O(groups * k * log m)`` per iteration after an
``O(m log m)`` sort. The same sort permutation then yields every value's index without a
nearest-centroid search.

The work runs in numpy, on purpose: numpy's SIMD sort is about 20x faster than ``torch.sort``
on a 590k-element row here (6 ms vs 130 ms on 2 busy cores), and the Lloyd loop is made of tiny,
latency-bound operations to which torch's intra-op thread pool adds milliseconds each (a
255-query ``torch.searchsorted`` took 8 ms with 2 threads, 9 us with 1).

Lloyd only reaches a local optimum, and on heavy-tailed weights a poor one: on Whisper tiny.en's
encoder, 30 Lloyd iterations from ``linear`` leave up to 1.55x the exact optimum's squared error
at 4 bits and 6.05x at 8 bits. The ``optimal`` initialisation therefore solves the problem
exactly (Wang & Song's dynamic programme, Ckmeans.1d.dp through ``ckwrap``) on a weighted sketch
of each row, then Lloyd polishes on every value: within 0.25 % of the exact optimum at every
width from 1 to 8 bits (``benchmarks/quantization.py``, ``kmeans_sse_ratio``). It is not the
default: on the SLURP-sentence benchmark its lower error bought no measurable accuracy in
post-training quantization (2/4/8 bits), and its codebooks, which give a few extreme weights
their own centroid, make the ONNX int8 compute path deviate far more (up to 28 % of the largest
logit against 3 % with ``linear``). It is the initialisation to use with sensitivity weights.
"""

from __future__ import annotations

import ckwrap
import numpy as np
import torch

INITS = ("optimal", "linear", "density", "kmeans++", "range")
"""Centroid initialisations accepted by :func:`kmeans_1d` (see :func:`init_centroids`)."""

SKETCH_BINS_PER_CENTROID = 8
SKETCH_MIN_BINS = 1024
"""``optimal``: a row is summarised by ``max(8 k, 1024)`` bins for the exact programme."""

OPTIMAL_MAX_K = 256
"""``optimal`` solves exactly up to this many centroids (8 bits); the programme's tables grow as
``k * 8 k``, so above it ``optimal`` starts Lloyd from the ``linear`` grid instead (at 16 bits
on 300k Gaussian values, 30 Lloyd iterations from it end with 1/500 of the squared error they
end with from the ``density`` quantiles)."""

KMEANS_PP_SAMPLE = 16384
"""Values per group that the ``kmeans++`` initialisation samples from (a seeded subsample)."""


def init_centroids(
    sorted_values: torch.Tensor,
    k: int,
    init: str,
    generator: torch.Generator,
    clip_percentile: float = 0.5,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Initial centroids for 1-D k-means.

    Args:
        sorted_values: (groups, m) values sorted along the last dimension.
        k: number of centroids.
        init: ``optimal`` (the exact optimum of a weighted sketch of the row, see
            :func:`optimal_centroids`; ``linear`` above :data:`OPTIMAL_MAX_K`), ``linear``
            (evenly spaced between each row's min and max; Deep Compression's choice),
            ``density`` (the ``(i + 0.5) / k`` quantiles), ``kmeans++`` (D^2 sampling on a
            seeded subsample of at most :data:`KMEANS_PP_SAMPLE` values) or ``range``.
        generator: seeded generator; only ``kmeans++`` draws from it.
        clip_percentile: for ``range``: percent of values clipped at each end.
        weights: optional (groups, m) value weights in sorted order; only ``optimal`` uses
            them (the other initialisations place centroids by value alone).

    ``range`` is a range-calibrated, asymmetric initialisation for 1-2 bits: the low and high
    clipping points are the ``clip_percentile`` and ``100 - clip_percentile`` percentiles of
    the row, computed independently (so a skewed tensor gets an asymmetric range), and the
    ``k`` centroids sit at the centres of ``k`` equal bins of that clipped range. A few outlier
    weights then no longer pull the initial codebook into the empty tails, which matters most
    when there are only 2 or 4 centroids.

    Returns:
        (groups, k) float64 centroids, sorted along the last dimension.
    """
    m = sorted_values.shape[1]
    if init == "optimal" and k <= OPTIMAL_MAX_K:
        return optimal_centroids(sorted_values, k, weights)
    if init in ("optimal", "linear"):
        steps = torch.linspace(0.0, 1.0, k, dtype=torch.float64)
        low, high = sorted_values[:, :1].double(), sorted_values[:, -1:].double()
        return low + (high - low) * steps
    if init == "density":
        positions = ((torch.arange(k, dtype=torch.float64) + 0.5) / k * (m - 1)).round().long()
        return sorted_values[:, positions].double()
    if init == "range":
        fraction = clip_percentile / 100.0
        low = sorted_values[:, round(fraction * (m - 1))].double().unsqueeze(1)
        high = sorted_values[:, round((1.0 - fraction) * (m - 1))].double().unsqueeze(1)
        centres = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        return low + (high - low) * centres
    if init == "kmeans++":
        return _kmeans_plus_plus(sorted_values, k, generator)
    raise ValueError(f"init: unknown initialisation {init!r}; expected one of {INITS}")


def optimal_centroids(sorted_values: torch.Tensor, k: int,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """Exactly optimal 1-D k-means centroids of a weighted sketch of each row.

    Each sorted row is cut into bins of at most ``m / B`` values, and every bin wider than
    ``range / B`` is cut again at the ``B``-quantiles of the value range
    (``B = max(SKETCH_BINS_PER_CENTROID * k, SKETCH_MIN_BINS)``): the bulk is summarised by
    counts, the sparse tails stay sharp. A row with at most ``B`` distinct values is used as it
    is (distinct values weighted by their counts), so its centroids are the exact optimum. The
    bins' means, weighted by their counts, are clustered by Ckmeans.1d.dp (exact, ``O(k B)``).

    Args:
        sorted_values: (groups, m) values sorted along the last dimension, with more than ``k``
            distinct values per row.
        k: number of centroids.
        weights: optional (groups, m) positive weights in the order of ``sorted_values``
            (weighted squared error: bins carry their weight sums and weighted means).

    Returns:
        (groups, k) float64 centroids, sorted (start points for :func:`lloyd`).
    """
    bins = max(SKETCH_BINS_PER_CENTROID * k, SKETCH_MIN_BINS)
    rows = sorted_values.double().numpy()
    masses = None if weights is None else weights.double().numpy()
    out = np.empty((rows.shape[0], k))
    for group, row in enumerate(rows):
        means, mass = _sketch(row, bins, None if masses is None else masses[group])
        fit = ckwrap.ckmeans(means, k, weights=mass)
        centres = np.sort(np.asarray(fit.centers, dtype=np.float64))
        if centres.size < k:  # fewer distinct sketch points than k: Lloyd reseeds the copies
            centres = np.concatenate([centres, np.full(k - centres.size, centres[-1])])
        out[group] = centres
    return torch.from_numpy(out)


def _sketch(row: np.ndarray, bins: int,
            mass: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(weighted means, weight sums) of consecutive bins of a sorted row (weights ``mass``,
    default 1 per value; see :func:`optimal_centroids`)."""
    mass = np.ones_like(row) if mass is None else mass
    starts = np.flatnonzero(np.diff(row, prepend=row[0] - 1.0))  # first index of each value
    if starts.size <= bins:
        edges = np.append(starts, row.size)
    else:
        by_count = (np.arange(1, bins) * row.size) // bins
        by_width = np.searchsorted(row, np.linspace(row[0], row[-1], bins + 1)[1:-1])
        edges = np.unique(np.concatenate([[0], by_count, by_width, [row.size]]))
    prefix = np.concatenate([[0.0], np.cumsum(row * mass)])
    prefix_mass = np.concatenate([[0.0], np.cumsum(mass)])
    sums = prefix_mass[edges[1:]] - prefix_mass[edges[:-1]]
    keep = np.diff(edges) > 0
    means = (prefix[edges[1:]] - prefix[edges[:-1]])[keep] / sums[keep]
    return means, sums[keep]


def _kmeans_plus_plus(data: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """kmeans++ seeding (D^2 sampling) per row of ``data`` (groups, m); returns (groups, k).

    The random draws come from ``generator`` up front; a draw is an inverse-CDF lookup into the
    cumulative squared distances (when every distance is 0, the last value is picked again).
    Cost O(k * sample) in a Python loop over k: 3.5 s for one row at k = 65536 (16 bits), where
    ``linear`` takes about 0.1 s; with more centroids than sampled values, repeated picks are
    left to Lloyd's reseeding.
    """
    groups, m = data.shape
    if m > KMEANS_PP_SAMPLE:
        data = data[:, torch.randperm(m, generator=generator)[:KMEANS_PP_SAMPLE]]
    data = data.double()
    first = torch.randint(data.shape[1], (groups,), generator=generator).numpy()
    draws = torch.rand(groups, k - 1, generator=generator, dtype=torch.float64).numpy()
    rows = data.numpy()
    chosen = np.empty((groups, k))
    for group, row in enumerate(rows):
        chosen[group, 0] = row[first[group]]
        nearest = np.square(row - chosen[group, 0])
        for step in range(1, k):
            cumulative = np.cumsum(nearest)
            pick = np.searchsorted(cumulative, draws[group, step - 1] * cumulative[-1], "right")
            chosen[group, step] = row[min(pick, row.size - 1)]
            np.minimum(nearest, np.square(row - chosen[group, step]), out=nearest)
    return torch.from_numpy(np.sort(chosen, axis=1))


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for every value.

    Args:
        values: (groups, m) values (any order).
        centroids: (groups, k) centroids sorted along the last dimension.

    Returns:
        (groups, m) int64 indices in ``[0, k)``; a value exactly on a midpoint goes to the
        upper centroid.
    """
    centroids = centroids.to(values.dtype)
    boundaries = ((centroids[:, 1:] + centroids[:, :-1]) / 2).contiguous()
    return torch.searchsorted(boundaries, values.contiguous(), right=True)


def lloyd(
    sorted_values: torch.Tensor,
    centroids: torch.Tensor,
    iters: int,
    tol: float = 0.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lloyd iterations on sorted 1-D data via searchsorted and prefix sums.

    Args:
        sorted_values: (groups, m) float32/float64 CPU values sorted along the last dimension.
        centroids: (groups, k) float64 initial centroids, sorted along the last dimension.
        iters: maximum number of iterations.
        tol: stop early once no centroid moves by more than ``tol`` (same unit as the values).
        weights: optional (groups, m) positive weights in the order of ``sorted_values``: each
            centroid is then its members' weighted mean (weighted squared error).

    Returns:
        (groups, k) float64 centroids, sorted. A centroid whose cluster is empty is moved into
        the cluster with the largest squared error (splitting it), so no codebook entry stays
        unused while some cluster holds more than one distinct value.
    """
    data = sorted_values.contiguous().numpy().astype(np.float64)
    groups, m = data.shape
    mass_of = None if weights is None else weights.contiguous().numpy().astype(np.float64)
    prefix = np.zeros((groups, m + 1))
    np.cumsum(data if mass_of is None else data * mass_of, axis=1, out=prefix[:, 1:])
    prefix_sq = np.zeros((groups, m + 1))
    squares = np.square(data)
    np.cumsum(squares if mass_of is None else squares * mass_of, axis=1, out=prefix_sq[:, 1:])
    prefix_mass = None
    if mass_of is not None:
        prefix_mass = np.zeros((groups, m + 1))
        np.cumsum(mass_of, axis=1, out=prefix_mass[:, 1:])
    current = centroids.double().numpy().copy()
    rows = np.arange(groups)[:, None]
    first, last = np.zeros((groups, 1), dtype=np.int64), np.full((groups, 1), m)
    for _ in range(iters):
        middles = (current[:, 1:] + current[:, :-1]) / 2
        cuts = np.stack([np.searchsorted(data[g], middles[g]) for g in range(groups)])
        edges = np.concatenate([first, cuts, last], axis=1)
        counts = np.diff(edges, axis=1)
        sums = prefix[rows, edges[:, 1:]] - prefix[rows, edges[:, :-1]]
        mass = counts if prefix_mass is None else (
            prefix_mass[rows, edges[:, 1:]] - prefix_mass[rows, edges[:, :-1]])
        updated = np.where(counts > 0, sums / np.where(counts > 0, mass, 1), current)
        for group in np.flatnonzero((counts == 0).any(axis=1)):
            squares = prefix_sq[group, edges[group, 1:]] - prefix_sq[group, edges[group, :-1]]
            _reseed_empty(data[group], edges[group], counts[group], sums[group], squares,
                          updated[group], mass[group])
        updated = np.sort(updated, axis=1)
        moved = np.abs(updated - current).max()
        current = updated
        if moved <= tol:
            break
    return torch.from_numpy(current)


def _reseed_empty(row: np.ndarray, edges: np.ndarray, counts: np.ndarray, sums: np.ndarray,
                  squares: np.ndarray, centroids: np.ndarray, mass: np.ndarray) -> None:
    """Move each empty cluster's centroid (in place) to split a cluster of large squared error.

    The empty clusters, in index order, are paired with the clusters of positive error in
    decreasing order of error (ties: lower index first), each split cluster offered once per
    round; the centroid lands on the value three quarters of the way through the split
    cluster's sorted span (its last value if that equals its centroid). Vectorised: O(k log k)
    per round however many clusters are empty (there are tens of thousands at k = 65536).
    """
    error = squares - np.square(sums) / np.where(counts > 0, mass, 1)
    error[counts < 2] = 0.0
    empty = np.flatnonzero(counts == 0)
    worst = np.argsort(-error, kind="stable")[: empty.size]
    worst = worst[error[worst] > 0.0]
    empty = empty[: worst.size]
    start, stop = edges[worst], edges[worst + 1]
    candidate = row[start + 3 * (stop - start) // 4]
    centroids[empty] = np.where(candidate == centroids[worst], row[stop - 1], candidate)


def kmeans_1d(
    values: torch.Tensor,
    k: int,
    init: str = "linear",
    iters: int = 30,
    seed: int = 0,
    clip_percentile: float = 0.5,
    initial: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster each row of ``values`` into ``k`` centroids.

    Args:
        values: (groups, m) floating values; rows are clustered independently.
        k: number of centroids (codebook size).
        init: initialisation, one of :data:`INITS` (see :func:`init_centroids`).
        iters: maximum Lloyd iterations (0 keeps the initialisation).
        seed: seed of the generator used by ``kmeans++``; the result is deterministic.
        clip_percentile: outlier percent clipped at each end by ``init="range"``.
        initial: optional (groups, k) starting centroids (a warm start, e.g. the current
            codebook when re-clustering); ``init`` is then not used.
        weights: optional (groups, m) non-negative importance of every value (e.g. squared
            gradients: sensitivity-weighted k-means, as SqueezeLLM and coremltools' SKM):
            the weighted squared error is minimised. Weights are floored at 1e-6 of their row
            mean, so a value of zero sensitivity still belongs to its nearest centroid.

    Returns:
        ``(centroids, indices)``: (groups, k) centroids in ``values.dtype``, sorted per row, and
        (groups, m) int64 indices of the nearest centroid of every value (those of
        :func:`assign`: a value exactly on a midpoint goes to the upper centroid).

    A row with at most ``k`` distinct values (e.g. ``k = 65536`` at 16 bits and a group of
    fewer values) is not clustered: it keeps all ``k`` centroids, the first ``d`` being its
    ``d`` distinct values in order (zero error, the optimum) and the ``k - d`` unused ones
    copies of its largest value; every value's index is the rank of its value among the
    distinct ones, so the copies are never referenced. The codebook thus always has
    ``2**bits`` entries, as the packed format and its size accounting count them.
    """
    if values.dim() != 2:
        raise ValueError(f"values: expected a (groups, m) tensor, got shape {tuple(values.shape)}")
    if init not in INITS:
        raise ValueError(f"init: unknown initialisation {init!r}; expected one of {INITS}")
    work = values.detach().cpu()
    if work.dtype not in (torch.float32, torch.float64):
        work = work.float()
    data = work.numpy()
    order = np.argsort(data, axis=1)
    sorted_data = np.take_along_axis(data, order, axis=1)
    sorted_values = torch.from_numpy(sorted_data)
    sorted_weights = None
    if weights is not None:
        if tuple(weights.shape) != tuple(data.shape):
            raise ValueError(f"weights: expected shape {tuple(data.shape)}, got "
                             f"{tuple(weights.shape)}")
        mass = weights.detach().cpu().double().numpy()
        if not np.isfinite(mass).all() or (mass < 0).any():
            raise ValueError("weights: expected finite non-negative values")
        floor = 1e-6 * np.maximum(mass.mean(axis=1, keepdims=True), 1e-300)
        sorted_weights = torch.from_numpy(np.take_along_axis(np.maximum(mass, floor), order,
                                                             axis=1))
    if initial is not None and tuple(initial.shape) != (data.shape[0], k):
        raise ValueError(f"initial: expected shape {(data.shape[0], k)}, got "
                         f"{tuple(initial.shape)}")
    fitted = np.empty((data.shape[0], k), dtype=data.dtype)
    indices = np.empty(data.shape, dtype=np.int64)
    new_value = np.diff(sorted_data, axis=1) != 0
    few = new_value.sum(axis=1) < k
    if not few.all():
        many = torch.from_numpy(~few)
        if initial is not None:
            centroids = torch.sort(initial.detach().cpu().double()[many], dim=1).values
        else:
            generator = torch.Generator().manual_seed(seed)
            centroids = init_centroids(
                sorted_values[many], k, init, generator, clip_percentile,
                None if sorted_weights is None else sorted_weights[many])
        rounded = lloyd(sorted_values[many], centroids, iters,
                        weights=None if sorted_weights is None else sorted_weights[many])
        rounded = rounded.to(values.dtype)
        fitted[~few] = rounded.to(work.dtype).numpy()
        indices[~few] = _labels(sorted_data[~few], order[~few], fitted[~few])
    for row in np.flatnonzero(few):
        rank = np.concatenate([[0], np.cumsum(new_value[row])])
        fitted[row] = sorted_data[row, -1]
        fitted[row, rank] = sorted_data[row]
        indices[row, order[row]] = rank
    result = torch.from_numpy(fitted).to(values.dtype)
    return result.to(values.device), torch.from_numpy(indices).to(values.device)


def _labels(sorted_data: np.ndarray, order: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(groups, m) int64 nearest-centroid indices from sorted rows and their sort permutation."""
    groups, m = sorted_data.shape
    k = centroids.shape[1]
    middles = (centroids[:, 1:] + centroids[:, :-1]) / 2
    labels = np.empty((groups, m), dtype=np.int64)
    for group in range(groups):
        cuts = np.searchsorted(sorted_data[group], middles[group])
        counts = np.diff(cuts, prepend=0, append=m)
        labels[group, order[group]] = np.repeat(np.arange(k), counts)
    return labels
