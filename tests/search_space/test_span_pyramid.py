"""span_pyramid: shapes, selection, masks, scorer training signal, FLOPs at allowed pairs, export, learning."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from objectives.flops import counted_flops
from search_space.strategies import get_strategy
from search_space.strategies.blocks import border_background
from search_space.strategies.span_pyramid import SpanPyramid
from tests.search_space.blob_images import blobs, train_steps
from tests.search_space.checks import assert_exports_exactly, assert_onnx_matches, assert_trains

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
@pytest.mark.parametrize("patch_embed", ["linear", "conv"])
def test_forward_backward(channels: int, size: int, keep_score: str, patch_embed: str) -> None:
    torch.manual_seed(0)
    model = build(channels, size, keep_score=keep_score, patch_embed=patch_embed, stages=3).train()
    x, y = torch.randn(4, channels, size, size), torch.arange(4) % NUM_CLASSES
    assert_trains(model, x, y, NUM_CLASSES, every_parameter=True)


@pytest.mark.parametrize(
    "overrides",
    [
        {"stages": 3, "depth": 2, "global_tokens": 3, "window": 3},
        {"stages": 1, "patch_size": 8},
        {"patch_size": 2, "window": 2, "global_tokens": 2, "patch_embed": "conv"},  # gathered local keys
        {"keep_score": "learned", "k_rule": "ratio", "k_target_ratio": 0.3},
        {"keep_score": "variance", "k_rule": "top_p", "k_top_p": 0.6},
    ],
)
def test_variants_run(overrides: dict) -> None:
    torch.manual_seed(0)
    model = build(3, 28, **overrides).train()
    assert_trains(model, torch.randn(3, 3, 28, 28), torch.arange(3), NUM_CLASSES)


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


@pytest.mark.parametrize("size", [26, 28])  # 26 px pads to whole 4 px patches by edge replication
def test_scores_and_linear_embedding_read_the_patches_as_cut_from_the_frame(size: int) -> None:
    """The foreground score pools the frame, the learned scorer convolves it and the linear embedding
    gathers the kept patches from it: each equals its formula on every patch cut out of the (padded) frame."""
    torch.manual_seed(0)
    model = build(3, size, patch_size=4, keep_fraction=0.3, keep_score="foreground", patch_embed="linear").eval()
    images = torch.rand(2, 3, size, size)
    patches = model._patches(images)[0]  # (B, n, C*p*p)
    pix = patches.reshape(2, patches.shape[1], 3, 16) - border_background(images)[:, None, :, None]
    torch.testing.assert_close(model._scores(images, model._padded(images)[0]), pix.abs().mean(dim=(2, 3)))
    learned = build(3, size, patch_size=4, keep_fraction=0.3, keep_score="learned").eval()
    torch.testing.assert_close(learned._scores(images, learned._padded(images)[0]), learned.scorer(patches).squeeze(-1))
    sel = model._select(images)
    kept = patches.gather(1, sel["order"][..., None].expand(-1, -1, patches.shape[-1]))
    torch.testing.assert_close(model._embed(sel), model.embed(kept))


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


def allowed_pairs(coords: list[tuple[int, int]], window: int) -> set[tuple[int, int]]:
    """(query, key) index pairs sharing a regular or a shifted (offset window // 2) window, by brute force."""
    shift = window // 2
    pairs = set()
    for i, (r1, c1) in enumerate(coords):
        for j, (r2, c2) in enumerate(coords):
            regular = r1 // window == r2 // window and c1 // window == c2 // window
            shifted = (r1 + shift) // window == (r2 + shift) // window and (c1 + shift) // window == (c2 + shift) // window
            if regular or shifted:
                pairs.add((i, j))
    return pairs


@pytest.mark.parametrize("size", [28, 32])  # 28 px pads to whole 8 px patches by edge replication
def test_conv_embedding_is_a_dense_conv_stem_read_at_the_kept_patches(size: int) -> None:
    torch.manual_seed(0)
    model = build(3, size, patch_size=8, patch_embed="conv", keep_fraction=0.5).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        sel = model._select(x)
        tokens = model._embed(sel)  # (B, K, D)
        dense = model.stem(F.pad(model._padded(x)[0], (1, 1, 1, 1)))  # (B, 8, rows*p, cols*p)
        for b in range(2):
            for slot, (r, c) in enumerate(sel["coords"][b].tolist()):
                patch = dense[b, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8].reshape(-1)
                torch.testing.assert_close(tokens[b, slot], model.embed(patch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [2, 3, 4])
def test_local_keys_are_the_union_of_both_windows_once_each(window: int) -> None:
    torch.manual_seed(0)
    model = build(3, 64, window=window, keep_fraction=0.4).eval()
    sel = model._select(torch.rand(2, 3, 64, 64))
    for dense in (True, False):
        plan = model._plan(sel["coords"], sel["valid"], sel["grid"], dense=dense)
        for b in range(2):
            coords = [tuple(rc) for rc in sel["coords"][b].tolist()]
            if dense:
                got = {tuple(ij) for ij in plan.allowed[b].nonzero().tolist()}
            else:
                got_list = [(i, int(plan.keys[b, i, s])) for i, s in plan.allowed[b].nonzero().tolist()]
                got = set(got_list)
                assert len(got) == len(got_list)  # no key twice in a query's softmax
            assert got == allowed_pairs(coords, window)


def test_gathered_and_dense_local_attention_agree() -> None:
    # Both paths run the same softmax over the same keys with the same position bias.
    torch.manual_seed(0)
    model = build(3, 48, patch_size=2, window=3, global_tokens=2, keep_fraction=0.3).eval()
    sel = model._select(torch.rand(2, 3, 48, 48))
    layer = model.stages[0][0]
    with torch.no_grad():
        layer.rel_bias.normal_()  # a bias that matters: a pair read at the wrong relative position shows
    x = torch.randn(2, sel["coords"].shape[1], model.embed_dim)
    outs = [layer._local(x, model._plan(sel["coords"], sel["valid"], sel["grid"], dense=d)) for d in (True, False)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_merge_is_a_count_normalised_conv_over_present_children() -> None:
    torch.manual_seed(0)
    cells = [(0, 0), (0, 1), (1, 1), (2, 3), (5, 5)]  # parents (0, 0) with 3 children, (1, 1), (2, 2)
    image = bright_patches(cells, size=24, patch=4)
    model = build(3, 24, keep_fraction=len(cells) / 36, stages=2).eval()
    sel = model._select(image)
    layout = model._layout(sel["coords"], sel["valid"], sel["grid"])
    assert {tuple(rc) for rc, v in zip(layout.coords[1][0].tolist(), layout.valid[1][0].tolist(), strict=True) if v} == {
        (0, 0), (1, 1), (2, 2)
    }
    x = torch.randn(1, len(cells), model.embed_dim)
    weight = torch.randn_like(model.merges[0].weight)  # (D, 1, 2, 2)
    with torch.no_grad():
        model.merges[0].weight.copy_(weight)
        out = model._merge(0, x, layout)
    normed = model.merge_norms[0](x)[0]
    child_of = {tuple(rc): i for i, rc in enumerate(sel["coords"][0].tolist())}
    for slot, (pr, pc) in enumerate(layout.coords[1][0].tolist()):
        present = [(dr, dc) for dr in (0, 1) for dc in (0, 1) if (2 * pr + dr, 2 * pc + dc) in child_of]
        if not present:
            continue
        want = sum(weight[:, 0, dr, dc] * normed[child_of[(2 * pr + dr, 2 * pc + dc)]] for dr, dc in present) / len(present)
        torch.testing.assert_close(out[0, slot], want, rtol=1e-5, atol=1e-6)


def test_eval_is_deterministic() -> None:
    torch.manual_seed(0)
    model = build(3, 64, keep_score="learned").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_per_image_k_masks_padding_and_counts_flops_at_the_cap() -> None:
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
    # every image runs at the cap (padding is masked, not skipped): each is counted at the cap
    per_image = [model.analytic_flops(x[i : i + 1]) for i in range(4)]
    assert per_image == [model.analytic_flops(x)] * 4 == [model.flops_at(model._k, (7, 7))] * 4
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
        fixed.set_k(per_image._k)  # what runs: the cap, for every image
        assert per_image.analytic_flops(x) == fixed.analytic_flops(x)


def test_ratio_rule() -> None:
    fixed = build(3, 28, keep_score="foreground", k_rule="ratio", k_target_ratio=0.3)
    assert fixed.k == round(0.3 * 49) and not fixed.per_image
    torch.manual_seed(0)
    learned = build(3, 28, keep_score="learned", k_rule="ratio", k_target_ratio=0.3)
    x, y = torch.randn(8, 3, 28, 28), torch.arange(8) % NUM_CLASSES
    with torch.no_grad():
        probs = learned._scores(x, learned._padded(x)[0]).sigmoid()  # (B, 49)
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


FLOP_CONFIGS = [
    (32, {}),
    (32, {"patch_size": 2}),  # 128 tokens = 4 x the 2 * 4**2 key slots: the dense path's largest stage
    (32, {"patch_size": 2, "window": 3, "global_tokens": 3, "stages": 3, "depth": 2}),
    (28, {"patch_embed": "conv", "keep_score": "learned", "keep_fraction": 0.3}),
    (40, {"patch_size": 2, "window": 2, "keep_fraction": 0.8, "stages": 4, "num_heads": 4}),
    (64, {"patch_size": 8, "window": 8, "stages": 1, "global_tokens": 4, "mlp_ratio": 3.0}),
    (48, {"patch_size": 3, "window": 5, "keep_fraction": 0.15, "patch_embed": "conv", "embed_dim": 16}),
]


@pytest.mark.parametrize(("size", "overrides"), FLOP_CONFIGS)
def test_analytic_flops_are_what_the_counter_sees(size: int, overrides: dict) -> None:
    # the project's counter: FlopCounterMode with the CPU attention kernel it misses filled in
    torch.manual_seed(0)
    model = build(3, size, **overrides).eval()
    x = torch.randn(2, 3, size, size)
    assert model.analytic_flops(x) == pytest.approx(counted_flops(model, x), rel=0.02)


def test_flops_match_a_hand_count() -> None:
    # 28 px, patch 4: a 7 x 7 grid, k = 24; stage 2 has min(24, 4 * 4) = 16 parent slots. D = 8, one
    # global, window 2 -> 8 key slots per query, 24 tokens <= 4 x 8: the dense product, 24 keys per query.
    # The last layer updates only the global token: nothing reads its tokens.
    model = build(3, 28, patch_size=4, keep_fraction=24 / 49, embed_dim=8, num_heads=2, mlp_ratio=2.0, window=2, stages=2)
    D, hidden = 8, 16

    def global_path(t: int) -> float:  # k/v of every token, q of the global, its t + 1 pairs
        return 2 * (t + 1) * D * 2 * D + 2 * D * D + 4 * (t + 1) * D

    def out(n: int) -> float:  # output projection and MLP on n tokens
        return 2 * n * D * D + 2 * 2 * n * D * hidden

    first = 2 * 24 * D * 3 * D + 4 * 24 * 24 * D + global_path(24) + out(25)
    last = global_path(16) + out(1)
    expected = 2 * 24 * 48 * D + first + 2 * 16 * D * 4 + last + 2 * D * NUM_CLASSES
    assert model.analytic_flops(torch.rand(2, 3, 28, 28)) == pytest.approx(expected, rel=1e-12)


def test_flops_linear_in_kept_patches_past_the_window() -> None:
    # Past the dense path (4 x 2 * window**2 tokens) a query computes a fixed number of keys, and until
    # the parent grid is full every kept patch adds one parent slot: each kept patch then costs the same.
    model = build(3, 128, patch_size=4, window=2, stages=2).eval()  # 32 x 32 grid, 16 x 16 parents
    flops = [model.flops_at(k, (32, 32)) for k in range(33, 257)]
    steps = [b - a for a, b in zip(flops[:-1], flops[1:], strict=True)]
    assert max(steps) - min(steps) <= 1e-9 * flops[-1] and min(steps) > 0
    assert model.flops_at(1024, (32, 32)) - model.flops_at(1023, (32, 32)) < steps[0]  # parents saturate


EXPORT_CONFIGS = [
    {},
    {"keep_score": "learned", "k_rule": "top_p", "k_top_p": 0.7},
    {"patch_size": 2, "window": 2, "global_tokens": 2, "stages": 3, "patch_embed": "conv"},  # gathered keys
]


@pytest.mark.parametrize("overrides", EXPORT_CONFIGS)
def test_export_matches_eval_model(overrides: dict) -> None:
    torch.manual_seed(0)
    assert_exports_exactly(build(3, 28, **overrides).eval(), torch.randn(2, 3, 28, 28))


@pytest.mark.slow
@pytest.mark.parametrize("overrides", EXPORT_CONFIGS)
def test_onnx_matches_eval_model_at_any_batch(overrides: dict, tmp_path) -> None:
    torch.manual_seed(0)
    model = build(3, 28, **overrides).eval()
    example = torch.randn(2, 3, 28, 28)
    assert_onnx_matches(model, example, [torch.randn(batch, 3, 28, 28) for batch in (1, 5)], tmp_path / "span.onnx")


@pytest.mark.parametrize("keep_score", ["foreground", "learned"])
def test_overfits_64_blob_images(keep_score: str) -> None:
    torch.manual_seed(0)
    x, y = blobs(classes=NUM_CLASSES)
    model = build(3, 28, keep_score=keep_score)
    start = time.perf_counter()
    accuracy, steps = train_steps(model, x, y, 150, target=0.95)
    assert accuracy >= 0.95, f"train accuracy {accuracy:.2f} after {steps} steps"
    assert time.perf_counter() - start < 30


def test_no_query_of_the_dense_plan_has_every_key_masked() -> None:
    # padding queries see themselves: a fully masked row is NaN in some fused attention kernels
    model = build(3, 28, patch_size=4, keep_fraction=0.5, window=2).eval()
    coords = torch.tensor([[[0, 0], [0, 1], [5, 5]]])
    valid = torch.tensor([[True, False, False]])
    plan = model._plan(coords, valid, (7, 7), dense=True)
    assert plan.allowed.any(dim=-1).all() and plan.allowed[0, 0].tolist() == [True, False, False]
