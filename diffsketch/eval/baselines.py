"""Reference image-to-sketch networks, used only to compare against the DiffSketch extractor.

Built with random weights (no weights are shipped or downloaded), so benchmarks and evaluations
can measure what users would otherwise run, side by side, on the same machine:

- :class:`Pix2PixHDGlobalGenerator` -- Wang et al. 2018, the global generator G1 of Pix2PixHD.
  The paper's distilled model is a Pix2PixHD network (docs/method.md §9); the defaults are that
  configuration: ngf 64, 4 stride-2 downsamplings, 9 residual blocks at the bottleneck, reflection
  padding, instance norm.
- Informative Drawings (Chan et al. 2022; the network behind ComfyUI's "Realistic Lineart") and HED
  (Xie & Tu 2015) are the style networks of :mod:`diffsketch.styles`:
  :func:`build_baseline` returns :class:`~diffsketch.styles.informative.InformativeDrawings` and
  :class:`~diffsketch.styles.hed.ModifiedHED` wired as plain HED (all five side outputs, BGR input).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidInputError
from ..styles.hed import STANDARD_HED_SIDES, ModifiedHED
from ..styles.informative import InformativeDrawings


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


class Pix2PixHDGlobalGenerator(nn.Module):
    """Pix2PixHD global generator G1 (input [B,3,H,W] in [-1,1], output in [-1,1] via tanh): a 7x7
    stem, stride-2 downsamplings, residual blocks, transposed-convolution upsamplings, a 7x7 head.

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
        layers += [_ResnetBlock(ngf * 2**n_downsampling, norm) for _ in range(n_blocks)]
        for i in range(n_downsampling):
            c = ngf * 2 ** (n_downsampling - i)
            layers += [
                nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                _norm_layer(norm, c // 2),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def plain_hed() -> ModifiedHED:
    """HED as published: all five side outputs fused, the photo fed as the BGR its weights expect."""
    return ModifiedHED(side_order=STANDARD_HED_SIDES, input_mode="caffe_bgr")


def build_baseline(name: str) -> nn.Module:
    """A random-weight reference network by name: 'pix2pixhd_global', 'informative_drawings' or 'hed'."""
    builders = {
        "pix2pixhd_global": Pix2PixHDGlobalGenerator,
        "informative_drawings": InformativeDrawings,
        "hed": plain_hed,
    }
    if name not in builders:
        raise InvalidInputError(f"unknown baseline {name!r}; pick one of {sorted(builders)}")
    return builders[name]()
