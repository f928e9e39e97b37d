"""The README's "Quantize your own SpeechBrain model" section, run as written on a model that is
not ours: a SpeechBrain x-vector + classifier (``speechbrain.lobes``) on fbank features."""

import re
from pathlib import Path

import torch
from hyperpyyaml import load_hyperpyyaml
from reuse.intent_brain import IntentBrain
from training_setup import make_dataset, write_corpus

from speechbrain_quads.training import quantization_brain

REUSE = Path(__file__).parent / "reuse"
README = Path(__file__).resolve().parents[1] / "README.md"
TITLE = "## Quantize your own SpeechBrain model"


def readme_section() -> str:
    """The README's reuse section, from its title to the next ``## `` title."""
    text = README.read_text(encoding="utf-8")
    start = text.index(TITLE)
    end = text.find("\n## ", start + len(TITLE))
    return text[start: end if end >= 0 else len(text)]


def fenced(text: str, language: str) -> str:
    """The one ```language block of ``text``."""
    (block,) = re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)
    return block


def test_readme_section_quantizes_a_speechbrain_xvector_project(tmp_path, monkeypatch):
    centroid_terms = []
    centroid_loss = quantization_brain.centroid_loss
    monkeypatch.setattr(quantization_brain, "centroid_loss", lambda *args: centroid_terms.append(
        (term := centroid_loss(*args)).item()) or term)
    section = readme_section()
    user_yaml = (REUSE / "intent.yaml").read_text(encoding="utf-8")
    hparams = load_hyperpyyaml(user_yaml + "\n" + fenced(section, "yaml"),
                               {"output_folder": str(tmp_path / "exp")})
    data, _ = make_dataset(write_corpus(tmp_path / "corpus", seeds=(0, 1, 2)))
    run_opts = {"device": "cpu"}

    # the user's own full-precision training
    brain = IntentBrain(modules=hparams["modules"], opt_class=hparams["opt_class"],
                        hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.fit(hparams["epoch_counter"], data, data,
              train_loader_kwargs=hparams["dataloader_options"])
    # its best checkpoint, as a SpeechBrain recipe tests (the last epoch's error swings with
    # the BatchNorm statistics of 12 utterances: 0.0 to 0.67 between thread counts)
    brain.evaluate(data, min_key="error", test_loader_kwargs=hparams["dataloader_options"])
    float_error = brain.error

    # the README snippet, as written
    namespace = {"IntentBrain": IntentBrain, "hparams": hparams, "run_opts": run_opts,
                 "train_data": data, "valid_data": data}
    exec(compile(fenced(section, "python"), "README.md", "exec"), namespace)
    quantized = namespace["quantized"]

    assert float_error <= 0.1  # chance is 0.75 (4 intents); measured 0.0 on the training set
    assert quantized.error <= 0.1  # with 4-bit codebooks; measured 0.0
    assert quantized.phase.kind == "quant" and hparams["quant_epoch_counter"].current == 4
    assert len(centroid_terms) == 4 * 6  # in every training step: 4 epochs of 6 batches
    assert all(0 < term < 0.1 for term in centroid_terms), centroid_terms
    names = [name for name, module in quantized.deployable.named_modules()
             if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d))
             and module.weight.numel() >= 1024]
    assert any(n.startswith("embedding_model") for n in names)
    assert any(n.startswith("classifier") for n in names)
    for name in names:  # finalized: every large weight holds at most 2**4 values
        module = quantized.deployable.get_submodule(name)
        assert module.weight.unique().numel() <= 16, name
