"""Intent classification head: masked mean pooling over valid frames, then a linear layer."""

from __future__ import annotations

import torch
from torch import nn

from speechbrain_quads.models.features import frame_mask


def masked_mean(feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Mean over valid frames.

    Arguments
    ---------
    feats : torch.Tensor
        (B, T, C) frame features.
    lens : torch.Tensor
        (B,) relative lengths in (0, 1].

    Returns
    -------
    torch.Tensor
        (B, C) pooled features; padding frames contribute nothing.
    """
    frames = torch.round(lens * feats.shape[1]).long().clamp(min=1)
    mask = frame_mask(frames, feats.shape[1]).unsqueeze(-1).to(feats.dtype)
    return (feats * mask).sum(dim=1) / frames.unsqueeze(-1).to(feats.dtype)


class IntentClassifier(nn.Module):
    """Masked mean pooling + dropout + linear: frame features -> intent logits.

    Arguments
    ---------
    input_size : int
        Feature width C.
    n_intents : int, optional
        Number of intent classes; None builds the linear layer later with ``set_intents`` (when
        the classes are read from the data).
    dropout : float
        Dropout on the pooled features.

    Example
    -------
    >>> head = IntentClassifier(384, 10)
    >>> head(torch.randn(2, 50, 384), torch.tensor([1.0, 0.4])).shape
    torch.Size([2, 10])
    """

    def __init__(self, input_size: int, n_intents: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.input_size = input_size
        self.dropout = nn.Dropout(dropout)
        self.linear: nn.Linear | None = None
        if n_intents is not None:
            self.set_intents(n_intents)

    @property
    def n_intents(self) -> int | None:
        """Number of classes, or None before ``set_intents``."""
        return None if self.linear is None else self.linear.out_features

    def set_intents(self, n_intents: int) -> None:
        """Build the output layer for ``n_intents`` classes (kept if already that size)."""
        if n_intents < 2:
            raise ValueError(f"n_intents must be at least 2, got {n_intents}")
        if self.n_intents != n_intents:
            self.linear = nn.Linear(self.input_size, n_intents)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """(B, T, C) features and (B,) relative lengths -> (B, n_intents) logits."""
        if self.linear is None:
            raise RuntimeError("IntentClassifier has no classes yet: call set_intents(n) first")
        return self.linear(self.dropout(masked_mean(feats, lens)))
