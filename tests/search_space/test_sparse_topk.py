"""sparse_topk (SparseAttnNet): selection, auxiliary losses, k, per-image rules, FLOPs, export, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from objectives import counted_flops  # the counter with the resampling formulas (coarse_stride > 1 upsamples)
from search_space.build import build_model, default_config
from search_space.k_rules import per_image_k
from tests.search_space.blob_images import blobs
from tests.search_space.checks import assert_exports_exactly
from tests.search_space.test_dense import fit

TINY = {"coarse_channels": 4, "coarse_layers": 1, "embed_dim": 16, "num_heads": 2, "depth": 1, "mlp_ratio": 2.0}


def tiny(**changes) -> dict:
    return {**default_config("sparse_topk"), **TINY, **changes}


def selector_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(model.selector.parameters())


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 64), (3, 64), (2, 32), (3, 16), (1, 30)])
def test_forward_backward_shapes(channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(tiny(), channels, 5, size)
    images = torch.randn(3, channels, size, size)
    logits = model(images)
    assert logits.shape == (3, 5)
    loss = F.cross_entropy(logits, torch.tensor([0, 1, 4])) + model.auxiliary_loss(logits, None)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad.abs().sum() > 0 for p in selector_params(model))


@pytest.mark.parametrize("distill_loss", ["kl", "bce"])
@pytest.mark.parametrize("negatives", [0, 16])
def test_auxiliary_loss_alone_trains_the_selector(distill_loss: str, negatives: int) -> None:
    """Distillation (and negatives) must reach the coarse CNN even without straight-through gating."""
    torch.manual_seed(0)
    model = build_model(tiny(distill_loss=distill_loss, negatives=negatives, st_gating=False), 3, 4, 28)
    logits = model(torch.randn(4, 3, 28, 28))
    aux = model.auxiliary_loss(logits, torch.zeros(4, dtype=torch.long))
    assert aux.item() > 0
    aux.backward()
    for p in selector_params(model):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.blocks.parameters())  # the target is stop-gradient


def test_classification_reaches_selector_only_with_st_gating() -> None:
    images = torch.randn(4, 3, 28, 28)
    for gating in (True, False):
        torch.manual_seed(0)
        model = build_model(tiny(st_gating=gating, explore_fraction=0.0), 3, 4, 28)
        F.cross_entropy(model(images), torch.arange(4)).backward()
        grads = [p.grad for p in selector_params(model)]
        assert all(g is not None and g.abs().sum() > 0 for g in grads) == gating


def test_auxiliary_loss_is_zero_after_eval_forward() -> None:
    model = build_model(tiny(), 1, 2, 16).eval()
    logits = model(torch.randn(2, 1, 16, 16))
    assert model.auxiliary_loss(logits, torch.zeros(2, dtype=torch.long)).item() == 0.0


def test_eval_is_deterministic_training_explores() -> None:
    torch.manual_seed(0)
    model = build_model(tiny(explore_fraction=0.5), 3, 4, 28)
    images = torch.randn(4, 3, 28, 28)
    model.eval()
    with torch.no_grad():
        first = model(images)
        assert torch.equal(first, model(images))
        assert torch.equal(model.used_map(images), model.used_map(images))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(images), model(images))  # random exploration slots
    model.eval()
    with torch.no_grad():
        assert torch.equal(first, model(images))


@pytest.mark.parametrize("k_fraction", [0.05, 0.2])
def test_used_map_marks_the_k_selected_pixels(k_fraction: float) -> None:
    torch.manual_seed(0)
    model = build_model(tiny(k_fraction=k_fraction), 3, 4, 28)
    images = torch.randn(5, 3, 28, 28)
    used = model.used_map(images)
    assert used.shape == (5, 28, 28)
    assert ((used == 0) | (used == 1)).all()
    assert model.k == round(k_fraction * 28 * 28)
    assert used.mean().item() == pytest.approx(model.k / (28 * 28))
    # the used pixels are exactly the top-k of the coarse map
    scores, _ = model.selector(images)
    top = scores.topk(int(model.k), dim=1).indices
    assert torch.equal(used.flatten(1).gather(1, top), torch.ones_like(top, dtype=used.dtype))
    assert model.training  # used_map leaves the mode as it found it


def test_foreground_prior_ranks_the_stain_first_before_any_training() -> None:
    """score_prior: foreground puts an untrained model's k pixels on the one stained patch of a pale
    frame (without it, the untrained coarse map's random filters put about half of them there)."""
    torch.manual_seed(0)
    images = 0.05 * torch.randn(4, 3, 48, 48)
    mask = torch.zeros(4, 48, 48)
    for i, (top, left) in enumerate([(4, 6), (30, 30), (10, 35), (36, 2)]):
        images[i, :, top : top + 8, left : left + 8] -= torch.tensor([0.8, 1.2, 0.5])[:, None, None]
        mask[i, top : top + 8, left : left + 8] = 1
    k = 32 / 48**2  # half the patch's 64 pixels
    with_prior = build_model(tiny(k_fraction=k, score_prior="foreground", k_rule="fixed"), 3, 5, 48)
    without = build_model(tiny(k_fraction=k, k_rule="fixed"), 3, 5, 48)
    on_patch = [float((m.used_map(images) * mask).sum() / m.used_map(images).sum()) for m in (with_prior, without)]
    assert on_patch[0] > 0.95 and on_patch[0] > on_patch[1] + 0.3, on_patch


def test_k_bounds_and_set_k() -> None:
    model = build_model(tiny(k_fraction=0.1), 1, 2, 32)
    low, high = model.k_bounds()
    assert (low, high) == (4, 1024)  # MIN_TOKENS, H*W
    assert model.k == 102
    model.set_k(low)
    images = torch.randn(2, 1, 32, 32)
    assert model.used_map(images).sum().item() == 2 * low
    model.set_k(high)
    assert model.used_map(images).sum().item() == 2 * high
    with pytest.raises(ValueError, match="k must lie"):
        model.set_k(high + 1)
    with pytest.raises(ValueError, match="k must lie"):
        model.set_k(low - 1)
    small = build_model(tiny(k_fraction=0.001), 1, 2, 16)
    assert small.k == 4  # k_fraction below the floor is raised to the lowest k


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"pixel_embedding": "fourier", "coarse_stride": 1, "coarse_layers": 3, "depth": 2, "mlp_ratio": 3.0},
        {"coarse_stride": 4, "k_fraction": 0.3, "embed_dim": 24, "num_heads": 3},
        {"token_content": "pixel"},
        {"token_content": "coarse_features", "coarse_stride": 1},
        {"token_content": "coarse_features", "pixel_embedding": "fourier", "coarse_stride": 4, "coarse_channels": 6},
        {"token_content": "patch3", "pixel_embedding": "fourier", "depth": 3},
    ],
)
@pytest.mark.parametrize(("channels", "size"), [(3, 28), (1, 64), (2, 17)])
def test_analytic_flops_match_counter(changes: dict, channels: int, size: int) -> None:
    model = build_model(tiny(**changes), channels, 7, size)
    images = torch.randn(2, channels, size, size)
    counted = counted_flops(model, images)
    assert counted > 0
    assert model.analytic_flops(images) == pytest.approx(counted, rel=0.01)


def test_flops_hand_formula() -> None:
    """1 channel, 16 px, coarse 1 conv of 4 channels, k = 16 pixels, D 16, 1 block, ratio 2, 3 classes."""
    model = build_model(tiny(k_fraction=16 / 256, coarse_stride=1, token_content="pixel"), 1, 3, 16)
    assert model.k == 16
    n, d = 16 + 1, 16  # kept pixels + CLS
    coarse = 2 * 256 * 4 * 1 * 9 + 2 * 256 * 1 * 4  # 3x3 conv 1->4, 1x1 conv 4->1, at every pixel
    embed = 2 * 16 * (1 + 2) * d + 2 * 16 * d * d  # MLP on (x, y, value): 3 -> D -> D
    attention = 2 * n * d * 3 * d + 2 * n * d * d + 2 * (2 * n * n * d)
    mlp = 2 * (2 * n * d * 2 * d)
    head = 2 * d * 3
    total = coarse + embed + attention + mlp + head
    assert total == 118432
    images = torch.zeros(1, 1, 16, 16)
    assert model.analytic_flops(images) == total
    assert counted_flops(model, images) == total


def test_flops_hand_formula_with_context_tokens() -> None:
    """As above at coarse stride 2 (an 8x8 map, its logits upsampled bilinearly to 16 x 16: 8 FLOPs per
    output pixel) with 3x3 patches (9 values) or the 4 coarse features + value."""
    n, d = 16 + 1, 16
    coarse = 2 * 64 * 4 * 1 * 9 + 2 * 64 * 1 * 4 + 8 * 256
    blocks = 2 * n * d * 3 * d + 2 * n * d * d + 2 * (2 * n * n * d) + 2 * (2 * n * d * 2 * d)
    for content, d_in in (("patch3", 9 + 2), ("coarse_features", 1 + 4 + 2)):
        model = build_model(tiny(k_fraction=16 / 256, coarse_stride=2, token_content=content), 1, 3, 16)
        embed = 2 * 16 * d_in * d + 2 * 16 * d * d
        images = torch.zeros(1, 1, 16, 16)
        assert model.analytic_flops(images) == coarse + embed + blocks + 2 * d * 3 == counted_flops(model, images)


@pytest.mark.parametrize(("size", "pairs_below"), [(32, 0.2), (64, 0.45)])
def test_cost_breakdown_keeps_attention_a_minority_at_6_percent(size: int, pairs_below: float) -> None:
    """Worth searching at 64 px: at 6% of the pixels (D = 64) the attention pairs are under half the cost."""
    model = build_model({**default_config("sparse_topk"), "k_fraction": 0.06}, 3, 5, size)
    parts = model.flops_breakdown(torch.randn(2, 3, size, size))
    total = sum(parts.values())
    assert total == model.analytic_flops(torch.randn(2, 3, size, size))
    assert parts["attention_pairs"] / total < pairs_below
    assert parts["coarse"] / total < 0.2


def test_patch3_tokens_carry_the_zero_padded_neighbourhood() -> None:
    model = build_model(tiny(token_content="patch3"), 2, 3, 6)
    images = torch.arange(2 * 2 * 36, dtype=torch.float32).reshape(2, 2, 6, 6)
    ys, xs = torch.tensor([[0, 3], [5, 2]]), torch.tensor([[0, 4], [5, 1]])
    content = model._content(images, torch.zeros(2, 4, 3, 3), ys, xs)  # (B, K, C*9)
    assert content.shape == (2, 2, 18)
    padded = F.pad(images, (1, 1, 1, 1))
    for b in range(2):
        for j in range(2):
            y, x = int(ys[b, j]), int(xs[b, j])
            assert torch.equal(content[b, j], padded[b, :, y : y + 3, x : x + 3].flatten())
    assert content[0, 0, :4].tolist() == [0, 0, 0, 0]  # the corner pixel's outside neighbours are zero


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_coarse_feature_tokens_read_the_nearest_coarse_cell(stride: int) -> None:
    model = build_model(tiny(token_content="coarse_features", coarse_stride=stride, coarse_channels=3), 1, 3, 16)
    images = torch.randn(1, 1, 16, 16)
    _, features = model.selector(images)  # (1, 3, h, w)
    ys, xs = torch.tensor([[0, 7, 15]]), torch.tensor([[15, 8, 1]])
    content = model._content(images, features, ys, xs)  # (1, 3, 1 + 3)
    for j in range(3):
        y, x = int(ys[0, j]), int(xs[0, j])
        assert content[0, j, 0] == images[0, 0, y, x]
        fy, fx = min((y + stride // 2) // stride, features.shape[2] - 1), min((x + stride // 2) // stride, features.shape[3] - 1)
        assert torch.equal(content[0, j, 1:], features[0, :, fy, fx])


def test_distillation_target_is_the_attention_of_every_block() -> None:
    torch.manual_seed(0)
    model = build_model(tiny(depth=3, explore_fraction=0.0), 3, 4, 16)
    model(torch.randn(2, 3, 16, 16))
    per_block = [block.attn.last_attn[:, :, 0, 1:].mean(dim=1) for block in model.blocks]  # (B, K) each
    assert not torch.allclose(per_block[0], per_block[-1])
    torch.testing.assert_close(model._cache["cls_attn"], sum(per_block) / 3)


def test_top_p_counts_the_softmax_mass_of_each_image() -> None:
    """Scores normalised over the image's pixels: a peaked map keeps few pixels, a flat one hits the cap."""
    model = build_model(tiny(k_fraction=0.5, k_rule="top_p", k_top_p=0.8), 1, 2, 16).eval()
    with torch.no_grad():
        model.selector.net[-1].weight.zero_()
        model.selector.net[-1].bias.zero_()
        flat = model(torch.randn(1, 1, 16, 16))
        assert model._last_counts.tolist() == [128]  # 80% of a flat map's mass needs 205 > the cap of 128
        model.selector.net[0].weight.zero_()
        model.selector.net[0].bias.zero_()
        model.selector.net[0].weight[:, :, 1, 1] = 1.0  # the coarse CNN passes the pixel through
        model.selector.net[-1].weight.fill_(5.0)
        images = torch.zeros(1, 1, 16, 16)
        images[0, 0, 4:6, 4:6] = 1.0  # 4 bright pixels hold nearly all the softmax mass
        model(images)
        assert model._last_counts.tolist() == [model.k_bounds()[0]]  # the floor: 4 pixels would do
    assert flat.shape == (1, 2)


def test_flops_grow_quadratically_in_k_once_attention_dominates() -> None:
    """Attention pairs (4 n^2 D per block) dominate when n >> (2 + r) D: doubling k ~quadruples the blocks."""
    model = build_model(tiny(embed_dim=8, num_heads=1, depth=2), 1, 2, 64)
    images = torch.zeros(1, 1, 64, 64)
    base = model.selector.flops(64, 64) + 2 * 8 * 2  # k-independent part: coarse CNN and head
    costs = []
    for k in (512, 1024, 2048):
        model.set_k(k)
        costs.append(model.analytic_flops(images) - base)
    assert costs[1] / costs[0] == pytest.approx(4, rel=0.1)
    assert costs[2] / costs[1] == pytest.approx(4, rel=0.06)
    # while at small k and large D it is close to linear
    wide = build_model(tiny(embed_dim=128, num_heads=4), 1, 2, 64)
    wide.set_k(41)
    low = wide.analytic_flops(images) - wide.selector.flops(64, 64)
    wide.set_k(82)
    assert (wide.analytic_flops(images) - wide.selector.flops(64, 64)) / low < 2.3


@pytest.mark.parametrize("rule", ["top_p", "ratio"])
def test_per_image_rule_keeps_counts_per_image_and_is_counted_at_the_cap(rule: str) -> None:
    torch.manual_seed(0)
    config = tiny(k_fraction=0.5, k_rule=rule, k_top_p=0.5, k_target_ratio=0.2)
    model = build_model(config, 3, 4, 28)
    with torch.no_grad():  # spread the coarse scores so the rules keep different counts per image
        model.selector.net[-1].bias.fill_(0.0)
        model.selector.net[-1].weight.mul_(20.0)
    images = torch.randn(6, 3, 28, 28) * torch.linspace(0.2, 2.0, 6)[:, None, None, None]
    k_max = round(0.5 * 28 * 28)
    model.eval()
    with torch.no_grad():
        model(images)
    counts = model._last_counts
    assert counts.shape == (6,) and (counts >= 1).all() and (counts <= k_max).all()
    assert model.k == pytest.approx(counts.float().mean().item())
    used = model.used_map(images)
    assert torch.equal(used.sum(dim=(1, 2)), counts.to(used.dtype))

    # every candidate runs, masked or not: the objective counts the cap, as the counter sees it
    executed = counted_flops(model, images)
    fixed = build_model({**config, "k_rule": "fixed"}, 3, 4, 28)
    assert model.analytic_flops(images) == fixed.analytic_flops(images) == pytest.approx(executed, rel=0.01)
    assert len(set(counts.tolist())) > 1  # the rule really varies per image


def test_top_p_counts_follow_the_score_mass() -> None:
    model = build_model(tiny(k_fraction=1.0, k_rule="top_p", k_top_p=0.5), 1, 2, 16)
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.5], [0.25, 0.25, 0.25, 0.25]])
    counts = per_image_k(scores, rule="top_p", config=model.k_rule_config, k_max=4)
    assert counts.tolist() == [2, 2]  # 0.9 = 45% of 2.0 -> one more; 2 x 0.25 = 50%
    assert per_image_k(scores, rule="ratio", config={}, k_max=4).tolist() == [2, 1]  # expected keeps: 2.0, 1.0
    assert per_image_k(scores, rule="top_p", config={"k_top_p": 0.99}, k_max=3).tolist() == [3, 3]


def test_top_p_distils_the_attention_into_the_softmax_of_the_map() -> None:
    """top_p adds the cross-entropy of softmax(z) against the fine attention, and it reaches the selector."""
    images = torch.randn(4, 3, 28, 28)
    losses = {}
    for rule in ("fixed", "top_p"):
        torch.manual_seed(0)
        model = build_model(tiny(k_rule=rule, k_top_p=0.99, negatives=0, explore_fraction=0.0, st_gating=False), 3, 4, 28)
        logits = model(images)
        losses[rule] = model.auxiliary_loss(logits, torch.zeros(4, dtype=torch.long))
    assert losses["top_p"].item() > losses["fixed"].item() + 1.0  # about log(28 * 28) at an untrained map
    losses["top_p"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in selector_params(model))


def test_ratio_rule_adds_the_ratio_loss() -> None:
    images = torch.randn(4, 3, 28, 28)
    losses = {}
    for rule in ("fixed", "ratio"):
        torch.manual_seed(0)
        model = build_model(tiny(k_rule=rule, k_target_ratio=0.9, negatives=0), 3, 4, 28)
        logits = model(images)
        losses[rule] = model.auxiliary_loss(logits, torch.zeros(4, dtype=torch.long))
    assert losses["ratio"].item() > losses["fixed"].item()


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"k_rule": "top_p", "k_top_p": 0.6, "pixel_embedding": "fourier"},
        {"token_content": "coarse_features", "coarse_stride": 4},
        {"token_content": "pixel", "k_rule": "ratio"},
        {"score_prior": "foreground", "coarse_stride": 2},
    ],
)
def test_torch_export(changes: dict) -> None:
    torch.manual_seed(0)
    assert_exports_exactly(build_model({**default_config("sparse_topk"), **changes}, 3, 4, 28).eval(),
                           torch.randn(2, 3, 28, 28))


def test_overfits_learnable_images() -> None:
    """64 blob images, 40 full-batch steps (~2 s of one core); reliable over seeds 0-4."""
    images, labels = blobs(channels=3, size=28, layout="corner")
    torch.manual_seed(0)
    model = build_model({**default_config("sparse_topk"), "embed_dim": 32, "num_heads": 2}, 3, 4, 28)
    assert fit(model, images, labels, steps=40, lr=3e-3) >= 0.95
