"""Classify audio files with an exported QUADS intent model.

    python -m speechbrain_quads.deploy.classify MODEL FILE [FILE ...] [--savedir DIR] [--batch-size 8]
        [--device cpu]

MODEL is an export folder or a Hugging Face hub id (fetched into ``--savedir``). Prints
``FILE<TAB>INTENT<TAB>SCORE`` on stdout for each file, in the order given: INTENT is ``text_lab``
and SCORE is ``exp(score)`` of ``QuadsIntentClassifier.classify_file`` (the softmax probability of
the intent, 4 decimals). A file that cannot be read or classified gets
``FILE<TAB>ERROR<TAB>REASON`` on stderr and the others go on. Exit status: 0 all files classified,
1 some file failed, 2 bad model or usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from speechbrain_quads.deploy.inference import AudioFileError, QuadsIntentClassifier

EXIT_OK, EXIT_FILE_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_quads.deploy.classify",
        description="Classify the spoken intent of audio files with a model folder exported by a "
                    "QUADS recipe (config.json + model.safetensors, packed or float32).",
        epilog="Output: FILE<TAB>INTENT<TAB>SCORE per file on stdout (SCORE = softmax probability "
               "of INTENT), in input order. Unreadable files: FILE<TAB>ERROR<TAB>REASON on stderr. "
               "Exit status: 0 all classified, 1 some file failed, 2 bad model or usage.")
    parser.add_argument("model", metavar="MODEL",
                        help="exported model folder, or a Hugging Face hub id holding one")
    parser.add_argument("files", metavar="FILE", nargs="+",
                        help="audio files (any rate soundfile reads; resampled as needed)")
    parser.add_argument("--savedir", default=None, metavar="DIR",
                        help="where a hub model's files are linked (default: the hub cache)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="files classified together (default: %(default)s)")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    run_opts = {"device": args.device} if args.device else None
    try:
        classifier = QuadsIntentClassifier.from_hparams(source=args.model, savedir=args.savedir,
                                                        run_opts=run_opts)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: cannot load model: {error}", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    for start in range(0, len(args.files), args.batch_size):
        chunk = args.files[start:start + args.batch_size]
        for path, result in zip(chunk, classifier.classify_files(chunk, args.batch_size), strict=True):
            if isinstance(result, AudioFileError):
                print(f"{path}\tERROR\t{result.reason}", file=sys.stderr, flush=True)
                status = EXIT_FILE_FAILED
            else:
                _, score, _, text_lab = result
                print(f"{path}\t{text_lab[0]}\t{score.exp().item():.4f}", flush=True)
    return status


def run() -> None:
    """Entry point: exit with :func:`main`'s status; a closed stdout (``| head``) ends quietly."""
    try:
        status = main()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = EXIT_FILE_FAILED
    sys.exit(status)


if __name__ == "__main__":
    run()
