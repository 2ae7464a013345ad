"""``dense_cnn``: a small ResNet-style CNN, the dense baseline every sparse design is compared with.

It looks at every pixel, so its ``used_map`` is all ones and it has no k. It must be a strong
baseline: width 16, three stages of one basic block (widths 16-32-64) reaches ~96% on 28 px
BloodMNIST-like data at ~19 MFLOPs.

Its stem and residual stages are also built by ``conv_stem`` and ``residual_stages`` (with their
FLOPs in ``residual_stages_flops``), so a strategy whose paper allows any backbone (TNet) can run
the very encoder the dense baseline runs, with a norm layer of its own choice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from search_space.strategies.base import CellClassifier, ParamSpec, register_strategy
from search_space.strategies.blocks import channels_last, conv2d_flops, linear_flops


def _conv_out(size: int, stride: int) -> int:
    """Output side of a 3x3 convolution with padding 1."""
    return (size - 1) // stride + 1


NormLayer = Callable[[int], nn.Module]  # channels -> norm module (BatchNorm2d by default)


class BasicBlock(nn.Module):
    """Two 3x3 conv-norm layers with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, *, c_in: int, c_out: int, stride: int, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = norm_layer(c_out)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm_layer(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


def conv_stem(*, in_channels: int, width: int, stride: int, norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Sequential:
    """3x3 conv -> norm -> ReLU: the stem in front of ``residual_stages``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False), norm_layer(width), nn.ReLU(inplace=True)
    )


def residual_stages(
    *, width: int, stages: int, blocks_per_stage: int, norm_layer: NormLayer = nn.BatchNorm2d
) -> list[list[BasicBlock]]:
    """The blocks of each stage: stage s has ``width * 2**s`` channels and, after the first, halves H and W."""
    out: list[list[BasicBlock]] = []
    c_in = width
    for s in range(stages):
        c_out = width * 2**s
        stage = []
        for b in range(blocks_per_stage):
            stage.append(BasicBlock(c_in=c_in, c_out=c_out, stride=2 if (s > 0 and b == 0) else 1, norm_layer=norm_layer))
            c_in = c_out
        out.append(stage)
    return out


def residual_stages_flops(h: int, w: int, *, width: int, stages: int, blocks_per_stage: int) -> list[tuple[float, int, int]]:
    """(FLOPs, output height, output width) of each stage of ``residual_stages`` on an (h, w) input."""
    out = []
    c_in = width
    for s in range(stages):
        c_out = width * 2**s
        flops = 0.0
        for b in range(blocks_per_stage):
            stride = 2 if (s > 0 and b == 0) else 1
            h, w = _conv_out(h, stride), _conv_out(w, stride)
            flops += conv2d_flops(h, w, c_in, c_out, 3) + conv2d_flops(h, w, c_out, c_out, 3)
            if stride != 1 or c_in != c_out:
                flops += conv2d_flops(h, w, c_in, c_out, 1)
            c_in = c_out
        out.append((flops, h, w))
    return out


@register_strategy(
    "dense_cnn",
    params={
        "width": ParamSpec("int", low=4, high=128, default=16, doc="channels of the stem and first stage (doubled per stage)"),
        "stages": ParamSpec("int", low=1, high=4, default=3, doc="resolution stages; each after the first halves H and W"),
        "blocks_per_stage": ParamSpec("int", low=1, high=4, default=1, doc="basic residual blocks (two 3x3 convs) per stage"),
        "stem_stride": ParamSpec("choice", choices=(1, 2), default=1, doc="stride of the stem conv (2 = 4x cheaper body)"),
    },
    uses_k_rule=False,
    doc="Small ResNet-style CNN over every pixel (dense baseline).",
)
class DenseCNN(CellClassifier):
    """Stem conv -> ``stages`` stages of ``blocks_per_stage`` basic blocks -> global average pool -> linear.

    Stage s has ``width * 2**s`` channels; every stage after the first halves the resolution.
    """

    def __init__(
        self, *, in_channels: int, num_classes: int, width: int, stages: int, blocks_per_stage: int, stem_stride: int
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.width, self.stages, self.blocks_per_stage, self.stem_stride = width, stages, blocks_per_stage, stem_stride
        self.stem = conv_stem(in_channels=in_channels, width=width, stride=stem_stride)
        blocks = residual_stages(width=width, stages=stages, blocks_per_stage=blocks_per_stage)
        self.body = nn.Sequential(*(block for stage in blocks for block in stage))
        self.fc = nn.Linear(width * 2 ** (stages - 1), num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(channels_last(images)))  # (B, C_last, h, w)
        return self.fc(x.mean(dim=(2, 3)))  # (B, num_classes)

    def used_map(self, images: torch.Tensor) -> torch.Tensor:
        B, _, H, W = images.shape
        return images.new_ones(B, H, W)

    def analytic_flops(self, images: torch.Tensor) -> float:
        """Convolutions (stem, blocks, projections) and the final linear; BN, ReLU and pooling excluded."""
        h, w = _conv_out(images.shape[2], self.stem_stride), _conv_out(images.shape[3], self.stem_stride)
        flops = conv2d_flops(h, w, self.in_channels, self.width, 3)
        stages = residual_stages_flops(h, w, width=self.width, stages=self.stages, blocks_per_stage=self.blocks_per_stage)
        return flops + sum(f for f, _, _ in stages) + linear_flops(1, self.width * 2 ** (self.stages - 1), self.num_classes)
