"""Generate small SLURP-format and Fluent-Speech-Commands-format corpora with offline voices.

The output follows the real datasets' layouts, so the real prepare scripts read it unchanged:

SLURP (``generate_slurp``)::

    OUT_DIR/train.jsonl  train_synthetic.jsonl  devel.jsonl  test.jsonl
    OUT_DIR/train_real.jsonl                copy of train.jsonl (SpeechBrain's recipe name)
    OUT_DIR/slurp_real/audio-<n>.flac       16 kHz mono FLAC, PCM 16 bit
    OUT_DIR/slurp_synth/audio-<n>.flac      audio of train_synthetic.jsonl

FSC (``generate_fsc``)::

    OUT_DIR/data/train_data.csv  valid_data.csv  test_data.csv
        header ``,path,speakerId,transcription,action,object,location``
    OUT_DIR/wavs/speakers/<speakerId>/<uuid>.wav   16 kHz mono WAV, PCM 16 bit

Both also write ``OUT_DIR/mini_corpus.json`` (arguments, speakers per split, speaker of every
audio file, durations, timing). The corpus is built in a hidden staging folder next to
``OUT_DIR`` and renamed to ``OUT_DIR`` only when complete (``corpus_writer.build``), so an
interrupted run never leaves something that looks finished. Valid and test speakers come from
voice families that training never uses (``voices.split_pools``); no sentence is in two splits,
even after ``grammar.normalise``, and valid/test sentences follow templates held out from training; every
valid/test intent is also in train; labels, sentences and audio are deterministic for a seed
(every synthesizer seeded per utterance, eSpeak NG started clean for each speaker), bit for bit
whatever the number of worker processes.

``slurp-text`` (``slurp_text.generate_slurp_text``) speaks the lines of a real SLURP jsonl
instead of our grammar, in the SLURP layout; ``slurp-text-valid``
(``slurp_text.generate_klatt_valid``) speaks such a corpus' valid lines again with Klatt voices
that no split uses (a second valid set for screening), or with ``--speakers-of test`` with
the corpus' test speakers (to tell sentences from voices when valid and test disagree).

Usage::

    python recipes/mini_corpus/generate.py slurp /tmp/slurp_mini --n-train 200 --seed 1
    python recipes/mini_corpus/generate.py fsc /tmp/fsc_mini --n-train 200 --n-intents 16
    python recipes/mini_corpus/generate.py slurp-text --source devel.jsonl /tmp/slurp_text
    python recipes/mini_corpus/generate.py slurp-text-valid --corpus /tmp/slurp_text /tmp/klatt
"""

from __future__ import annotations

import argparse
import json
import random
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import grammar
import voices
from corpus_writer import MANIFEST, CorpusPlan, Job, build, make_job

SPLITS = ("train", "valid", "test")
SLURP_FILES = {"train": "train.jsonl", "valid": "devel.jsonl", "test": "test.jsonl",
               "train_synthetic": "train_synthetic.jsonl"}
"""SLURP's file name for each part (its validation split is ``devel``)."""

SLURP_TRAIN_REAL = "train_real.jsonl"
"""A copy of ``train.jsonl`` under the name SpeechBrain's SLURP recipe (``prepare.py``) reads."""

FSC_HEADER = ["", "path", "speakerId", "transcription", "action", "object", "location"]

_ANNOTATED = re.compile(r"\[([a-z_]+) : ([^\]]+)\]")


# ---------------------------------------------------------------------------------------------
# Speakers


def split_speakers(n_speakers: int, n_heldout: int, seed: int) -> dict[str, list[voices.Voice]]:
    """Disjoint train/valid/test speakers from disjoint voice families (``voices.split_pools``).

    Test and valid get ``n_heldout`` speakers each, train the other ``n_speakers - 2 *
    n_heldout`` (at least one).
    """
    if n_heldout < 1 or n_speakers < 2 * n_heldout + 1:
        raise ValueError(f"need n_speakers >= 2 * n_heldout_speakers + 1 and n_heldout >= 1, "
                         f"got {n_speakers} speakers and n_heldout={n_heldout}")
    return voices.split_pools(n_speakers - 2 * n_heldout, n_heldout, seed)


class _SpeakerCycle:
    """Balanced speaker assignment: round-robin over a seed-shuffled speaker list."""

    def __init__(self, speakers: list[voices.Voice], rng: random.Random) -> None:
        self.speakers = rng.sample(speakers, len(speakers))
        self.position = 0

    def take(self, count: int) -> list[voices.Voice]:
        """The next ``count`` speakers (distinct if ``count <= len(speakers)``)."""
        chosen = [self.speakers[(self.position + k) % len(self.speakers)] for k in range(count)]
        self.position += count
        return chosen


# ---------------------------------------------------------------------------------------------
# SLURP


def slurp_tokens_and_spans(utterance: grammar.SlurpUtterance) -> tuple[list[dict], list[dict]]:
    """SLURP ``tokens`` (surface, id, lemma, pos) and ``entities`` (span of token ids, type).

    Lemmas repeat the surface form and ``pos`` is ``"XX"`` (unknown): no tagger is used.
    """
    words: list[str] = []
    entities: list[dict] = []
    position = 0
    annotation = utterance.annotation
    for match in _ANNOTATED.finditer(annotation):
        words += annotation[position:match.start()].split()
        filler = match.group(2).split()
        entities.append({"span": list(range(len(words), len(words) + len(filler))),
                         "type": match.group(1)})
        words += filler
        position = match.end()
    words += annotation[position:].split()
    if " ".join(words) != utterance.sentence:
        raise ValueError(f"annotation {annotation!r} does not match {utterance.sentence!r}")
    tokens = [{"surface": word, "id": index, "lemma": word, "pos": "XX"}
              for index, word in enumerate(words)]
    return tokens, entities


def slurp_record(slurp_id: int, utterance: grammar.SlurpUtterance, files: list[str]) -> dict:
    """One SLURP jsonl object, keys in the real files' order."""
    tokens, entities = slurp_tokens_and_spans(utterance)
    ent_wer = 0.0 if entities else None
    return {
        "slurp_id": slurp_id,
        "sentence": utterance.sentence,
        "sentence_annotation": utterance.annotation,
        "intent": utterance.intent,
        "action": utterance.action,
        "tokens": tokens,
        "scenario": utterance.scenario,
        "recordings": [{"file": name, "wer": 0.0, "ent_wer": ent_wer, "status": "correct"}
                       for name in files],
        "entities": entities,
    }


def _slurp_split(
    n_files: int, utterances: Iterator[grammar.SlurpUtterance], cycle: _SpeakerCycle,
    rng: random.Random, second_share: float, counters: dict[str, int], audio_dir: str,
    seed: int,
) -> tuple[list[dict], list[Job]]:
    """Lines and jobs of one split: each line has one recording, or two by different speakers
    with probability ``second_share``, until ``n_files`` recordings."""
    lines, jobs = [], []
    while len(jobs) < n_files:
        utterance = next(utterances)
        two = (n_files - len(jobs) >= 2 and len(cycle.speakers) >= 2
               and rng.random() < second_share)
        files = []
        for voice in cycle.take(2 if two else 1):
            counters["file"] += 1
            name = f"audio-{1600000000 + counters['file']}.flac"
            files.append(name)
            jobs.append(make_job(f"{audio_dir}/{name}", voice, utterance.sentence, seed))
        counters["slurp_id"] += 1
        lines.append(slurp_record(counters["slurp_id"], utterance, files))
    return lines, jobs


def plan_slurp(
    n_train: int = 200,
    n_valid: int = 40,
    n_test: int = 40,
    n_synthetic: int = 20,
    n_speakers: int = 8,
    n_heldout_speakers: int = 1,
    n_intents: int | None = None,
    templates_per_intent: int | None = None,
    second_recording_share: float = 0.25,
    seed: int = 0,
) -> CorpusPlan:
    """Plan a SLURP-format corpus (jsonl lines, speakers, audio jobs) without synthesizing.

    Args:
        n_train, n_valid, n_test: audio files in train / devel / test.
        n_synthetic: audio files in ``train_synthetic.jsonl`` (spoken by train speakers).
        n_speakers: speakers in all (see ``voices.speaker_pool``).
        n_heldout_speakers: speakers in devel and in test each (disjoint from train).
        n_intents: intents used (None = all of ``grammar.SLURP_INTENTS``).
        templates_per_intent: templates per intent (None = all; at least 3: one is held out
            for test and one for valid, see ``grammar.split_templates``).
        second_recording_share: probability that a line gets a second recording by another
            speaker of its split (real SLURP lines have several).
        seed: random seed for speakers, sentences and variations.

    Returns:
        a ``CorpusPlan``; no sentence repeats across splits, even after ``grammar.normalise``
        (openers such as "hey" dropped), and valid/test sentences come from held-out templates.
    """
    intents = grammar.slurp_intents(n_intents, seed)
    if n_train < len(intents):
        raise ValueError(f"n_train ({n_train}) must be >= the number of intents ({len(intents)})")
    speakers = split_speakers(n_speakers, n_heldout_speakers, seed)
    speakers["train_synthetic"] = speakers["train"]
    templates = grammar.split_templates(intents, seed, templates_per_intent)
    sizes = {"train": n_train, "valid": n_valid, "test": n_test, "train_synthetic": n_synthetic}
    rng = random.Random(seed)
    counters = {"file": 0, "slurp_id": 0}
    keys: dict[str, set[str]] = {split: set() for split in SPLITS}
    tables: dict[str, list] = {}
    jobs: dict[str, list[Job]] = {}
    for index, (part, file_name) in enumerate(SLURP_FILES.items()):
        split = "train" if part == "train_synthetic" else part
        others = set().union(*(found for name, found in keys.items() if name != split))
        drawn = grammar.sample_slurp(sizes[part], seed * 1000 + index, intents,
                                     templates[split], exclude=others)
        keys[split].update(grammar.normalise(utterance.sentence) for utterance in drawn)
        cycle = _SpeakerCycle(speakers[part], rng)
        audio_dir = "slurp_synth" if part == "train_synthetic" else "slurp_real"
        tables[file_name], jobs[part] = _slurp_split(
            sizes[part], iter(drawn), cycle, rng, second_recording_share, counters, audio_dir,
            seed)
    tables[SLURP_TRAIN_REAL] = tables[SLURP_FILES["train"]]
    return CorpusPlan("slurp", speakers, jobs, tables)


def generate_slurp(
    out_dir: str | Path,
    n_train: int = 200,
    n_valid: int = 40,
    n_test: int = 40,
    n_synthetic: int = 20,
    n_speakers: int = 8,
    n_heldout_speakers: int = 1,
    n_intents: int | None = None,
    templates_per_intent: int | None = None,
    second_recording_share: float = 0.25,
    seed: int = 0,
    num_workers: int = 2,
    overwrite: bool = False,
) -> Path:
    """Generate a SLURP-format mini corpus in ``out_dir`` (arguments as in ``plan_slurp``).

    Args:
        out_dir: output folder (must not exist unless ``overwrite``).
        num_workers: synthesis processes.
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir`` as a Path.
    """
    arguments = {key: value for key, value in locals().items()
                 if key not in ("out_dir", "num_workers", "overwrite")}
    return build(out_dir, plan_slurp(**arguments), arguments, num_workers, overwrite)


# ---------------------------------------------------------------------------------------------
# FSC


def _fsc_split(
    split: str, n_files: int, commands: list[grammar.FscCommand], cycle: _SpeakerCycle,
    rng: random.Random, seed: int,
) -> tuple[list[list], list[Job]]:
    """CSV rows and jobs of one FSC split: commands in a shuffled round-robin (balanced), each
    said with one of its ``split`` paraphrases."""
    rows, jobs, order = [], [], []
    for index in range(n_files):
        if not order:
            order = rng.sample(commands, len(commands))
        command = order.pop()
        phrase = rng.choice(command.phrases[split])
        voice = cycle.take(1)[0]
        path = f"wavs/speakers/{voice.name}/{uuid.UUID(int=rng.getrandbits(128), version=4)}.wav"
        transcription = phrase[0].upper() + phrase[1:]
        rows.append([index, path, voice.name, transcription, command.action, command.object,
                     command.location])
        jobs.append(make_job(path, voice, phrase, seed))
    return rows, jobs


def plan_fsc(
    n_train: int = 200,
    n_valid: int = 40,
    n_test: int = 40,
    n_speakers: int = 8,
    n_heldout_speakers: int = 1,
    n_intents: int | None = 16,
    phrases_per_intent: int = 4,
    seed: int = 0,
) -> CorpusPlan:
    """Plan a Fluent-Speech-Commands-format corpus (CSV rows, speakers, audio jobs).

    Args:
        n_train, n_valid, n_test: rows (wav files) of ``data/{train,valid,test}_data.csv``.
        n_speakers: speakers in all.
        n_heldout_speakers: speakers in valid and in test each (disjoint from train).
        n_intents: (action, object, location) triples (None = every valid triple).
        phrases_per_intent: paraphrases per triple (3-5: one for test and one for valid from
            held-out templates, the rest for train; see ``grammar.fsc_commands``).
        seed: random seed.

    Returns:
        a ``CorpusPlan``.
    """
    commands = grammar.fsc_commands(n_intents, phrases_per_intent, seed)
    if n_train < len(commands):
        raise ValueError(f"n_train ({n_train}) must be >= the number of intents "
                         f"({len(commands)})")
    speakers = split_speakers(n_speakers, n_heldout_speakers, seed)
    rng = random.Random(seed)
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    tables: dict[str, list] = {}
    jobs: dict[str, list[Job]] = {}
    for split in SPLITS:
        cycle = _SpeakerCycle(speakers[split], rng)
        rows, jobs[split] = _fsc_split(split, sizes[split], commands, cycle, rng, seed)
        tables[f"data/{split}_data.csv"] = [FSC_HEADER, *rows]
    return CorpusPlan("fsc", speakers, jobs, tables)


def generate_fsc(
    out_dir: str | Path,
    n_train: int = 200,
    n_valid: int = 40,
    n_test: int = 40,
    n_speakers: int = 8,
    n_heldout_speakers: int = 1,
    n_intents: int | None = 16,
    phrases_per_intent: int = 4,
    seed: int = 0,
    num_workers: int = 2,
    overwrite: bool = False,
) -> Path:
    """Generate an FSC-format mini corpus in ``out_dir`` (arguments as in ``plan_fsc``).

    Args:
        out_dir: output folder (must not exist unless ``overwrite``).
        num_workers: synthesis processes.
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir`` as a Path.
    """
    arguments = {key: value for key, value in locals().items()
                 if key not in ("out_dir", "num_workers", "overwrite")}
    return build(out_dir, plan_fsc(**arguments), arguments, num_workers, overwrite)


# ---------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output folder (must not "
                        "exist unless --overwrite)")
    common.add_argument("--seed", type=int, default=None,
                        help="random seed (default: 0 for slurp/fsc, 1 for slurp-text*)")
    common.add_argument("--num-workers", type=int, default=2, help="synthesis processes")
    common.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    sizes = argparse.ArgumentParser(add_help=False)
    sizes.add_argument("--n-train", type=int, default=200, help="train audio files")
    sizes.add_argument("--n-valid", type=int, default=40, help="valid (SLURP devel) files")
    sizes.add_argument("--n-test", type=int, default=40, help="test audio files")
    sizes.add_argument("--n-speakers", type=int, default=8, help="speakers in all")
    sizes.add_argument("--n-heldout-speakers", type=int, default=1,
                       help="speakers in valid and in test each, disjoint from train")
    parser = argparse.ArgumentParser(
        description="Generate a SLURP-format or Fluent-Speech-Commands-format corpus with "
                    "offline voices (Piper, Praat pseudo-speakers, eSpeak NG) into OUT_DIR. "
                    "Needs the 'demo' extra. Output is written to a hidden staging folder and "
                    "renamed to OUT_DIR when complete (with a mini_corpus.json manifest).",
        epilog="Examples: generate.py slurp /tmp/slurp_mini --n-train 200 --seed 1 ; "
               "generate.py fsc /tmp/fsc_mini --n-intents 16 --n-speakers 10 ; "
               "generate.py slurp-text --source slurp/dataset/slurp/devel.jsonl /tmp/slurp_text",
    )
    commands = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    slurp = commands.add_parser("slurp", parents=[common, sizes],
                                help="SLURP layout, sentences of our grammar")
    slurp.add_argument("--n-synthetic", type=int, default=20,
                       help="files in train_synthetic.jsonl")
    slurp.add_argument("--n-intents", type=int, default=None, help="intents (default all 33)")
    slurp.add_argument("--templates-per-intent", type=int, default=None,
                       help="templates per intent (default all, at least 3)")
    fsc = commands.add_parser("fsc", parents=[common, sizes],
                              help="Fluent Speech Commands layout, phrases of our grammar")
    fsc.add_argument("--n-intents", type=int, default=16, help="intents (default 16 of 110)")
    fsc.add_argument("--phrases-per-intent", type=int, default=4,
                     help="paraphrases per intent (3-5; one is test's, one valid's)")
    text = commands.add_parser("slurp-text", parents=[common],
                               help="SLURP layout, the sentences and labels of a SLURP jsonl")
    text.add_argument("--source", type=Path, required=True,
                      help="SLURP-format jsonl to speak (e.g. SLURP's dataset/slurp/devel.jsonl)")
    text.add_argument("--valid-share", type=float, default=0.125,
                      help="fraction of each intent's sentences in valid")
    text.add_argument("--test-share", type=float, default=0.3,
                      help="fraction of each intent's sentences in test")
    text.add_argument("--max-train-lines", type=int, default=None,
                      help="keep about this many train lines, move the others to test "
                           "(default: keep all)")
    text.add_argument("--synthetic-share", type=float, default=0.1,
                      help="fraction of train lines in train_synthetic.jsonl")
    text.add_argument("--valid-recordings", type=int, default=2,
                      help="speakers saying each valid line")
    text.add_argument("--test-recordings", type=int, default=2,
                      help="speakers saying each test line")
    text.add_argument("--n-train-speakers", type=int, default=36, help="training speakers")
    again = commands.add_parser("slurp-text-valid", parents=[common],
                                help="a slurp-text corpus' valid lines said by Klatt voices "
                                     "that no split uses (devel.jsonl + slurp_real/)")
    again.add_argument("--corpus", type=Path, required=True,
                       help="the SLURP-layout corpus whose devel.jsonl is spoken again")
    again.add_argument("--recordings", type=int, default=4,
                       help="speakers saying each valid line (at most 4 Klatt voices, 10 test "
                            "voices)")
    again.add_argument("--speakers-of", choices=("valid_klatt", "test"), default="valid_klatt",
                       help="valid_klatt: Klatt voices no split uses (a screening set); test: "
                            "the corpus' test speakers (a diagnosis of valid/test "
                            "disagreement, never a screening set)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry point; returns the corpus folder."""
    args = _parser().parse_args(argv)
    run = dict(num_workers=args.num_workers, overwrite=args.overwrite)
    if args.format == "slurp-text":
        import slurp_text

        out = slurp_text.generate_slurp_text(
            args.source, args.out_dir, seed=1 if args.seed is None else args.seed,
            valid_share=args.valid_share, test_share=args.test_share,
            max_train_lines=args.max_train_lines, synthetic_share=args.synthetic_share,
            valid_recordings=args.valid_recordings, test_recordings=args.test_recordings,
            n_train_speakers=args.n_train_speakers, **run)
    elif args.format == "slurp-text-valid":
        import slurp_text

        out = slurp_text.generate_klatt_valid(
            args.corpus, args.out_dir, recordings=args.recordings,
            seed=1 if args.seed is None else args.seed, speakers_of=args.speakers_of, **run)
    else:
        common = dict(n_train=args.n_train, n_valid=args.n_valid, n_test=args.n_test,
                      n_speakers=args.n_speakers, n_heldout_speakers=args.n_heldout_speakers,
                      seed=0 if args.seed is None else args.seed, n_intents=args.n_intents,
                      **run)
        if args.format == "slurp":
            out = generate_slurp(args.out_dir, n_synthetic=args.n_synthetic,
                                 templates_per_intent=args.templates_per_intent, **common)
        else:
            out = generate_fsc(args.out_dir, phrases_per_intent=args.phrases_per_intent,
                               **common)
    with open(out / MANIFEST, encoding="utf-8") as handle:
        manifest = json.load(handle)
    print(f"wrote {out} in {manifest['generation_seconds']} s: "
          + ", ".join(f"{split} {info['files']} files / {info['audio_seconds']} s audio"
                      for split, info in manifest["splits"].items()))
    return out


if __name__ == "__main__":
    main()
