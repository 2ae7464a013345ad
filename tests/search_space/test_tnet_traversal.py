"""tnet_traversal: shapes, top-k per parent, gradient routing, per-glimpse REINFORCE, FLOPs, export, learning."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from objectives.flops import counted_flops
from search_space.strategies import get_strategy
from search_space.strategies.tnet_traversal import TNetTraversal, _cell_pooling
from tests.search_space.blob_images import blobs, train_steps
from tests.search_space.checks import assert_exports_exactly, assert_onnx_matches, assert_trains

NUM_CLASSES = 4
# Small backbone so the suite stays fast; the registered defaults are tested where they matter.
SMALL = {"width": 4, "stages": 2, "embed_dim": 16}


def build(in_channels: int = 3, image_size: int = 28, **overrides) -> TNetTraversal:
    info = get_strategy("tnet_traversal")
    config = {**info.defaults, **overrides}
    return info.create(config, in_channels=in_channels, num_classes=NUM_CLASSES, image_size=image_size)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 64), (3, 64), (2, 32)])
def test_forward_backward_reaches_every_parameter(channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build(channels, size).train()
    x, y = torch.randn(4, channels, size, size), torch.arange(4) % NUM_CLASSES
    assert_trains(model, x, y, NUM_CLASSES, every_parameter=True)


@pytest.mark.parametrize(
    "overrides",
    [
        {"levels": 3, "grid_size": 3},
        {"pooling": "attention"},
        {"gumbel_explore": True},
        {"stages": 1},
        {"stages": 4, "base_resolution": 16},
        {"norm": "batch", "levels": 3, "grid_size": 3},
        {"location_prior": "foreground", "levels": 3, "grid_size": 3},
        {"norm": "batch", "encoder": "plain"},
    ],
)
def test_variants_run(overrides: dict) -> None:
    torch.manual_seed(0)
    model = build(3, 64, **overrides).train()
    assert_trains(model, torch.randn(3, 3, 64, 64), torch.arange(3), NUM_CLASSES)


def test_backbone_is_dense_cnns_stages_with_group_norm() -> None:
    model = build(stages=3, width=8)
    blocks = [m for m in model.backbone.stages.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 3 and [b.conv2.out_channels for b in blocks] == [8, 16, 32]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model.backbone.map_stage == 1 and model.backbone.map_channels == 16  # the second-to-last stage


def test_batch_norm_keeps_statistics_of_its_own_per_level() -> None:
    """norm: batch normalises each level by its own statistics: after a training pass the levels'
    running means differ (the whole-image view and the crops see different content), and eval reads them."""
    torch.manual_seed(0)
    model = build(3, 64, levels=3, grid_size=3, norm="batch", **SMALL).train()
    stem_norm = model.backbone.stem[1]
    assert len(stem_norm.norms) == 3 and not any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    x = torch.rand(8, 3, 64, 64)
    x[:, :, 16:48, 16:48] += 2.0  # a bright centre: crops and the whole view differ in mean
    model(x)
    means = [n.running_mean.clone() for n in stem_norm.norms]
    assert all(not torch.allclose(means[0], m) for m in means[1:])
    model.eval()
    before = model(x)
    stem_norm.norms[2].running_mean.add_(5.0)  # eval of the last level reads the last level's own statistics
    assert not torch.allclose(before, model(x))


def test_foreground_prior_points_the_untrained_location_module_at_the_stain() -> None:
    """With location_prior: foreground, an untrained model's first glimpse lands on the one dark
    blob of a plain frame far more often than without it (a random cell holds about 0.2 of the blob)."""
    torch.manual_seed(0)
    x, y = _blobs_on_a_larger_frame(64, seed=0)
    with_prior = build(3, 32, grid_size=4, regions=1, base_resolution=8, overlap=0.4, location_prior="foreground", **SMALL)
    without = build(3, 32, grid_size=4, regions=1, base_resolution=8, overlap=0.4, **SMALL)
    prior, none = _blob_mass_in_chosen_cell(with_prior, x), _blob_mass_in_chosen_cell(without, x)
    assert prior > 0.4 and prior > 1.5 * none, f"blob mass in the picked cell: {prior:.2f} against {none:.2f}"


# --- selection structure ----------------------------------------------------------------------------


def test_children_lie_inside_their_parents_top_k_per_parent() -> None:
    torch.manual_seed(0)
    model = build(3, 64, levels=3, grid_size=3, regions=2, overlap=0.5, **SMALL).eval()
    with torch.no_grad():
        content, _, centres, logp = model._traverse(torch.randn(5, 3, 64, 64))
    assert content.shape[1] == model.n_views() == 1 + 2 + 4 and logp.shape == (5, 6)
    assert [c.shape[1] for c in centres] == [1, 2, 4]
    for level in (1, 2):
        parent = centres[level - 1][:, :, None, :]  # (B, n, 1, 2)
        child = centres[level].reshape(5, -1, 2, 2)  # (B, n, k, 2), parent-major
        gap = (child - parent).abs() + model.half_sizes[level]
        assert (gap <= model.half_sizes[level - 1] + 1e-6).all()  # the child's square lies in its parent's
        assert ((child[:, :, 0] - child[:, :, 1]).abs().sum(-1) > 0).all()  # k different cells per parent
    assert (logp <= 0).all()


def test_cell_pooling_averages_each_cells_area() -> None:
    # A map of 8 positions, cells of half the view at 3 positions: windows of 4 with stride 2.
    pool = _cell_pooling(8, 3, 0.5)
    fmap = torch.randn(2, 5, 8, 8)
    torch.testing.assert_close(pool @ fmap @ pool.T, F.avg_pool2d(fmap, 4, stride=2))
    assert torch.allclose(_cell_pooling(6, 4, 0.375).sum(dim=1), torch.ones(4))  # fractional overlaps still average


def test_gumbel_exploration_samples_in_training_only() -> None:
    torch.manual_seed(0)
    model = build(3, 64, gumbel_explore=True, regions=2, grid_size=4, **SMALL)
    x = torch.randn(6, 3, 64, 64)
    model.train()
    picks = {tuple(model._traverse(x)[2][1].flatten().tolist()) for _ in range(5)}
    assert len(picks) > 1
    model.eval()
    with torch.no_grad():
        assert torch.equal(model._traverse(x)[2][1], model._traverse(x)[2][1])


def test_eval_is_deterministic_and_batch_independent() -> None:
    torch.manual_seed(0)
    model = build(3, 64, levels=3, grid_size=3, pooling="attention", **SMALL).eval()
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[2:3])
    assert torch.equal(a, b)
    torch.testing.assert_close(single, a[2:3], rtol=1e-4, atol=1e-5)


def test_used_map_is_resolution_density() -> None:
    torch.manual_seed(0)
    model = build(3, 64, base_resolution=16, overlap=0.5, **SMALL).eval()  # whole image at (16/64)^2, 32 px crops at (16/32)^2
    used = model.used_map(torch.randn(3, 3, 64, 64))
    assert used.shape == (3, 64, 64)
    assert torch.allclose(used.amin(dim=(1, 2)), torch.tensor(1 / 16))
    assert torch.allclose(used.amax(dim=(1, 2)), torch.tensor(1 / 4))
    model.train()
    assert model.used_map(torch.randn(3, 3, 64, 64)).shape == used.shape and model.training
    crop_pixels = (used == 0.25).sum(dim=(1, 2))
    assert ((crop_pixels >= 32 * 32) & (crop_pixels <= 2 * 32 * 32)).all()  # two 32x32 crops, maybe overlapping


def test_set_k_bounds_and_views() -> None:
    model = build(grid_size=3, levels=3)
    assert model.k_bounds() == (1, 9) and model.k == 2 and model.n_views() == 7
    model.set_k(5)
    assert model.k == 5 and model.n_views() == 1 + 5 + 25
    with pytest.raises(ValueError):
        model.set_k(10)
    with pytest.raises(ValueError, match="regions"):
        build(grid_size=2, regions=5)
    with pytest.raises(ValueError, match="levels"):
        build(levels=1)
    with pytest.raises(ValueError, match="base_resolution"):
        build(base_resolution=4, stages=4)


@pytest.mark.parametrize("rule", ["ratio", "top_p"])
def test_per_image_k_rules_keep_the_configured_regions(rule: str) -> None:
    from search_space.k_rules import make_k_rule

    model = build(grid_size=3, regions=3)
    k_rule = make_k_rule({"k_rule": rule}, k_init=int(model.k), k_bounds=model.k_bounds(), epochs=4)
    for epoch, loss in enumerate([1.0, 0.5, 0.3, 0.2]):
        model.set_k(k_rule.update(epoch, loss))
        assert model.k == 3 and model.n_views() == 4


def test_k_survives_the_state_dict() -> None:
    model = build(grid_size=3)
    model.set_k(4)
    other = build(grid_size=3)
    other.load_state_dict(model.state_dict())
    assert other.k == 4


# --- training signal --------------------------------------------------------------------------------


def test_reinforce_alone_trains_the_location_module_and_nothing_else() -> None:
    torch.manual_seed(0)
    model = build(3, 28, glimpse_loss_weight=0.0, **SMALL).train()
    x, y = torch.randn(8, 3, 28, 28), torch.arange(8) % NUM_CLASSES
    model.auxiliary_loss(model(x), y).backward()
    location = {n: p for n, p in model.named_parameters() if n.startswith("locate.")}
    assert location and all(p.grad is not None and p.grad.abs().sum() > 0 for p in location.values())
    others = [p for n, p in model.named_parameters() if not n.startswith("locate.")]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in others)  # location inputs are detached


def test_cross_entropy_does_not_reach_the_location_module() -> None:
    torch.manual_seed(0)
    model = build(3, 28, **SMALL).train()
    x, y = torch.randn(4, 3, 28, 28), torch.arange(4)
    logits = model(x)
    (F.cross_entropy(logits, y) + model.auxiliary_loss(logits, y) * 0).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in model.named_parameters() if n.startswith("locate."))


def test_glimpse_predictions_read_content_not_position() -> None:
    """The per-glimpse loss never reaches the positional projection: a glimpse is judged by what it shows."""
    torch.manual_seed(0)
    model = build(3, 28, reinforce_weight=0.0, glimpse_loss_weight=1.0, **SMALL).train()
    x, y = torch.randn(4, 3, 28, 28), torch.arange(4)
    model(x)
    model.auxiliary_loss(torch.zeros(4, NUM_CLASSES), y).backward()
    assert model.pos.weight.grad is None or model.pos.weight.grad.abs().sum() == 0
    assert model.backbone.proj.weight.grad.abs().sum() > 0


def test_reinforce_weight_zero_freezes_the_location_module() -> None:
    torch.manual_seed(0)
    model = build(3, 28, reinforce_weight=0.0, **SMALL).train()
    x, y = torch.randn(4, 3, 28, 28), torch.arange(4)
    logits = model(x)
    (F.cross_entropy(logits, y) + model.auxiliary_loss(logits, y)).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in model.named_parameters() if n.startswith("locate."))


@pytest.mark.parametrize("share", [0.0, 0.7, 1.0])
def test_each_glimpse_is_rewarded_by_its_own_prediction(share: float) -> None:
    """d loss / d log pi(glimpse j of image i) = -w * [(1 - s) (R_i - b) / B + s (r_ij - b) / (B (N - 1))]."""
    torch.manual_seed(0)
    w = 0.3
    model = build(3, 28, levels=3, grid_size=3, regions=2, reinforce_weight=w, glimpse_reward_share=share, **SMALL).train()
    x, y = torch.randn(6, 3, 28, 28), torch.arange(6) % NUM_CLASSES
    logits = model(x)
    glimpse_logits = model._cache["glimpse_logits"]  # (B, N, classes)
    logp = model._cache["glimpse_logp"].detach().requires_grad_()  # (B, N - 1)
    model._cache["glimpse_logp"] = logp
    b = model.reward_baseline.item()
    model.auxiliary_loss(logits, y).backward()
    reward = (logits.argmax(1) == y).float()[:, None]  # (B, 1)
    own = (glimpse_logits[:, 1:].argmax(2) == y[:, None]).float()  # (B, N - 1)
    B, n = own.shape
    expected = -w * ((1 - share) * (reward - b) / B + share * (own - b) / (B * n))
    torch.testing.assert_close(logp.grad, expected)
    mixed = (1 - share) * reward.mean() + share * own.mean()
    assert model.reward_baseline.item() == pytest.approx(0.9 * b + 0.1 * mixed.item())
    assert "reward_baseline" in model.state_dict()
    assert model.auxiliary_loss(logits, y).item() == 0.0  # the cache is consumed once


# --- FLOPs ------------------------------------------------------------------------------------------


def hand_flops(model: TNetTraversal, *, channels: int, attention: bool, size: int = 64) -> float:
    """TNet FLOPs written out from the model's settings: the crop sampling of every view, a stem
    and one basic block per stage (dense_cnn's) plus a projection per view, the cell-pooling matmuls
    and a 2-layer 1x1 location module per split view, a 24 -> D positional linear per view (and a
    D -> 1 score when attention-pooled), and the head."""
    base, width, stages, dim = model.base_resolution, model.width, model.stages, model.embed_dim
    grid, regions, levels = model.grid_size, model._k, model.levels
    side, c_in = base, width
    backbone = 2 * 9 * base * base * channels * width
    sides, chans = [], []
    for s in range(stages):
        c_out = width * 2**s
        if s > 0:
            side = (side + 1) // 2
        if model.encoder == "plain":  # one strided 3x3 conv per stage after the first (stage 0 is the stem)
            backbone += 2 * 9 * side * side * c_in * c_out if s > 0 else 0
        else:
            if s > 0:
                backbone += 2 * side * side * c_in * c_out  # 1x1 projection shortcut
            backbone += 2 * 9 * side * side * (c_in * c_out + c_out * c_out)
        sides.append(side)
        chans.append(c_out)
        c_in = c_out
    backbone += 2 * c_in * dim
    m_side, m_chan = (sides[-2], chans[-2]) if stages > 1 else (base, width)
    location = 2 * m_chan * m_side * grid * (m_side + grid) + 2 * grid * grid * ((m_chan + dim + 2) * dim + dim)
    if model.location_prior == "foreground":  # the prior's cell pooling of |view - background| on each split view
        location += 2 * grid * base * (base + grid)
    per_view = backbone + 2 * 24 * dim + (2 * dim if attention else 0)
    views = sum(regions**level for level in range(levels))
    split = views - regions ** (levels - 1)
    crops = 0.0
    for level in range(levels):  # separable bilinear + average: ss samples a side, 2 taps each, 2 FLOPs a tap
        ss = max(1, min(4, round(model.overlap**level * size / base)))
        if level == 0 and size % (base * ss) == 0 and size // (base * ss) in (1, 2):  # an average pool, 1 per pixel
            crops += channels * size * size
            continue
        row_outputs, col_outputs = base * channels * size, base * base * channels
        crops += regions**level * 2 * (2 * ss) * (row_outputs + col_outputs)
    return crops + views * per_view + split * location + 2 * dim * NUM_CLASSES


FLOP_CASES = [
    {"levels": 2, "pooling": "mean"},
    {"levels": 2, "pooling": "attention", "grid_size": 3, "regions": 3},
    {"levels": 3, "pooling": "mean", "grid_size": 3, "regions": 2, "stages": 2},
    {"levels": 3, "pooling": "attention", "grid_size": 2, "regions": 2, "stages": 1, "base_resolution": 10},
    {"levels": 2, "pooling": "mean", "stages": 4, "width": 4, "base_resolution": 16, "grid_size": 5, "regions": 1},
    {"levels": 2, "pooling": "attention", "encoder": "plain", "grid_size": 3, "regions": 2, "base_resolution": 24},
    {"levels": 3, "pooling": "mean", "encoder": "plain", "stages": 2, "grid_size": 3, "regions": 2},
    {"levels": 3, "pooling": "mean", "grid_size": 4, "regions": 1, "location_prior": "foreground", "norm": "batch"},
]


@pytest.mark.parametrize("overrides", FLOP_CASES)
def test_flops_match_hand_formula_and_counter(overrides: dict) -> None:
    torch.manual_seed(0)
    model = build(3, 64, **overrides).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = hand_flops(model, channels=3, attention=overrides["pooling"] == "attention")
    assert model.analytic_flops(x) == expected
    assert counted_flops(model, x) == expected  # FlopCounterMode with pooling's formula (objectives.flops)


def test_flops_follow_the_view_count_in_k() -> None:
    model = build(3, 64, grid_size=4, levels=3, **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    for k in (1, 3, 4):
        model.set_k(k)
        assert counted_flops(model, x) == model.analytic_flops(x)
        assert model.n_views() == 1 + k + k * k


@pytest.mark.parametrize("size", [64, 128])  # a sample on each pixel centre; between two pixels (ss capped at 4)
def test_a_whole_frame_at_an_integer_ratio_is_pooled_as_the_taps_would_sample_it(size: int) -> None:
    model = build(3, size, base_resolution=16, **SMALL).eval()
    x = torch.randn(2, 3, size, size)
    centre = torch.zeros(2, 1, 2)
    assert model._pools_whole_frame(0, size, size)
    assert not model._pools_whole_frame(0, 60, 60) and not model._pools_whole_frame(0, 256, 256)  # 4 pixels a sample
    pooled = model._crops(x, centre, 0)
    model._pools_whole_frame = lambda *args: False  # the two gather passes instead
    assert torch.allclose(pooled, model._crops(x, centre, 0), atol=1e-6)


def test_only_the_crop_sampling_depends_on_image_size() -> None:
    torch.manual_seed(0)
    model = build(3, 64, **SMALL).eval()
    network = []
    for size in (28, 64, 128):
        x = torch.randn(2, 3, size, size)
        assert counted_flops(model, x) == model.analytic_flops(x)
        network.append(model.analytic_flops(x) - model.crop_flops(size, size))
    assert len(set(network)) == 1


# --- export -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{"levels": 3, "grid_size": 3, "pooling": "attention"}, {}, {"levels": 3, "norm": "batch", "location_prior": "foreground"}],
)
def test_torch_export_matches_eval_model(overrides: dict) -> None:
    torch.manual_seed(0)
    assert_exports_exactly(build(3, 64, **SMALL, **overrides).eval(), torch.randn(2, 3, 64, 64))


@pytest.mark.slow
def test_onnx_matches_eval_model(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build(3, 32, levels=3, grid_size=3, **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    assert_onnx_matches(model, x, [x], tmp_path / "tnet.onnx", atol=1e-4, rtol=1e-4)


# --- learning ---------------------------------------------------------------------------------------


def _blobs_on_a_larger_frame(n: int, seed: int, *, frame: int = 32, blob: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Blob images (the class is in the blob's size and colours) pasted at random places on a dark,
    noisy frame, so only a glimpse on the blob can tell the class."""
    x, y = blobs(n=n, size=blob, classes=NUM_CLASSES, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    images = 0.05 * torch.randn(n, 3, frame, frame, generator=g)
    corner = torch.randint(0, frame - blob + 1, (n, 2), generator=g)
    for i, (top, left) in enumerate(corner.tolist()):
        images[i, :, top : top + blob, left : left + blob] += x[i]
    return images, y


def _blob_mass_in_chosen_cell(model: TNetTraversal, x: torch.Tensor) -> float:
    """Share of each image's (positive) intensity inside the level-1 view the model picks, mean over images."""
    with torch.no_grad():
        model.eval()
        centres = model._traverse(x)[2][1][:, 0]  # (B, 2) first pick
    size, half = x.shape[-1], model.half_sizes[1]
    axis = (2 * torch.arange(size) + 1) / size - 1
    iy = (axis[None, :] - centres[:, :1]).abs() <= half
    ix = (axis[None, :] - centres[:, 1:]).abs() <= half
    mass = x.clamp(min=0).sum(dim=1)  # (B, S, S)
    box = (iy[:, :, None] & ix[:, None, :]).float()
    return ((mass * box).sum(dim=(1, 2)) / mass.sum(dim=(1, 2))).mean().item()


def test_location_module_moves_onto_the_blob() -> None:
    """REINFORCE alone moves the picked cell onto the blob (a random cell holds about 0.2 of its mass)."""
    torch.manual_seed(0)
    x, y = _blobs_on_a_larger_frame(64, seed=0)
    model = build(3, 32, grid_size=4, regions=1, base_resolution=8, overlap=0.4, **SMALL)
    start, before = time.perf_counter(), _blob_mass_in_chosen_cell(model, x)
    train_steps(model, x, y, 100)
    after = _blob_mass_in_chosen_cell(model, x)
    assert before < 0.25 and after > 0.35, f"blob mass in the picked cell {before:.2f} -> {after:.2f}"
    assert time.perf_counter() - start < 30  # about 5 s on an idle core


def test_overfits_64_blob_images() -> None:
    torch.manual_seed(0)
    x, y = blobs(classes=NUM_CLASSES)
    model = build(3, 28, **SMALL)
    start = time.perf_counter()
    accuracy, steps = train_steps(model, x, y, 100, target=0.95)
    assert accuracy >= 0.95, f"train accuracy {accuracy:.2f} after {steps} steps"
    assert time.perf_counter() - start < 30  # about 5 s on an idle core
