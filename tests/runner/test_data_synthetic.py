"""The synthetic cell generator: determinism, balance, modalities, and that it is learnable but not trivial."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from runner.data import MODALITY_CHANNELS, SYNTHETIC_CLASSES, describe_dataset, load_dataset
from runner.data.synthetic import generate
from tests.runner.train_probe import val_accuracy

MODALITIES = tuple(MODALITY_CHANNELS)


@pytest.mark.parametrize("modality", MODALITIES)
def test_same_seed_same_bits_other_seed_other_images(modality: str) -> None:
    a = generate(60, modality=modality, seed=7)
    b = generate(60, modality=modality, seed=7)
    c = generate(60, modality=modality, seed=8)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_splits_are_independent_streams() -> None:
    small = load_dataset(source="synthetic", train=50, val=40, test=30)
    large = load_dataset(source="synthetic", train=120, val=40, test=30)

    def raw(d, split):  # undo the normalisation, which follows the train statistics
        return d.images(split) * torch.tensor(d.std).view(1, -1, 1, 1) + torch.tensor(d.mean).view(1, -1, 1, 1)

    torch.testing.assert_close(raw(small, "val"), raw(large, "val"), atol=1e-5, rtol=0)
    torch.testing.assert_close(raw(small, "test"), raw(large, "test"), atol=1e-5, rtol=0)
    assert torch.equal(small.val_y, large.val_y)
    train, val, test = (generate(40, split=s).images for s in ("train", "val", "test"))
    assert not torch.equal(train, val) and not torch.equal(val, test)


def test_classes_are_balanced_and_subsets_relabelled() -> None:
    batch = generate(503)  # crosses a chunk boundary
    assert torch.bincount(batch.labels, minlength=5).tolist() == [101, 101, 101, 100, 100]
    subset = load_dataset(source="synthetic", class_names=["basophil", "lymphocyte"], train=20, val=10, test=10)
    assert subset.class_names == ["basophil", "lymphocyte"] and subset.num_classes == 2
    assert torch.bincount(subset.train_y).tolist() == [10, 10]


def test_brightfield_is_rgb_in_unit_range() -> None:
    x = generate(100, modality="brightfield").images
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert x.mean() > 0.6  # mostly bright background: the cell is a minority of the frame
    # Stain-like colour: nuclei absorb more green than red or blue, so the darkest pixels are purple.
    dark = x.mean(1) < 0.45
    assert dark.any()
    r, g, b = (x[:, i][dark].mean() for i in range(3))
    assert g < r and g < b


def test_opd_is_one_unclipped_phase_channel() -> None:
    x = generate(100, modality="opd").images
    assert x.shape == (100, 1, 32, 32)
    assert x.min() < 0 and x.max() > 1.5  # radians, background around 0, cells thicker
    background = x[:, 0, :3, :3].median()
    assert abs(float(background)) < 0.6


def test_event_frames_are_sparse_non_negative_counts() -> None:
    x = generate(100, modality="event").images
    assert x.shape == (100, 2, 32, 32)
    assert x.min() >= 0 and torch.equal(x, x.round())
    assert (x == 0).float().mean() > 0.8
    on, off = x[:, 0].sum(), x[:, 1].sum()
    assert on > 0 and off > 0 and 0.5 < on / off < 2  # a moving object fires both polarities


@pytest.mark.parametrize("size", [32, 64])
def test_cell_covers_a_minority_of_the_frame(size: int) -> None:
    batch = generate(100, image_size=size)
    cover = batch.cell_mask.flatten(1).mean(1)
    assert batch.images.shape[-1] == size
    assert cover.min() > 0.02 and cover.max() < 0.45
    assert cover.mean() < 0.3


def test_difficulty_changes_the_look_not_the_labels() -> None:
    easy, hard = generate(50, difficulty=0.0), generate(50, difficulty=1.0)
    assert torch.equal(easy.labels, hard.labels)
    assert not torch.equal(easy.images, hard.images)
    # Harder images are noisier: neighbouring background pixels differ more.
    def roughness(x):
        return (x[..., 1:] - x[..., :-1]).abs().mean()

    assert roughness(hard.images) > roughness(easy.images)


@pytest.mark.parametrize("modality", MODALITIES)
def test_load_synthetic_is_normalised_and_described(modality: str) -> None:
    data = load_dataset(source="synthetic", modality=modality, train=60, val=20, test=20, image_size=24)
    assert (data.in_channels, data.num_classes, data.image_size) == (MODALITY_CHANNELS[modality], 5, 24)
    assert describe_dataset(source="synthetic", modality=modality, image_size=24) == (
        data.in_channels, data.num_classes, data.image_size)
    x = data.images("train")
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(data.in_channels), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3), correction=0), torch.ones(data.in_channels), atol=1e-3, rtol=0)
    assert data.class_names == list(SYNTHETIC_CLASSES) and data.modality == modality
    assert "synthetic" in data.source and "seed 0" in data.source


def test_defaults() -> None:
    assert describe_dataset(source="synthetic") == (3, 5, 32)


# -- learnable, but not trivially ------------------------------------------------------------


def _tiny_cnn(in_channels: int, width: int) -> nn.Module:
    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(in_channels, width), block(width, 2 * width), block(2 * width, 4 * width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 5))


def train_and_score(*, modality: str, train: int, epochs: int, width: int, seed: int = 0) -> float:
    """Plain-torch CNN on load_dataset(source='synthetic'); returns validation accuracy."""
    data = load_dataset(source="synthetic", modality=modality, train=train, val=500, test=10, seed=seed)
    torch.manual_seed(seed)
    return val_accuracy(_tiny_cnn(data.in_channels, width), data, epochs=epochs, lr=3e-3)


@pytest.fixture
def one_thread():
    """Train on one thread: deterministic, and not slowed by spin-waits on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_small_cnn_learns_the_default_data() -> None:
    accuracy = train_and_score(modality="brightfield", train=600, epochs=4, width=12)
    assert 0.45 < accuracy < 0.99  # chance is 0.2


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_good_small_cnn_lands_in_the_intended_band() -> None:
    """At the default difficulty a decent dense CNN trained a few epochs scores about 85-95%."""
    accuracy = train_and_score(modality="brightfield", train=2000, epochs=8, width=32)
    assert 0.82 < accuracy < 0.97
