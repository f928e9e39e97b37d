"""Tests of the codebook quantization engine (k-means, parametrization, lifecycle)."""

import pytest
import torch
from torch import nn

from speechbrain_quads.codebook.kmeans import INITS, assign, init_centroids, kmeans_1d
from speechbrain_quads.codebook.quantization import (
    CodebookQuantizer,
    QuantizationConfig,
    quantize_,
    quantized_modules,
    select_modules,
)


class Tiny(nn.Module):
    """Conv1d -> Linear -> LayerNorm -> Linear; input (batch, 3, 8), output (batch, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, kernel_size=3)
        self.fc1 = nn.Linear(8 * 6, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.nn.functional.gelu(self.conv(x)).flatten(1)
        return self.fc2(torch.tanh(self.norm(self.fc1(hidden))))


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> Tiny:
    torch.manual_seed(seed)
    return Tiny().to(dtype)


def batch(seed: int = 1, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(6, 3, 8, generator=generator, dtype=dtype)
    return inputs, torch.randn(6, 4, generator=generator, dtype=dtype)


def loss_of(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, targets = data
    return nn.functional.mse_loss(model(inputs), targets)


def latents(quantizer: CodebookQuantizer) -> dict[str, torch.Tensor]:
    return {n: m.parametrizations["weight"].original for n, (m, _) in quantizer.modules.items()}


@pytest.mark.parametrize(
    ("bits", "granularity"),
    [(1, "per_tensor"), (2, "per_tensor"), (4, "per_tensor"), (8, "per_tensor"), (3, "per_group")],
)
def test_centroid_gradient_is_sum_of_member_gradients(bits, granularity):
    model = make_model()
    quantizer = CodebookQuantizer(
        QuantizationConfig(bits=bits, granularity=granularity, group_size=8)
    )
    quantizer.prepare(model)
    quantizer.cluster()
    data = batch()
    loss_train = loss_of(model, data)
    loss_train.backward()

    quantizer.commit()  # latent weights := centroids[indices]: same forward values with mode off
    quantizer.set_mode("off")
    loss_off = loss_of(model, data)
    assert loss_off.item() == loss_train.item()
    weights = latents(quantizer)
    grads = torch.autograd.grad(loss_off, list(weights.values()))
    for (name, (_, codebook)), grad in zip(quantizer.modules.items(), grads, strict=True):
        groups = codebook.groups
        expected = torch.zeros(groups, 2**bits)
        labels = codebook.indices.reshape(groups, -1).long()
        expected.scatter_add_(1, labels, grad.reshape(groups, -1))
        assert codebook.centroids.grad is not None, name
        torch.testing.assert_close(codebook.centroids.grad, expected, rtol=1e-5, atol=1e-7)
        assert expected.abs().sum() > 0
    if granularity == "per_group":
        assert quantizer.modules["fc1"][1].groups == 4


def test_centroid_gradient_matches_finite_difference():
    model = make_model(dtype=torch.float64)
    quantizer = quantize_(model, QuantizationConfig(bits=2))
    data = batch(dtype=torch.float64)
    loss_of(model, data).backward()
    codebook = quantizer.modules["fc1"][1]
    eps = 1e-6
    for j in range(4):
        with torch.no_grad():
            codebook.centroids[0, j] += eps
            loss_plus = loss_of(model, data).item()
            codebook.centroids[0, j] -= 2 * eps
            loss_minus = loss_of(model, data).item()
            codebook.centroids[0, j] += eps
        numeric = (loss_plus - loss_minus) / (2 * eps)
        assert codebook.centroids.grad[0, j].item() == pytest.approx(numeric, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("init", INITS)
def test_kmeans_is_deterministic_and_recovers_separated_clusters(init):
    centers = torch.tensor([-3.0, -1.0, 1.5, 4.0])
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (4000,), generator=generator)
    values = centers[labels] + 0.05 * torch.randn(4000, generator=generator)
    first, indices = kmeans_1d(values.unsqueeze(0), 4, init=init, seed=3)
    again, indices_again = kmeans_1d(values.unsqueeze(0), 4, init=init, seed=3)
    assert torch.equal(first, again) and torch.equal(indices, indices_again)
    assert torch.equal(indices, assign(values.unsqueeze(0), first))  # nearest centroid
    torch.testing.assert_close(first[0], centers, atol=0.01, rtol=0)
    assert torch.equal(indices[0], labels)


def test_kmeans_plus_plus_depends_on_the_seed():
    values = torch.randn(1, 5000, generator=torch.Generator().manual_seed(0)).sort(dim=1).values
    inits = [
        init_centroids(values, 16, "kmeans++", torch.Generator().manual_seed(seed))
        for seed in (0, 0, 1)
    ]
    assert torch.equal(inits[0], inits[1])
    assert not torch.equal(inits[0], inits[2])


def test_initialisations_place_centroids_as_documented():
    values = torch.arange(1001, dtype=torch.float32).unsqueeze(0)  # 0 .. 1000
    generator = torch.Generator().manual_seed(0)
    linear = init_centroids(values, 3, "linear", generator)
    torch.testing.assert_close(linear[0], torch.tensor([0.0, 500.0, 1000.0], dtype=torch.float64))
    density = init_centroids(values, 2, "density", generator)
    torch.testing.assert_close(density[0], torch.tensor([250.0, 750.0], dtype=torch.float64))
    clipped = init_centroids(values, 2, "range", generator, clip_percentile=10.0)
    torch.testing.assert_close(clipped[0], torch.tensor([300.0, 700.0], dtype=torch.float64))


def test_range_init_ignores_outliers_at_one_bit():
    generator = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(10000, generator=generator), torch.tensor([80.0, -60.0])])
    linear = init_centroids(values.sort().values.unsqueeze(0), 2, "linear", generator)
    ranged = init_centroids(values.sort().values.unsqueeze(0), 2, "range", generator)
    assert linear.abs().min() > 50
    assert ranged.abs().max() < 2


@pytest.mark.parametrize("bits", range(1, 17))
def test_every_width_gives_at_most_2_to_the_b_values(bits):
    model = make_model()
    quantizer = quantize_(model, QuantizationConfig(bits=bits))
    for _, codebook in quantizer.modules.values():
        assert codebook.indices.dtype == (torch.uint8 if bits <= 8 else torch.int32)
        assert codebook.centroids.shape == (1, 2**bits)
        assert int(codebook.indices.max()) < 2**bits
    quantizer.finalize()
    for module in (model.conv, model.fc1, model.fc2):
        distinct = module.weight.unique().numel()
        assert distinct <= 2**bits
        if bits <= 4:
            assert distinct == 2**bits


@pytest.mark.parametrize("warm_start", [False, True])
def test_reclustering_moves_the_codebook_and_recluster_false_keeps_it(warm_start):
    for recluster in (True, False):
        model = make_model()
        config = QuantizationConfig(bits=3, recluster=recluster, warm_start=warm_start)
        quantizer = quantize_(model, config)
        codebook = quantizer.modules["fc1"][1]
        before = codebook.centroids.detach().clone()
        quantizer.set_mode("frozen")
        latent = model.fc1.parametrizations["weight"].original
        with torch.no_grad():
            latent.mul_(3.0)
        quantizer.cluster()
        moved = not torch.equal(codebook.centroids, before)
        assert moved is recluster and config.recluster == ("refit" if recluster else "never")
        assert quantizer.mode == ("train" if recluster else "frozen")
        if recluster and not warm_start:  # a cold k-means is scale-equivariant
            torch.testing.assert_close(codebook.centroids, before * 3.0, rtol=1e-4, atol=1e-6)
        if recluster and warm_start:  # Lloyd from the old codebook reaches the new weights
            error = (latent - codebook.quantized()).square().mean()
            stale = (latent - (before.flatten()[codebook.flat_indices()]).reshape(latent.shape))
            assert error < 0.1 * stale.square().mean()


def test_reassign_keeps_trained_centroids_and_follows_the_latent_weights():
    """``recluster: reassign``: a centroid moved by training stays where training put it, and
    each latent weight moved by distillation goes to its nearest (trained) centroid."""
    model = make_model()
    quantizer = quantize_(model, QuantizationConfig(bits=2, recluster="reassign"))
    codebook = quantizer.modules["fc1"][1]
    with torch.no_grad():
        codebook.centroids.add_(torch.tensor([[0.01, -0.02, 0.03, 0.0]]))  # "trained" shifts
        trained = codebook.centroids.detach().clone()
        latent = model.fc1.parametrizations["weight"].original
        latent.add_(0.05 * torch.randn(latent.shape, generator=torch.Generator().manual_seed(4)))
    quantizer.set_mode("off")
    quantizer.cluster()
    assert torch.equal(codebook.centroids, torch.sort(trained, dim=1).values)
    nearest = (latent.detach().reshape(-1, 1) - trained.reshape(1, -1)).abs().argmin(dim=1)
    assert torch.equal(codebook.quantized().flatten(), trained.flatten()[nearest])
    assert quantizer.mode == "train"
    refit = quantize_(make_model(), QuantizationConfig(bits=2, recluster=True))
    assert refit.config.recluster == "refit"
    with pytest.raises(ValueError, match="recluster: 'sometimes' is not one of"):
        QuantizationConfig(recluster="sometimes")


def test_ste_mode_runs_the_codebook_and_passes_the_gradient_to_the_latents():
    """Mode ``ste``: the forward uses ``centroids[indices]``; the latent weight receives exactly
    the gradient of the weight the module used; the codebook receives none; ``reassign`` then
    follows the moved latents."""
    model = make_model()
    quantizer = quantize_(model, QuantizationConfig(bits=2))
    quantizer.set_mode("ste")
    data = batch()
    codebook = quantizer.modules["fc1"][1]
    latent = model.fc1.parametrizations["weight"].original
    used = codebook.quantized().detach()
    assert torch.equal(model.fc1.weight, used)
    loss_of(model, data).backward()
    plain = make_model()
    with torch.no_grad():
        for name, (_, book) in quantizer.modules.items():
            plain.get_submodule(name).weight.copy_(book.quantized())
    loss_of(plain, data).backward()
    torch.testing.assert_close(latent.grad, plain.fc1.weight.grad, rtol=1e-6, atol=1e-9)
    assert codebook.centroids.grad is None
    with torch.no_grad():
        latent.sub_(50.0 * latent.grad)  # a large step: many weights change cluster
    quantizer.reassign()
    centroids = codebook.centroids.detach().flatten()
    nearest = centroids[(latent.detach().reshape(-1, 1) - centroids).abs().argmin(dim=1)]
    assert torch.equal(model.fc1.weight.flatten(), nearest)
    assert not torch.equal(model.fc1.weight, used)


def test_modes_off_train_frozen():
    model = make_model()
    data = batch()
    reference = model(data[0]).detach()
    quantizer = CodebookQuantizer(QuantizationConfig(bits=2))
    assert quantizer.prepare(model) == ["conv", "fc1", "fc2"]
    assert quantizer.mode == "off"
    assert torch.equal(model(data[0]), reference)  # prepared, not clustered: unchanged
    with pytest.raises(RuntimeError, match="cluster"):
        quantizer.set_mode("train")

    quantizer.cluster()
    assert quantizer.mode == "train"
    codebook = quantizer.modules["fc1"][1]
    assert torch.equal(model.fc1.weight, codebook.centroids[0][codebook.indices.long()])
    assert model.fc1.weight.unique().numel() == 4
    quantized = model(data[0]).detach()
    assert not torch.equal(quantized, reference)
    loss_of(model, data).backward()
    assert codebook.centroids.grad is not None
    assert model.fc1.parametrizations["weight"].original.grad is None

    model.zero_grad()
    quantizer.set_mode("frozen")
    assert torch.equal(model(data[0]), quantized)
    loss_of(model, data).backward()
    assert codebook.centroids.grad is None
    assert model.fc1.bias.grad is not None

    quantizer.set_mode("off")
    assert torch.equal(model(data[0]), reference)
    with pytest.raises(ValueError, match="mode"):
        quantizer.set_mode("on")


def test_commit_and_finalize():
    model = make_model()
    quantizer = quantize_(model, QuantizationConfig(bits=3))
    data = batch()
    quantized = model(data[0]).detach()
    quantizer.commit()
    assert quantizer.mode == "train"
    quantizer.set_mode("off")
    assert torch.equal(model(data[0]), quantized)  # latent weights now hold the quantized values

    parameter = model.fc1.parametrizations["weight"].original
    quantizer.finalize()
    assert quantized_modules(model) == {}
    assert model.fc1.weight is parameter and isinstance(model.fc1.weight, nn.Parameter)
    assert set(model.state_dict()) == {
        f"{m}.{p}" for m in ("conv", "fc1", "fc2", "norm") for p in ("weight", "bias")
    }
    assert torch.equal(model(data[0]), quantized)
    with pytest.raises(RuntimeError, match="prepare"):
        quantizer.cluster()
    quantizer.prepare(model)  # as the message says: prepare again after finalize()
    quantizer.cluster()
    assert all(codebook.quantized().unique().numel() <= 2**3
               for _, codebook in quantizer.modules.values())


def test_centroid_distance():
    model = make_model()
    quantizer = quantize_(model, QuantizationConfig(bits=2))
    squared, count = 0.0, 0
    for module, _ in quantizer.modules.values():
        latent = module.parametrizations["weight"].original
        squared += (latent - module.weight).square().sum().item()
        count += latent.numel()
    distance = quantizer.centroid_distance()
    assert distance.item() == pytest.approx(squared / count, rel=1e-5)
    assert distance.item() > 0
    distance.backward()
    assert model.fc1.parametrizations["weight"].original.grad.abs().sum() > 0
    quantizer.commit()
    assert quantizer.centroid_distance().item() == 0.0


def test_centroid_distance_leaves_out_the_weights_kept_exactly():
    """An outlier has no centroid: it adds nothing to the distance or its mean, and its
    latent value pulls no centroid (the centroid gradients are those of the other weights)."""
    model = make_model()
    quantizer = quantize_(model, QuantizationConfig(bits=2, outlier_fraction=0.05))
    squared, count = 0.0, 0
    for module, codebook in quantizer.modules.values():
        latent = module.parametrizations["weight"].original.detach().reshape(-1)
        kept = torch.ones_like(latent, dtype=torch.bool)
        kept[codebook.outlier_index] = False
        assert 0 < codebook.outliers == int((~kept).sum())
        squared += (latent - codebook.quantized().detach().reshape(-1))[kept].square().sum().item()
        count += int(kept.sum())
    distance = quantizer.centroid_distance()
    assert distance.item() == pytest.approx(squared / count, rel=1e-5)
    distance.backward()
    module, codebook = quantizer.modules["fc1"]
    latent = module.parametrizations["weight"].original
    assert torch.all(latent.grad.reshape(-1)[codebook.outlier_index] == 0)
    moved = latent.detach().clone().reshape(-1)
    moved[codebook.outlier_index] *= 10  # only the outliers move: no centroid gradient changes
    gradients = codebook.centroids.grad.clone()
    codebook.centroids.grad = None
    with torch.no_grad():
        latent.copy_(moved.view_as(latent))
    quantizer.centroid_distance().backward()
    assert torch.allclose(codebook.centroids.grad * count, gradients * count, atol=1e-6)


class WithEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.encoder = nn.ModuleDict({"proj": nn.Linear(16, 16), "gate": nn.Linear(16, 2)})
        self.attn = nn.MultiheadAttention(16, 2)  # out_proj subclasses nn.Linear
        self.norm = nn.LayerNorm(16)


def test_selection_by_type_regex_and_size():
    model = WithEmbedding()
    names = [n for n, _ in select_modules(model, QuantizationConfig())]
    assert names == ["encoder.proj", "encoder.gate", "attn.out_proj"]
    with_embedding = QuantizationConfig(module_types=["Linear", "Embedding"])
    assert [n for n, _ in select_modules(model, with_embedding)][0] == "embed"
    only_encoder = QuantizationConfig(include=[r"^encoder\."], exclude=["gate$"])
    assert [n for n, _ in select_modules(model, only_encoder)] == ["encoder.proj"]
    assert [n for n, _ in select_modules(model, QuantizationConfig(min_numel=200))] == [
        "encoder.proj",
        "attn.out_proj",
    ]
    quantizer = CodebookQuantizer(QuantizationConfig(exclude=["attn"]))
    quantizer.prepare(model)
    with pytest.raises(ValueError, match="already parametrized"):
        CodebookQuantizer().prepare(model)
    with pytest.raises(ValueError, match="no module matches"):
        CodebookQuantizer(QuantizationConfig(include=["nothing"])).prepare(WithEmbedding())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bits", 0),
        ("bits", 17),
        ("bits", "4"),
        ("bits", True),
        ("init", "uniform"),
        ("kmeans_iters", -1),
        ("seed", 1.5),
        ("granularity", "per_row"),
        ("group_size", 0),
        ("module_types", "Linear"),
        ("module_types", []),
        ("include", ["("]),
        ("exclude", [3]),
        ("min_numel", -1),
        ("recluster", "yes"),
        ("clip_percentile", 50),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        QuantizationConfig(**{field: value})


def test_group_size_that_does_not_divide_the_rows_gives_the_nearest_equal_split():
    """group_size 12 on fc1's 32 rows: 32 / 12 = 2.67 -> 2 groups of 16 (the nearest divisor);
    a 56-intent head with group_size 16 -> 56 / 16 = 3.5 -> 4 groups of 14 (ties: more)."""
    quantizer = quantize_(make_model(), QuantizationConfig(granularity="per_group",
                                                           group_size=12, bits=2))
    assert quantizer.modules["fc1"][1].groups == 2
    head = nn.Sequential(nn.Linear(8, 56))
    grouped = quantize_(head, QuantizationConfig(granularity="per_group", group_size=16, bits=2))
    assert grouped.modules["0"][1].groups == 4 and grouped.modules["0"][1].centroids.shape == (
        4, 4)


def test_checkpoint_round_trip_mid_training(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    config = QuantizationConfig(bits=3, recluster=False)
    data = [batch(seed) for seed in range(6)]

    def train(model, optimizer, steps):
        for inputs, targets in steps:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(inputs), targets).backward()
            optimizer.step()

    model = make_model()
    quantizer = quantize_(model, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, optimizer, data[:3])
    recoverables = {"model": model, "optimizer": optimizer}
    Checkpointer(tmp_path, recoverables=recoverables).save_checkpoint()
    saved_centroids = quantizer.modules["fc1"][1].centroids.detach().clone()
    quantizer.cluster()  # recluster false: a no-op, as after the restore below
    train(model, optimizer, data[3:])

    fresh = make_model(seed=123)
    fresh_quantizer = CodebookQuantizer(config)
    fresh_quantizer.prepare(fresh)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    restored = Checkpointer(tmp_path, recoverables={"model": fresh, "optimizer": fresh_optimizer})
    assert restored.recover_if_possible() is not None
    assert fresh_quantizer.mode == "train"
    fresh_quantizer.cluster()
    train(fresh, fresh_optimizer, data[3:])

    expected, actual = model.state_dict(), fresh.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert torch.equal(model(data[0][0]), fresh(data[0][0]))
    assert not torch.equal(quantizer.modules["fc1"][1].centroids, saved_centroids)


def test_config_from_hyperpyyaml():
    from hyperpyyaml import load_hyperpyyaml

    text = """
quantization: !new:speechbrain_quads.codebook.quantization.QuantizationConfig
    bits: 2
    init: range
    module_types: [Linear]
    exclude: ['^fc2$']
    recluster: false
"""
    config = load_hyperpyyaml(text)["quantization"]
    assert (config.bits, config.init, config.recluster) == (2, "range", "never")
    assert config.module_types == ("Linear",) and config.exclude == ("^fc2$",)
    assert CodebookQuantizer(config).prepare(make_model()) == ["fc1"]
    with pytest.raises(ValueError, match="bits"):
        load_hyperpyyaml(text.replace("bits: 2", "bits: 17"))


def test_kmeans_reseeds_empty_clusters_and_recovers_spikes():
    """Values on 16 spikes (a committed codebook) are recovered exactly, every centroid used."""
    from speechbrain_quads.codebook.kmeans import kmeans_1d

    generator = torch.Generator().manual_seed(0)
    spikes = torch.cat([torch.linspace(-0.5, -0.1, 4), torch.linspace(-0.03, 0.03, 10),
                        torch.tensor([0.2, 0.6])])
    weights = torch.tensor([0.02, 0.03, 0.05, 0.08] + [0.08] * 10 + [0.005, 0.001])
    values = spikes[torch.multinomial(weights, 20000, replacement=True, generator=generator)]
    centroids, indices = kmeans_1d(values.unsqueeze(0), 16, init="linear")
    assert indices.unique().numel() == 16
    assert torch.allclose(centroids[0], spikes, atol=1e-6)


def test_recluster_after_commit_keeps_the_quantized_model():
    """MCT re-clusters committed weights: the warm start keeps their codebook (no collapse)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 8))
    quantizer = quantize_(model, QuantizationConfig(bits=4))
    inputs = torch.randn(32, 64)
    with torch.no_grad():
        before = model(inputs)
    quantizer.commit()
    quantizer.set_mode("off")
    with torch.no_grad():  # a little distillation drift
        for module, _ in quantizer.modules.values():
            latent = module.parametrizations["weight"].original
            latent.add_(1e-4 * torch.randn_like(latent))
    quantizer.cluster()
    quantizer.set_mode("train")
    with torch.no_grad():
        after = model(inputs)
    assert (after - before).abs().max() < 1e-2 * before.abs().max()
    cold = QuantizationConfig(bits=4, warm_start=False)
    assert cold.warm_start is False
    with pytest.raises(ValueError, match="warm_start"):
        QuantizationConfig(warm_start="yes")


def test_kmeans_keeps_unused_centroids_when_k_exceeds_the_distinct_values():
    """A row of d <= k distinct values: its values, then k - d copies of the largest, unused."""
    values = torch.tensor([[3.0, 1.0, 1.0, 2.0, 3.0], [0.5, -0.5, 0.25, 0.5, 0.125]])
    centroids, indices = kmeans_1d(values, 8)
    assert centroids.tolist() == [[1.0, 2.0, 3.0] + [3.0] * 5, [-0.5, 0.125, 0.25, 0.5] + [0.5] * 4]
    assert indices.tolist() == [[2, 0, 0, 1, 2], [3, 0, 2, 3, 1]]
    assert torch.equal(centroids.gather(1, indices), values)


def test_kmeans_with_65536_centroids_beats_the_uniform_grid():
    """k = 2**16 on 300k float32 values (more distinct values than centroids): Lloyd from the
    linear grid lowers its error 6x; the vectorised reseeding fills 29139 empty clusters."""
    values = torch.randn(1, 300_000, generator=torch.Generator().manual_seed(0))
    k = 2**16
    grid = init_centroids(values.sort(dim=1).values, k, "linear", torch.Generator())
    on_grid = assign(values, grid)
    grid_error = (values - grid.float().gather(1, on_grid)).square().mean()
    assert k - on_grid.unique().numel() == 29139  # the grid's tails are empty
    centroids, indices = kmeans_1d(values, k)
    error = (values - centroids.gather(1, indices)).square().mean()
    assert torch.all(centroids[0, 1:] >= centroids[0, :-1])
    assert 0 <= int(indices.min()) and int(indices.max()) < k
    assert indices.unique().numel() == k  # every empty centroid was reseeded
    assert error < 0.17 * grid_error  # 0.163 measured


def test_squared_gradients_and_sensitivity_weighted_clustering():
    """``squared_gradients`` sums (dL/dW)**2 over batches (checked against a plain model), leaves
    mode and requires_grad as they were; clustering weighted by it has a lower sensitivity-
    weighted error than plain clustering."""
    from speechbrain_quads.codebook.sensitivity import squared_gradients

    model = make_model()
    quantizer = quantize_(model, QuantizationConfig(bits=2))
    quantizer.set_mode("frozen")
    latent = model.fc1.parametrizations["weight"].original
    latent.requires_grad_(False)
    batches = [batch(seed) for seed in (1, 2, 3)]
    totals = squared_gradients(quantizer, lambda data: loss_of(model, data), batches)
    assert quantizer.mode == "frozen" and not latent.requires_grad and latent.grad is None
    plain = make_model()
    expected = torch.zeros_like(plain.fc1.weight)
    for data in batches:
        plain.zero_grad()
        loss_of(plain, data).backward()
        expected += plain.fc1.weight.grad.square()
    torch.testing.assert_close(totals["fc1"], expected, rtol=1e-5, atol=1e-12)

    def weighted_error(quantizer_: CodebookQuantizer) -> float:
        codebook = quantizer_.modules["fc1"][1]
        return float((totals["fc1"] * (latent - codebook.quantized()).square()).sum().detach())

    plain_error = weighted_error(quantizer)
    quantizer.cluster(sensitivity=totals)
    assert weighted_error(quantizer) < 0.95 * plain_error  # 0.928 measured
    with pytest.raises(ValueError, match="sensitivity: no quantized module named"):
        quantizer.cluster(sensitivity={"nothing": totals["fc1"]})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_target_size_counts_the_file_s_float32_codebooks(tmp_path, dtype):
    """The packed file stores float32 codebooks whatever the weights' dtype: a bf16 model's
    widths fit the target too (counting 2-byte entries, they overshot it by 16 %), and a
    clustered quantizer is given the same widths as before clustering."""
    from speechbrain_quads.codebook.allocation import allocation_for_target
    from speechbrain_quads.codebook.packing import export_packed

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.Linear(256, 256), nn.Linear(256, 64)).to(dtype)
    quantizer = CodebookQuantizer(QuantizationConfig(bits=4, init="linear",
                                                     granularity="per_group", group_size=16))
    quantizer.prepare(model)
    generator = torch.Generator().manual_seed(1)
    sensitivity = {name: torch.rand(module.parametrizations["weight"].original.shape,
                                    generator=generator)
                   for name, (module, _) in quantizer.modules.items()}
    target_mb = 0.065
    widths = allocation_for_target(quantizer, sensitivity, target_mb, candidate_bits=(2, 4, 8))
    assert len(set(widths.values())) > 1
    quantizer.set_bits(widths)
    quantizer.cluster()
    assert allocation_for_target(quantizer, sensitivity, target_mb, (2, 4, 8)) == widths
    assert export_packed(model, tmp_path / "m.safetensors").packed_bytes <= target_mb * 2**20


def test_mixed_widths_export_and_reload_exactly(tmp_path):
    """``module_bits`` gives modules their own widths; the packed file holds them and reloads
    bit-exactly; the file size is the fixed part plus each tensor's b-bit indices and codebook."""
    from speechbrain_quads.codebook.allocation import fixed_bytes, tensor_bytes
    from speechbrain_quads.codebook.packing import export_packed, load_packed_into

    model = make_model()
    quantizer = CodebookQuantizer(QuantizationConfig(bits=4, module_bits={"fc1": 2, "conv": 6}))
    quantizer.prepare(model)
    fixed = fixed_bytes(quantizer)
    quantizer.cluster()
    widths = {name: codebook.bits for name, (_, codebook) in quantizer.modules.items()}
    assert widths == {"conv": 6, "fc1": 2, "fc2": 4}
    assert all(codebook.quantized().unique().numel() <= 2**codebook.bits
               for _, codebook in quantizer.modules.values())
    report = export_packed(model, tmp_path / "mixed.safetensors")
    expected = fixed + sum(tensor_bytes(c.indices.numel(), c.groups, c.bits)
                           for _, c in quantizer.modules.values())
    assert abs(report.packed_bytes - expected) <= 16  # header digits only
    loaded = load_packed_into(make_model(seed=5), tmp_path / "mixed.safetensors")
    inputs = batch()[0]
    assert torch.equal(loaded(inputs), model(inputs))
    with pytest.raises(ValueError, match="set_bits: no quantized module named"):
        CodebookQuantizer(QuantizationConfig(module_bits={"nothing": 2})).prepare(make_model())
    with pytest.raises(RuntimeError, match="already clustered"):
        quantizer.set_bits({"fc1": 3})


def test_allocation_fits_the_budget_and_is_the_best_choice():
    """The knapsack's widths minimise the summed error within the budget (checked against every
    combination) and refuse a budget below the narrowest widths."""
    import itertools

    from speechbrain_quads.codebook.allocation import allocate_bits

    errors = {"a": {2: 9.0, 4: 3.0, 8: 0.5}, "b": {2: 4.0, 4: 1.0, 8: 0.1},
              "c": {2: 20.0, 4: 2.0, 8: 1.9}}
    sizes = {name: {2: 10_008, 4: 20_008, 8: 40_008} for name in errors}
    for budget in (30_024, 50_024, 70_024, 100_000, 120_024):  # 30_024: exactly the 2-bit sum
        chosen = allocate_bits(errors, sizes, budget)
        feasible = [dict(zip(errors, combo, strict=True))
                    for combo in itertools.product((2, 4, 8), repeat=3)
                    if sum(sizes[n][b] for n, b in zip(errors, combo, strict=True)) <= budget]
        best = min(sum(errors[n][b] for n, b in c.items()) for c in feasible)
        assert sum(errors[n][b] for n, b in chosen.items()) == best
        assert sum(sizes[n][b] for n, b in chosen.items()) <= budget
    with pytest.raises(ValueError, match="the narrowest widths take"):
        allocate_bits(errors, sizes, 30_023)


def test_allocation_for_a_target_size_fits_it(tmp_path):
    """``allocation_for_target``: sensitivity-weighted widths whose packed file is at most the
    target and within one width step of its largest tensor of it."""
    from speechbrain_quads.codebook.allocation import allocation_for_target
    from speechbrain_quads.codebook.packing import export_packed
    from speechbrain_quads.codebook.sensitivity import squared_gradients

    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.fc2, self.fc3 = nn.Linear(64, 512), nn.Linear(512, 512), nn.Linear(512, 8)

        def forward(self, x):
            return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))

    model = Wide()
    quantizer = CodebookQuantizer(QuantizationConfig(bits=8))
    quantizer.prepare(model)
    data = [torch.randn(4, 64, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    sensitivity = squared_gradients(quantizer, lambda x: model(x).square().mean(), data)
    target_mb = 0.2
    widths = allocation_for_target(quantizer, sensitivity, target_mb)
    assert len(set(widths.values())) > 1  # mixed
    floor = (3, 4, 5, 6, 8)  # target_widths without 2 bits
    assert min(allocation_for_target(quantizer, sensitivity, 0.11).values()) == 2
    with pytest.raises(ValueError, match="the narrowest widths take 0.107 MiB"):
        allocation_for_target(quantizer, sensitivity, 0.11, candidate_bits=floor)
    assert min(allocation_for_target(quantizer, sensitivity, 0.118, floor).values()) == 3
    quantizer.set_bits(widths)
    quantizer.cluster(sensitivity=sensitivity)
    size = export_packed(model, tmp_path / "m.safetensors").packed_bytes
    assert size <= target_mb * 2**20
    assert size > target_mb * 2**20 - 2**16  # uses the budget (512 x 512 at +1 bit: 32 KiB)


def test_allocation_errors_leave_out_the_weights_kept_exactly():
    """With ``outlier_fraction``, the allocator's error of a width is the error the fitted
    codebook really makes: the outliers (chosen by ``sensitivity * w**2``, as the fit chooses
    them) cost nothing and are left out of the k-means."""
    from speechbrain_quads.codebook.allocation import quantization_errors
    from speechbrain_quads.codebook.sensitivity import squared_gradients

    model = make_model()
    inputs, targets = batch()
    config = QuantizationConfig(bits=3, outlier_fraction=0.02, kmeans_iters=20)
    quantizer = CodebookQuantizer(config)
    quantizer.prepare(model)
    sensitivity = squared_gradients(
        quantizer, lambda b: nn.functional.cross_entropy(model(b[0]), b[1]), [(inputs, targets)])
    plain = CodebookQuantizer(QuantizationConfig(bits=3, kmeans_iters=20))
    plain.prepare(make_model())
    errors = quantization_errors(quantizer, sensitivity, (2, 3))
    without = quantization_errors(plain, sensitivity, (2, 3))
    assert all(errors[n][b] < without[n][b] for n in errors for b in (2, 3))
    quantizer.cluster(sensitivity=sensitivity)
    for name, (module, codebook) in quantizer.modules.items():
        assert codebook.outliers == round(0.02 * module.weight.numel())
        latent = module.parametrizations["weight"].original.detach()
        error = (latent - module.weight.detach()).double().square()
        made = float((sensitivity[name].double() * error).sum())
        assert made == pytest.approx(errors[name][3], rel=1e-6)
