"""Sensitivity of every quantized weight: squared gradients of a loss over calibration batches.

The diagonal of the empirical Fisher information, ``sum_b (dL_b / dW)**2``, tells which weights
the loss cares about; k-means weighted by it (``CodebookQuantizer.cluster(sensitivity=...)``)
spends the codebook's precision where an error costs most (SqueezeLLM's sensitivity-based
k-means; coremltools' ``SKMPalettizer``). Pure torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from speechbrain_quads.codebook.quantization import CodebookQuantizer


def squared_gradients(quantizer: CodebookQuantizer, loss_of: Callable[[object], torch.Tensor],
                      batches: Iterable) -> dict[str, torch.Tensor]:
    """``{module name: sum over batches of (dL/dW)**2}`` for every weight ``quantizer`` holds.

    Args:
        quantizer: a prepared quantizer; during the pass its mode is ``off`` (the gradient of
            the full-precision weight) and every latent weight requires a gradient; both are
            restored afterwards, and the gradients it leaves are cleared.
        loss_of: a batch -> scalar loss (the model's forward and task loss); smaller batches
            give a finer Fisher estimate (one recording per batch is the per-sample Fisher).
        batches: the calibration batches.

    Returns:
        float32 tensors with the weights' shapes, on their device.

    Raises:
        ValueError: if ``batches`` is empty.
    """
    if not quantizer.modules:
        raise RuntimeError("squared_gradients(): call quantizer.prepare(model) first")
    latents = {name: module.parametrizations["weight"].original
               for name, (module, _) in quantizer.modules.items()}
    mode = quantizer.mode
    needs = {name: latent.requires_grad for name, latent in latents.items()}
    saved = {name: latent.grad for name, latent in latents.items()}
    totals = {name: torch.zeros_like(latent, dtype=torch.float32)
              for name, latent in latents.items()}
    count = 0
    try:
        quantizer.set_mode("off")
        for latent in latents.values():
            latent.requires_grad_(True)
        for batch in batches:
            for latent in latents.values():
                latent.grad = None
            loss_of(batch).backward()
            for name, latent in latents.items():
                if latent.grad is not None:
                    totals[name] += latent.grad.float().square()
            count += 1
    finally:
        for name, latent in latents.items():
            latent.grad = saved[name]
            latent.requires_grad_(needs[name])
        if mode != "off":
            quantizer.set_mode(mode)
    if count == 0:
        raise ValueError("batches: no calibration batch")
    return totals
