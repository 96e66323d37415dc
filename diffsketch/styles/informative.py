"""The Informative-Drawings generator (Chan et al. 2022; carolineec/informative-drawings
``Generator(3, 1, 3)``): 3 residual blocks, instance norm, sigmoid; the photo goes in as RGB in
[0, 1] and the drawing comes out in [0, 1] (white paper).

The parameter names are the released checkpoints' (``model0.1.weight``,
``model2.0.conv_block.1`` ... ``model4.1``), so a converted file loads with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import StyleExtractor


class _InformativeResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        # Parameter names conv_block.1 / conv_block.5 as in the released checkpoints.
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class InformativeDrawings(StyleExtractor):
    """Informative-Drawings generator with the released checkpoints' parameter names
    (``model0`` stem, ``model1`` 2 downsamplings, ``model2`` residual blocks, ``model3`` 2
    upsamplings, ``model4`` head + sigmoid). Reflection padding and affine-free instance norm, as in
    the repository's first (mainline) ``model.py`` and DiffSketch's ``models/informative.py``.

    Sizes that are not multiples of 4 are reflection-padded at the bottom/right and cropped back
    (the bare network would return a larger image); instance-norm statistics then include the few
    padded pixels.
    """

    style_name = "informative"
    multiple = 4

    def __init__(self, n_blocks: int = 3, ngf: int = 64, style_name: str = "informative"):
        super().__init__()
        self.style_name = style_name
        self.model0 = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(inplace=True)
        )
        self.model1 = nn.Sequential(
            nn.Conv2d(ngf, ngf * 2, 3, stride=2, padding=1),
            nn.InstanceNorm2d(ngf * 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(ngf * 2, ngf * 4, 3, stride=2, padding=1),
            nn.InstanceNorm2d(ngf * 4),
            nn.ReLU(inplace=True),
        )
        self.model2 = nn.Sequential(*[_InformativeResidualBlock(ngf * 4) for _ in range(n_blocks)])
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(ngf * 2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(ngf * 2, ngf, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(inplace=True),
        )
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, 1, 7), nn.Sigmoid())

    def sketch(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        x = images
        if ph or pw:
            # reflection needs pad < size; tiny images fall back to edge replication
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        for block in (self.model0, self.model1, self.model2, self.model3, self.model4):
            x = block(x)
        return x[..., :h, :w]
