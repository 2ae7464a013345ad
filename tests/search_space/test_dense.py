"""The dense baselines (dense_cnn, dense_vit): shapes, determinism, FLOPs, export, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from objectives.flops import counted_flops as objective_counted_flops
from search_space.build import build_model, default_config
from tests.search_space.blob_images import blobs
from tests.search_space.checks import assert_exports_exactly

DENSE = ["dense_cnn", "dense_vit"]
# Tiny presets so the suite stays fast.
TINY = {
    "dense_cnn": {"width": 4, "stages": 2, "blocks_per_stage": 1, "stem_stride": 1},
    "dense_vit": {"patch_size": 4, "embed_dim": 16, "num_heads": 2, "depth": 1, "mlp_ratio": 2.0},
}


def fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, steps: int, lr: float) -> float:
    """Full-batch Adam on CE + auxiliary loss; returns eval-mode accuracy on the same images."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        logits = model(images)
        loss = F.cross_entropy(logits, labels) + model.auxiliary_loss(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return (model(images).argmax(dim=1) == labels).float().mean().item()


def counted_flops(model: torch.nn.Module, images: torch.Tensor) -> float:
    """The counter's FLOPs for one eval forward of a single image (FlopCounterMode with the CPU
    attention kernel it misses filled in: ``objectives.flops``)."""
    return objective_counted_flops(model, images[:1])


def tiny(name: str, **changes) -> dict:
    return {**default_config(name), **TINY[name], **changes}


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 64), (3, 64), (2, 32), (3, 16), (1, 30)])
def test_forward_backward_shapes(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(tiny(name), channels, 5, size)
    images = torch.randn(3, channels, size, size)
    logits = model(images)
    assert logits.shape == (3, 5)
    (F.cross_entropy(logits, torch.tensor([0, 1, 4])) + model.auxiliary_loss(logits, None)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_vit_runs_at_other_sizes_than_built() -> None:
    """Padding plus resized position embedding: a ViT built at 28 px also takes 30 and 64 px."""
    for pos in ("learned", "sincos"):
        model = build_model(tiny("dense_vit", pos_embedding=pos, patch_size=8), 1, 3, 28).eval()
        for size in (30, 64):
            with torch.no_grad():
                assert model(torch.randn(2, 1, size, size)).shape == (2, 3)


@pytest.mark.parametrize("name", DENSE)
def test_eval_deterministic_and_used_map(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny(name), 3, 4, 28)
    images = torch.randn(4, 3, 28, 28)
    model.train()
    model(images)  # moves BN statistics, must not matter to the check below
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), model(images))
    used = model.used_map(images)
    assert used.shape == (4, 28, 28)
    assert torch.equal(used, torch.ones_like(used))


@pytest.mark.parametrize("name", DENSE)
def test_no_k(name: str) -> None:
    model = build_model(tiny(name), 1, 2, 16)
    assert model.k_bounds() is None and model.k is None
    with pytest.raises(TypeError):
        model.set_k(10)


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        ("dense_cnn", {}),
        ("dense_cnn", {"stem_stride": 2, "stages": 3, "blocks_per_stage": 2}),
        ("dense_vit", {}),
        ("dense_vit", {"patch_size": 3, "pos_embedding": "sincos", "depth": 2, "mlp_ratio": 3.0}),
    ],
)
@pytest.mark.parametrize(("channels", "size"), [(3, 28), (1, 64), (2, 17)])
def test_analytic_flops_match_counter(name: str, changes: dict, channels: int, size: int) -> None:
    model = build_model(tiny(name, **changes), channels, 7, size)
    images = torch.randn(2, channels, size, size)
    counted = counted_flops(model, images)
    assert counted > 0
    assert model.analytic_flops(images) == pytest.approx(counted, rel=0.01)


def test_cnn_flops_hand_formula() -> None:
    """width 4, 2 stages of 1 block, 1 channel, 16 px, 3 classes, written out conv by conv."""
    model = build_model(tiny("dense_cnn"), 1, 3, 16)
    stem = 2 * 16 * 16 * 4 * 1 * 9
    stage0 = 2 * (2 * 16 * 16 * 4 * 4 * 9)
    stage1 = 2 * 8 * 8 * 8 * 4 * 9 + 2 * 8 * 8 * 8 * 8 * 9 + 2 * 8 * 8 * 8 * 4  # conv1 (stride 2), conv2, 1x1 shortcut
    head = 2 * 8 * 3
    assert stem + stage0 + stage1 + head == 280624
    assert model.analytic_flops(torch.zeros(1, 1, 16, 16)) == 280624
    assert counted_flops(model, torch.zeros(1, 1, 16, 16)) == 280624


def test_vit_flops_hand_formula() -> None:
    """patch 4 -> 16 patches + CLS = 17 tokens, D 16, 1 block, MLP ratio 2, 1 channel, 16 px, 3 classes."""
    model = build_model(tiny("dense_vit"), 1, 3, 16)
    n, d = 17, 16
    patch = 2 * 16 * d * 1 * 4 * 4
    attention = 2 * n * d * 3 * d + 2 * n * d * d + 2 * (2 * n * n * d)  # qkv, proj, QK^T and AV
    mlp = 2 * (2 * n * d * 2 * d)
    head = 2 * d * 3
    assert patch + attention + mlp + head == 96416
    assert model.analytic_flops(torch.zeros(1, 1, 16, 16)) == 96416
    assert counted_flops(model, torch.zeros(1, 1, 16, 16)) == 96416


def test_cnn_space_expresses_the_strong_baseline() -> None:
    """Stem + three 16-32-64 stages of one block: the ~96%-on-BloodMNIST CNN, ~15-20 MFLOPs at 28 px."""
    config = {**default_config("dense_cnn"), "width": 16, "stages": 3, "blocks_per_stage": 1, "stem_stride": 1}
    model = build_model(config, 3, 8, 28)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [c.out_channels for c in convs] == [16, 16, 16, 32, 32, 64, 64]
    assert 10e6 < model.analytic_flops(torch.zeros(1, 3, 28, 28)) < 25e6


@pytest.mark.parametrize("name", DENSE)
def test_torch_export(name: str) -> None:
    torch.manual_seed(0)
    assert_exports_exactly(build_model(default_config(name), 3, 4, 28).eval(), torch.randn(2, 3, 28, 28))


@pytest.mark.parametrize(
    ("name", "changes", "lr"),
    [("dense_cnn", {"width": 8}, 1e-2), ("dense_vit", {"embed_dim": 32, "num_heads": 2}, 3e-3)],
)
def test_overfits_learnable_images(name: str, changes: dict, lr: float) -> None:
    """64 blob images, 40 full-batch steps (~1-2 s of one core); reliable over seeds 0-4."""
    images, labels = blobs(channels=3, size=28, layout="corner")
    torch.manual_seed(0)
    model = build_model({**default_config(name), **changes}, 3, 4, 28)
    assert fit(model, images, labels, steps=40, lr=lr) >= 0.95
