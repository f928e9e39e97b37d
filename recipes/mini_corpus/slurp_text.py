"""A SLURP-sentence benchmark corpus: real SLURP sentences and labels spoken by offline voices.

Reads any SLURP-format jsonl (e.g. ``dataset/slurp/devel.jsonl`` of a SLURP checkout: text and
labels CC BY 4.0, Bastianelli et al., EMNLP 2020), splits its lines into train / valid / test
and writes a corpus in the real SLURP layout (``train.jsonl``, ``train_real.jsonl``,
``train_synthetic.jsonl``, ``devel.jsonl``, ``test.jsonl``, ``slurp_real/``, ``slurp_synth/``)
that ``recipes/SLURP/prepare.py`` reads unchanged.

- Lines are split by ``slurp_id``, stratified by intent (``scenario_action``), and grouped by
  ``grammar.normalise(sentence)``: lines that say the same sentence, also after dropping case,
  punctuation and filler openers ("hey", "okay", "please", "olly", "alexa"...), share a split.
- Intents with fewer than three distinct sentences cannot be in all three splits and are
  dropped (``TextSplit.dropped``).
- Training speakers are Piper voices and eSpeak NG voices of the training accents and variants;
  valid and test speakers are eSpeak NG voices of other accents and variants
  (``voices.split_pools``). A valid/test line is said by several of its split's speakers.
- ``generate_klatt_valid`` speaks a finished corpus' valid lines again, with voices of eSpeak
  NG's Klatt synthesizer (as most test voices) that no split uses: a second, larger valid set
  for screening, in the same layout (``devel.jsonl`` and ``slurp_real/``).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import corpus_writer
import generate
import grammar
import voices

REQUIRED_KEYS = ("slurp_id", "sentence", "sentence_annotation", "scenario", "action")
"""Keys every source line must have."""

MIN_SENTENCES = 3
"""Distinct (normalised) sentences an intent needs to appear in train, valid and test."""


def intent_of(record: dict) -> str:
    """The intent label, ``scenario + "_" + action`` (as SLURP's official evaluator builds it)."""
    return f"{record['scenario']}_{record['action']}"


def read_records(path: str | Path) -> list[dict]:
    """The lines of a SLURP-format jsonl file; errors name the file and line."""
    records, ids = [], set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not JSON ({error})") from None
            missing = [key for key in REQUIRED_KEYS if key not in record]
            if missing:
                raise ValueError(f"{path}, line {number}: missing {missing}")
            if record["slurp_id"] in ids:
                raise ValueError(f"{path}, line {number}: slurp_id {record['slurp_id']} repeats")
            ids.add(record["slurp_id"])
            records.append(record)
    if not records:
        raise ValueError(f"{path}: no SLURP lines")
    return records


@dataclass(frozen=True)
class TextSplit:
    """Source lines split into train / valid / test.

    Attributes:
        splits: ``{split: lines}`` for ``grammar.SPLITS``, each sorted by ``slurp_id``.
        dropped: ``{intent: lines}`` of the source lines in no split: those of intents with
            fewer than ``MIN_SENTENCES`` distinct sentences (and any line whose intent
            training lacks, see ``split_records``).
        moved_to_test: lines moved from train to test by a cap on training lines.
    """

    splits: dict[str, list[dict]]
    dropped: dict[str, int]
    moved_to_test: int


def _shares(count: int, valid_share: float, test_share: float) -> tuple[int, int]:
    """(valid, test) groups out of ``count`` (>= 3): at least one each, train keeps one."""
    test = max(1, round(count * test_share))
    valid = max(1, round(count * valid_share))
    while test + valid > count - 1:
        if test >= valid and test > 1:
            test -= 1
        else:
            valid -= 1
    return valid, test


def _cap_lines(groups: dict[str, list[list[dict]]], cap: int, rng: random.Random) -> list[dict]:
    """About ``cap`` lines (whole groups) from ``{intent: groups}``, one group from each intent
    in turn, so every intent keeps a group while ``cap`` allows."""
    queues = [rng.sample(found, len(found)) for _, found in sorted(groups.items())]
    chosen: list[dict] = []
    while len(chosen) < cap and any(queues):
        for queue in queues:
            if queue and len(chosen) < cap:
                chosen += queue.pop()
    return chosen


def split_records(
    records: list[dict], valid_share: float = 0.125, test_share: float = 0.3, seed: int = 1,
    max_train_lines: int | None = None,
) -> TextSplit:
    """Split SLURP lines by ``slurp_id``, stratified by intent, no sentence in two splits.

    Lines are grouped by ``grammar.normalise(sentence)``; a group's intent is the most common
    intent of its lines. Per intent, its groups are shuffled with ``seed`` and
    ``round(share * groups)`` (at least one) go to test and to valid, the rest (at least one)
    to train. A line whose own intent differs from its group's and is missing from train is
    not used.

    Args:
        records: SLURP lines (see ``read_records``).
        valid_share: fraction of each intent's sentences in valid.
        test_share: fraction of each intent's sentences in test.
        seed: random seed.
        max_train_lines: keep about this many train lines (whole groups, one intent after
            the other, so small intents keep theirs) and move the other train lines to test;
            None = all.

    Returns:
        a ``TextSplit``.
    """
    groups: dict[str, list[dict]] = {}
    for record in sorted(records, key=lambda r: r["slurp_id"]):
        groups.setdefault(grammar.normalise(record["sentence"]), []).append(record)
    by_intent: dict[str, list[list[dict]]] = {}
    for group in groups.values():
        label = Counter(intent_of(record) for record in group).most_common(1)[0][0]
        by_intent.setdefault(label, []).append(group)
    rng = random.Random(seed)
    assigned: dict[str, dict[str, list[list[dict]]]] = {split: {} for split in grammar.SPLITS}
    for intent, found in sorted(by_intent.items()):
        if len(found) < MIN_SENTENCES:
            continue
        order = rng.sample(found, len(found))
        n_valid, n_test = _shares(len(order), valid_share, test_share)
        assigned["test"][intent] = order[:n_test]
        assigned["valid"][intent] = order[n_test:n_test + n_valid]
        assigned["train"][intent] = order[n_test + n_valid:]
    lines = {split: [record for found in assigned[split].values() for group in found
                     for record in group] for split in grammar.SPLITS}
    moved: list[dict] = []
    if max_train_lines is not None:
        if max_train_lines < len(assigned["train"]):
            raise ValueError(f"max_train_lines ({max_train_lines}) must be at least the number "
                             f"of intents kept ({len(assigned['train'])})")
        kept = _cap_lines(assigned["train"], max_train_lines, rng)
        kept_ids = {record["slurp_id"] for record in kept}
        moved = [record for record in lines["train"] if record["slurp_id"] not in kept_ids]
        lines["train"], lines["test"] = kept, lines["test"] + moved
    trained = {intent_of(record) for record in lines["train"]}
    splits = {split: sorted((record for record in found
                             if split == "train" or intent_of(record) in trained),
                            key=lambda r: r["slurp_id"])
              for split, found in lines.items()}
    used = {record["slurp_id"] for found in splits.values() for record in found}
    dropped = Counter(intent_of(record) for record in records if record["slurp_id"] not in used)
    return TextSplit(splits, dict(sorted(dropped.items())), len(moved))


def _record(source: dict, files: list[str]) -> dict:
    """A corpus line: the source line with ``recordings`` replaced by ``files``."""
    ent_wer = 0.0 if source.get("entities") else None
    record = dict(source)
    record["recordings"] = [{"file": name, "wer": 0.0, "ent_wer": ent_wer, "status": "correct"}
                            for name in files]
    return record


def _part(lines: list[dict], speakers: list[voices.Voice], per_line: int, audio_dir: str,
          rng: random.Random, seed: int) -> tuple[list[dict], list[corpus_writer.Job]]:
    """Corpus lines and audio jobs: each line said by ``per_line`` distinct speakers, chosen
    round-robin (balanced) from ``speakers``."""
    if per_line > len(speakers):
        raise ValueError(f"{per_line} recordings per line need as many speakers, "
                         f"{audio_dir} has {len(speakers)}")
    cycle = generate._SpeakerCycle(speakers, rng)
    table, jobs = [], []
    for line in lines:
        files = []
        for voice in cycle.take(per_line):
            name = f"audio-{line['slurp_id']}-{voice.name}.flac"
            files.append(name)
            jobs.append(corpus_writer.make_job(f"{audio_dir}/{name}", voice, line["sentence"], seed))
        table.append(_record(line, files))
    return table, jobs


def plan_slurp_text(
    source: str | Path,
    seed: int = 1,
    valid_share: float = 0.125,
    test_share: float = 0.3,
    max_train_lines: int | None = None,
    synthetic_share: float = 0.1,
    valid_recordings: int = 2,
    test_recordings: int = 2,
    n_train_speakers: int = 36,
) -> tuple[corpus_writer.CorpusPlan, TextSplit]:
    """Plan a SLURP-sentence corpus from the SLURP-format jsonl ``source`` (nothing spoken).

    Args:
        source: a SLURP-format jsonl file (e.g. SLURP's ``devel.jsonl``).
        seed: random seed for the split, speakers and per-file variations.
        valid_share, test_share, max_train_lines: see ``split_records``.
        synthetic_share: fraction of train lines written to ``train_synthetic.jsonl`` (audio
            in ``slurp_synth/``, at least one line); the rest go to ``train.jsonl``. Each
            train line has one recording.
        valid_recordings, test_recordings: speakers saying each valid / test line.
        n_train_speakers: training speakers (half Piper, half eSpeak NG; see
            ``voices.speaker_pool``).

    Returns:
        the ``CorpusPlan`` (kind ``"slurp"``) and the ``TextSplit`` it was made from.
    """
    split = split_records(read_records(source), valid_share, test_share, seed, max_train_lines)
    speakers: dict[str, list[voices.Voice]] = {
        "train": voices.speaker_pool(n_train_speakers, seed),
        **{name: list(voices.heldout_pool(name, len(voices.espeak_voices(name)), seed))
           for name in ("valid", "test")},
    }
    rng = random.Random(seed)
    train = rng.sample(split.splits["train"], len(split.splits["train"]))
    n_synthetic = min(max(1, round(len(train) * synthetic_share)), len(train) - 1)
    if not 0.0 < synthetic_share < 1.0 or n_synthetic < 1:
        raise ValueError(f"synthetic_share must be in (0, 1) and leave both train parts a line "
                         f"(SLURP's prepare reads both), got {synthetic_share} for "
                         f"{len(train)} train lines")
    parts = {
        "train": (sorted(train[n_synthetic:], key=lambda r: r["slurp_id"]), 1, "slurp_real"),
        "valid": (split.splits["valid"], valid_recordings, "slurp_real"),
        "test": (split.splits["test"], test_recordings, "slurp_real"),
        "train_synthetic": (sorted(train[:n_synthetic], key=lambda r: r["slurp_id"]), 1,
                            "slurp_synth"),
    }
    speakers["train_synthetic"] = speakers["train"]
    tables: dict[str, list] = {}
    jobs: dict[str, list[corpus_writer.Job]] = {}
    for part, (lines, per_line, audio_dir) in parts.items():
        tables[generate.SLURP_FILES[part]], jobs[part] = _part(
            lines, speakers[part], per_line, audio_dir, rng, seed)
    tables[generate.SLURP_TRAIN_REAL] = tables[generate.SLURP_FILES["train"]]
    return corpus_writer.CorpusPlan("slurp", speakers, jobs, tables), split


def generate_slurp_text(
    source: str | Path,
    out_dir: str | Path,
    seed: int = 1,
    valid_share: float = 0.125,
    test_share: float = 0.3,
    max_train_lines: int | None = None,
    synthetic_share: float = 0.1,
    valid_recordings: int = 2,
    test_recordings: int = 2,
    n_train_speakers: int = 36,
    num_workers: int = 2,
    overwrite: bool = False,
) -> Path:
    """Speak a SLURP-sentence corpus into ``out_dir`` (arguments as in ``plan_slurp_text``).

    Resumable: the corpus is built in ``.OUT_DIR.partial`` next to ``out_dir``, renamed when
    complete; a run that stops leaves it, and the next run with the same arguments keeps the
    audio files already written (same arguments and same source content, by its SHA-256). The
    manifest also records the split (lines, intents, dropped lines).

    Returns:
        ``out_dir`` as a Path.
    """
    arguments = {key: value for key, value in locals().items()
                 if key not in ("out_dir", "num_workers", "overwrite")}
    arguments["source"] = str(Path(source).resolve())
    plan, split = plan_slurp_text(**arguments)
    arguments["source_sha256"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    summary = {
        "lines": {name: len(lines) for name, lines in split.splits.items()},
        "intents": {name: len({intent_of(r) for r in lines})
                    for name, lines in split.splits.items()},
        "dropped_lines": split.dropped,
        "moved_to_test": split.moved_to_test,
    }
    return corpus_writer.build(out_dir, plan, arguments, num_workers, overwrite, resumable=True,
                          extra={"text_split": summary})


SPEAKERS_OF = ("valid_klatt", "test")
"""Whose voices ``plan_klatt_valid`` may speak the valid lines with."""


def plan_klatt_valid(corpus: str | Path, recordings: int = 4, seed: int = 1,
                     speakers_of: str = "valid_klatt") -> corpus_writer.CorpusPlan:
    """Plan a second voicing of ``corpus``' valid lines (its ``devel.jsonl``): each line said
    by ``recordings`` speakers, chosen round-robin, of ``voices.espeak_voices(speakers_of)``:

    - ``valid_klatt``: held-out accents x Klatt voice sources no split uses (a larger
      screening set);
    - ``test``: the corpus' own test speakers (valid sentences in test's voices: it separates
      what the sentences do from what the voices do when valid and test disagree; never a
      screening set, since it is spoken by test's voices).

    Raises:
        ValueError: ``corpus`` lacks ``devel.jsonl``; ``valid_klatt`` speakers that the corpus
            already has; ``test`` speakers that training or valid has, or that are not the
            corpus' test speakers (another ``seed``).
    """
    if speakers_of not in SPEAKERS_OF:
        raise ValueError(f"speakers_of must be one of {SPEAKERS_OF}, got {speakers_of!r}")
    corpus = Path(corpus)
    devel = corpus / generate.SLURP_FILES["valid"]
    if not devel.is_file():
        raise ValueError(f"{devel}: not found; give a SLURP-layout corpus folder")
    speakers = voices.heldout_pool(speakers_of, len(voices.espeak_voices(speakers_of)), seed)
    names = {voice.name for voice in speakers}
    manifest = corpus / corpus_writer.MANIFEST
    if manifest.is_file():
        made = json.loads(manifest.read_text(encoding="utf-8"))
        used = {split: set(found["speakers"]) for split, found in made["splits"].items()}
        own = {"test"} if speakers_of == "test" else set()  # the split these voices come from
        heard = set().union(*(found for split, found in used.items() if split not in own))
        shared = sorted(heard & names)
        if shared:
            raise ValueError(f"{manifest}: the corpus already uses {shared}"
                             + ("; its valid lines would not be spoken by new voices"
                                if speakers_of == "valid_klatt" else " outside test"))
        if speakers_of == "test" and (used.get("test") != names or any(
                made["voices"].get(voice.name) != {"type": type(voice).__name__, **asdict(voice)}
                for voice in speakers)):
            raise ValueError(f"{manifest}: its test speakers are not the {len(names)} of seed "
                             f"{seed} (names, rates and pitches); give the seed the corpus "
                             f"was made with")
    table, jobs = _part(read_records(devel), list(speakers), recordings, "slurp_real",
                        random.Random(seed), seed)
    return corpus_writer.CorpusPlan("slurp", {"valid": list(speakers)}, {"valid": jobs},
                                    {generate.SLURP_FILES["valid"]: table})


def generate_klatt_valid(corpus: str | Path, out_dir: str | Path, recordings: int = 4,
                         seed: int = 1, num_workers: int = 2, overwrite: bool = False,
                         speakers_of: str = "valid_klatt") -> Path:
    """Speak ``plan_klatt_valid(corpus, recordings, seed, speakers_of)`` into ``out_dir``
    (``devel.jsonl``, ``slurp_real/``, the manifest with the SHA-256 of the corpus'
    ``devel.jsonl``); resumable like ``generate_slurp_text``.

    Returns:
        ``out_dir`` as a Path.
    """
    devel = Path(corpus) / generate.SLURP_FILES["valid"]
    plan = plan_klatt_valid(corpus, recordings, seed, speakers_of)
    arguments = {"corpus": str(Path(corpus).resolve()), "recordings": recordings, "seed": seed,
                 "speakers_of": speakers_of,
                 "devel_sha256": hashlib.sha256(devel.read_bytes()).hexdigest()}
    return corpus_writer.build(out_dir, plan, arguments, num_workers, overwrite, resumable=True)
