"""The shared blocks' fast paths compute what their plain forms compute."""

from __future__ import annotations

import pytest
import torch

from search_space.strategies.blocks import SORT_ALL_BELOW, Attention, channels_last, top_indices


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("biased", [False, True])
def test_fused_attention_is_the_explicit_one(masked: bool, biased: bool) -> None:
    torch.manual_seed(0)
    attention = Attention(dim=16, num_heads=4).eval()
    x = torch.randn(3, 9, 16)
    key_mask = torch.rand(3, 9) > 0.3 if masked else None
    if key_mask is not None:
        key_mask[:, 0] = True  # a query always has a key (the CLS token)
    bias = torch.randn(3, 4, 9, 9) if biased else None
    with torch.no_grad():
        fused = attention(x, bias=bias, key_mask=key_mask)
        explicit = attention(x, bias=bias, key_mask=key_mask, keep_attn=True)  # the weights kept: explicit matmuls
    assert attention.last_attn is not None
    assert torch.allclose(fused, explicit, atol=1e-5)


@pytest.mark.parametrize("n", [SORT_ALL_BELOW - 1, SORT_ALL_BELOW, 4096])
def test_top_indices_are_a_stable_sort_s_first_k_whatever_the_ties(n: int) -> None:
    generator = torch.Generator().manual_seed(n)
    for k in (1, 7, n // 3, n - 1, n):
        for scores in (torch.randn(4, n, generator=generator),
                       torch.randint(0, 3, (4, n), generator=generator).float(),  # many ties, at the k-th value too
                       torch.zeros(4, n)):  # a flat background
            expected = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
            assert torch.equal(top_indices(scores, k), expected)


def test_top_indices_put_nan_first_and_take_nothing_for_k_0() -> None:
    scores = torch.randn(3, 2000, generator=torch.Generator().manual_seed(0))
    scores[0, [5, 100, 1500]] = float("nan")
    scores[1, [7, 9]] = torch.tensor([float("inf"), float("nan")])
    for k in (0, 1, 2, 5, 300):
        assert torch.equal(top_indices(scores, k), scores.sort(dim=1, descending=True, stable=True).indices[:, :k])


def test_fused_attention_trains_like_the_explicit_one() -> None:
    torch.manual_seed(0)
    attention = Attention(dim=16, num_heads=4)
    x = torch.randn(2, 5, 16, requires_grad=True)
    grads = []
    for keep in (False, True):
        x.grad = None
        attention(x, keep_attn=keep).square().sum().backward()
        grads.append(x.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_channels_last_is_in_the_exported_graph() -> None:
    class Conv(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return channels_last(images) * 2

    program = torch.export.export(Conv(), (torch.randn(2, 3, 8, 8),), strict=False)  # grad enabled: still converted
    assert any("contiguous" in str(node.target) for node in program.graph.nodes)


def test_channels_last_only_where_no_gradient_is_taken() -> None:
    images = torch.randn(2, 3, 8, 8)
    assert channels_last(images) is images  # training keeps NCHW
    with torch.no_grad():
        assert channels_last(images).is_contiguous(memory_format=torch.channels_last)
