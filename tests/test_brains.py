"""QUADS Brains end to end on synthesized speech: learning, teacher cache, resume, DDP."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import speechbrain as sb
import torch
from conftest import free_port
from safetensors.torch import load_file
from speechbrain.dataio.batch import PaddedBatch
from training_setup import make_brain, make_dataset, write_corpus

from speechbrain_quads.models.whisper import WhisperTeacher
from speechbrain_quads.training.teacher_cache import TeacherCache

PLAN = ["distill", "quant", "distill", "quant", "quant"]


class Killed(Exception):
    """Stands for the process being killed."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    manifest = write_corpus(tmp_path_factory.mktemp("corpus"), seeds=(0, 1, 2))
    return manifest, make_dataset(manifest)[0]


def fit(brain, hparams, data):
    brain.fit(hparams["epoch_counter"], data, data,
              train_loader_kwargs=hparams["dataloader_options"],
              valid_loader_kwargs={"batch_size": 8})


def codebooks(brain):
    return {name: (codebook.centroids.detach().clone(), codebook.indices.clone())
            for name, (_, codebook) in brain.quantizer.modules.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus, tiny_dir, base_dir):
    """A full 5-epoch MCT run; records the epochs in which the teacher's forward ran."""
    output = tmp_path_factory.mktemp("run")
    brain, hparams = make_brain(output, tiny_dir, base_dir)
    teacher_epochs = []
    teacher = brain.modules.teacher
    original = teacher.forward

    def counting_forward(*args, **kwargs):
        teacher_epochs.append(hparams["epoch_counter"].current)
        return original(*args, **kwargs)

    teacher.forward = counting_forward
    fit(brain, hparams, corpus[1])
    log = (output / "train_log.txt").read_text().splitlines()
    return brain, hparams, teacher_epochs, log


def test_mct_alternates_phases_and_logs_every_term(uninterrupted):
    brain, hparams, _, log = uninterrupted
    assert [e.kind for e in brain.plan] == PLAN
    assert len(log) == 5
    for line, kind in zip(log, PLAN, strict=True):
        assert f"phase: {kind}-" in line and "size_MB" in line and "valid ACC" in line
        assert ("train l1" in line) == (kind == "distill")
        assert ("train centroid" in line) == (kind == "quant")
    sizes = [float(line.split("size_MB: ")[1].split(",")[0]) for line in log]
    assert sizes[1] < sizes[0] / 3  # 4-bit packed vs float32
    assert brain.quantizer.mode == "train"


def test_training_accuracy_rises_above_chance(uninterrupted):
    brain, _, _, log = uninterrupted
    accuracies = [float(line.split("train ACC: ")[1].split(",")[0]) for line in log]
    chance = 1 / 4
    assert max(accuracies[2:]) > chance + 0.2, accuracies
    final_valid = float(log[-1].split("valid ACC: ")[1].split(",")[0])
    assert final_valid > chance + 0.2, log[-1]


def test_teacher_runs_only_in_the_first_epoch(uninterrupted):
    _, _, teacher_epochs, _ = uninterrupted
    assert teacher_epochs and set(teacher_epochs) == {1}  # epoch 3 distils from the cache


def test_quantized_weights_use_at_most_2_to_the_bits_values(uninterrupted):
    brain, _, _, _ = uninterrupted
    for name, (module, _) in brain.quantizer.modules.items():
        assert module.weight.unique().numel() <= 16, name


def test_kill_and_resume_mid_phase_matches_uninterrupted(tmp_path, corpus, uninterrupted,
                                                         tiny_dir, base_dir):
    reference, _, _, reference_log = uninterrupted
    brain, hparams = make_brain(tmp_path, tiny_dir, base_dir)
    fit_batch = brain.fit_batch

    def killed_in_epoch_5(batch):  # epoch 5 is the second epoch of the last quant phase
        if hparams["epoch_counter"].current == 5 and brain.step == 2:
            raise Killed
        return fit_batch(batch)

    brain.fit_batch = killed_in_epoch_5
    with pytest.raises(Killed):
        fit(brain, hparams, corpus[1])

    resumed, hparams = make_brain(tmp_path, tiny_dir, base_dir)
    fit(resumed, hparams, corpus[1])
    log = (tmp_path / "train_log.txt").read_text().splitlines()
    assert len(log) == 5 and log[-1] == reference_log[-1]
    ours, theirs = codebooks(resumed), codebooks(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name][0], theirs[name][0]), name
        assert torch.equal(ours[name][1], theirs[name][1]), name


def test_kill_inside_a_quant_phase_and_resume_from_intra_epoch_checkpoint(
        tmp_path, corpus, uninterrupted, tiny_dir, base_dir):
    """Killed at step 5 of epoch 4 (the first epoch of a quantization phase) after intra-epoch
    checkpoints at steps 2 and 4: the resumed run must not re-cluster or reset the optimizer, and
    ends bit-exact with the uninterrupted run (same batches in the same order, same optimizer
    state, no random draws in this model: nothing may differ, so equality is exact)."""
    reference, _, _, reference_log = uninterrupted
    run_opts = {"ckpt_interval_steps": 2}
    brain, hparams = make_brain(tmp_path, tiny_dir, base_dir, run_opts=run_opts)
    fit_batch = brain.fit_batch

    def killed_in_epoch_4(batch):
        if hparams["epoch_counter"].current == 4 and brain.step == 5:
            raise Killed
        return fit_batch(batch)

    brain.fit_batch = killed_in_epoch_4
    with pytest.raises(Killed):
        fit(brain, hparams, corpus[1])
    checkpoints = hparams["checkpointer"].list_checkpoints()
    flags = sorted(bool(c.meta.get("brain_intra_epoch_ckpt")) for c in checkpoints)
    assert flags == [False, True]  # end of epoch 3, step 4 of epoch 4
    killed_codebooks = codebooks(brain)

    resumed, hparams = make_brain(tmp_path, tiny_dir, base_dir, run_opts=run_opts)
    clusterings = []
    cluster = resumed.quantizer.cluster
    resumed.quantizer.cluster = lambda: clusterings.append(hparams["epoch_counter"].current) or cluster()
    fit(resumed, hparams, corpus[1])
    assert clusterings == []  # epoch 4 was clustered before the kill; epoch 5 continues its phase
    log = (tmp_path / "train_log.txt").read_text().splitlines()
    assert len(log) == 5 and log[3:] == reference_log[3:]  # same loss terms and accuracies
    ours, theirs = codebooks(resumed), codebooks(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name][0], theirs[name][0]), name
        assert torch.equal(ours[name][1], theirs[name][1]), name
        assert not torch.equal(ours[name][0], killed_codebooks[name][0]), name  # it trained on
    for key, value in resumed.deployable.state_dict().items():
        assert torch.equal(value, reference.deployable.state_dict()[key]), key


def test_rerun_of_a_finished_experiment_evaluates_the_last_checkpoint(corpus, uninterrupted,
                                                                       tiny_dir, base_dir):
    """A recipe re-run after the last epoch: fit has nothing left (no phase is entered), and
    evaluate scores the recovered quantized model exactly as the last validation did."""
    _, hparams, _, log = uninterrupted
    rerun, hparams = make_brain(Path(hparams["output_folder"]), tiny_dir, base_dir)
    fit(rerun, hparams, corpus[1])
    assert rerun.phase is None
    rerun.evaluate(corpus[1], test_loader_kwargs={"batch_size": 8})
    assert rerun.quantizer.mode == "train"
    last_valid = float(log[-1].split("valid ACC: ")[1].split(",")[0])  # logged to 3 digits
    assert rerun.test_stats["ACC"] == pytest.approx(last_valid, abs=5e-3)


def test_teacher_cache_is_keyed_by_settings_and_audio(tmp_path, base_dir, clips):
    cache = TeacherCache(str(tmp_path))
    teacher = WhisperTeacher(base_dir)
    folder = cache.bind(teacher)
    hidden = torch.randn(1, 7, 512)
    cache.store("utt/1", 1234, hidden)
    assert torch.equal(cache.load("utt/1", 1234), hidden)
    assert cache.load("utt/1", 999) is None  # different audio length: stale, recomputed
    assert cache.load("utt/2", 1234) is None
    assert not list(folder.rglob("*.tmp"))
    for change in ({"output_layers": [2, -1]}, {"pad_to_30s": True}):
        other = WhisperTeacher(base_dir, **change)
        assert TeacherCache(str(tmp_path)).bind(other) != folder, change
    assert TeacherCache(str(tmp_path)).bind(WhisperTeacher(base_dir)) == folder


def test_teacher_cache_returns_tensors_on_the_requested_device(tmp_path, base_dir):
    cache = TeacherCache(str(tmp_path), dtype="float16")
    cache.bind(WhisperTeacher(base_dir))
    hidden = torch.randn(2, 5, 512)
    cache.store("utt", 800, hidden)
    meta = cache.load("utt", 800, device=torch.device("meta"))
    assert meta.device == torch.device("meta") and meta.shape == (2, 5, 512)
    assert meta.dtype == torch.float32
    cpu = cache.load("utt", 800, device="cpu")
    assert cpu.device == torch.device("cpu")
    torch.testing.assert_close(cpu, hidden, atol=2e-3, rtol=1e-3)  # stored in float16


def test_bf16_mixed_precision_mct_trains_the_codebook(tmp_path, corpus, tiny_dir, base_dir):
    """--precision=bf16 (autocast) with the codebook in the loop: D, Q epochs."""
    overrides = {"mct_iterations": 1, "final_quant_epochs": 0}
    brain, hparams = make_brain(tmp_path, tiny_dir, base_dir, overrides,
                                run_opts={"precision": "bf16"})
    logit_dtypes, clustered = set(), {}
    classifier_forward = brain.modules.classifier.forward
    brain.modules.classifier.forward = lambda *a: logit_dtypes.add(
        (brain.modules.classifier.training, (out := classifier_forward(*a)).dtype)) or out
    cluster = brain.quantizer.cluster

    def recording_cluster(**kwargs):
        cluster(**kwargs)
        clustered.update(codebooks(brain))

    brain.quantizer.cluster = recording_cluster
    fit(brain, hparams, corpus[1])
    # training ran under bf16 autocast, validation at the default eval_precision (fp32)
    assert logit_dtypes == {(True, torch.bfloat16), (False, torch.float32)}
    log = (tmp_path / "train_log.txt").read_text().splitlines()
    assert len(log) == 2 and "train centroid" in log[1] and "train l1" in log[0]
    values = [float(part.split(": ")[1]) for line in log for part in line.split(" - ")[1:][0]
              .split(", ") if part.startswith("train ")]
    assert values and all(math.isfinite(v) for v in values), log
    trained = codebooks(brain)
    assert clustered.keys() == trained.keys()
    moved = 0
    for name, (centroids, indices) in trained.items():
        assert centroids.dtype == torch.float32 and torch.isfinite(centroids).all(), name
        assert torch.equal(indices, clustered[name][1]), name  # assignments stay in a phase
        moved += int(not torch.equal(centroids, clustered[name][0]))
    assert moved == len(trained)  # every codebook trained


def test_distillation_through_the_quantizer(tmp_path, corpus, tiny_dir, base_dir):
    """``distill_through_quantizer``: the distillation epoch clusters first and runs mode
    ``ste``: every step's forward uses at most 2**bits values per weight, each the codebook
    value nearest to the latent weight; the latents move (straight-through gradient) while the
    codebook does not; the quantization epoch that follows keeps the re-assigned codebook and
    trains it."""
    overrides = {"mct_iterations": 1, "final_quant_epochs": 0,
                 "distill_through_quantizer": True, "recluster": "reassign"}
    brain, hparams = make_brain(tmp_path, tiny_dir, base_dir, overrides)
    seen = []
    start = brain.on_fit_batch_start

    def recording_start(batch, should_step):
        start(batch, should_step)
        module, codebook = next(iter(brain.quantizer.modules.values()))
        latent = module.parametrizations["weight"].original.detach()
        table = codebook.centroids.detach().flatten()
        nearest = table[(latent.reshape(-1, 1) - table).abs().argmin(dim=1)]
        seen.append((brain.quantizer.mode, torch.equal(module.weight.flatten(), nearest),
                     module.weight.unique().numel(), latent.clone(), table.clone()))

    brain.on_fit_batch_start = recording_start
    fit(brain, hparams, corpus[1])
    distill = [s for s in seen if s[0] == "ste"]
    quant = [s for s in seen if s[0] == "train"]
    assert distill and quant and len(distill) + len(quant) == len(seen)
    assert all(match and distinct <= 16 for _, match, distinct, _, _ in distill)
    assert not torch.equal(distill[0][3], distill[-1][3])  # the latents trained
    assert torch.equal(distill[0][4], distill[-1][4])  # the codebook did not
    assert torch.equal(quant[0][4], distill[-1][4])  # kept into the quantization phase
    assert not torch.equal(quant[0][4], codebooks(brain)[next(iter(brain.quantizer.modules))][0]
                           .flatten())  # and trained there
    log = (tmp_path / "train_log.txt").read_text().splitlines()
    assert len(log) == 2 and all("nan" not in line for line in log)


def test_self_distillation_matches_the_full_precision_student(tmp_path, corpus, tiny_dir,
                                                              base_dir):
    """``quant_self_distill_weight``: in quantization steps the reference is the same input
    through the latent weights (equal to a forward with the quantizer off), the step's own
    forward still runs through the codebooks, and the term is logged; distillation steps and
    evaluation compute no reference."""
    from speechbrain_quads.training.losses import self_distillation_loss

    overrides = {"mct_iterations": 1, "final_quant_epochs": 0, "quant_self_distill_weight": 1.0}
    brain, hparams = make_brain(tmp_path, tiny_dir, base_dir, overrides)
    checks = []
    encode = brain.encode

    def checking_encode(wavs, lens, stage):
        out = encode(wavs, lens, stage)
        if out.reference is not None:
            mode = brain.quantizer.mode
            brain.quantizer.set_mode("off")
            with torch.no_grad():
                latent = brain.modules.student(wavs, lens)[0]
            brain.quantizer.set_mode(mode)
            checks.append((stage, mode, torch.allclose(latent, out.reference, atol=1e-6),
                           float(self_distillation_loss(out.hidden.detach(), out.reference,
                                                        out.lens))))
        else:
            checks.append((stage, brain.quantizer.mode if brain.quantizer.clustered else "off",
                           None, None))
        return out

    brain.encode = checking_encode
    fit(brain, hparams, corpus[1])
    quant_train = [c for c in checks if c[2] is not None]
    assert quant_train and all(c[0] == sb.Stage.TRAIN and c[1] == "train" for c in quant_train)
    assert all(same and loss > 0 for _, _, same, loss in quant_train)  # codebooks differ
    assert len(quant_train) == sum(1 for c in checks if c[0] == sb.Stage.TRAIN) // 2
    log = (tmp_path / "train_log.txt").read_text().splitlines()
    assert "self_l1" not in log[0] and "train self_l1" in log[1]


def test_self_distillation_loss_masks_padding_and_averages_layers():
    from speechbrain_quads.training.losses import self_distillation_loss

    reference = torch.zeros(3, 2, 4, 5)
    hidden = reference.clone()
    hidden[:, 1, 2:] = 7.0  # padded frames of utterance 1 (relative length 0.5): ignored
    hidden[1, 0, 0] = 1.0  # one frame of one layer off by 1 in every channel
    loss = self_distillation_loss(hidden, reference, torch.tensor([1.0, 0.5]))
    assert loss.item() == pytest.approx(5 / (3 * 6 * 5))  # 3 layers x 6 valid frames x 5 ch
    with pytest.raises(ValueError, match="differ in shape"):
        self_distillation_loss(hidden, reference[:2], torch.tensor([1.0, 0.5]))


def test_size_target_gives_mixed_widths_that_fit_and_survive_resume(tmp_path, corpus, tiny_dir,
                                                                    base_dir, monkeypatch):
    """``target_mb`` (the uniform 3-bit size): calibration of the model training starts from
    (the probe-initialised head, not a random one), a width per tensor stored in
    bit_widths.json, a sensitivity-weighted first clustering; the packed model fits the target;
    a resumed run re-uses the stored widths and loads its checkpoint into them."""
    from speechbrain_quads.codebook.allocation import fixed_bytes, tensor_bytes
    from speechbrain_quads.codebook.packing import size_report
    from speechbrain_quads.training import quantization_brain

    overrides = {"mct_iterations": 1, "final_quant_epochs": 0, "classifier_init": "probe"}
    probe, _ = make_brain(tmp_path / "probe", tiny_dir, base_dir, overrides)
    target = (fixed_bytes(probe.quantizer) + sum(
        tensor_bytes(c.indices.numel(), c.groups, 3)
        for _, c in probe.quantizer.modules.values())) / 2**20
    settings = {**overrides, "target_mb": target, "sensitivity_samples": 4}
    heads = []  # the intent head each calibration pass saw
    calibrate = quantization_brain.brain_sensitivity

    def recording_calibration(brain, *args, **kwargs):
        heads.append(brain.modules.classifier.linear.weight.detach().clone())
        return calibrate(brain, *args, **kwargs)

    monkeypatch.setattr(quantization_brain, "brain_sensitivity", recording_calibration)
    brain, hparams = make_brain(tmp_path / "run", tiny_dir, base_dir, settings)
    initial_head = brain.modules.classifier.linear.weight.detach().clone()
    fit(brain, hparams, corpus[1])
    stored = json.loads((tmp_path / "run" / "save" / "bit_widths.json").read_text())
    widths = {name: codebook.bits for name, (_, codebook) in brain.quantizer.modules.items()}
    assert stored == {"target_mb": target, "candidate_bits": [2, 3, 4, 5, 6, 8], "widths": widths}
    assert len(set(widths.values())) > 1
    assert size_report(brain.deployable).packed_bytes <= target * 2**20
    assert len(heads) == 2  # the widths, then the first clustering (after a distillation epoch)
    assert not torch.equal(heads[0], initial_head)  # the probe, not the random initialisation
    assert not torch.equal(heads[1], heads[0])  # the model as it is at the first clustering
    again, hparams_again = make_brain(tmp_path / "run", tiny_dir, base_dir, settings)
    fit(again, hparams_again, corpus[1])  # finished: recovers the last checkpoint only
    assert {n: c.bits for n, (_, c) in again.quantizer.modules.items()} == widths
    assert len(heads) == 2  # the stored widths and restored codebooks needed no calibration
    for name, (_, codebook) in again.quantizer.modules.items():
        torch.testing.assert_close(codebook.centroids, brain.quantizer.modules[name][1].centroids)
    for changed in ({"target_mb": target / 2}, {"target_widths": [3, 4]}):
        with pytest.raises(ValueError, match="bit_widths.json: widths for target_mb"):
            other, hparams_other = make_brain(tmp_path / "run", tiny_dir, base_dir,
                                              {**settings, **changed})
            fit(other, hparams_other, corpus[1])
    with pytest.raises(ValueError, match=r"target_widths: expected .* got \[0, 4\]"):
        bad, hparams_bad = make_brain(tmp_path / "bad", tiny_dir, base_dir,
                                      {**settings, "target_widths": [0, 4]})
        fit(bad, hparams_bad, corpus[1])


def test_a_calibration_pass_is_measured_again_only_when_a_weight_changed(tmp_path, corpus,
                                                                         tiny_dir, base_dir,
                                                                         monkeypatch):
    """The pass is deterministic (fixed recordings, eval mode), so ``calibration_sensitivity``
    returns the sensitivities it measured while no weight has changed (a ``target_mb`` run whose
    first clustering comes before any step measures once) and measures anew after a change."""
    from speechbrain_quads.training import quantization_brain

    calibrate, passes = quantization_brain.brain_sensitivity, []
    monkeypatch.setattr(quantization_brain, "brain_sensitivity",
                        lambda *a, **k: passes.append(1) or calibrate(*a, **k))
    brain, _ = make_brain(tmp_path, tiny_dir, base_dir, {"sensitivity_samples": 4})
    brain._calibration_set = corpus[1]
    first = brain.calibration_sensitivity()
    assert brain.calibration_sensitivity() is first and len(passes) == 1
    fresh = calibrate(brain, brain.quantizer, corpus[1], 4, seed=brain.hparams.seed)
    assert fresh.keys() == first.keys()
    assert all(torch.equal(fresh[name], first[name]) for name in first)  # deterministic
    with torch.no_grad():
        brain.modules.classifier.linear.weight.mul_(1.5)
    again = brain.calibration_sensitivity()
    assert len(passes) == 2 and not torch.equal(again["classifier.linear"],
                                                first["classifier.linear"])


def test_logit_distillation_fits_a_teacher_head_and_checkpoints_it(tmp_path, corpus, tiny_dir,
                                                                   base_dir):
    """``logit_distill_weight``: a teacher intent head (a probe on the frozen teacher) is fitted
    before training, its soft-target term is logged in distillation epochs only, and a resumed
    run recovers the same head from the checkpoint instead of fitting it again."""
    settings = {"mct_iterations": 1, "final_quant_epochs": 0, "logit_distill_weight": 0.5}
    brain, hparams = make_brain(tmp_path, tiny_dir, base_dir, settings)
    fit(brain, hparams, corpus[1])
    head = {k: v.clone() for k, v in brain.teacher_head.state_dict().items()}
    assert head["std"].shape == (512,) and not torch.equal(head["mean"], torch.zeros(512))
    log = (tmp_path / "train_log.txt").read_text().splitlines()
    assert "train kd" in log[0] and "train kd" not in log[1], log
    kd = float(log[0].split("train kd: ")[1].split(",")[0])
    assert math.isfinite(kd) and kd > 0
    again, hparams_again = make_brain(tmp_path, tiny_dir, base_dir, settings)
    fitted = []
    import speechbrain_quads.training.brains as brains

    original = brains.fit_probe
    brains.fit_probe = lambda *a, **k: fitted.append(1) or original(*a, **k)
    try:
        fit(again, hparams_again, corpus[1])
    finally:
        brains.fit_probe = original
    assert not fitted
    for key, value in again.teacher_head.state_dict().items():
        assert torch.equal(value, head[key]), key


def test_classifier_init_probe_starts_the_head_from_a_student_probe(tmp_path, corpus, tiny_dir,
                                                                    base_dir):
    """``classifier_init: probe``: when training starts, the intent head is the linear probe of
    the pretrained student's frozen pooled features (LP-FT), folded into the plain layer."""
    from speechbrain_quads.training.probe import fit_probe, pooled_features

    settings = {"mct_iterations": 1, "final_quant_epochs": 0, "classifier_init": "probe"}
    brain, hparams = make_brain(tmp_path, tiny_dir, base_dir, settings)
    features, labels = pooled_features(brain.modules.student.eval(), corpus[1])
    expected = fit_probe(features, labels, brain.modules.classifier.n_intents, seed=0)
    seen = {}
    start = brain.on_fit_start

    def recording_start():
        seen["logits"] = brain.modules.classifier.linear(features).detach()
        start()

    brain.on_fit_start = recording_start
    fit(brain, hparams, corpus[1])
    torch.testing.assert_close(seen["logits"], expected(features), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="classifier_init: 'zeros' is not one of"):
        other, hparams_other = make_brain(tmp_path / "other", tiny_dir, base_dir,
                                          {**settings, "classifier_init": "zeros"})
        fit(other, hparams_other, corpus[1])


def test_length_changing_augmentation_is_refused(tmp_path, corpus, tiny_dir, base_dir):
    brain, hparams = make_brain(tmp_path, tiny_dir, base_dir)
    brain.phase = hparams["phase_plan"][1]  # a distillation epoch
    batch = PaddedBatch([corpus[1][i] for i in range(3)])

    def slow_down(wavs, lens):  # 25 % longer: 1.25x the encoder frames
        longer = torch.nn.functional.interpolate(wavs.unsqueeze(1), scale_factor=1.25)
        return longer.squeeze(1), lens

    def add_one_mel_hop(wavs, lens):  # 160 samples: the same length up to one frame's rounding
        longest = torch.round(lens * wavs.shape[1])
        return torch.nn.functional.pad(wavs, (0, 160)), (longest + 160) / (wavs.shape[1] + 160)

    brain.hparams.augmentation = slow_down
    with pytest.raises(ValueError, match="augmentation 'slow_down' changes the length"):
        brain.compute_forward(batch, sb.Stage.TRAIN)
    brain.hparams.augmentation = add_one_mel_hop
    logits, hidden, lens, teacher, _ = brain.compute_forward(batch, sb.Stage.TRAIN)
    assert teacher.shape[:3] == (1, 3, hidden.shape[2]) and teacher.device == logits.device
    assert torch.isfinite(brain.modules.distill(hidden, teacher, lens))


def test_audio_the_front_end_refuses_is_named_by_its_utterance_id(tmp_path, corpus, tiny_dir,
                                                                  base_dir):
    """A recording that passed preparation but cannot be featurised (float samples holding
    NaN) stops the step with an error that names the batch's utterance IDs in order."""
    brain, _ = make_brain(tmp_path, tiny_dir, base_dir)
    items = [dict(corpus[1][i]) for i in range(3)]
    items[1]["sig"] = torch.full_like(items[1]["sig"], float("nan"))
    batch = PaddedBatch(items)
    ids = ", ".join(item["id"] for item in items)
    with pytest.raises(ValueError, match=rf"utterance 1 of the batch contains NaN .*in order: {ids}\)"):
        brain.compute_forward(batch, sb.Stage.VALID)


def test_two_process_ddp_run_ends_with_identical_weights(tmp_path, corpus, tiny_dir, base_dir):
    script = Path(__file__).parent / "ddp_train.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={free_port()}", str(script), str(corpus[0]), str(tmp_path), tiny_dir,
         base_dir],
        capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    assert any("centroids" in key for key in rank0)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    log = (tmp_path / "train_log.txt").read_text().splitlines()
    assert len(log) == 3 and "phase: quant" in log[-1]
