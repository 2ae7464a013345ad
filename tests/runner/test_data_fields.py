"""Synthetic smear fields: a small target cell among distractors, cues fixed in pixels, uint8 frames."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from runner.data import describe_dataset, fields, load_dataset
from runner.data.fields import generate_fields, red_cell_count
from runner.data.synthetic import SYNTHETIC_CLASSES, generate
from search_space.errors import DataError
from search_space.spec import _FIELD_DEFAULTS


def test_fields_are_uint8_balanced_and_deterministic() -> None:
    a = generate_fields(23, image_size=128, seed=3)
    b = generate_fields(23, image_size=128, seed=3)
    assert a.images.dtype == torch.uint8 and a.images.shape == (23, 3, 128, 128)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, generate_fields(23, image_size=128, seed=4).images)
    counts = torch.bincount(a.labels, minlength=5)
    assert counts.max() - counts.min() <= 1
    assert generate_fields(0, image_size=128).images.shape == (0, 3, 128, 128)


@pytest.mark.parametrize("size", [128, 256])
def test_the_target_is_a_small_cell_where_its_box_says(size: int) -> None:
    batch = generate_fields(20, image_size=size, target_size=32, seed=1)
    area = batch.cell_mask.flatten(1).sum(1)  # (N,) pixels of the target's body
    expected = math.pi * 16**2
    assert ((area > 0.75 * expected) & (area < 1.3 * expected)).all()  # the same cell whatever the frame
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    cy = (batch.cell_mask * ys).flatten(1).sum(1) / area
    cx = (batch.cell_mask * xs).flatten(1).sum(1) / area
    assert torch.allclose(cx, batch.boxes[:, 0], atol=2.0) and torch.allclose(cy, batch.boxes[:, 1], atol=2.0)
    assert ((batch.boxes[:, 2] > 13) & (batch.boxes[:, 2] < 19)).all()
    # the target sits at different places: selection has to find it
    assert batch.boxes[:, :2].std(0).min() > size / 8


def test_cues_keep_their_pixel_width_when_the_frame_grows() -> None:
    """Fine texture inside the target is as sharp at 256 px as at 128 px (the frame-scaled cell
    generator halves it): what a field adds is frame, not blur."""

    def sharpness(size: int) -> float:
        batch = generate_fields(40, image_size=size, difficulty=0.0, seed=2)
        x = batch.images.float().mean(1)  # (N, S, S) grey
        inside = batch.cell_mask[:, :, 1:] > 0.9
        return float((x[:, :, 1:] - x[:, :, :-1]).abs()[inside].mean())

    assert sharpness(256) == pytest.approx(sharpness(128), rel=0.15)


def test_a_4x_shrink_averages_the_classes_together() -> None:
    """What survives a 4x shrink: the mean colour of the cell is nearly the same for every class, so
    the class lives in the fine cues (lobes, grain) that the shrink blurs away."""
    batch = generate_fields(200, image_size=128, difficulty=0.0, seed=5)
    x = batch.images.float() / 255
    weight = batch.cell_mask[:, None]
    mean_colour = (x * weight).flatten(2).sum(2) / weight.flatten(2).sum(2)  # (N, 3)
    per_class = torch.stack([mean_colour[batch.labels == c].mean(0) for c in range(5)])  # (5, 3)
    spread = (per_class.max(0).values - per_class.min(0).values).max()
    within = torch.stack([mean_colour[batch.labels == c].std(0) for c in range(5)]).mean()
    assert spread < 3 * within  # class means differ by less than a few image-to-image deviations
    # the fine structure differs a lot: high-frequency energy inside the cell per class
    detail = (x - F.interpolate(F.avg_pool2d(x, 4), scale_factor=4, mode="nearest")).abs().mean(1)
    energy = (detail * batch.cell_mask).flatten(1).sum(1) / batch.cell_mask.flatten(1).sum(1)
    per_class_energy = torch.stack([energy[batch.labels == c].mean() for c in range(5)])
    assert per_class_energy.max() > 1.5 * per_class_energy.min()


def test_distractors_are_counted_and_default_to_a_covering_density() -> None:
    assert red_cell_count(256, 32) == round(0.12 * 256**2 / (math.pi * 12.8**2))
    empty = generate_fields(6, image_size=128, distractors=0, seed=0, difficulty=0.0)
    crowded = generate_fields(6, image_size=128, distractors=60, seed=0, difficulty=0.0)
    red = lambda b: ((b.images[:, 0].float() - b.images[:, 1].float()) > 40).float().mean()  # noqa: E731 - pink pixels
    assert red(crowded) > red(empty) + 0.1


def test_load_dataset_takes_the_field_settings() -> None:
    data = load_dataset(source="synthetic", layout="field", image_size=96, target_size=16, train=20, val=10, test=10)
    assert data.train_x.dtype == torch.uint8 and data.image_size == 96 and data.num_classes == 5
    assert "fields of 96px, target 16px" in data.source
    assert describe_dataset(source="synthetic", layout="field", image_size=96) == (3, 5, 96)
    x = data.images("val")
    assert x.dtype == torch.float32 and abs(float(data.images("train").mean())) < 0.05


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"layout": "grid"}, "unknown layout"),
    ({"layout": "field", "image_size": 32}, "from 64 to 512"),
    ({"layout": "field", "image_size": 128, "target_size": 80}, "target_size"),
    ({"layout": "field", "image_size": 128, "modality": "opd"}, "brightfield only"),
    ({"layout": "cell", "target_size": 20}, "settings of layout 'field'"),
    ({"cue_scale": 20}, "cue_scale"),
    ({"layout": "field", "image_size": 128, "distractors": -1}, "distractors"),
])
def test_bad_field_settings_get_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        describe_dataset(source="synthetic", **kwargs)


def test_the_cell_generator_keeps_its_look_unless_a_cue_scale_is_given() -> None:
    default = generate(10, image_size=64, seed=0)
    assert torch.equal(default.images, generate(10, image_size=64, seed=0, cue_scale=2.0).images)  # 64 / 32
    fixed = generate(10, image_size=64, seed=0, cue_scale=1.0)
    assert not torch.equal(default.images, fixed.images)

    def roughness(x: torch.Tensor) -> float:
        return float((x[..., 1:] - x[..., :-1]).abs().mean())

    assert roughness(fixed.images) > roughness(default.images)  # finer texture at the same frame
    assert set(SYNTHETIC_CLASSES) == {"neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"}


def test_the_space_file_defaults_are_the_generators() -> None:
    assert _FIELD_DEFAULTS == {"image_size": fields.DEFAULT_FIELD_SIZE, "target_size": fields.DEFAULT_TARGET_SIZE,
                               "cue_scale": fields.DEFAULT_CUE_SCALE}
