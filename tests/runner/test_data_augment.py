"""augment_batch: random flips and 90-degree rotations, one per image."""

from __future__ import annotations

import pytest
import torch

from runner.data import augment_batch


def _batch(b: int = 64, c: int = 3, h: int = 6, w: int = 6) -> torch.Tensor:
    return torch.arange(b * c * h * w, dtype=torch.float32).view(b, c, h, w)


def test_shape_and_pixel_multiset_per_image_are_kept() -> None:
    x = torch.rand(32, 3, 8, 8)
    y = augment_batch(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    for a, b in zip(x, y, strict=True):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)


def test_every_image_gets_one_of_the_eight_symmetries_same_for_all_channels() -> None:
    x = _batch()
    y = augment_batch(x, torch.Generator().manual_seed(1))
    seen = set()
    for a, b in zip(x, y, strict=True):
        matches = [
            (k, flip)
            for k in range(4)
            for flip in (False, True)
            if torch.equal(b, torch.rot90(a.flip(-1) if flip else a, k, (1, 2)))
        ]
        assert len(matches) == 1  # the same transform on every channel
        seen.add(matches[0])
    assert len(seen) == 8  # 64 draws hit all eight symmetries


def test_seeded_generator_repeats_and_different_seeds_differ() -> None:
    x = _batch()
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rectangular_images_only_flip() -> None:
    x = _batch(b=32, c=2, h=4, w=6)
    y = augment_batch(x, torch.Generator().manual_seed(2))
    assert y.shape == x.shape
    allowed = lambda a: [a, a.flip(-1), a.flip(-2), a.flip(-1).flip(-2)]  # noqa: E731
    assert all(any(torch.equal(b, t) for t in allowed(a)) for a, b in zip(x, y, strict=True))


def test_runs_where_the_images_are_with_a_cpu_generator() -> None:
    # the meta device stands in for a GPU: the gather happens there and the result stays there
    x = torch.rand(16, 3, 8, 8).to("meta")
    y = augment_batch(x, torch.Generator().manual_seed(0))
    assert y.device == x.device and y.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_runs_on_the_images_device() -> None:
    x = torch.rand(16, 3, 8, 8, device="cuda")
    y = augment_batch(x, torch.Generator(device="cuda").manual_seed(0))
    assert y.device == x.device
    for a, b in zip(x, y, strict=True):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
