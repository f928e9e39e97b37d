"""Shared fixtures: offline Whisper directories and real synthesized speech."""

import os
import socket
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest.ini's two workers: one thread each, so two
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # runs never fight over the 2 cores
        os.environ[_name] = "1"  # (subprocesses inherit it)

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may wait on the hub
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # in case torch was imported before the variables were set

SLOWEST_FIRST = ("test_recipes.py", "test_benchmarks.py", "test_readme_benchmarks.py",
                 "test_brains.py", "test_onnx_export.py")
"""Files handed to the workers first (``--dist loadfile`` keeps a file on one worker), so the
long ones do not start last and leave one worker idle at the end."""


def pytest_collection_modifyitems(items: list) -> None:
    """Order the tests by :data:`SLOWEST_FIRST`, then as collected."""
    rank = {name: index for index, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
sys.path.insert(0, str(Path(__file__).parent))

from speech import synthesize_clips  # noqa: E402

from speechbrain_quads.models.pretrained import convert  # noqa: E402

SENTENCES = [
    "turn on the kitchen lights",
    "what is the weather like tomorrow in paris",
    "stop",
    "set an alarm for seven thirty in the morning",
]


@pytest.fixture(scope="session")
def tiny_dir() -> str:
    """HF directory of Whisper tiny.en converted from the offline package (cached per user)."""
    return str(convert("tiny.en"))


@pytest.fixture(scope="session")
def base_dir() -> str:
    """HF directory of Whisper base converted from the offline packages (cached per user)."""
    return str(convert("base"))


@pytest.fixture(scope="session")
def clips() -> list[torch.Tensor]:
    """Four real synthesized utterances at 16 kHz, 0.6-2.5 s long, as (samples,) tensors."""
    return synthesize_clips(SENTENCES)


def pad_batch(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (T_i,) waveforms -> zero-padded (B, T) batch and relative lengths (B,)."""
    longest = max(w.shape[0] for w in waves)
    batch = torch.zeros(len(waves), longest)
    for i, w in enumerate(waves):
        batch[i, : w.shape[0]] = w
    return batch, torch.tensor([w.shape[0] / longest for w in waves])


def free_port() -> int:
    """A local TCP port nothing listens on now, for a DDP rendezvous (two test workers may
    each start one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
