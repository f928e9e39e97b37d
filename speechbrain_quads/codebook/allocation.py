"""Bits where they matter: a width per quantized tensor so the packed model fits a size budget.

Each tensor's candidate widths are scored by the sensitivity-weighted squared error of its
(near-optimal) k-means codebook at that width, ``sum(s * (w - Q_b(w))**2)`` with ``s`` the
squared gradients of a calibration pass (:mod:`~speechbrain_quads.codebook.sensitivity`); the
widths minimising the total error under the byte budget are found exactly by a multiple-choice
knapsack over bytes. Pure torch and numpy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from speechbrain_quads.codebook.kmeans import kmeans_1d
from speechbrain_quads.codebook.packing import size_report
from speechbrain_quads.codebook.parametrization import outlier_positions
from speechbrain_quads.codebook.quantization import CodebookQuantizer, quantized_modules

CANDIDATE_BITS = (2, 3, 4, 5, 6, 8)
"""Widths :func:`allocation_for_target` chooses from by default."""

MAX_UNITS = 1_000_000
"""Largest byte budget, in search units, that :func:`allocate_bits` tabulates."""


def tensor_bytes(numel: int, groups: int, bits: int) -> int:
    """Packed bytes of one quantized tensor: its b-bit indices and its codebooks' entries, 4
    bytes each (the packed file stores float32 codebooks whatever the weight's dtype)."""
    return math.ceil(numel * bits / 8) + groups * 2**bits * 4


def quantization_errors(quantizer: CodebookQuantizer, sensitivity: Mapping[str, torch.Tensor],
                        candidate_bits: Sequence[int] = CANDIDATE_BITS
                        ) -> dict[str, dict[int, float]]:
    """``{module: {bits: sum(s * (w - Q_bits(w))**2)}}`` for every tensor of ``quantizer``
    (its ``init`` k-means weighted by ``s``, one codebook per group as configured; the weights a
    codebook keeps exactly (``outlier_fraction``, chosen as its fit chooses them) cost nothing
    and are left out of the k-means)."""
    errors = {}
    for name, (module, codebook) in quantizer.modules.items():
        latent = module.parametrizations["weight"].original.detach()
        values = latent.reshape(codebook.groups, -1).double().cpu()
        weights = sensitivity[name].reshape(codebook.groups, -1).double().cpu().clone()
        if codebook.outliers:
            exact = outlier_positions(latent, codebook.outliers, sensitivity[name]).cpu()
            weights.view(-1)[exact] = 0.0
        errors[name] = {}
        for bits in candidate_bits:
            centroids, indices = kmeans_1d(values, 2**bits, init=quantizer.config.init,
                                           iters=quantizer.config.kmeans_iters, weights=weights)
            error = weights * (values - centroids.gather(1, indices)).square()
            errors[name][bits] = float(error.sum())
    return errors


def fixed_bytes(quantizer: CodebookQuantizer) -> int:
    """Packed bytes of everything but the quantized tensors' indices and codebooks (the other
    tensors, the header): the file size of a 1-bit copy of the quantizer's model (clustered or
    not) minus its quantized tensors' bytes."""
    copied = copy.deepcopy(quantizer.model)
    quantized = quantized_modules(copied)
    for position, (module, codebook) in enumerate(quantized.values()):
        codebook.clustered.zero_()  # the copy is fitted again, at 1 bit
        codebook.resize(1)
        codebook.fit(module.parametrizations["weight"].original,
                     **quantizer.config.kmeans_settings(), seed=position)
    return size_report(copied).packed_bytes - sum(
        tensor_bytes(codebook.indices.numel(), codebook.groups, 1)
        for _, codebook in quantized.values())


def allocate_bits(errors: Mapping[str, Mapping[int, float]], sizes: Mapping[str, Mapping[int, int]],
                  budget_bytes: int) -> dict[str, int]:
    """The width of each tensor minimising the summed error with the summed size within budget.

    Args:
        errors: ``{tensor: {bits: error}}``.
        sizes: ``{tensor: {bits: packed bytes}}``, the same keys.
        budget_bytes: what the quantized tensors may take together.

    Returns:
        ``{tensor: bits}``. The search counts bytes in units of the sizes' greatest common
        divisor (exact; 8 bytes for Whisper's tensors), or, when that would make more than
        :data:`MAX_UNITS` units, in coarser units with sizes rounded up: the result always fits.

    Raises:
        ValueError: when even the narrowest widths do not fit, naming the smallest size.
    """
    names = list(errors)
    unit = math.gcd(*(size for n in names for size in sizes[n].values()))
    if budget_bytes // unit > MAX_UNITS:
        unit = math.ceil(budget_bytes / MAX_UNITS)
    capacity = max(budget_bytes // unit, 0)
    smallest = sum(min(sizes[n].values()) for n in names)
    best = np.zeros(capacity + 1)  # least error within each capacity, no tensor placed yet
    choices = []
    for name in names:
        options = sorted(errors[name])
        table = np.full(capacity + 1, np.inf)
        pick = np.full(capacity + 1, -1)
        for index, bits in enumerate(options):
            cost = math.ceil(sizes[name][bits] / unit)
            if cost > capacity:
                continue
            shifted = np.full(capacity + 1, np.inf)
            shifted[cost:] = best[: capacity + 1 - cost] + errors[name][bits]
            better = shifted < table
            table[better], pick[better] = shifted[better], index
        choices.append((name, options, pick))
        best = table
    if not np.isfinite(best[capacity]):
        raise ValueError(f"target: the narrowest widths take {smallest / 2**20:.3f} MiB, more "
                         f"than the {budget_bytes / 2**20:.3f} MiB left for quantized tensors")
    chosen, room = {}, capacity
    for name, options, pick in reversed(choices):
        bits = options[pick[room]]
        chosen[name] = bits
        room -= math.ceil(sizes[name][bits] / unit)
    return {name: chosen[name] for name in names}


def allocation_for_target(quantizer: CodebookQuantizer,
                          sensitivity: Mapping[str, torch.Tensor], target_mb: float,
                          candidate_bits: Sequence[int] = CANDIDATE_BITS) -> dict[str, int]:
    """Widths for every tensor of ``quantizer`` (prepared, not necessarily clustered) so the
    packed file takes at most ``target_mb`` MiB, the sensitivity-weighted error minimised."""
    budget = int(target_mb * 2**20) - fixed_bytes(quantizer)
    errors = quantization_errors(quantizer, sensitivity, candidate_bits)
    sizes = {name: {bits: tensor_bytes(codebook.indices.numel(), codebook.groups, bits)
                    for bits in candidate_bits}
             for name, (_, codebook) in quantizer.modules.items()}
    return allocate_bits(errors, sizes, budget)
