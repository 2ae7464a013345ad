"""FLOPs against hand formulas (2 per multiply-accumulate), including the attention the counter misses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from objectives import count_flops, counted_flops
from search_space.strategies.blocks import (
    TransformerBlock,
    area_resize_flops,
    bilinear_flops,
    block_flops,
    conv2d_flops,
    linear_flops,
)


def test_linear_on_vectors_and_tokens() -> None:
    layer = nn.Linear(32, 16)
    assert count_flops(layer, torch.randn(4, 32)) == linear_flops(1, 32, 16)
    assert count_flops(layer, torch.randn(4, 10, 32)) == linear_flops(10, 32, 16)


@pytest.mark.parametrize(("stride", "groups"), [(1, 1), (2, 1), (1, 4)])
def test_conv2d(stride: int, groups: int) -> None:
    conv = nn.Conv2d(8, 12, 3, stride=stride, padding=1, groups=groups)
    side = 16 // stride
    assert count_flops(conv, torch.randn(2, 8, 16, 16)) == conv2d_flops(side, side, 8, 12, 3, groups)


def test_tiny_cnn_sums_its_layers_and_skips_pooling_and_activations() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    expected = conv2d_flops(16, 16, 3, 8, 3) + linear_flops(1, 8, 5)
    assert count_flops(model, torch.randn(3, 3, 16, 16)) == expected


def test_shared_transformer_block_matches_its_hand_formula() -> None:
    block = TransformerBlock(dim=32, num_heads=4, mlp_ratio=2.0)
    assert count_flops(block, torch.randn(2, 17, 32)) == block_flops(17, 32, 2.0)


class SdpaOnly(nn.Module):
    """Cross-attention straight from reshaped inputs: no projections, so only the SDPA term remains."""

    def __init__(self, heads: int, n_q: int, n_k: int, d: int, d_v: int) -> None:
        super().__init__()
        self.heads, self.n_q, self.n_k, self.d, self.d_v = heads, n_q, n_k, d, d_v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, h = x.shape[0], self.heads
        q = x[:, : h * self.n_q * self.d].reshape(B, h, self.n_q, self.d)
        k = x[:, : h * self.n_k * self.d].reshape(B, h, self.n_k, self.d)
        v = x[:, : h * self.n_k * self.d_v].reshape(B, h, self.n_k, self.d_v)
        return F.scaled_dot_product_attention(q, k, v)


def test_cpu_sdpa_gets_the_attention_term() -> None:
    model = SdpaOnly(heads=4, n_q=6, n_k=10, d=8, d_v=8)
    x = torch.randn(3, 4 * 10 * 8)
    assert count_flops(model, x) == 4 * 4 * 6 * 10 * 8  # 4·h·Nq·Nk·d per image


def test_sdpa_with_a_different_value_width() -> None:
    model = SdpaOnly(heads=2, n_q=5, n_k=7, d=8, d_v=4)
    assert count_flops(model, torch.randn(2, 2 * 7 * 8)) == 2 * 2 * 5 * 7 * (8 + 4)


def test_torch_transformer_layer_is_counted_despite_its_fused_fast_path() -> None:
    N, D, F_ = 9, 16, 32
    layer = nn.TransformerEncoderLayer(D, nhead=4, dim_feedforward=F_, batch_first=True)
    projections = linear_flops(N, D, 3 * D) + linear_flops(N, D, D)
    expected = projections + 4 * N * N * D + linear_flops(N, D, F_) + linear_flops(N, F_, D)
    assert count_flops(layer, torch.randn(2, N, D)) == expected
    assert torch.backends.mha.get_fastpath_enabled()  # switched back on afterwards


class WithAnalytic(nn.Module):
    """A model with per-image k: its hand formula, not the padded count, is the objective."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.value = value
        self.seen_training: bool | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def analytic_flops(self, images: torch.Tensor) -> object:
        self.seen_training = self.training
        return self.value


def test_analytic_flops_override_and_the_cross_check() -> None:
    model = WithAnalytic(123.0)
    x = torch.randn(5, 4)
    assert count_flops(model, x) == 123.0
    assert model.seen_training is False  # asked in eval mode, like the forward it describes
    assert counted_flops(model, x) == linear_flops(1, 4, 3)


def test_analytic_none_falls_back_to_the_counter() -> None:
    assert count_flops(WithAnalytic(None), torch.randn(5, 4)) == linear_flops(1, 4, 3)


@pytest.mark.parametrize("bad", ["many", -1.0, float("nan"), True])
def test_analytic_flops_must_be_a_non_negative_number(bad: object) -> None:
    with pytest.raises(TypeError, match="analytic_flops"):
        count_flops(WithAnalytic(bad), torch.randn(2, 4))


def test_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        count_flops(nn.Linear(4, 3), torch.randn(0, 4))


# --- the objective against the counter, for every strategy and k rule -------------------------------

def mixed_images(n: int = 16, side: int = 32) -> torch.Tensor:
    """Different images (contrast, blob size and place), so per-image rules pick different k."""
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    centre = torch.rand(n, 2, 1, 1, generator=g) - 0.5
    radius = 0.15 + 0.5 * torch.rand(n, 1, 1, generator=g)
    blob = (((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2) < radius**2).float()  # (n, side, side)
    contrast = torch.linspace(0.1, 2.0, n)[:, None, None]
    noise = 0.05 * torch.rand(n, 3, side, side, generator=g)
    return noise + (contrast * blob)[:, None] * torch.rand(n, 3, 1, 1, generator=g)


def _cases() -> list[tuple[str, dict]]:
    from search_space.k_rules import k_rule_names
    from search_space.strategies import get_strategy, strategy_names

    # learned scores with room under the cap, so that per-image rules keep different counts
    extra = {"span_pyramid": {"keep_score": "learned", "keep_fraction": 1.0},
             "sparse_topk": {"coarse_stride": 2, "k_fraction": 0.5, "k_top_p": 0.5}}
    cases = []
    for name in strategy_names():
        rules = k_rule_names() if get_strategy(name).uses_k_rule else [None]
        for rule in rules:
            cases.append((name, {} if rule is None else {"k_rule": rule, **extra.get(name, {})}))
        cases.append((name, {"input_size": 24}))  # behind the area resize
    return cases


@pytest.mark.parametrize(("strategy", "changes"), _cases(), ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_the_objective_is_what_the_counter_sees_on_mixed_images(strategy: str, changes: dict) -> None:
    from search_space import build_model, default_config

    torch.manual_seed(0)
    model = build_model({**default_config(strategy), **changes}, 3, 5, 32)
    inner = getattr(model, "inner", model)
    with torch.no_grad():  # an untrained scorer scores flat; spread its scores as a trained one would
        last = {"sparse_topk": lambda m: m.selector.net[-1], "span_pyramid": lambda m: m.scorer[-1]}.get(strategy)
        if last is not None and getattr(inner, "per_image", False):
            last(inner).weight.mul_(30.0 if strategy == "span_pyramid" else 100.0)
            last(inner).bias.fill_(-3.0)
    images = mixed_images()
    objective, counted = count_flops(model, images), counted_flops(model, images)
    assert objective == pytest.approx(counted, rel=0.02)
    if getattr(inner, "per_image", False):  # the rule really picks a k per image; the cap runs for all
        model.eval()
        with torch.no_grad():
            model(images)
        assert len(set(inner._last_counts.tolist())) > 1


def test_resampling_formulas_against_hand_counts() -> None:
    """Tiny cases worked by hand: 2 FLOPs per weighted tap, 1 per tap of an average."""

    class Resample(nn.Module):
        def __init__(self, op) -> None:  # noqa: ANN001
            super().__init__()
            self.op = op

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.op(x)

    x = torch.rand(2, 3, 8, 8)
    grid = torch.rand(2, 5, 4, 2) * 2 - 1
    cases = {
        "bilinear grid_sample, 5x4 outputs x 3 channels x 4 taps": (
            lambda t: F.grid_sample(t, grid, align_corners=False), 2 * 4 * 3 * 5 * 4),
        "nearest grid_sample": (lambda t: F.grid_sample(t, grid, mode="nearest", align_corners=False), 0),
        "bilinear upsampling to 16x16": (lambda t: F.interpolate(t, size=(16, 16), mode="bilinear"), 8 * 3 * 256),
        "area 8 -> 4 (windows of 2x2)": (lambda t: F.interpolate(t, size=(4, 4), mode="area"), 3 * 16 * 4),
        "area 8 -> 3 (windows 0-3, 2-6, 5-8: 3 + 4 + 3 a side)": (
            lambda t: F.interpolate(t, size=(3, 3), mode="area"), 3 * 10 * 10),
        "avg_pool2d 2 on 8x8": (lambda t: F.avg_pool2d(t, 2), 3 * 16 * 4),
        "global mean, a reduction": (lambda t: t.mean(dim=(2, 3)), 0),
    }
    for what, (op, per_image) in cases.items():
        assert counted_flops(Resample(op), x) == per_image, what
    assert area_resize_flops(3, 8, 8, 3, 3) == 3 * 10 * 10
    assert bilinear_flops(5 * 4 * 3) == 2 * 4 * 3 * 5 * 4
