"""Whisper log-mel features computed per utterance, honouring ``wav_lens``.

SpeechBrain's Whisper wrapper normalises the log-mel with the maximum over the whole *batch* and
always pads to 30 s, so an utterance's features depend on its batch mates. Here every utterance is
featurised on its own valid samples, exactly as openai-whisper does for a single file, in one of two
modes:

- ``pad_to_30s=True``: Whisper's original input (the paper's setting): each utterance is padded
  with zeros (or trimmed) to 30 s = 3000 mel frames.
- ``pad_to_30s=False`` (variable length): each utterance gives ``n_samples // 160`` frames; the
  batch is zero-padded to its longest utterance and the encoder masks the padding.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

WHISPER_SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms at 16 kHz
CHUNK_SAMPLES = 30 * WHISPER_SAMPLE_RATE
MIN_SAMPLES = N_FFT  # shortest utterance accepted: 25 ms


def lengths_to_samples(wav_lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """Relative lengths (B,) in [0, 1] -> absolute sample counts (B,) as int64."""
    return torch.round(wav_lens.to(torch.float64) * max_len).long().clamp(0, max_len)


def frame_mask(frames: torch.Tensor, max_frames: int) -> torch.Tensor:
    """Counts (B,) -> boolean mask (B, max_frames), True on valid frames."""
    return torch.arange(max_frames, device=frames.device)[None, :] < frames[:, None]


class WhisperLogMel(nn.Module):
    """Whisper's log-mel spectrogram, one utterance at a time.

    Arguments
    ---------
    n_mels : int
        80 (Whisper up to large-v2) or 128 (large-v3).
    sampling_rate : int
        Sample rate of the input waveforms in Hz; anything other than 16000 is resampled to 16 kHz.
    pad_to_30s : bool
        Pad/trim each utterance to 30 s (Whisper's original input) instead of variable length.

    Example
    -------
    >>> frontend = WhisperLogMel()
    >>> mel, frames = frontend(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> mel.shape, frames.tolist()
    (torch.Size([2, 80, 100]), [100, 50])
    """

    def __init__(self, n_mels: int = 80, sampling_rate: int = WHISPER_SAMPLE_RATE,
                 pad_to_30s: bool = False):
        super().__init__()
        from transformers import WhisperFeatureExtractor

        filters = WhisperFeatureExtractor(feature_size=n_mels).mel_filters  # (201, n_mels)
        self.register_buffer("mel_filters", torch.tensor(filters.T, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.sampling_rate = int(sampling_rate)
        self.pad_to_30s = pad_to_30s

    def _prepare(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None) -> tuple:
        """Validate the batch, average channels, resample; returns (wavs (B, T), samples (B,))."""
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.dim() == 3:  # (B, T, C) as SpeechBrain's read_audio gives: average the channels
            wavs = wavs.mean(dim=-1)
        if wavs.dim() != 2:
            raise ValueError(f"wavs must be (batch, time) or (batch, time, channels); "
                             f"got shape {tuple(wavs.shape)}")
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        if wav_lens.shape != (wavs.shape[0],):
            raise ValueError(f"wav_lens must have shape ({wavs.shape[0]},); got {tuple(wav_lens.shape)}")
        samples = lengths_to_samples(wav_lens, wavs.shape[1])
        if self.sampling_rate != WHISPER_SAMPLE_RATE:
            wavs = torchaudio.functional.resample(wavs, self.sampling_rate, WHISPER_SAMPLE_RATE)
            samples = torch.round(samples * WHISPER_SAMPLE_RATE / self.sampling_rate).long()
            samples = samples.clamp(max=wavs.shape[1])
        for i, n in enumerate(samples.tolist()):
            if n < MIN_SAMPLES:
                raise ValueError(
                    f"utterance {i} of the batch is empty or too short: {n} samples at "
                    f"{WHISPER_SAMPLE_RATE} Hz (Whisper needs at least {MIN_SAMPLES}, 25 ms)")
            if not torch.isfinite(wavs[i, :n]).all():
                raise ValueError(f"utterance {i} of the batch contains NaN or infinite samples")
        return wavs.float(), samples

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """One utterance (T,) at 16 kHz -> normalised log-mel (n_mels, T // 160), in float32
        under any autocast (``--precision=fp16``): in half precision the mel energies of quiet
        frames underflow to 0 and their log to -inf, and training would see other features
        than evaluation."""
        with torch.autocast(device_type=wav.device.type, enabled=False):
            spec = torch.stft(wav, N_FFT, HOP_LENGTH, window=self.window, return_complex=True)
            power = spec[:, :-1].abs() ** 2
            log_spec = torch.clamp(self.mel_filters @ power, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> tuple:
        """Featurise a batch.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, T) or (B, T, C) waveforms at ``sampling_rate`` Hz; channels are averaged.
        wav_lens : torch.Tensor
            (B,) relative lengths in [0, 1] (SpeechBrain's convention); None means all full.

        Returns
        -------
        mel : torch.Tensor
            (B, n_mels, F) log-mel; F = 3000 with ``pad_to_30s``, else the longest utterance's
            frame count, padding frames set to 0.
        frames : torch.Tensor
            (B,) int64 count of mel frames holding each utterance's audio (<= F).
        """
        wavs, samples = self._prepare(wavs, wav_lens)
        frames = samples // HOP_LENGTH
        if self.pad_to_30s:
            frames = frames.clamp(max=CHUNK_SAMPLES // HOP_LENGTH)
        total = CHUNK_SAMPLES // HOP_LENGTH if self.pad_to_30s else int(frames.max())
        mel = wavs.new_zeros(wavs.shape[0], self.mel_filters.shape[0], total)
        for i, n in enumerate(samples.tolist()):
            wav = wavs[i, : min(n, CHUNK_SAMPLES) if self.pad_to_30s else n]
            if self.pad_to_30s:
                wav = nn.functional.pad(wav, (0, CHUNK_SAMPLES - wav.shape[0]))
            utterance = self.log_mel(wav)
            mel[i, :, : utterance.shape[1]] = utterance
        return mel, frames
