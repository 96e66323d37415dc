"""Pix2PixHD's adversarial terms for distillation: a multi-scale PatchGAN discriminator, the
least-squares GAN loss and discriminator feature matching (Wang et al. 2018, §3.2 and §3.3).

The paper distils DiffSketch into a Pix2PixHD translator trained with these terms
(method.md §9); :func:`~diffsketch.distill.student.train_student` adds them to L1 (+ LPIPS) when
``DistillConfig.adversarial_weight`` or ``feature_matching_weight`` is above 0. Written from the
paper's description:

- the discriminator sees the photo and a sketch side by side (4 channels) and scores
  overlapping patches: 4x4 convolutions, ``n_layers`` of them with stride 2, instance norm and
  LeakyReLU(0.2), then two stride-1 ones (70x70 receptive field with 3 layers);
- ``num_scales`` copies run on the pair downsampled by 1, 2, 4 ... (3x3 average pool, stride 2):
  the coarse copy judges the global look, the fine one the line detail;
- LSGAN: the discriminator regresses 1 on teacher sketches and 0 on the student's, the student
  pushes its own towards 1 (mean squared error, averaged over scales);
- feature matching: L1 between the discriminator's intermediate features of the teacher's and
  the student's sketch, each scale's layers weighted ``4 / (n_layers + 1)`` and averaged over
  scales. It is a perceptual loss learned on the pairs themselves -- useful here, where LPIPS's
  AlexNet weights are often absent.

Sketches are in [0, 1] (1 = paper) and photos RGB in [0, 1]; both are mapped to [-1, 1] here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError

Features = list[torch.Tensor]


class PatchDiscriminator(nn.Module):
    """One PatchGAN; :meth:`forward` returns every layer's output, the last being the patch scores."""

    def __init__(self, in_channels: int = 4, width: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1 or width < 1:
            raise InvalidInputError(
                f"a PatchGAN needs n_layers >= 1 and width >= 1; got {n_layers}, {width}."
            )
        pad = 2  # Pix2PixHD pads 4x4 convolutions by ceil(3 / 2)
        layers = [nn.Sequential(nn.Conv2d(in_channels, width, 4, 2, pad), nn.LeakyReLU(0.2))]
        c = width
        for i in range(1, n_layers + 1):
            c_next = min(c * 2, 8 * width)
            stride = 2 if i < n_layers else 1
            layers.append(
                nn.Sequential(
                    nn.Conv2d(c, c_next, 4, stride, pad), nn.InstanceNorm2d(c_next), nn.LeakyReLU(0.2)
                )
            )
            c = c_next
        layers.append(nn.Sequential(nn.Conv2d(c, 1, 4, 1, pad)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> Features:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiScaleDiscriminator(nn.Module):
    """``num_scales`` PatchGANs on the (photo, sketch) pair at 1, 1/2, 1/4 ... resolution."""

    def __init__(self, num_scales: int = 2, width: int = 64, n_layers: int = 3):
        super().__init__()
        if num_scales < 1:
            raise InvalidInputError(f"the discriminator needs at least one scale; got {num_scales}.")
        self.scales = nn.ModuleList(PatchDiscriminator(4, width, n_layers) for _ in range(num_scales))

    def forward(self, photos: torch.Tensor, sketches: torch.Tensor) -> list[Features]:
        x = torch.cat([photos * 2.0 - 1.0, sketches * 2.0 - 1.0], dim=1)
        outputs = []
        for k, discriminator in enumerate(self.scales):
            if k:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(discriminator(x))
        return outputs


def lsgan_loss(outputs: Sequence[Features], target_is_real: bool) -> torch.Tensor:
    """Mean squared distance of every scale's patch scores from 1 (real) or 0 (fake), averaged."""
    target = 1.0 if target_is_real else 0.0
    losses = [F.mse_loss(features[-1], torch.full_like(features[-1], target)) for features in outputs]
    return torch.stack(losses).mean()


def feature_matching_loss(fake: Sequence[Features], real: Sequence[Features]) -> torch.Tensor:
    """Pix2PixHD's feature matching: L1 between intermediate features (not the scores), each
    layer weighted 4 / (n_layers + 1), averaged over scales; the teacher's side is a constant."""
    total = fake[0][0].new_zeros(())
    for fake_features, real_features in zip(fake, real, strict=True):
        weight = 4.0 / (len(fake_features) - 1)  # len = n_layers + 2
        for f, r in zip(fake_features[:-1], real_features[:-1], strict=True):
            total = total + weight * F.l1_loss(f, r.detach())
    return total / len(fake)


class AdversarialTerms(nn.Module):
    """The discriminator and its two uses in a distillation step:

    1. :meth:`discriminator_loss` -- to minimise over the discriminator (student output detached);
    2. :meth:`student_losses` -- the LSGAN and feature-matching terms to add to the student's loss
       (the discriminator is frozen while they are computed, so only the student gets gradients).
    """

    def __init__(self, num_scales: int = 2, width: int = 64, n_layers: int = 3):
        super().__init__()
        self.discriminator = MultiScaleDiscriminator(num_scales, width, n_layers)

    def discriminator_loss(self, photos, student_sketches, teacher_sketches) -> torch.Tensor:
        fake = self.discriminator(photos, student_sketches.detach())
        real = self.discriminator(photos, teacher_sketches)
        return 0.5 * (lsgan_loss(fake, False) + lsgan_loss(real, True))

    def student_losses(self, photos, student_sketches, teacher_sketches) -> tuple[torch.Tensor, torch.Tensor]:
        was = [p.requires_grad for p in self.discriminator.parameters()]
        self.discriminator.requires_grad_(False)
        try:
            fake = self.discriminator(photos, student_sketches)
            with torch.no_grad():
                real = self.discriminator(photos, teacher_sketches)
            return lsgan_loss(fake, True), feature_matching_loss(fake, real)
        finally:
            for p, flag in zip(self.discriminator.parameters(), was, strict=True):
                p.requires_grad_(flag)
