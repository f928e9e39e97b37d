"""Linear probe of a frozen encoder: how well its pooled features separate the intents.

Used to give the teacher (a frozen Whisper encoder with no intent head) an accuracy to compare
with: utterance features are mean-pooled over valid frames of the last hidden state, standardised
with training statistics, and a linear classifier is trained on them with full-batch Adam.
"""

from __future__ import annotations

import torch
from speechbrain.dataio.batch import PaddedBatch
from torch.utils.data import DataLoader

from speechbrain_quads.evaluation.metrics import accuracy, macro_f1
from speechbrain_quads.models.heads import masked_mean


@torch.no_grad()
def pooled_features(encoder: torch.nn.Module, dataset, batch_size: int = 16) -> tuple:
    """(N, C) pooled last-hidden-state features and (N,) labels of a SpeechBrain dataset
    yielding ``sig`` and ``intent_encoded``; ``encoder(wavs, lens) -> (hidden (L, B, T, C), lens)``
    runs on its parameters' device; the results are float32 on the CPU.
    """
    feats, labels = [], []
    device = next(encoder.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=PaddedBatch)
    for batch in loader:
        wavs, lens = batch.sig
        hidden, frame_lens = encoder(wavs.to(device), lens.to(device))
        feats.append(masked_mean(hidden[-1].float(), frame_lens).cpu())
        labels.append(batch.intent_encoded.data.reshape(-1))
    return torch.cat(feats), torch.cat(labels)


class ProbeHead(torch.nn.Module):
    """Standardisation with training statistics + a linear layer: pooled (B, C) -> (B, K)."""

    def __init__(self, input_size: int, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_size))
        self.register_buffer("std", torch.ones(input_size))
        self.linear = torch.nn.Linear(input_size, n_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear((pooled - self.mean) / self.std)


def fold_into_linear(head: ProbeHead, linear: torch.nn.Linear) -> None:
    """Copy ``head`` into a plain ``linear`` layer on unstandardised features:
    ``W (x - m) / s + b = (W / s) x + (b - W m / s)``."""
    weight = head.linear.weight / head.std
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(head.linear.bias - weight @ head.mean)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, n_classes: int, steps: int = 500,
              lr: float = 0.01, weight_decay: float = 1e-3, seed: int = 0) -> ProbeHead:
    """A :class:`ProbeHead` trained by full-batch Adam on (N, C) features and (N,) labels."""
    generator = torch.Generator().manual_seed(seed)
    head = ProbeHead(features.shape[1], n_classes)
    with torch.no_grad():
        head.mean.copy_(features.mean(dim=0))
        head.std.copy_(features.std(dim=0).clamp(min=1e-6))
        head.linear.weight.normal_(0.0, 0.01, generator=generator)
        head.linear.bias.zero_()
    optimizer = torch.optim.Adam(head.linear.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(features), labels).backward()
        optimizer.step()
    return head.requires_grad_(False)


def linear_probe(train: tuple, test: tuple, n_classes: int, steps: int = 500, lr: float = 0.01,
                 weight_decay: float = 1e-3, seed: int = 0) -> dict[str, float]:
    """Train a linear classifier on ``train`` = (features (N, C), labels (N,)); score ``test``.

    Returns
    -------
    dict
        ``accuracy`` and ``macro_f1`` on the test features, in [0, 1].
    """
    head = fit_probe(*train, n_classes, steps=steps, lr=lr, weight_decay=weight_decay, seed=seed)
    with torch.no_grad():
        predicted = head(test[0]).argmax(dim=-1).tolist()
    truth = test[1].tolist()
    return {"accuracy": accuracy(predicted, truth), "macro_f1": macro_f1(predicted, truth)}
