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


def linear_probe(train: tuple, test: tuple, n_classes: int, steps: int = 500, lr: float = 0.01,
                 weight_decay: float = 1e-3, seed: int = 0) -> dict[str, float]:
    """Train a linear classifier on ``train`` = (features (N, C), labels (N,)); score ``test``.

    Returns
    -------
    dict
        ``accuracy`` and ``macro_f1`` on the test features, in [0, 1].
    """
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = train
    mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp(min=1e-6)
    layer = torch.nn.Linear(train_x.shape[1], n_classes)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.01, generator=generator)
        layer.bias.zero_()
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    inputs = (train_x - mean) / std
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(layer(inputs), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        predicted = layer((test[0] - mean) / std).argmax(dim=-1).tolist()
    truth = test[1].tolist()
    return {"accuracy": accuracy(predicted, truth), "macro_f1": macro_f1(predicted, truth)}
