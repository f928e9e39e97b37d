#!/usr/bin/env python3
"""Where a valid set and the test split disagree about two variants: their paired difference
broken down by seed, voice, sentence length and intent, on both sets.

    python benchmarks/agreement.py --screening benchmarks/screening_klatt.json \
        --corpus-dir results/slurp_text_corpus --valid-dir results/slurp_text_klatt_valid \
        --baseline quads4 --variant mixed4 --output benchmarks/agreement_mixed4.json

``--baseline`` / ``--variant`` name screening rows ``<name>_s<seed>`` (``screen.py``'s rows,
which keep each run's correctness on valid and on test, in sorted recording order); every seed
that both have, on the same corpus generation and valid set, is paired. Differences are
``variant - baseline`` in accuracy points. Printed as markdown and written to ``--output``:

- ``per_seed``: the difference on valid and on test for each seed; ``over_seeds``: on each set,
  its mean with the 95% t-interval over the seeds; ``test_minus_valid``: the difference between
  the two sets, with its interval (is the disagreement larger than seeds allow?);
- ``sentences_welch``: the same two means with sentences as the unit (each sentence's mean over
  seeds and its recordings) and Welch's t-test between the sets (is the disagreement larger than
  drawing other sentences allows?);
- ``by_voice`` / ``by_length``: the mean difference over seeds on each set, per voice (the file
  name's speaker part) and per sentence length (words);
- ``intent_correlation``: Pearson's r between the per-intent mean differences of the two sets
  (intents present in both), and ``test_at_valid_intent_shares``: test's per-intent means
  weighted by valid's recordings per intent (does valid's intent mix explain its mean?);
- ``train_similarity``: per set, the mean over sentences of the largest word-set Jaccard
  similarity to a training sentence (is one set closer to what training saw?);
- ``fresh_valid`` (with ``--fresh-against`` an earlier corpus, e.g. the same text split with
  another seed): valid's difference over seeds on only the lines that corpus' valid and test
  splits lack (the sentences no earlier comparison was read on).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import scipy.stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (atomic writes)

LENGTHS = ((1, 4), (5, 7), (8, 10), (11, 1000))
"""Sentence-length buckets in words (inclusive)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screening", type=Path, required=True, help="screen.py's output")
    parser.add_argument("--corpus-dir", type=Path, required=True,
                        help="the corpus (test.jsonl, train*.jsonl)")
    parser.add_argument("--valid-dir", type=Path, default=None,
                        help="the folder whose devel.jsonl the rows were scored on "
                             "(default: --corpus-dir)")
    parser.add_argument("--baseline", required=True, help="row name prefix, e.g. quads4")
    parser.add_argument("--variant", required=True, help="row name prefix, e.g. mixed4")
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--fresh-against", type=Path, default=None,
                        help="an earlier corpus folder: also report valid's difference on the "
                             "lines its devel.jsonl and test.jsonl lack")
    return parser.parse_args(argv)


def read_lines(path: Path) -> list[dict]:
    """The JSON lines of a SLURP-layout ``.jsonl`` file; an error names the file and line."""
    lines = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text.strip():
            try:
                record = json.loads(text)
                lines.append({"slurp_id": record["slurp_id"], "sentence": record["sentence"],
                              "intent": record["intent"],
                              "files": [r["file"] for r in record["recordings"]]})
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}, line {number}: not a SLURP line ({error!r})") from None
    return lines


def recordings(path: Path) -> list[dict]:
    """One dict per recording of ``path`` (``file``, ``slurp_id``, ``voice``, ``words``,
    ``intent``, ``sentence``), in sorted file order: the order of ``screen.py``'s correctness
    strings."""
    found = []
    for line in read_lines(path):
        for name in line["files"]:
            voice = re.sub(r"^audio-\d+-", "", Path(name).stem)
            found.append({"file": name, "slurp_id": line["slurp_id"], "voice": voice,
                          "words": len(line["sentence"].split()), "intent": line["intent"],
                          "sentence": line["sentence"]})
    return sorted(found, key=lambda r: r["file"])


def paired_rows(rows: list[dict], baseline: str, variant: str) -> dict[int, tuple[dict, dict]]:
    """{seed: (baseline row, variant row)} for the seeds both prefixes have.

    Raises ValueError when none is shared or a pair was scored on different corpora/valid sets.
    """
    def by_seed(prefix: str) -> dict[int, dict]:
        pattern = re.compile(rf"{re.escape(prefix)}_s(\d+)")
        return {int(m.group(1)): r for r in rows if (m := pattern.fullmatch(r["name"]))}

    a, b = by_seed(baseline), by_seed(variant)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed has both {baseline}_s<seed> and {variant}_s<seed> rows")
    for seed in seeds:
        for key in ("corpus_sha256", "valid_sha256"):
            if a[seed].get(key) != b[seed].get(key):
                raise ValueError(f"seed {seed}: {baseline} and {variant} differ in {key}")
    return {seed: (a[seed], b[seed]) for seed in seeds}


def differences(pairs: dict[int, tuple[dict, dict]], key: str, n: int) -> np.ndarray:
    """(seeds, n) array of variant - baseline correctness (-1, 0, 1) from ``key``."""
    out = []
    for seed, (a, b) in pairs.items():
        if len(a[key]) != n or len(b[key]) != n:
            raise ValueError(f"seed {seed}: {key} has {len(a[key])}/{len(b[key])} recordings, "
                             f"the corpus {n}")
        out.append(np.array([int(y) - int(x) for x, y in zip(a[key], b[key], strict=True)], dtype=float))
    return np.stack(out)


def t_interval(values: list[float]) -> list[float]:
    """[mean, low, high] of ``values`` with the 95% Student-t interval (points)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return [mean, math.nan, math.nan]
    half = scipy.stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(
        len(values))
    return [mean, mean - half, mean + half]


def _natural(label) -> list:
    """Sort key that orders numbers inside labels by value ("5-7" before "11+")."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(label))]


def grouped(diff: np.ndarray, labels: list) -> dict:
    """{label: [recordings, mean difference in points]} over seeds and recordings."""
    out = {}
    for label in sorted(set(labels), key=_natural):
        mask = np.array([x == label for x in labels])
        out[str(label)] = [int(mask.sum()), round(100 * float(diff[:, mask].mean()), 2)]
    return out


def per_sentence(diff: np.ndarray, sentences: list[str]) -> np.ndarray:
    """Each sentence's mean difference over seeds and its recordings, (sentences,)."""
    by_sentence: dict[str, list[float]] = {}
    for column, sentence in zip(diff.T, sentences, strict=True):
        by_sentence.setdefault(sentence, []).append(float(column.mean()))
    return np.array([np.mean(v) for v in by_sentence.values()])


def welch(sets: dict[str, np.ndarray]) -> dict:
    """Means (points) and standard errors of per-sentence differences, and Welch's t-test of
    test against valid."""
    test = scipy.stats.ttest_ind(sets["test"], sets["valid"], equal_var=False)
    return {**{name: [round(100 * float(v.mean()), 2),
                      round(100 * float(v.std(ddof=1) / math.sqrt(len(v))), 2)]
               for name, v in sets.items()},
            "t": round(float(test.statistic), 3), "p": float(f"{test.pvalue:.3g}")}


def length_bucket(words: int) -> str:
    """The :data:`LENGTHS` bucket of a sentence of ``words`` words, e.g. "5-7" or "11+"."""
    return next(f"{lo}-{hi}" if hi < 1000 else f"{lo}+" for lo, hi in LENGTHS if lo <= words <= hi)


def train_similarity(sentences: list[str], train: list[str]) -> float:
    """Mean over ``sentences`` of the largest word-set Jaccard similarity to a ``train`` one."""
    train_sets = [set(s.lower().split()) for s in train]
    best = []
    for sentence in sentences:
        words = set(sentence.lower().split())
        best.append(max(len(words & t) / len(words | t) for t in train_sets))
    return round(float(np.mean(best)), 4)


def fresh_valid(diff: np.ndarray, valid: list[dict], earlier: Path) -> dict:
    """Valid's difference over seeds (points, t-interval) on the recordings whose line the
    ``earlier`` corpus' ``devel.jsonl`` and ``test.jsonl`` lack."""
    seen = {line["slurp_id"] for split in ("devel", "test")
            for line in read_lines(earlier / f"{split}.jsonl")}
    keep = np.array([r["slurp_id"] not in seen for r in valid])
    if not keep.any():
        raise ValueError(f"every valid line is in {earlier}'s devel.jsonl or test.jsonl")
    return {"against": str(earlier), "recordings": int(keep.sum()),
            "sentences": len({r["sentence"] for r, k in zip(valid, keep, strict=True) if k}),
            "over_seeds": [round(x, 2) for x in t_interval(
                [100 * float(row[keep].mean()) for row in diff])]}


def agreement(args: argparse.Namespace) -> dict:
    rows = json.loads(args.screening.read_text(encoding="utf-8"))
    pairs = paired_rows(rows, args.baseline, args.variant)
    valid_dir = args.valid_dir or args.corpus_dir
    sets = {"valid": recordings(valid_dir / "devel.jsonl"),
            "test": recordings(args.corpus_dir / "test.jsonl")}
    diffs = {name: differences(pairs, f"{name}_correct", len(recs))
             for name, recs in sets.items()}
    exact = {seed: {name: 100 * float(diffs[name][i].mean()) for name in sets}
             for i, seed in enumerate(pairs)}  # intervals from these, rounded only when shown
    per_seed = {seed: {name: round(value, 2) for name, value in by_set.items()}
                for seed, by_set in exact.items()}
    gap = t_interval([exact[s]["test"] - exact[s]["valid"] for s in pairs])
    intents = {name: grouped(diffs[name], [r["intent"] for r in recs])
               for name, recs in sets.items()}
    shared = sorted(set(intents["valid"]) & set(intents["test"]))
    train = [line["sentence"] for path in sorted(args.corpus_dir.glob("train*.jsonl"))
             for line in read_lines(path)]
    result = {
        "screening": str(args.screening), "baseline": args.baseline, "variant": args.variant,
        "seeds": list(pairs), "recordings": {name: len(recs) for name, recs in sets.items()},
        "sentences": {name: len({r["sentence"] for r in recs}) for name, recs in sets.items()},
        "per_seed": per_seed,
        "mean": {name: round(100 * float(d.mean()), 2) for name, d in diffs.items()},
        "over_seeds": {name: [round(x, 2) for x in t_interval([exact[s][name] for s in pairs])]
                       for name in sets},
        "test_minus_valid": [round(x, 2) for x in gap],
        "sentences_welch": welch({name: per_sentence(diffs[name], [r["sentence"] for r in recs])
                                  for name, recs in sets.items()}),
        "by_voice": {name: grouped(diffs[name], [r["voice"] for r in recs])
                     for name, recs in sets.items()},
        "by_length": {name: grouped(diffs[name], [length_bucket(r["words"]) for r in recs])
                      for name, recs in sets.items()},
        "intent_correlation": {"intents": len(shared), "r": round(float(np.corrcoef(
            [intents["valid"][k][1] for k in shared],
            [intents["test"][k][1] for k in shared])[0, 1]), 3) if len(shared) > 2 else None},
        "test_at_valid_intent_shares": round(
            sum(intents["test"][k][1] * intents["valid"][k][0] for k in shared)
            / sum(intents["valid"][k][0] for k in shared), 2) if shared else None,
        "train_similarity": {name: train_similarity(sorted({r["sentence"] for r in recs}), train)
                             for name, recs in sets.items()} if train else None,
    }
    if args.fresh_against is not None:
        result["fresh_valid"] = fresh_valid(diffs["valid"], sets["valid"], args.fresh_against)
    return result


def markdown(result: dict) -> str:
    """The breakdown as markdown tables."""
    lines = [f"`{result['variant']}` - `{result['baseline']}` (accuracy points), seeds "
             f"{', '.join(map(str, result['seeds']))}; valid {result['recordings']['valid']} "
             f"recordings of {result['sentences']['valid']} sentences, test "
             f"{result['recordings']['test']} of {result['sentences']['test']}.", "",
             "Over seeds: valid {:+.2f} [{:+.2f}, {:+.2f}], test {:+.2f} [{:+.2f}, {:+.2f}]; "
             "test minus valid {:+.2f} [{:+.2f}, {:+.2f}].".format(
                 *result["over_seeds"]["valid"], *result["over_seeds"]["test"],
                 *result["test_minus_valid"]),
             "Sentences as the unit (mean, standard error): valid {:+.2f} ({:.2f}), test {:+.2f} "
             "({:.2f}); Welch t = {}, p = {}.".format(
                 *result["sentences_welch"]["valid"], *result["sentences_welch"]["test"],
                 result["sentences_welch"]["t"], result["sentences_welch"]["p"]), ""]
    for title, key in (("voice", "by_voice"), ("sentence length (words)", "by_length")):
        lines += [f"| {title} | set | recordings | difference |", "|---|---|---|---|"]
        for name in ("valid", "test"):
            lines += [f"| {label} | {name} | {n} | {d:+.2f} |"
                      for label, (n, d) in result[key][name].items()]
        lines.append("")
    corr = result["intent_correlation"]
    lines.append(f"Per-intent differences, valid against test: r = {corr['r']} over "
                 f"{corr['intents']} intents; test at valid's intent shares "
                 f"{result['test_at_valid_intent_shares']:+.2f}.")
    if result["train_similarity"]:
        lines.append("Closest training sentence (mean word Jaccard): valid "
                     f"{result['train_similarity']['valid']}, test "
                     f"{result['train_similarity']['test']}.")
    if "fresh_valid" in result:
        fresh = result["fresh_valid"]
        lines.append("Valid lines that {} held in neither valid nor test ({} recordings of {} "
                     "sentences): {:+.2f} [{:+.2f}, {:+.2f}].".format(
                         fresh["against"], fresh["recordings"], fresh["sentences"],
                         *fresh["over_seeds"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = agreement(args)
    print(markdown(result))
    if args.output is not None:
        report.write_atomic(args.output, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
