"""The trial's device path: data placed once, batches gathered and augmented where it lives, and the
bf16 setting (CUDA only). Without a GPU the ``meta`` device stands in for one: its tensors have a
device and a shape but no values, so it shows what travels from the host and what does not."""

from __future__ import annotations

import json

import pytest
import torch

from runner.data import augment
from runner.engine import trial
from runner.engine.trial import effective_precision, place_data, run_trial, training_batches
from search_space.build import default_config
from tests.runner.test_trial import probe_config, tiny_data

META = torch.device("meta")


@pytest.fixture()
def host_copies(monkeypatch) -> list[torch.Tensor]:
    """Every tensor that ``Tensor.to`` copies from the host to another device while the test runs."""
    copies: list[torch.Tensor] = []
    real_to = torch.Tensor.to

    def to(self: torch.Tensor, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type != "cpu":
            copies.append(self)
        return out

    monkeypatch.setattr(torch.Tensor, "to", to)
    return copies


def epoch(images: torch.Tensor, labels: torch.Tensor, *, augment_images: bool = True, seed: int = 0, device=META):
    return list(training_batches(images, labels, batch_size=24, generator=torch.Generator().manual_seed(seed),
                                 augment=augment_images, device=device))


def test_cpu_data_is_used_where_it_is_without_a_copy() -> None:
    data = tiny_data()
    splits = place_data(data, "cpu", budget_bytes=0)  # no budget applies to data already on the device
    assert splits.resident
    assert all(getattr(splits, name) is getattr(data, name) for name in ("train_x", "train_y", "val_x", "test_y"))


def test_resident_data_moves_once_and_batches_never_copy_images_from_the_host(host_copies) -> None:
    data = tiny_data(n=96)
    splits = place_data(data, META)
    assert splits.resident and {t.device for t in (splits.train_x, splits.val_x, splits.test_y)} == {META}
    assert len(host_copies) == 6  # the three splits' images and labels, once

    host_copies.clear()
    augment._pixel_orders.cache_clear()
    batches = epoch(splits.train_x, splits.train_y)
    assert [len(y) for _, y in batches] == [24] * 4
    assert all(x.device == META and y.device == META and x.shape[1:] == (3, 16, 16) for x, y in batches)
    # only indices travel: the epoch's order, the symmetry table once, then each batch's choices
    assert all(not t.dtype.is_floating_point for t in host_copies), [(t.dtype, t.shape) for t in host_copies]
    assert [tuple(t.shape) for t in host_copies] == [(96,), (8, 256)] + [(24,)] * 4


def test_over_the_budget_the_data_stays_on_the_host_and_each_batch_is_copied(host_copies) -> None:
    data = tiny_data(n=96)
    size = sum(t.numel() * t.element_size() for t in (data.train_x, data.train_y, data.val_x, data.val_y,
                                                      data.test_x, data.test_y))
    assert place_data(data, META, budget_bytes=size).resident  # the budget is inclusive
    splits = place_data(data, META, budget_bytes=size - 1)
    assert not splits.resident and splits.train_x is data.train_x

    host_copies.clear()
    batches = epoch(splits.train_x, splits.train_y)
    assert all(x.device == META for x, _ in batches)
    assert sum(t.dtype.is_floating_point and t.dim() == 4 for t in host_copies) == len(batches)


def test_batches_draw_the_order_then_one_augmentation_per_batch_from_the_generator() -> None:
    # the draws a seeded trial has always made, in that order: what keeps CPU numbers unchanged
    data = tiny_data(n=96)
    generator = torch.Generator().manual_seed(5)
    order = torch.randperm(96, generator=generator)
    expected = [(augment.augment_batch(data.train_x[i], generator), data.train_y[i]) for i in order.split(24)]
    got = epoch(data.train_x, data.train_y, seed=5, device="cpu")
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, expected, strict=True))


def test_the_trial_places_its_data_once_and_trains_on_what_was_placed(tmp_path, monkeypatch) -> None:
    placed, fed = [], []

    def place(data, device, **kwargs):
        placed.append(place_data(data, device, **kwargs))
        return placed[-1]

    def batches(images, labels, **kwargs):
        fed.append(images)
        return training_batches(images, labels, **kwargs)

    monkeypatch.setattr(trial, "place_data", place)
    monkeypatch.setattr(trial, "training_batches", batches)
    run_trial(probe_config(epochs=2), data=tiny_data(), trial_dir=tmp_path, objectives=["accuracy", "flops"])
    assert len(placed) == 1 and len(fed) == 2 and all(images is placed[0].train_x for images in fed)


def test_bf16_applies_on_cuda_devices_that_support_it_only(monkeypatch) -> None:
    assert effective_precision("fp32", "cpu") == "fp32"
    assert effective_precision("bf16", "cpu") == "fp32"
    assert effective_precision("fp32", "cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert effective_precision("bf16", "cuda") == "bf16" and effective_precision("bf16", "cuda:1") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert effective_precision("bf16", "cuda") == "fp32"
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16'\], got 'fp16'"):
        effective_precision("fp16", "cpu")


def test_bf16_on_the_cpu_trains_in_fp32_to_the_same_numbers_and_says_so(tmp_path) -> None:
    runs = []
    for precision in ("fp32", "bf16"):
        run_trial(probe_config(epochs=2, precision=precision), data=tiny_data(), trial_dir=tmp_path / precision,
                  objectives=["accuracy", "flops"], seed=4)
        runs.append(json.loads((tmp_path / precision / "metrics.json").read_text()))
    assert [m["precision"] for m in runs] == ["fp32", "fp32"]
    drop = ("train_time_s",)
    assert [{k: v for k, v in m.items() if k not in drop} for m in runs][0] == {
        k: v for k, v in runs[1].items() if k not in drop}
    a, b = (torch.load(tmp_path / p / "model.pt") for p in ("fp32", "bf16"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy", ["dense_cnn", "dense_vit", "sparse_topk", "tnet_traversal", "span_pyramid"])
def test_every_strategy_trains_under_bf16_autocast(tmp_path, monkeypatch, strategy: str) -> None:
    # CPU autocast casts the same op families as CUDA's (matmul, conv, linear to bf16; norms, softmax
    # and losses in fp32), so dtype mismatches in a strategy show here without a GPU.
    monkeypatch.setattr(trial, "effective_precision", lambda precision, device: "bf16")
    config = {**default_config(strategy), "epochs": 1, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.05,
              "warmup_epochs": 0.0, "label_smoothing": 0.0, "precision": "bf16"}
    metrics = run_trial(config, data=tiny_data(), trial_dir=tmp_path, objectives=["accuracy", "flops"])
    assert metrics["precision"] == "bf16"
    history = json.loads((tmp_path / "history.json").read_text())
    assert torch.isfinite(torch.tensor(history[-1]["train_loss"]))


# ---------------------------------------------------------------------------------------------
# On a GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_resident_and_copied_batches_on_cuda_equal_the_cpu_batches() -> None:
    data = tiny_data(n=96)
    on_cpu = epoch(data.train_x, data.train_y, seed=3, device="cpu")
    resident = place_data(data, "cuda")
    copied = place_data(data, "cuda", budget_bytes=0)
    assert resident.resident and resident.train_x.is_cuda and not copied.resident
    for splits in (resident, copied):
        batches = epoch(splits.train_x, splits.train_y, seed=3, device="cuda")
        assert all(x.is_cuda and y.is_cuda for x, y in batches)
        assert all(torch.equal(x.cpu(), a) and torch.equal(y.cpu(), b)
                   for (x, y), (a, b) in zip(batches, on_cpu, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["dense_cnn", "sparse_topk"])
def test_a_tiny_trial_trains_in_bf16_on_cuda(tmp_path, strategy: str) -> None:
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16")
    config = {**default_config(strategy), "epochs": 2, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.05,
              "warmup_epochs": 0.5, "label_smoothing": 0.0, "precision": "bf16"}
    metrics = run_trial(config, data=tiny_data(), trial_dir=tmp_path, objectives=["accuracy", "flops"],
                        device="cuda")
    assert metrics["precision"] == "bf16" and 0.0 <= metrics["accuracy"] <= 1.0 and metrics["flops"] > 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    state = torch.load(tmp_path / "model.pt")
    assert all(t.dtype != torch.bfloat16 for t in state.values())  # autocast keeps fp32 weights
