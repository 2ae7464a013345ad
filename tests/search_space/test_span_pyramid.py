"""span_pyramid: shapes, selection, masks, scorer training signal, FLOPs at allowed pairs, export, learning."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from search_space.strategies import get_strategy
from search_space.strategies.span_pyramid import SpanPyramid
from tests.search_space.blob_images import blobs

NUM_CLASSES = 4


def build(in_channels: int = 3, image_size: int = 28, **overrides) -> SpanPyramid:
    info = get_strategy("span_pyramid")
    config = {**info.defaults, **overrides}
    return info.create(config, in_channels=in_channels, num_classes=NUM_CLASSES, image_size=image_size)


def bright_patches(cells: list[tuple[int, int]], *, size: int, patch: int, channels: int = 3) -> torch.Tensor:
    """(1, C, size, size) zero image with the given patch cells set to 1."""
    image = torch.zeros(1, channels, size, size)
    for r, c in cells:
        image[..., r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = 1.0
    return image


@pytest.mark.parametrize(
    ("channels", "size", "keep_score"),
    [(1, 28, "foreground"), (3, 28, "variance"), (1, 64, "learned"), (3, 64, "foreground"), (2, 28, "learned")],
)
def test_forward_backward(channels: int, size: int, keep_score: str) -> None:
    torch.manual_seed(0)
    model = build(channels, size, keep_score=keep_score).train()
    x, y = torch.randn(4, channels, size, size), torch.arange(4) % NUM_CLASSES
    logits = model(x)
    assert logits.shape == (4, NUM_CLASSES)
    loss = F.cross_entropy(logits, y) + model.auxiliary_loss(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "overrides",
    [
        {"stages": 3, "depth": 2, "global_tokens": 3, "window": 3},
        {"stages": 1, "patch_size": 8},
        {"keep_score": "learned", "k_rule": "ratio", "k_target_ratio": 0.3},
        {"keep_score": "variance", "k_rule": "top_p", "k_top_p": 0.6},
    ],
)
def test_variants_run(overrides: dict) -> None:
    torch.manual_seed(0)
    model = build(3, 28, **overrides).train()
    x, y = torch.randn(3, 3, 28, 28), torch.arange(3)
    logits = model(x)
    (F.cross_entropy(logits, y) + model.auxiliary_loss(logits, y)).backward()
    assert logits.shape == (3, NUM_CLASSES) and torch.isfinite(logits).all()


def test_learned_scorer_signal_comes_from_auxiliary_loss_only_to_the_scorer() -> None:
    torch.manual_seed(0)
    model = build(3, 28, keep_score="learned").train()
    x, y = torch.randn(4, 3, 28, 28), torch.arange(4)
    model.auxiliary_loss(model(x), y).backward()
    scorer = [p for n, p in model.named_parameters() if n.startswith("scorer.")]
    assert scorer and all(p.grad is not None and p.grad.abs().sum() > 0 for p in scorer)
    others = [p for n, p in model.named_parameters() if not n.startswith("scorer.")]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in others)  # the attention target is detached


def test_learned_scorer_straight_through_gate_passes_class_loss() -> None:
    torch.manual_seed(0)
    model = build(3, 28, keep_score="learned").train()
    x, y = torch.randn(4, 3, 28, 28), torch.arange(4)
    F.cross_entropy(model(x), y).backward()
    assert model.scorer[0].weight.grad.abs().sum() > 0


def test_fixed_scores_have_no_auxiliary_loss() -> None:
    model = build(3, 28, keep_score="foreground").train()
    logits = model(torch.randn(2, 3, 28, 28))
    assert model.auxiliary_loss(logits, torch.arange(2)).item() == 0.0


def test_foreground_keeps_the_bright_patches() -> None:
    cells = [(1, 1), (1, 2), (2, 2), (3, 3), (4, 4), (4, 1)]
    image = bright_patches(cells, size=24, patch=4)
    model = build(3, 24, patch_size=4, keep_fraction=len(cells) / 36).eval()
    used = model.used_map(image)
    expected = image[:, 0]
    assert torch.equal(used, expected)
    variance = build(3, 24, patch_size=4, keep_fraction=len(cells) / 36, keep_score="variance").eval()
    noisy = image.clone()
    noisy[..., 8:12, 16:20] = torch.rand(3, 4, 4)  # one textured patch (2, 4) beats the flat bright ones
    assert variance.used_map(noisy)[0, 8:12, 16:20].eq(1).all()


def test_non_kept_patches_do_not_change_the_output() -> None:
    torch.manual_seed(0)
    model = build(3, 24, patch_size=4, keep_fraction=6 / 36).eval()
    image = bright_patches([(1, 1), (1, 2), (2, 2), (3, 3), (4, 4), (4, 1)], size=24, patch=4)
    image = image * torch.rand_like(image).add(0.5)  # texture inside the kept patches
    changed = image.clone()
    changed[..., 12:16, 4:8] = 0.05 * torch.rand(3, 4, 4)  # interior patch (3, 1) stays unselected
    with torch.no_grad():
        torch.testing.assert_close(model(changed), model(image))
        moved = image.clone()
        moved[..., 4:8, 4:8] *= 0.5  # a kept patch does matter
        assert not torch.allclose(model(moved), model(image))


def test_disallowed_pairs_get_zero_attention() -> None:
    torch.manual_seed(0)
    model = build(3, 64, window=2, global_tokens=2).eval()
    x = torch.rand(2, 3, 64, 64)
    sel = model._select(x)
    coords, valid = sel["coords"], sel["valid"]
    allowed = model._allowed(coords, valid)
    block = model.stages[0][0]
    h = torch.randn(2, 2 + coords.shape[1], model.embed_dim)
    block.attn(h, bias=model._bias(coords, allowed, model.rel_bias[0, 0]), keep_attn=True)
    attn = block.attn.last_attn  # (B, heads, N, N)
    assert (attn.masked_select(~allowed[:, None]) == 0).all()
    assert (attn.masked_select(allowed[:, None]) > 0).all()
    # Brute-force the window rule for one image: same regular or same shifted (offset 1) 2x2 window.
    r, c = coords[0, :, 0].tolist(), coords[0, :, 1].tolist()
    for i in range(len(r)):
        for j in range(len(r)):
            regular = r[i] // 2 == r[j] // 2 and c[i] // 2 == c[j] // 2
            shifted = (r[i] + 1) // 2 == (r[j] + 1) // 2 and (c[i] + 1) // 2 == (c[j] + 1) // 2
            assert bool(allowed[0, 2 + i, 2 + j]) == (regular or shifted)


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


def test_eval_is_deterministic() -> None:
    torch.manual_seed(0)
    model = build(3, 64, keep_score="learned").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_per_image_k_masks_padding_and_counts_flops_per_image() -> None:
    torch.manual_seed(0)
    model = build(3, 28, keep_score="variance", k_rule="top_p", k_top_p=0.5).eval()
    x = torch.rand(4, 3, 28, 28) * torch.tensor([0.05, 0.3, 1.0, 0.1]).reshape(4, 1, 1, 1)
    x[:, :, 8:20, 8:20] += torch.rand(4, 3, 12, 12)  # different amounts of texture per image
    with torch.no_grad():
        batch = model(x)
        counts = model._select(x)["counts"]
        singles = [model(x[i : i + 1]) for i in range(4)]
    assert len(set(counts.tolist())) > 1  # images keep different numbers of patches
    torch.testing.assert_close(torch.cat(singles), batch, rtol=1e-4, atol=1e-5)  # padding changes nothing
    per_image = [model.analytic_flops(x[i : i + 1]) for i in range(4)]
    assert model.analytic_flops(x) == pytest.approx(sum(per_image) / 4, rel=1e-9)
    assert model.used_map(x).sum(dim=(1, 2)).tolist() == (counts * 16).tolist()


def test_per_image_k_equals_fixed_k_at_each_images_count() -> None:
    # Padding tokens (ranked past an image's count) must not reach attention, merging or pooling.
    torch.manual_seed(0)
    config = dict(keep_score="variance", stages=3, global_tokens=2, window=2)
    per_image = build(3, 28, k_rule="top_p", k_top_p=0.6, **config).eval()
    fixed = build(3, 28, **config).eval()
    fixed.load_state_dict(per_image.state_dict())
    x = torch.rand(3, 3, 28, 28) * 0.1
    x[:, :, 6:22, 6:22] += torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        counts = per_image._select(x)["counts"].tolist()
        assert all(0 < n < per_image._k for n in counts)  # some padding in every image
        for i, n in enumerate(counts):
            fixed.set_k(n)
            torch.testing.assert_close(per_image(x[i : i + 1]), fixed(x[i : i + 1]), rtol=1e-4, atol=1e-5)
            assert per_image.analytic_flops(x[i : i + 1]) == pytest.approx(fixed.analytic_flops(x[i : i + 1]))


def test_ratio_rule() -> None:
    fixed = build(3, 28, keep_score="foreground", k_rule="ratio", k_target_ratio=0.3)
    assert fixed.k == round(0.3 * 49) and not fixed.per_image
    torch.manual_seed(0)
    learned = build(3, 28, keep_score="learned", k_rule="ratio", k_target_ratio=0.3)
    x, y = torch.randn(8, 3, 28, 28), torch.arange(8) % NUM_CLASSES
    with torch.no_grad():
        probs = learned._scores(x, learned._patches(x)[0]).sigmoid()  # (B, 49)
    learned.eval()
    with torch.no_grad():
        learned(x)
    expected = probs.sum(dim=1).round().clamp(1, learned._k).mean().item()  # expected keeps, capped
    assert learned.k == pytest.approx(expected)
    learned.train()  # training samples keep decisions: not a prefix of the ranking, counts vary
    sel = learned._select(x)
    assert sel["valid"][:, 0].all() and not torch.equal(sel["valid"], learned._select(x)["valid"])
    learned.auxiliary_loss(learned(x), y).backward()  # the ratio loss trains the scorer
    assert learned.scorer[0].weight.grad.abs().sum() > 0


def test_k_bounds_and_set_k() -> None:
    model = build(3, 28, patch_size=4, keep_fraction=0.5)
    assert model.k_bounds() == (1, 49) and model.k == round(0.5 * 49)
    model.set_k(10)
    assert model.k == 10
    with pytest.raises(ValueError):
        model.set_k(50)
    with pytest.raises(ValueError):
        build(embed_dim=30, num_heads=4)


def test_other_image_size_and_padding() -> None:
    model = build(3, 28, patch_size=8).eval()  # 28 px pads to a 4 x 4 grid of 8 px patches
    for size in (16, 28, 40):
        x = torch.randn(2, 3, size, size)
        assert model(x).shape == (2, NUM_CLASSES)
        used = model.used_map(x)
        assert used.shape == (2, size, size) and set(used.unique().tolist()) <= {0.0, 1.0}


def hand_flops(cells: list[tuple[int, int]], *, channels: int, patch: int, dim: int, mlp_ratio: float, window: int,
               globals_: int, stages: int, depth: int) -> float:
    """SPAN FLOPs written out with Python sets: patch embedding, then per stage (after merging into the
    present 2x2 parents) qkv/out projections and MLP on real tokens plus 4 * D per allowed pair."""
    hidden = int(dim * mlp_ratio)
    flops = 2.0 * len(cells) * channels * patch * patch * dim
    shift = window // 2
    for stage in range(stages):
        if stage > 0:
            cells = sorted({(r // 2, c // 2) for r, c in cells})
            flops += 2.0 * len(cells) * dim * dim
        n = globals_ + len(cells)
        pairs = globals_ * n + len(cells) * globals_
        for r1, c1 in cells:
            for r2, c2 in cells:
                regular = r1 // window == r2 // window and c1 // window == c2 // window
                shifted = (r1 + shift) // window == (r2 + shift) // window and (c1 + shift) // window == (
                    c2 + shift
                ) // window
                pairs += regular or shifted
        per_block = 2 * n * dim * 4 * dim + 4 * pairs * dim + 2 * n * dim * hidden * 2
        flops += depth * per_block
    return flops + 2.0 * dim * NUM_CLASSES


def test_flops_match_hand_formula_on_a_sparse_selection() -> None:
    cells = [(1, 1), (1, 2), (2, 2), (3, 3), (4, 4), (4, 1), (0, 5)]
    image = bright_patches(cells, size=24, patch=4)
    config = dict(patch_size=4, embed_dim=8, num_heads=2, depth=2, mlp_ratio=2.0, stages=3, window=2, global_tokens=2)
    model = build(3, 24, keep_fraction=len(cells) / 36, **config).eval()
    expected = hand_flops(
        cells, channels=3, patch=4, dim=8, mlp_ratio=2.0, window=2, globals_=2, stages=3, depth=2
    )
    assert model.analytic_flops(image) == pytest.approx(expected, rel=0.01)


def test_flops_match_counter_when_attention_is_dense() -> None:
    # Every patch kept and one window covering the grid: the dense masked product computes exactly
    # the allowed pairs, so the counter and the analytic count must agree (learned scorer included).
    torch.manual_seed(0)
    model = build(3, 16, patch_size=4, keep_fraction=1.0, window=8, stages=2, keep_score="learned").eval()
    x = torch.randn(2, 3, 16, 16)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert counter.get_total_flops() / 2 == pytest.approx(model.analytic_flops(x), rel=0.01)
    expected = hand_flops(
        [(r, c) for r in range(4) for c in range(4)], channels=3, patch=4, dim=32, mlp_ratio=2.0, window=8,
        globals_=1, stages=2, depth=1,
    ) + 2 * 16 * (48 * 16 + 16)  # the learned scorer on all 16 patches
    assert model.analytic_flops(x) == pytest.approx(expected, rel=0.01)


def test_flops_exactly_linear_in_kept_patches_when_they_are_isolated() -> None:
    # 16 bright patches 8 cells apart on a 32 x 32 grid never share a window, at either stage.
    cells = [(8 * i + 2, 8 * j + 2) for i in range(4) for j in range(4)]
    image = bright_patches(cells, size=128, patch=4)
    model = build(3, 128, patch_size=4, window=4, stages=2, global_tokens=2).eval()
    flops = []
    for k in range(1, 17):
        model.set_k(k)
        flops.append(model.analytic_flops(image))
    steps = [flops[i + 1] - flops[i] for i in range(len(flops) - 1)]
    assert min(steps) > 0 and max(steps) - min(steps) <= 1e-9 * flops[-1]


def test_flops_near_linear_in_kept_patches_on_noise() -> None:
    torch.manual_seed(0)
    model = build(3, 64, keep_score="variance", window=4, stages=2).eval()
    x = torch.rand(2, 3, 64, 64)
    ks = torch.arange(16, 257, 16, dtype=torch.float64)
    flops = []
    for k in ks.tolist():
        model.set_k(int(k))
        flops.append(model.analytic_flops(x))
    f = torch.tensor(flops, dtype=torch.float64)
    design = torch.stack([ks, torch.ones_like(ks)], dim=1)
    fit = design @ torch.linalg.lstsq(design, f[:, None]).solution
    assert (f - fit[:, 0]).abs().max() <= 0.05 * f.max()
    # Never worse than linear: a kept patch adds at most its union window (2 * 4 * 4 cells) and the
    # globals as keys, appears as a key in as many rows, and adds at most one parent at stage 2.
    D, hidden, window_cells, n_globals = 32, 64, 2 * 4 * 4, 1
    per_stage = 2 * D * 4 * D + 4 * D * 2 * (window_cells + n_globals) + 2 * 2 * D * hidden
    per_kept = 2 * 48 * D + 2 * per_stage + 2 * D * D
    assert all(flops[i + 1] - flops[i] <= 16 * per_kept for i in range(len(flops) - 1))


@pytest.mark.parametrize("overrides", [{}, {"keep_score": "learned", "k_rule": "top_p", "k_top_p": 0.7}])
def test_export_matches_eval_model(overrides: dict) -> None:
    torch.manual_seed(0)
    model = build(3, 28, **overrides).eval()
    x = torch.randn(2, 3, 28, 28)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("keep_score", ["foreground", "learned"])
def test_overfits_64_blob_images(keep_score: str) -> None:
    torch.manual_seed(0)
    x, y = blobs(classes=NUM_CLASSES)
    model = build(3, 28, keep_score=keep_score)
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
