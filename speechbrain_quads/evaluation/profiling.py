"""Compute of Whisper encoders in MACs, counted by torch's own FLOP counter (MACs = FLOPs / 2).

``torch.utils.flop_counter.FlopCounterMode`` misses attention under SDPA on CPU, so counting runs
with eager attention (the matmuls of every head are then counted). The log-mel front end's FFT is
not counted (no formula); its mel matmul is.
"""

from __future__ import annotations

import contextlib
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

SAMPLE_RATE = 16000


@contextlib.contextmanager
def eager_attention(encoder: torch.nn.Module):
    """Temporarily switch a Hugging Face Whisper encoder to eager attention."""
    config = encoder.config
    previous = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = previous


def gmacs(module: torch.nn.Module, seconds: float, *extra_modules: torch.nn.Module) -> float:
    """Giga multiply-accumulates of one forward of ``module`` on one ``seconds``-long utterance.

    Arguments
    ---------
    module : WhisperStudent or WhisperTeacher
        Counted in its current input mode (30-s padding or variable length).
    seconds : float
        Utterance length in seconds (at 16 kHz).
    extra_modules : torch.nn.Module
        Heads applied to the last hidden state as ``head(hidden, lens)`` (e.g. the classifier).

    Returns
    -------
    float
        GMACs (1e9 multiply-accumulates).
    """
    weight = next(module.parameters())
    wav = torch.zeros(1, max(int(seconds * SAMPLE_RATE), 400), device=weight.device)
    wav[0, ::7] = 0.1  # not silence: keeps every code path of the front end realistic
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), eager_attention(module.encoder), counter:
        hidden, lens = module(wav, torch.ones(1, device=weight.device))
        for head in extra_modules:
            head(hidden[-1], lens)
    module.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def whisper_encoder_gmacs_formula(d_model: int, layers: int, ffn: int, n_mels: int,
                                  frames: int) -> float:
    """Hand count of a Whisper encoder's GMACs on ``frames`` mel frames (T = frames / 2 outputs).

    conv1 (n_mels -> d, k=3) on ``frames`` + conv2 (d -> d, k=3, stride 2) on T + per layer:
    q, k, v, out projections (4 T d^2), attention scores and weighted sum (2 T^2 d), MLP (2 T d f).
    """
    t = (frames + 1) // 2
    convs = frames * n_mels * d_model * 3 + t * d_model * d_model * 3
    per_layer = 4 * t * d_model ** 2 + 2 * t * t * d_model + 2 * t * d_model * ffn
    return (convs + layers * per_layer) / 1e9


WHISPER_ENCODERS = {
    "tiny": {"d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6},
    "base": {"d_model": 512, "encoder_layers": 6, "encoder_attention_heads": 8},
    "small": {"d_model": 768, "encoder_layers": 12, "encoder_attention_heads": 12},
    "medium": {"d_model": 1024, "encoder_layers": 24, "encoder_attention_heads": 16},
    "large-v2": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20},
    "large-v3": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20,
                 "num_mel_bins": 128},
}
"""Encoder shapes of OpenAI's Whisper checkpoints (FFN width 4 x d_model, 80 mel bins unless
stated), enough to count parameters and compute without downloading any weights."""


def whisper_encoder_config(name: str):
    """The ``transformers.WhisperConfig`` of a Whisper size in :data:`WHISPER_ENCODERS`."""
    from transformers import WhisperConfig

    if name not in WHISPER_ENCODERS:
        raise ValueError(f"unknown Whisper size {name!r}; known: {', '.join(WHISPER_ENCODERS)}")
    shape = {"num_mel_bins": 80, **WHISPER_ENCODERS[name]}
    return WhisperConfig(**shape, encoder_ffn_dim=4 * shape["d_model"])


def encoder_profile_on_meta(config) -> dict[str, float]:
    """Parameters and 30-s GMACs of a Whisper encoder built on the meta device (no weights, no
    compute: FlopCounterMode counts from shapes; the log-mel front end is not included).

    Arguments
    ---------
    config : transformers.WhisperConfig

    Returns
    -------
    dict
        ``params`` (encoder parameters, positional table included) and ``gmacs_30s``.
    """
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config._attn_implementation = "eager"
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
        mel = torch.zeros(1, config.num_mel_bins, 2 * config.max_source_positions)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        encoder(mel)
    return {"params": sum(p.numel() for p in encoder.parameters()),
            "gmacs_30s": counter.get_total_flops() / 2 / 1e9}


def compute_summary(brain, hparams: dict, test_durations: list[float]) -> dict:
    """GMACs of student(+head) and teacher at the test set's mean length and at 30 s."""
    mean_seconds = statistics.fmean(test_durations)
    student, head = brain.deployable["student"], brain.deployable["classifier"]
    summary = {"test_mean_seconds": mean_seconds,
               "student_gmacs_real_length": _gmacs_in_mode(student, mean_seconds, False, head),
               "student_gmacs_30s": _gmacs_in_mode(student, 30.0, True, head)}
    if "teacher" in brain.modules:
        teacher = brain.modules.teacher
        summary["teacher_gmacs_real_length"] = _gmacs_in_mode(teacher, mean_seconds, False)
        summary["teacher_gmacs_30s"] = _gmacs_in_mode(teacher, 30.0, True)
        summary["compute_ratio_30s"] = summary["teacher_gmacs_30s"] / summary["student_gmacs_30s"]
    return summary


def _gmacs_in_mode(module, seconds: float, pad_to_30s: bool, *heads) -> float:
    previous = module.pad_to_30s
    module.pad_to_30s = module.frontend.pad_to_30s = pad_to_30s
    try:
        return gmacs(module, seconds, *heads)
    finally:
        module.pad_to_30s = module.frontend.pad_to_30s = previous
