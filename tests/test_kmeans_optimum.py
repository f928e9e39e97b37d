"""The default k-means reaches the exact 1-D optimum (checked against ``kmeans1d``, an independent
exact solver) on heavy-tailed data and on Whisper tiny.en's own weights."""

import kmeans1d
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from speechbrain_quads.codebook.kmeans import kmeans_1d


def squared_error(values: np.ndarray, centroids: np.ndarray, indices: np.ndarray) -> float:
    return float(np.square(values - centroids[indices]).sum())


def exact_optimum(values: np.ndarray, k: int) -> float:
    indices, centroids = kmeans1d.cluster(values, k)
    return squared_error(values, np.asarray(centroids), np.asarray(indices))


def ours(values: np.ndarray, k: int, init: str, iters: int = 30) -> float:
    centroids, indices = kmeans_1d(torch.from_numpy(values).unsqueeze(0), k, init=init,
                                   iters=iters)
    return squared_error(values, centroids[0].numpy(), indices[0].numpy())


@pytest.fixture(scope="module")
def heavy_tailed() -> np.ndarray:
    """60,000 Student-t (3 degrees of freedom) values: a dense bulk and sparse far tails."""
    return np.random.default_rng(0).standard_t(3, 60_000) * 0.02


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6])
def test_optimal_init_is_within_one_percent_of_the_exact_optimum(heavy_tailed, bits):
    optimum = exact_optimum(heavy_tailed, 2**bits)
    assert ours(heavy_tailed, 2**bits, "optimal") <= 1.01 * optimum


def test_lloyd_from_a_linear_grid_is_not(heavy_tailed):
    """What the default replaced: 30 Lloyd iterations from ``linear`` stall far from the optimum
    on the same data (so the test above measures something)."""
    assert ours(heavy_tailed, 16, "linear") > 1.10 * exact_optimum(heavy_tailed, 16)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_optimal_init_on_whisper_tiny_weights(tiny_dir, bits):
    """conv1 of tiny.en (92,160 float16 values) and the same weights moved off the float16 grid
    (as training leaves them): within 1 % of the optimum at 2, 4 and 8 bits."""
    weight = load_file(f"{tiny_dir}/model.safetensors")["model.encoder.conv1.weight"]
    grid = weight.double().flatten().numpy()
    drifted = grid + np.random.default_rng(1).standard_normal(grid.size) * 1e-3 * grid.std()
    for values in (grid, drifted):
        assert ours(values, 2**bits, "optimal") <= 1.01 * exact_optimum(values, 2**bits)


def test_optimal_init_keeps_every_centroid_in_use_with_repeated_values():
    """Rows dominated by one repeated value (pruned weights) still get k distinct centroids."""
    values = np.concatenate([np.zeros(50_000), np.linspace(-1.0, 1.0, 3_000)])
    centroids, indices = kmeans_1d(torch.from_numpy(values).unsqueeze(0), 16, init="optimal")
    assert torch.unique(centroids).numel() == 16
    assert torch.unique(indices).numel() == 16
    assert squared_error(values, centroids[0].numpy(), indices[0].numpy()) <= 1.01 * (
        exact_optimum(values, 16))


def test_weighted_kmeans_equals_kmeans_of_the_replicated_values(heavy_tailed):
    """Integer weights are replication: k-means weighted by w reaches the exact optimum of the
    values repeated w times (an unweighted problem kmeans1d solves exactly)."""
    values = heavy_tailed[:20_000]
    weights = np.where(values > 0, 5, 1)  # the positive half matters 5x: the optimum shifts
    weights[np.random.default_rng(2).random(values.size) < 0.3] += 1
    replicated = np.repeat(values, weights)
    for k in (4, 16):
        centroids, indices = kmeans_1d(torch.from_numpy(values).unsqueeze(0), k, init="optimal",
                                       weights=torch.from_numpy(weights).double().unsqueeze(0))
        error = float((weights * np.square(values - centroids[0].numpy()[indices[0].numpy()]))
                      .sum())
        assert error <= 1.01 * exact_optimum(replicated, k)
        assert error < 0.99 * squared_error(replicated, *_unweighted(values, weights, k))


def _unweighted(values: np.ndarray, weights: np.ndarray, k: int):
    """The unweighted clustering of ``values``, applied to the replicated values."""
    centroids, indices = kmeans_1d(torch.from_numpy(values).unsqueeze(0), k, init="optimal")
    return centroids[0].numpy(), np.repeat(indices[0].numpy(), weights)


def test_weights_are_checked():
    values = torch.randn(1, 100, dtype=torch.float64)
    with pytest.raises(ValueError, match="weights: expected shape"):
        kmeans_1d(values, 4, weights=torch.ones(1, 99))
    with pytest.raises(ValueError, match="non-negative"):
        kmeans_1d(values, 4, weights=-torch.ones(1, 100))
