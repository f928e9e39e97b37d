"""Codebooks and centroid gradients stay identical across ranks under DDP (2 gloo processes)."""

import datetime
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from speechbrain_quads.codebook.quantization import QuantizationConfig, quantize_

WORLD_SIZE = 2


def _gathered(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of ``tensor`` (flattened), in rank order."""
    flat = tensor.detach().reshape(-1).contiguous()
    copies = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
    dist.all_gather(copies, flat)
    return copies


def _codebook_state(quantizer) -> torch.Tensor:
    parts = []
    for _, codebook in quantizer.modules.values():
        parts += [codebook.centroids.detach().reshape(-1), codebook.indices.double().reshape(-1)]
    return torch.cat(parts).double()


def _centroid_grads(quantizer) -> torch.Tensor:
    return torch.cat([c.centroids.grad.reshape(-1) for _, c in quantizer.modules.values()])


def _worker(rank: int, port: int) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
    torch.set_num_threads(1)
    try:
        _check_rank(rank)
        dist.barrier()  # neither rank tears gloo down while the other still reads from it
    finally:
        dist.destroy_process_group()
    # Every check passed. Leave without running C++ static destructors: about 1 exit in 50 under
    # load, torch 2.11 aborts there ("terminate called without an active exception", no Python
    # frame, after this function has returned), which would fail a test whose checks all held.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _check_rank(rank: int) -> None:
    torch.manual_seed(rank)  # different weights on each rank before clustering
    model = nn.Sequential(nn.Linear(10, 24), nn.Tanh(), nn.Linear(24, 3))
    latent = model[0].weight.detach().clone()
    quantizer = quantize_(model, QuantizationConfig(bits=3))
    copies = _gathered(latent)
    assert not torch.equal(copies[0], copies[1])
    copies = _gathered(_codebook_state(quantizer))
    assert torch.equal(copies[0], copies[1]), "cluster() must broadcast rank 0's codebooks"

    ddp = DistributedDataParallel(model, find_unused_parameters=True)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)
    generator = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    inputs, targets = (
        torch.randn(8, 10, generator=generator),
        torch.randn(8, 3, generator=generator),
    )

    with ddp.no_sync():
        nn.functional.mse_loss(ddp(inputs), targets).backward()
    local = _gathered(_centroid_grads(quantizer))
    assert not torch.allclose(local[0], local[1]), "ranks should see different data"

    optimizer.zero_grad()
    nn.functional.mse_loss(ddp(inputs), targets).backward()
    synced = _gathered(_centroid_grads(quantizer))
    assert torch.equal(synced[0], synced[1])
    torch.testing.assert_close(synced[0], (local[0] + local[1]) / 2, rtol=1e-5, atol=1e-7)

    before = _codebook_state(quantizer)
    optimizer.step()
    after = _gathered(_codebook_state(quantizer))
    assert torch.equal(after[0], after[1])
    assert not torch.equal(after[rank], before)


def test_centroid_gradients_and_codebooks_identical_across_ranks():
    mp.spawn(_worker, args=(free_port(),), nprocs=WORLD_SIZE, join=True)
