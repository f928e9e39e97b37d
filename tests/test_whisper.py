"""Teacher/student encoders and the intent head on real synthesized speech with real weights."""

import shutil

import pytest
import torch
import torchaudio
from conftest import pad_batch
from transformers import WhisperFeatureExtractor, WhisperModel

from speechbrain_quads.models.features import WhisperLogMel
from speechbrain_quads.models.heads import IntentClassifier, masked_mean
from speechbrain_quads.models.whisper import WhisperStudent, WhisperTeacher


@pytest.fixture(scope="module")
def student(tiny_dir):
    return WhisperStudent(tiny_dir).eval()


@pytest.fixture(scope="module")
def teacher(base_dir):
    return WhisperTeacher(base_dir, output_layers=[3, -1])


def test_log_mel_matches_whisper_feature_extractor(clips):
    ours, frames = WhisperLogMel(pad_to_30s=True)(clips[0].unsqueeze(0))
    reference = WhisperFeatureExtractor(feature_size=80)(
        clips[0].numpy(), sampling_rate=16000, return_tensors="pt").input_features
    assert ours.shape == reference.shape == (1, 80, 3000)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert frames.tolist() == [clips[0].shape[0] // 160]


@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_features_do_not_depend_on_batch_mates(clips, pad_to_30s):
    """Unlike SpeechBrain's wrapper (batch-wide max), each utterance is normalised on its own."""
    frontend = WhisperLogMel(pad_to_30s=pad_to_30s)
    wavs, lens = pad_batch([clips[2], clips[1] * 8.0])  # a loud batch mate
    batch, frames = frontend(wavs, lens)
    alone, _ = frontend(clips[2].unsqueeze(0))
    n = int(frames[0])
    assert torch.allclose(batch[0, :, :n], alone[0, :, :n], atol=1e-6)
    if not pad_to_30s:
        assert batch.shape[-1] == clips[1].shape[0] // 160 and (batch[0, :, n:] == 0).all()


@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_student_forward_on_speech(student, clips, pad_to_30s):
    student.frontend.pad_to_30s = student.pad_to_30s = pad_to_30s
    wavs, lens = pad_batch(clips)
    with torch.no_grad():
        hidden, frame_lens = student(wavs, lens)
    longest_frames = max(c.shape[0] for c in clips) // 160
    expected_t = 1500 if pad_to_30s else (longest_frames + 1) // 2
    assert hidden.shape == (5, len(clips), expected_t, 384)
    assert torch.isfinite(hidden).all()
    expected_frames = torch.tensor([(c.shape[0] // 160 + 1) // 2 for c in clips])
    assert torch.equal(torch.round(frame_lens * expected_t).long(), expected_frames)
    # speech differs from utterance to utterance: pooled features are not all alike
    pooled = masked_mean(hidden[-1], frame_lens)
    assert torch.cdist(pooled, pooled).max() > 1.0
    student.frontend.pad_to_30s = student.pad_to_30s = False


def test_variable_length_matches_hf_encoder_on_a_full_window(student, clips):
    """With nothing padded, our encoder forward is HF's forward (positional table not sliced)."""
    mel, frames = WhisperLogMel(pad_to_30s=True)(clips[0].unsqueeze(0))
    from speechbrain_quads.models.whisper import encode

    with torch.no_grad():
        states, _ = encode(student.encoder, mel, torch.tensor([3000]), mask_padding=True)
        reference = WhisperModel.from_pretrained(student.encoder.config._name_or_path)
        expected = reference.get_encoder().eval()(mel).last_hidden_state
    assert torch.allclose(states[-1], expected, atol=1e-4)


@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_padding_does_not_change_a_short_utterances_pooled_output(student, clips, pad_to_30s):
    student.frontend.pad_to_30s = student.pad_to_30s = pad_to_30s
    head = IntentClassifier(384, 5).eval()
    short, long = clips[2], clips[1]
    with torch.no_grad():
        hidden_alone, lens_alone = student(short.unsqueeze(0))
        wavs, lens = pad_batch([short, long])
        hidden_batch, lens_batch = student(wavs, lens)
        pooled_alone = masked_mean(hidden_alone[-1], lens_alone)
        pooled_batch = masked_mean(hidden_batch[-1], lens_batch)
        logits_alone = head(hidden_alone[-1], lens_alone)
        logits_batch = head(hidden_batch[-1], lens_batch)
    student.frontend.pad_to_30s = student.pad_to_30s = False
    assert hidden_batch.shape[2] > hidden_alone.shape[2] or pad_to_30s
    assert torch.allclose(pooled_alone[0], pooled_batch[0], atol=1e-4)
    assert torch.allclose(logits_alone[0], logits_batch[0], atol=1e-4)
    # the same utterance without the mask would differ: masking is what keeps them equal
    if not pad_to_30s:
        unmasked = hidden_batch[-1][0].mean(dim=0)
        assert not torch.allclose(unmasked, pooled_alone[0], atol=1e-2)


def test_teacher_is_frozen_and_returns_requested_layers(teacher, clips):
    wavs, lens = pad_batch(clips[:2])
    teacher.train()
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    hidden, frame_lens = teacher(wavs, lens)
    assert hidden.shape[:2] == (2, 2) and hidden.shape[-1] == 512
    assert not hidden.requires_grad
    assert frame_lens[1] == 1.0  # the longer utterance fills the batch
    # layer 3 of base's 6 is not the final output
    assert not torch.allclose(hidden[0], hidden[1])


def test_teacher_rejects_out_of_range_layers(base_dir):
    with pytest.raises(ValueError, match="output_layers entry 9"):
        WhisperTeacher(base_dir, output_layers=[9])


def test_pretrained_student_copies_the_checkpoint_and_random_init_does_not(tiny_dir):
    pretrained = WhisperStudent(tiny_dir, keep_layers=[0, 3])
    reference = WhisperModel.from_pretrained(tiny_dir).get_encoder()
    assert pretrained.num_layers == 2
    assert torch.equal(pretrained.encoder.layers[1].fc1.weight, reference.layers[3].fc1.weight)
    assert torch.equal(pretrained.encoder.conv1.weight, reference.conv1.weight)
    torch.manual_seed(0)
    random = WhisperStudent(tiny_dir, keep_layers=[0, 3], init="random")
    assert random.num_layers == 2 and random.init == "random"
    for name, param in random.encoder.named_parameters():
        if name.endswith("fc1.weight") or name.endswith("q_proj.weight"):
            other = dict(pretrained.encoder.named_parameters())[name]
            assert param.shape == other.shape
            assert not torch.allclose(param, other)
            assert 0.01 < param.std() < 0.03  # Whisper's init_std is 0.02
    for student in (pretrained, random):  # the fixed sinusoids are not trained; the rest is
        trainable = {name for name, p in student.encoder.named_parameters() if p.requires_grad}
        assert trainable == {name for name, _ in student.encoder.named_parameters()} - {
            "embed_positions.weight"}


def test_bad_student_settings(tiny_dir):
    with pytest.raises(ValueError, match="init"):
        WhisperStudent(tiny_dir, init="xavier")
    with pytest.raises(ValueError, match="keep_layers"):
        WhisperStudent(tiny_dir, keep_layers=[7])


def test_empty_and_too_short_waveforms_are_rejected():
    frontend = WhisperLogMel()
    with pytest.raises(ValueError, match="utterance 1 .* empty or too short: 0 samples"):
        frontend(torch.randn(2, 16000), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        frontend(torch.full((1, 16000), float("nan")))
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        frontend(torch.randn(1, 2, 16000, 2))


def test_stereo_is_averaged_to_mono(clips):
    frontend = WhisperLogMel()
    stereo = torch.stack([clips[0], 0.5 * clips[0]], dim=-1).unsqueeze(0)  # (1, T, 2)
    mel_stereo, _ = frontend(stereo)
    mel_mono, _ = frontend((0.75 * clips[0]).unsqueeze(0))
    assert torch.allclose(mel_stereo, mel_mono, atol=1e-5)


def test_other_sample_rates_are_resampled(clips):
    wav16 = clips[1].unsqueeze(0)
    wav8 = torchaudio.functional.resample(wav16, 16000, 8000)
    mel16, frames16 = WhisperLogMel()(wav16)
    mel8, frames8 = WhisperLogMel(sampling_rate=8000)(wav8)
    assert abs(int(frames8) - int(frames16)) <= 1
    n = min(mel8.shape[-1], mel16.shape[-1])
    low = slice(0, 60)  # mel bins below 4 kHz survive the 8 kHz round trip
    correlation = torch.corrcoef(torch.stack([mel8[0, low, :n].flatten(),
                                              mel16[0, low, :n].flatten()]))[0, 1]
    assert correlation > 0.95


def test_source_directory_missing_files(tmp_path, tiny_dir):
    broken = tmp_path / "whisper"
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        WhisperStudent(str(broken))
    (broken / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        WhisperTeacher(str(broken))


def test_head_trains_and_ignores_padding():
    head = IntentClassifier(8, 3)
    feats = torch.randn(2, 10, 8)
    lens = torch.tensor([1.0, 0.5])
    logits = head(feats, lens)
    logits.sum().backward()
    assert head.linear.weight.grad.abs().sum() > 0
    changed = feats.clone()
    changed[1, 5:] = 1e3  # padding of the second utterance
    assert torch.allclose(head(changed, lens)[1], logits[1])
    with pytest.raises(ValueError, match="n_intents"):
        IntentClassifier(8, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_log_mel_is_float32_under_autocast(dtype):
    """``--precision=fp16/bf16`` runs the forward under autocast: the front end still computes
    in float32, so a near-silent clip keeps finite features, equal to those evaluation sees."""
    frontend = WhisperLogMel()
    wav = torch.zeros(1, 16000)
    wav[0, 4000:4400] = 1e-5 * torch.randn(400, generator=torch.Generator().manual_seed(0))
    expected, frames = frontend(wav)
    with torch.autocast("cpu", dtype=dtype):
        mel, same_frames = frontend(wav)
    assert torch.isfinite(mel).all() and torch.equal(mel, expected)
    assert torch.equal(frames, same_frames)
