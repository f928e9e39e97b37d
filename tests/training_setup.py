"""A tiny real intent corpus (synthesized speech, 4 intents) and a QUADS Brain built from YAML."""

from __future__ import annotations

import json
from pathlib import Path

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speech import synthesize_clips
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder

from speechbrain_quads.training.brains import MCTBrain

HPARAMS = Path(__file__).parent / "hparams" / "mct_tiny.yaml"
INTENTS = {
    "lights_on": ["turn on the lights", "switch the lights on"],
    "weather_query": ["what is the weather", "will it rain today"],
    "alarm_set": ["set an alarm for seven", "wake me up at six"],
    "music_play": ["play some jazz", "put on some music"],
}


def write_corpus(folder: Path, seeds=(0, 1)) -> Path:
    """Synthesize every phrase once per seed (speed/pitch vary with it); returns a JSON manifest."""
    manifest = {}
    texts = [text for phrases in INTENTS.values() for text in phrases]
    labels = [intent for intent, phrases in INTENTS.items() for _ in phrases]
    for seed in seeds:
        wav_dir = folder / f"seed{seed}"
        synthesize_clips(texts, out_dir=wav_dir, seed=seed)
        for index, (text, intent) in enumerate(zip(texts, labels, strict=True)):
            manifest[f"s{seed}_{index:03d}"] = {"wav": str(wav_dir / f"clip_{index:03d}.wav"),
                                                "intent": intent, "text": text}
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


def make_dataset(manifest: Path) -> tuple[DynamicItemDataset, CategoricalEncoder]:
    """SpeechBrain dataset yielding ``sig`` and ``intent_encoded``."""
    data = DynamicItemDataset.from_json(str(manifest))
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(sorted(INTENTS))

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return sb.dataio.dataio.read_audio(wav)

    @sb.utils.data_pipeline.takes("intent")
    @sb.utils.data_pipeline.provides("intent_encoded")
    def label_pipeline(intent):
        return encoder.encode_label_torch(intent)

    data.add_dynamic_item(audio_pipeline)
    data.add_dynamic_item(label_pipeline)
    data.set_output_keys(["id", "sig", "intent_encoded"])
    return data, encoder


def make_brain(output: Path, tiny_dir: str, base_dir: str, overrides: dict | None = None,
               brain_class=MCTBrain, run_opts: dict | None = None):
    """(brain, hparams) for the tiny experiment in ``output``."""
    settings = {"output_folder": str(output), "teacher_source": base_dir,
                "student_source": tiny_dir, **(overrides or {})}
    with open(HPARAMS, encoding="utf-8") as handle:
        hparams = load_hyperpyyaml(handle, settings)
    brain = brain_class(modules=hparams["modules"], hparams=hparams,
                        checkpointer=hparams["checkpointer"],
                        run_opts={"device": "cpu", **(run_opts or {})})
    return brain, hparams
