"""Pix2PixHD's adversarial terms: discriminator shapes, LSGAN targets, feature matching, and which
network each loss trains."""

from __future__ import annotations

import pytest
import torch

from diffsketch.distill.adversarial import (
    AdversarialTerms,
    MultiScaleDiscriminator,
    PatchDiscriminator,
    feature_matching_loss,
    lsgan_loss,
)
from diffsketch.errors import InvalidInputError


def batch(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=g), torch.rand(2, 1, size, size, generator=g)


def test_patchgan_layers_and_receptive_patches():
    d = PatchDiscriminator(4, width=8, n_layers=3)
    features = d(torch.zeros(1, 4, 64, 64))
    assert len(features) == 5  # n_layers + 2, as Pix2PixHD's
    assert [f.shape[1] for f in features] == [8, 16, 32, 64, 1]
    assert [f.shape[-1] for f in features] == [33, 17, 9, 10, 11]  # patch scores, not one number
    with pytest.raises(InvalidInputError):
        PatchDiscriminator(4, n_layers=0)


def test_multiscale_runs_each_scale_on_a_halved_pair():
    photos, sketches = batch()
    d = MultiScaleDiscriminator(num_scales=3, width=8)
    outputs = d(photos, sketches)
    assert len(outputs) == 3
    assert [o[0].shape[-1] for o in outputs] == [33, 17, 9]  # 64, 32, 16 px inputs
    with pytest.raises(InvalidInputError):
        MultiScaleDiscriminator(num_scales=0)


def test_lsgan_targets_and_feature_matching_zero_on_identical_inputs():
    ones = [[torch.zeros(1, 2, 3, 3), torch.ones(1, 1, 4, 4)]]
    assert lsgan_loss(ones, True) == 0 and lsgan_loss(ones, False) == 1
    photos, sketches = batch()
    d = MultiScaleDiscriminator(width=8)
    same = d(photos, sketches)
    assert feature_matching_loss(same, d(photos, sketches)) == 0
    other = d(photos, 1 - sketches)
    assert feature_matching_loss(other, same) > 0


def test_discriminator_loss_trains_only_the_discriminator_and_student_terms_only_the_student():
    torch.manual_seed(0)
    terms = AdversarialTerms(width=8)
    student = torch.nn.Conv2d(3, 1, 3, padding=1)
    photos, teacher = batch()
    out = torch.sigmoid(student(photos))
    terms.discriminator_loss(photos, out, teacher).backward()
    assert student.weight.grad is None
    assert all(p.grad is not None for p in terms.discriminator.parameters())
    terms.zero_grad(set_to_none=True)
    adv, fm = terms.student_losses(photos, out, teacher)
    (adv + fm).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in terms.discriminator.parameters())
    assert all(p.requires_grad for p in terms.discriminator.parameters())  # restored
