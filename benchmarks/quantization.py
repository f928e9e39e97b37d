"""Benchmark of the codebook quantization engine on the Whisper tiny.en encoder.

Measures, per bit width: the time to cluster every quantized tensor (default ``linear`` init;
``cluster_seconds_optimal`` for ``optimal`` up to ``--oracle-max-bits``), how far that
clustering is from the exact 1-D k-means optimum (``kmeans_sse_ratio``: the worst tensor's
squared error over the optimum's, for ``optimal`` and for the default ``linear``), the packed file size
against the exact bit arithmetic and the paper's convention, and the export -> load round trip
(max abs difference of the encoder outputs on a 30-s input). Also the cost of training with the
codebook in the loop (step time, mode ``train`` vs ``off``, batch 4 x 3 s) and the speed of the
candidate centroid-gradient reductions.

    python benchmarks/quantization.py --json quantization.json [--bits 1 2 4 8 16] [--repeats 5]

The optimum is Ckmeans.1d.dp's exact dynamic programme (``ckwrap``) on each tensor's distinct
values weighted by their counts (lossless: equal values share a cluster in an optimal 1-D
solution); ``tests/test_kmeans_optimum.py`` checks the engine against another exact solver
(``kmeans1d``). Widths up to ``--oracle-max-bits`` (default 8) are compared, and 1 to 4 bits
again on weights moved off the float16 grid (``kmeans_sse_ratio_drifted``), as training leaves
them.

tiny.en's weights are float16 values, so at 16 bits every tensor has at most 2**16 distinct
values and its codebook holds them exactly (no clustering); ``cluster_seconds_drifted`` times
the real 16-bit clustering on weights nudged off that grid, as distillation leaves them.

Weights: the offline tiny.en conversion (``speechbrain_quads.models.pretrained.convert``) when it is
available, otherwise a random encoder with tiny's shapes (recorded in the JSON as ``weights``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ckwrap
import numpy as np
import torch
from transformers import WhisperConfig, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from speechbrain_quads.codebook.kmeans import kmeans_1d
from speechbrain_quads.codebook.packing import export_packed, load_packed_into
from speechbrain_quads.codebook.quantization import CodebookQuantizer, QuantizationConfig

TINY_SHAPES = {
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "num_mel_bins": 80,
}
SHORT_POSITIONS = 150  # 3 s of audio: 300 mel frames -> 150 encoder frames


def load_encoder() -> tuple[WhisperEncoder, str]:
    """The tiny.en encoder (or a random tiny-shaped one) and the ``weights`` label."""
    try:
        from speechbrain_quads.models.pretrained import convert

        encoder = WhisperModel.from_pretrained(convert("tiny.en")).get_encoder()
        return encoder.float(), "tiny.en"
    except Exception as error:  # any failure of the optional offline weights: fall back
        print(f"tiny.en weights unavailable ({error!r}); using a random tiny-shaped encoder")
        torch.manual_seed(0)
        return WhisperEncoder(WhisperConfig(**TINY_SHAPES)), "random-tiny-shaped"


def short_encoder(encoder: WhisperEncoder, positions: int = SHORT_POSITIONS) -> WhisperEncoder:
    """A copy of ``encoder`` that accepts ``2 * positions`` mel frames (position table sliced)."""
    config = copy.deepcopy(encoder.config)
    config.max_source_positions = positions
    short = WhisperEncoder(config)
    state = encoder.state_dict()
    state["embed_positions.weight"] = state["embed_positions.weight"][:positions]
    short.load_state_dict(state)
    return short


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``function`` (one warm-up call first)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bit_width_figures(encoder: WhisperEncoder, bits: int, workdir: Path) -> dict:
    """Cluster, export and reload ``encoder`` at ``bits``; sizes in bytes, times in seconds."""
    model = copy.deepcopy(encoder)
    quantizer = CodebookQuantizer(QuantizationConfig(bits=bits))
    quantizer.prepare(model)
    start = time.perf_counter()
    quantizer.cluster()
    cluster_seconds = time.perf_counter() - start
    report = export_packed(model, workdir / f"tiny-{bits}bit.safetensors")
    loaded = load_packed_into(copy.deepcopy(encoder), workdir / f"tiny-{bits}bit.safetensors")
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(bits))
    with torch.no_grad():
        quantized_out = model.eval()(features).last_hidden_state
        loaded_out = loaded.eval()(features).last_hidden_state
    return {
        "cluster_seconds": cluster_seconds,
        "report": report,
        "roundtrip_max_abs_diff": (quantized_out - loaded_out).abs().max().item(),
        "quantized_tensors": len(quantizer.quantized_names),
    }


def exact_sse(values: np.ndarray, k: int) -> float:
    """Squared error of the exact 1-D k-means optimum of ``values`` (float64, any order)."""
    distinct, counts = np.unique(values, return_counts=True)
    if distinct.size <= k:
        return 0.0
    fit = ckwrap.ckmeans(distinct, k, weights=counts.astype(np.float64))
    centers, labels = np.asarray(fit.centers), np.asarray(fit.labels)
    return float((counts * np.square(distinct - centers[labels])).sum())


def sse_ratios(encoder: WhisperEncoder, bits: int, init: str, drift: float = 0.0) -> dict:
    """Worst-tensor ratio of ``kmeans_1d``'s squared error (``init``, the engine's 30 Lloyd
    iterations) to the exact optimum, over the quantized tensors; ``drift`` adds
    ``drift * std * N(0, 1)`` to each weight first. Returns ``{"ratio", "tensor"}``."""
    worst = {"ratio": 1.0, "tensor": None}
    generator = np.random.default_rng(0)
    for name, module in encoder.named_modules():
        if type(module).__name__ not in TYPES:
            continue
        values = module.weight.detach().double().flatten().numpy()
        if drift:
            values = values + generator.standard_normal(values.size) * drift * values.std()
        optimum = exact_sse(values, 2**bits)
        centroids, indices = kmeans_1d(torch.from_numpy(values).float().unsqueeze(0), 2**bits,
                                       init=init, iters=QuantizationConfig.kmeans_iters)
        error = float(np.square(values - centroids[0].double().numpy()[indices[0].numpy()]).sum())
        ratio = error / optimum if optimum > 0 else (1.0 if error == 0 else float("inf"))
        if ratio > worst["ratio"]:
            worst = {"ratio": ratio, "tensor": name}
    return worst


def optimal_cluster_seconds(encoder: WhisperEncoder, bits: int) -> float:
    """Seconds to cluster every quantized tensor with ``init="optimal"`` (the default is
    ``linear``)."""
    model = copy.deepcopy(encoder)
    quantizer = CodebookQuantizer(QuantizationConfig(bits=bits, init="optimal"))
    quantizer.prepare(model)
    start = time.perf_counter()
    quantizer.cluster()
    return time.perf_counter() - start


def drifted_cluster_seconds(encoder: WhisperEncoder, bits: int) -> dict[str, float]:
    """Seconds to cluster every quantized tensor after adding 1e-4 * N(0, 1) to each weight.

    Returns ``{"seconds": ..., "tensors_over_k": ...}``: the time, and how many tensors then
    have more than ``2**bits`` distinct values (those that Lloyd's iterations really cluster).
    """
    model = copy.deepcopy(encoder)
    quantizer = CodebookQuantizer(QuantizationConfig(bits=bits))
    quantizer.prepare(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = [m.parametrizations["weight"].original for m, _ in quantizer.modules.values()]
        for latent in latents:
            latent.add_(1e-4 * torch.randn(latent.shape, generator=generator))
    start = time.perf_counter()
    quantizer.cluster()
    return {
        "seconds": time.perf_counter() - start,
        "tensors_over_k": sum(latent.unique().numel() > 2**bits for latent in latents),
    }


def step_times(encoder: WhisperEncoder, bits: int, repeats: int) -> dict[str, dict[str, float]]:
    """Training-step seconds (forward+backward+Adam) on a (4, 80, 300) batch.

    Configurations: ``plain`` (no quantizer), ``off`` and ``train`` (quantizer attached, in that
    mode). After two warm-up steps each, single steps of the three alternate ``repeats`` times,
    so that load from other processes affects them alike. Returns ``{"median": {...},
    "min": {...}}`` per configuration.
    """
    plain = short_encoder(encoder).train()
    model = short_encoder(encoder).train()
    quantizer = CodebookQuantizer(QuantizationConfig(bits=bits))
    quantizer.prepare(model)
    quantizer.cluster()
    features = torch.randn(4, 80, 2 * SHORT_POSITIONS, generator=torch.Generator().manual_seed(0))
    optimizers = {
        "plain": torch.optim.Adam(plain.parameters(), lr=1e-5),
        "quantized": torch.optim.Adam(model.parameters(), lr=1e-5),
    }

    def step(mode: str) -> float:
        if mode == "plain":
            net, optimizer = plain, optimizers["plain"]
        else:
            quantizer.set_mode(mode)
            net, optimizer = model, optimizers["quantized"]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        net(features).last_hidden_state.square().mean().backward()
        optimizer.step()
        return time.perf_counter() - start

    samples: dict[str, list[float]] = {"plain": [], "off": [], "train": []}
    for mode in samples:
        step(mode)
        step(mode)
    for _ in range(repeats):
        for mode, values in samples.items():
            values.append(step(mode))
    return {
        "median": {mode: statistics.median(values) for mode, values in samples.items()},
        "min": {mode: min(values) for mode, values in samples.items()},
    }


def reduction_times(encoder: WhisperEncoder, bits: int, repeats: int) -> dict[str, float]:
    """Seconds to reduce one gradient per quantized tensor to its 2**bits centroids.

    Candidates for the backward of the centroid gather, summed over every quantized tensor:
    ``scatter_add`` (the engine's), ``index_add``, ``bincount`` and autograd's backward of
    advanced indexing ``centroids[indices]``.
    """
    k = 2**bits
    generator = torch.Generator().manual_seed(0)
    shapes = [m.weight.numel() for m in encoder.modules() if type(m).__name__ in TYPES]
    cases = [
        (torch.randint(0, k, (n,), generator=generator), torch.randn(n, generator=generator))
        for n in shapes
    ]
    table = torch.zeros(k, requires_grad=True)
    candidates = {
        "scatter_add": lambda i, g: g.new_zeros(k).scatter_add_(0, i, g),
        "index_add": lambda i, g: g.new_zeros(k).index_add_(0, i, g),
        "bincount": lambda i, g: torch.bincount(i, weights=g, minlength=k),
        "autograd_indexing": lambda i, g: torch.autograd.grad(table[i], table, g),
    }
    return {
        name: median_seconds(lambda f=reduce: [f(i, g) for i, g in cases], repeats)
        for name, reduce in candidates.items()
    }


TYPES = ("Linear", "Conv1d")


def targets_met(result: dict) -> dict[str, bool]:
    """The engine's targets, checked on ``result``: sizes, exactness, speed."""
    packed, arithmetic = result["packed_bytes"], result["bit_arithmetic_bytes"]
    return {
        "packed_within_1pct_plus_4KiB": all(
            abs(packed[b] - arithmetic[b]) <= 0.01 * arithmetic[b] + 4096 for b in packed
        ),
        "roundtrip_exact": all(v == 0.0 for v in result["roundtrip_max_abs_diff"].values()),
        "step_time_ratio_le_1.3": result["step_time_ratio"] <= 1.3,
        "cluster_under_5s": all(v < 5.0 for v in result["cluster_seconds"].values())
        and result["cluster_seconds_drifted"]["seconds"] < 5.0
        and all(v < 5.0 for v in result["cluster_seconds_optimal"].values()),
        "kmeans_sse_ratio_le_1.01": all(
            worst["ratio"] <= 1.01 for worst in [*result["kmeans_sse_ratio"]["optimal"].values(),
                                                 *result["kmeans_sse_ratio_drifted"].values()]),
    }


def print_table(result: dict) -> None:
    """Readable summary of ``result`` on stdout (sizes in MiB)."""
    print(f"\nWhisper encoder weights: {result['weights']}, {result['threads']} threads")
    print(
        f"{'bits':>4} {'cluster s':>9} {'packed MB':>10} {'bit-arith MB':>12} "
        f"{'paper MB':>9} {'overhead B':>10} {'roundtrip':>9}"
    )
    for bits in result["bits"]:
        key = str(bits)
        print(
            f"{bits:>4} {result['cluster_seconds'][key]:>9.2f} "
            f"{result['packed_bytes'][key] / 2**20:>10.3f} "
            f"{result['bit_arithmetic_bytes'][key] / 2**20:>12.3f} "
            f"{result['paper_bytes'][key] / 2**20:>9.3f} "
            f"{result['packed_bytes'][key] - result['bit_arithmetic_bytes'][key]:>10d} "
            f"{result['roundtrip_max_abs_diff'][key]:>9.1e}"
        )
    print(f"fp32: {result['fp32_bytes'] / 2**20:.3f} MB")
    drifted = result["cluster_seconds_drifted"]
    print(
        f"clustering at {result['drift_bits']} bits, weights off the float16 grid: "
        f"{drifted['seconds']:.2f} s ({drifted['tensors_over_k']} tensors over 2**bits values)"
    )
    for statistic in ("median", "min"):
        steps = result["step_seconds"][statistic]
        print(
            f"training step {statistic} (4 x 3 s, {result['step_bits']} bits): "
            f"plain {steps['plain']:.3f} s, off {steps['off']:.3f} s, "
            f"train {steps['train']:.3f} s -> train/off {steps['train'] / steps['off']:.3f}"
        )
    print("clustering with init optimal, s: " + ", ".join(
        f"{b} bits {v:.2f}" for b, v in result["cluster_seconds_optimal"].items()))
    for init, ratios in result["kmeans_sse_ratio"].items():
        print(f"k-means squared error / exact optimum, worst tensor, init {init}: " + ", ".join(
            f"{b} bits {w['ratio']:.4f}" for b, w in ratios.items()))
    print("same, optimal, weights off the float16 grid: " + ", ".join(
        f"{b} bits {w['ratio']:.4f}" for b, w in result["kmeans_sse_ratio_drifted"].items()))
    print(f"load average before/after: {result['load_average']}")
    print(f"targets met: {result['targets_met']}")
    reductions = ", ".join(
        f"{k} {v * 1e3:.1f} ms" for k, v in result["centroid_grad_seconds"].items()
    )
    print(f"centroid-gradient reduction over all tensors: {reductions}")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; write the JSON if ``--json`` is given; return the result dict."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--bits", type=int, nargs="+", default=[*range(1, 9), 12, 16])
    parser.add_argument("--drift-bits", type=int, default=16,
                        help="bit width of the clustering timed on weights off the float16 grid")
    parser.add_argument("--step-bits", type=int, default=4, help="bit width of the step timing")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--oracle-max-bits", type=int, default=8,
                        help="widths up to this are compared with the exact optimum")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]
    encoder, weights = load_encoder()
    per_bits = {}
    with tempfile.TemporaryDirectory() as workdir:
        for bits in args.bits:
            per_bits[str(bits)] = bit_width_figures(encoder, bits, Path(workdir))
    steps = step_times(encoder, args.step_bits, args.repeats)
    reports = {bits: figures["report"] for bits, figures in per_bits.items()}
    result = {
        "weights": weights,
        "threads": args.threads,
        "bits": args.bits,
        "quantized_tensors": next(iter(per_bits.values()))["quantized_tensors"],
        "quantized_params": next(iter(reports.values())).quantized_params,
        "total_params": next(iter(reports.values())).total_params,
        "cluster_seconds": {b: f["cluster_seconds"] for b, f in per_bits.items()},
        "cluster_seconds_optimal": {str(b): optimal_cluster_seconds(encoder, b)
                                    for b in args.bits if b <= args.oracle_max_bits},
        "drift_bits": args.drift_bits,
        "cluster_seconds_drifted": drifted_cluster_seconds(encoder, args.drift_bits),
        "packed_bytes": {b: r.packed_bytes for b, r in reports.items()},
        "bit_arithmetic_bytes": {b: r.bit_arithmetic_bytes for b, r in reports.items()},
        "paper_bytes": {b: r.paper_bytes for b, r in reports.items()},
        "fp32_bytes": next(iter(reports.values())).fp32_bytes,
        "roundtrip_max_abs_diff": {b: f["roundtrip_max_abs_diff"] for b, f in per_bits.items()},
        "step_bits": args.step_bits,
        "step_seconds": steps,
        "step_time_ratio": steps["median"]["train"] / steps["median"]["off"],
        "step_time_ratio_min": steps["min"]["train"] / steps["min"]["off"],
        "centroid_grad_seconds": reduction_times(encoder, args.step_bits, args.repeats),
        "kmeans_sse_ratio": {
            init: {str(b): sse_ratios(encoder, b, init) for b in args.bits
                   if b <= args.oracle_max_bits}
            for init in ("optimal", "linear")},
        "kmeans_sse_ratio_drifted": {
            str(b): sse_ratios(encoder, b, "optimal", drift=1e-3) for b in (1, 2, 3, 4)},
        "load_average": [load_before, os.getloadavg()[0]],
    }
    result["targets_met"] = targets_met(result)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
