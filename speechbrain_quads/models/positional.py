"""Whisper's sinusoidal positional table, regenerated instead of stored.

Whisper's encoder adds a fixed (not trained) table of sinusoids, ``(1500, width)`` floats: 2.2 MiB
for tiny at float32, a third of a 4-bit student's packed file. The packed export stores a short
recipe for it instead, but only when the recipe rebuilds the stored table bit for bit, and a
SHA-256 of the table so that a loader can tell if its own sin/cos differ.
"""

from __future__ import annotations

import hashlib
import math

import torch

RECIPES = ("float64>float32", "float64>float16", "float32>float32", "float32>float16")
"""``"<computed in>><stored as>"``: the precision the sinusoids are computed in (openai and Hugging
Face compute in float32; float64 is exact to the last float32 bit) and the one they are rounded
to before float32 (the offline CTranslate2 and openai checkpoints hold float16 values)."""


def whisper_sinusoids(length: int, channels: int, recipe: str = "float64>float32") -> torch.Tensor:
    """Whisper's positional table: sines then cosines of geometrically spaced timescales.

    Args:
        length: positions (1500 for Whisper's 30-s window).
        channels: model width, even and at least 4.
        recipe: one of :data:`RECIPES`.

    Returns:
        (length, channels) float32 tensor.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe: expected one of {RECIPES}, got {recipe!r}")
    if length < 1 or channels < 4 or channels % 2:
        raise ValueError(f"shape: expected length >= 1 and an even width >= 4, got "
                         f"({length}, {channels})")
    computed, stored = (getattr(torch, name) for name in recipe.split(">"))
    increment = math.log(10000) / (channels // 2 - 1)
    inverse = torch.exp(-increment * torch.arange(channels // 2, dtype=computed))
    angles = torch.arange(length, dtype=computed)[:, None] * inverse[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return table.to(stored).float()


def table_digest(table: torch.Tensor) -> str:
    """SHA-256 (hex) of a float32 table's bytes."""
    return hashlib.sha256(table.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def sinusoid_recipe(tensor: torch.Tensor) -> str | None:
    """The recipe under which ``tensor`` equals :func:`whisper_sinusoids` exactly, else None.

    Args:
        tensor: any tensor; only a 2-D float32 one with an even width >= 4 can match.
    """
    if tensor.dtype != torch.float32 or tensor.dim() != 2:
        return None
    length, channels = tensor.shape
    if length < 1 or channels < 4 or channels % 2:
        return None
    for recipe in RECIPES:
        if torch.equal(whisper_sinusoids(length, channels, recipe), tensor.detach().cpu()):
            return recipe
    return None
