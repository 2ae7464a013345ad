"""tnet_traversal: shapes, gradient routing, determinism, FLOPs (hand formula and counter), export, learning."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from search_space.strategies import get_strategy
from search_space.strategies.tnet_traversal import TNetTraversal
from tests.search_space.blob_images import blobs

NUM_CLASSES = 4


def build(in_channels: int = 3, image_size: int = 28, **overrides) -> TNetTraversal:
    info = get_strategy("tnet_traversal")
    config = {**info.defaults, **overrides}
    return info.create(config, in_channels=in_channels, num_classes=NUM_CLASSES, image_size=image_size)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 64), (3, 64), (2, 28)])
def test_forward_backward(channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build(channels, size).train()
    x, y = torch.randn(4, channels, size, size), torch.arange(4) % NUM_CLASSES
    logits = model(x)
    assert logits.shape == (4, NUM_CLASSES)
    loss = F.cross_entropy(logits, y) + model.auxiliary_loss(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("overrides", [{"levels": 3}, {"pooling": "attention"}, {"gumbel_explore": True}])
def test_variants_run(overrides: dict) -> None:
    torch.manual_seed(0)
    model = build(3, 64, **overrides).train()
    x, y = torch.randn(3, 3, 64, 64), torch.arange(3)
    logits = model(x)
    (F.cross_entropy(logits, y) + model.auxiliary_loss(logits, y)).backward()
    assert logits.shape == (3, NUM_CLASSES) and torch.isfinite(logits).all()


def test_reinforce_alone_trains_the_location_module_and_nothing_else() -> None:
    torch.manual_seed(0)
    model = build(3, 28, glimpse_loss_weight=0.0).train()
    x, y = torch.randn(8, 3, 28, 28), torch.arange(8) % NUM_CLASSES
    model.auxiliary_loss(model(x), y).backward()
    location = {n: p for n, p in model.named_parameters() if n.startswith("locate.")}
    assert location and all(p.grad is not None and p.grad.abs().sum() > 0 for p in location.values())
    others = [p for n, p in model.named_parameters() if not n.startswith("locate.")]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in others)  # location inputs are detached


def test_cross_entropy_does_not_reach_the_location_module() -> None:
    torch.manual_seed(0)
    model = build(3, 28).train()
    x, y = torch.randn(4, 3, 28, 28), torch.arange(4)
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in model.named_parameters() if "locate" in n)


def test_baseline_is_a_moving_average_of_the_reward() -> None:
    torch.manual_seed(0)
    model = build(3, 28).train()
    assert model.reward_baseline.item() == pytest.approx(1 / NUM_CLASSES)
    x = torch.randn(4, 3, 28, 28)
    logits = model(x)
    model.auxiliary_loss(logits, logits.argmax(dim=1))  # every prediction correct: reward 1
    assert model.reward_baseline.item() == pytest.approx(0.9 / NUM_CLASSES + 0.1)
    assert "reward_baseline" in model.state_dict()
    assert model.auxiliary_loss(logits, logits.argmax(dim=1)).item() == 0.0  # cache is consumed once


def test_gumbel_exploration_samples_in_training_only() -> None:
    torch.manual_seed(0)
    model = build(3, 64, gumbel_explore=True, regions=2, grid_size=4)
    x = torch.randn(6, 3, 64, 64)
    model.train()
    picks = {tuple(model._traverse(x)[1][1].flatten().tolist()) for _ in range(5)}
    assert len(picks) > 1
    model.eval()
    with torch.no_grad():
        assert torch.equal(model._traverse(x)[1][1], model._traverse(x)[1][1])


@pytest.mark.parametrize("size", [16, 128])
def test_smallest_and_largest_images(size: int) -> None:
    torch.manual_seed(0)
    model = build(2, size).eval()
    x = torch.rand(2, 2, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, NUM_CLASSES)
    used = model.used_map(x)
    assert used.shape == (2, size, size) and used.min() >= 0 and used.max() <= 1
    assert model.analytic_flops(x) > 0


def test_eval_is_deterministic_and_batch_independent() -> None:
    torch.manual_seed(0)
    model = build(3, 64, levels=3, pooling="attention").eval()
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[2:3])
    assert torch.equal(a, b)
    torch.testing.assert_close(single, a[2:3], rtol=1e-4, atol=1e-5)


def test_used_map_is_resolution_density() -> None:
    torch.manual_seed(0)
    model = build(3, 64).eval()  # base 16, overlap 0.5: whole image at (16/64)^2, crops of 32 px at (16/32)^2
    used = model.used_map(torch.randn(3, 3, 64, 64))
    assert used.shape == (3, 64, 64)
    assert used.min() >= 0 and used.max() <= 1
    assert torch.allclose(used.amin(dim=(1, 2)), torch.tensor(1 / 16))
    assert torch.allclose(used.amax(dim=(1, 2)), torch.tensor(1 / 4))
    model.train()
    assert model.used_map(torch.randn(3, 3, 64, 64)).shape == used.shape and model.training
    crop_pixels = (used == 0.25).sum(dim=(1, 2))
    assert ((crop_pixels >= 32 * 32) & (crop_pixels <= 2 * 32 * 32)).all()  # two 32x32 crops, maybe overlapping


def test_set_k_bounds() -> None:
    assert build(width=6)(torch.randn(1, 3, 28, 28)).shape == (1, NUM_CLASSES)  # any width
    model = build(grid_size=3)
    assert model.k_bounds() == (1, 9) and model.k == 2
    model.set_k(5)
    assert model.k == 5 and model.n_views() == 6
    with pytest.raises(ValueError):
        model.set_k(10)
    with pytest.raises(ValueError, match="regions"):
        build(grid_size=2, regions=5)
    with pytest.raises(ValueError, match="levels"):
        build(levels=1)


def hand_flops(*, channels: int, base: int, width: int, dim: int, grid: int, regions: int, levels: int) -> float:
    """TNet FLOPs written out: three 3x3 convs + a linear per view, a 2-layer 1x1 location module per
    scored view, a 24 -> D positional linear per view, and the head (mean pooling)."""
    s1, s2, s3 = base, (base + 1) // 2, ((base + 1) // 2 + 1) // 2
    conv = 2 * 9 * (s1 * s1 * channels * width + s2 * s2 * width * 2 * width + s3 * s3 * 2 * width * 4 * width)
    per_view = conv + 2 * 4 * width * dim + 2 * 24 * dim
    location = 2 * grid * grid * ((4 * width + dim + 2) * dim + dim)
    views, scored = 1 + regions * (levels - 1), 1 + regions * (levels - 2)
    return views * per_view + scored * location + 2 * dim * NUM_CLASSES


@pytest.mark.parametrize("levels", [2, 3])
def test_flops_match_hand_formula_and_counter(levels: int) -> None:
    torch.manual_seed(0)
    model = build(3, 64, levels=levels).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = hand_flops(channels=3, base=16, width=8, dim=32, grid=3, regions=2, levels=levels)
    assert model.analytic_flops(x) == pytest.approx(expected, rel=0.01)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert counter.get_total_flops() / x.shape[0] == pytest.approx(model.analytic_flops(x), rel=0.01)


def test_flops_linear_in_regions() -> None:
    model = build(3, 64, grid_size=4, levels=3).eval()
    x = torch.randn(2, 3, 64, 64)
    flops = []
    for k in range(1, 6):
        model.set_k(k)
        flops.append(model.analytic_flops(x))
    steps = [flops[i + 1] - flops[i] for i in range(len(flops) - 1)]
    assert all(s > 0 for s in steps)
    assert max(steps) - min(steps) <= 1e-9 * flops[-1]  # second differences are zero
    model.set_k(4)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert counter.get_total_flops() / 2 == pytest.approx(model.analytic_flops(x), rel=0.01)


def test_flops_do_not_depend_on_image_size() -> None:
    torch.manual_seed(0)
    model = build(3, 64).eval()
    counted = []
    for size in (28, 64, 128):
        x = torch.randn(2, 3, size, size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        counted.append((counter.get_total_flops() / 2, model.analytic_flops(x)))
    assert len(set(counted)) == 1


def test_export_matches_eval_model() -> None:
    torch.manual_seed(0)
    model = build(3, 64, levels=3, pooling="attention").eval()
    x = torch.randn(2, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_overfits_64_blob_images() -> None:
    torch.manual_seed(0)
    x, y = blobs(classes=NUM_CLASSES)
    model = build(3, 28)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start, accuracy = time.perf_counter(), 0.0
    for step in range(150):
        model.train()
        logits = model(x)
        loss = F.cross_entropy(logits, y) + model.auxiliary_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
            if accuracy >= 0.95:
                break
    assert accuracy >= 0.95, f"train accuracy {accuracy:.2f} after {step + 1} steps"
    assert time.perf_counter() - start < 30
