"""Reference image-to-sketch architectures, used only to compare against :class:`SketchExtractor`.

These are this project's own implementations written from the papers' descriptions; they are
built with random weights (no weights are shipped or downloaded) and exist so benchmarks and
evaluations can measure what users would otherwise run, side by side, on the same machine:

- :class:`Pix2PixHDGlobalGenerator` -- Wang et al. 2018, "High-Resolution Image Synthesis and
  Semantic Manipulation with Conditional GANs", the global generator G1. DiffSketch's distilled
  model is a Pix2PixHD network (method.md §9); the defaults are that configuration: ngf 64,
  4 stride-2 downsamplings, 9 residual blocks at the bottleneck, reflection padding, instance norm.
- :class:`InformativeDrawingsGenerator` -- Chan et al. 2022, "Learning to generate line drawings
  that convey geometry and semantics": a ResNet generator (ngf 64, 2 downsamplings, 3 residual
  blocks, instance norm, sigmoid output). It is the network behind ComfyUI's "Realistic Lineart".
- :class:`HED` -- Xie & Tu 2015, "Holistically-Nested Edge Detection": VGG16 trunk (13 convs, no
  final pool, no fully-connected layers), a 1x1 side output after each of the 5 stages, upsampled
  to the input size, fused by a learned 1x1 convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise InvalidInputError(f"norm {kind!r} is not one of 'instance', 'batch'")


class _ResnetBlock(nn.Module):
    """Two reflection-padded 3x3 convolutions with a residual connection (Johnson et al. style)."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm_layer(norm, channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _resnet_generator(
    in_channels: int,
    out_channels: int,
    ngf: int,
    n_downsampling: int,
    n_blocks: int,
    norm: str,
    final: nn.Module,
) -> nn.Sequential:
    """7x7 stem, stride-2 downsamplings, residual blocks, transposed-conv upsamplings, 7x7 head."""
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(in_channels, ngf, 7),
        _norm_layer(norm, ngf),
        nn.ReLU(inplace=True),
    ]
    for i in range(n_downsampling):
        c = ngf * 2**i
        layers += [
            nn.Conv2d(c, c * 2, 3, stride=2, padding=1),
            _norm_layer(norm, c * 2),
            nn.ReLU(inplace=True),
        ]
    bottleneck = ngf * 2**n_downsampling
    layers += [_ResnetBlock(bottleneck, norm) for _ in range(n_blocks)]
    for i in range(n_downsampling):
        c = ngf * 2 ** (n_downsampling - i)
        layers += [
            nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
            _norm_layer(norm, c // 2),
            nn.ReLU(inplace=True),
        ]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), final]
    return nn.Sequential(*layers)


class Pix2PixHDGlobalGenerator(nn.Module):
    """Pix2PixHD global generator G1 (input [B,3,H,W] in [-1,1], output in [-1,1] via tanh).

    H and W must be multiples of ``2**n_downsampling`` (16 by default). The paper's images are RGB,
    so the default output has 1 channel only because a sketch is grey; the cost difference is nil.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        ngf: int = 64,
        n_downsampling: int = 4,
        n_blocks: int = 9,
        norm: str = "instance",
    ):
        super().__init__()
        self.multiple = 2**n_downsampling
        self.net = _resnet_generator(
            in_channels, out_channels, ngf, n_downsampling, n_blocks, norm, nn.Tanh()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class InformativeDrawingsGenerator(nn.Module):
    """Informative-Drawings generator (input [B,3,H,W] in [0,1], 1-channel drawing in [0,1])."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, ngf: int = 64, n_blocks: int = 3):
        super().__init__()
        self.multiple = 4
        self.net = _resnet_generator(in_channels, out_channels, ngf, 2, n_blocks, "instance", nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# VGG16 convolution stages: (number of 3x3 convs, output channels).
_VGG16_STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


class HED(nn.Module):
    """HED edge detector on a VGG16 trunk (input [B,3,H,W], edge probability [B,1,H,W] via sigmoid)."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.multiple = 16
        self.stages = nn.ModuleList()
        self.side_outputs = nn.ModuleList()
        c_in = in_channels
        for n_convs, c_out in _VGG16_STAGES:
            convs: list[nn.Module] = []
            for _ in range(n_convs):
                convs += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = c_out
            self.stages.append(nn.Sequential(*convs))
            self.side_outputs.append(nn.Conv2d(c_out, 1, 1))
        self.fuse = nn.Conv2d(len(_VGG16_STAGES), 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        sides = []
        for i, (stage, side) in enumerate(zip(self.stages, self.side_outputs, strict=True)):
            if i > 0:  # HED drops VGG's fifth pool: pool only between stages
                x = F.max_pool2d(x, 2, stride=2)
            x = stage(x)
            s = side(x)
            if i > 0:
                s = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
            sides.append(s)
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))


def build_baseline(name: str) -> nn.Module:
    """A random-weight reference network by name: 'pix2pixhd_global', 'informative_drawings' or 'hed'."""
    builders = {
        "pix2pixhd_global": Pix2PixHDGlobalGenerator,
        "informative_drawings": InformativeDrawingsGenerator,
        "hed": HED,
    }
    if name not in builders:
        raise InvalidInputError(f"unknown baseline {name!r}; pick one of {sorted(builders)}")
    return builders[name]()
