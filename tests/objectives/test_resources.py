"""Parameters, latency and peak memory, and that measuring leaves the model as it was."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from objectives import count_flops, count_params, measure_latency_ms, measure_peak_memory_mb

MIB = 2**20


def state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def test_count_params_counts_parameters_once_and_not_buffers() -> None:
    shared = nn.Linear(10, 5)
    model = nn.Sequential(shared, nn.BatchNorm1d(5), shared)  # a shared layer, BN buffers
    assert count_params(model) == 10 * 5 + 5 + 2 * 5
    frozen = nn.Linear(3, 2).requires_grad_(False)
    assert count_params(frozen) == 8  # frozen weights still ship


@pytest.mark.parametrize(
    "measure",
    [count_flops, measure_peak_memory_mb, lambda m, x: measure_latency_ms(m, x, warmup=0, repeats=1)],
    ids=["flops", "memory", "latency"],
)
def test_measuring_restores_each_module_mode_and_grad_mode(measure) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    model.train()
    model[1].eval()  # a deliberately frozen norm inside a training model
    seen = []
    model[0].register_forward_hook(lambda module, args, out: seen.append((module.training, torch.is_grad_enabled())))
    measure(model, torch.randn(3, 4))
    assert seen and all(entry == (False, False) for entry in seen)  # measured in eval, no autograd
    assert [m.training for m in model] == [True, False, True]
    assert torch.is_grad_enabled()


def test_latency_is_a_positive_finite_ms_per_image() -> None:
    latency = measure_latency_ms(nn.Linear(64, 64), torch.randn(8, 64), warmup=1, repeats=3)
    assert math.isfinite(latency) and latency > 0


def test_latency_refuses_no_repeats() -> None:
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure_latency_ms(nn.Linear(2, 2), torch.randn(1, 2), repeats=0)


def test_peak_memory_cpu_matches_a_hand_count() -> None:
    # The peak is inside ReLU: the hidden activation and ReLU's copy of it are both alive.
    model = nn.Sequential(nn.Linear(256, 4096), nn.ReLU(), nn.Linear(4096, 10))
    images = torch.randn(64, 256)
    hidden = 64 * 4096 * 4
    expected = state_bytes(model) + images.numel() * 4 + 2 * hidden
    assert measure_peak_memory_mb(model, images) == pytest.approx(expected / MIB, rel=1e-3)


def test_peak_memory_does_not_count_in_place_work_on_the_input() -> None:
    images = torch.randn(32, 1024)
    assert measure_peak_memory_mb(nn.ReLU(inplace=True), images) == pytest.approx(images.numel() * 4 / MIB)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_cuda_is_close_to_the_cpu_figure() -> None:
    model = nn.Sequential(nn.Linear(256, 4096), nn.ReLU(), nn.Linear(4096, 10))
    images = torch.randn(64, 256)
    cpu = measure_peak_memory_mb(model, images)
    torch._C._cuda_clearCublasWorkspaces()  # as a CUDA graph capture does: the next matmul allocates it again
    cuda = measure_peak_memory_mb(model.cuda(), images.cuda())
    assert cuda == pytest.approx(cpu, rel=0.05)
    assert measure_latency_ms(model, images.cuda(), warmup=1, repeats=3) > 0
