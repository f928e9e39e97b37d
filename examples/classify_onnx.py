#!/usr/bin/env python3
"""Classify the spoken intent of 16-kHz audio files with an ONNX QUADS model, without torch.

    python examples/classify_onnx.py model.onnx a.wav [b.wav ...] [--threads 2] [--int8]
    # a.wav	weather_query	0.9731

Needs numpy, onnxruntime and soundfile only (``--int8`` also needs ``onnx``); make the model with
``python -m speechbrain_quads.deploy.onnx_export MODEL_DIR model.onnx``. Prints
``FILE<TAB>INTENT<TAB>PROBABILITY`` per file; a file that cannot be classified gets
``FILE<TAB>ERROR<TAB>REASON`` on stderr and the others go on. Exit status: 0 all files
classified, 1 some file failed, 2 bad model or usage.
"""

from __future__ import annotations

import argparse
import sys

from speechbrain_quads.deploy.errors import AudioFileError
from speechbrain_quads.deploy.onnx_runtime import OnnxIntentClassifier, OnnxModelError


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .onnx file written by speechbrain_quads.deploy.onnx_export")
    parser.add_argument("files", nargs="+", help="16-kHz audio files (wav, flac, ogg, ...)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--int8", action="store_true",
                        help="re-quantize the weights to int8 at load (faster, not bit-exact)")
    args = parser.parse_args(argv)
    try:
        classifier = OnnxIntentClassifier(args.model, args.threads, "int8" if args.int8 else "float")
    except (FileNotFoundError, OnnxModelError) as error:
        print(f"error: cannot load model: {error}", file=sys.stderr)
        return 2
    status = 0
    for path in args.files:
        try:
            label, probability, _ = classifier.classify_file(path)
        except AudioFileError as error:
            print(f"{path}\tERROR\t{error.reason}", file=sys.stderr, flush=True)
            status = 1
            continue
        print(f"{path}\t{label}\t{probability:.4f}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
