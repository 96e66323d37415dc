"""Seed derivation: the key formats are part of the resumable files, so their values are pinned."""

from __future__ import annotations

import torch

from diffsketch.capture.analysis import FeatureReducer
from diffsketch.seeds import cpu_generator, derive_seed, iteration_seed, seeded


def test_derived_seeds_keep_the_values_resumable_files_rely_on():
    # Values of the formulas pair folders (derive_seed), training checkpoints (iteration_seed) and
    # the timestep analysis (the reducer's projections) were written with: a changed key format
    # would make a resumed run draw other numbers than the run it continues.
    assert derive_seed("noise", 4, 1) == 5473310357951661786
    assert iteration_seed(3, 7, "sample") == 7551943299547097547
    assert FeatureReducer(seed=3)._generator_seed(2, 320) == 8987037728434378780
    assert all(0 <= s < 2**63 for s in (derive_seed("x"), iteration_seed(0, 0, "x")))
    assert derive_seed("noise", 4, 1) != derive_seed("noise", 1, 4)


def test_seeded_builds_from_the_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = seeded(7, lambda: torch.rand(3))
    b = seeded(7, lambda: torch.rand(3))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(2, generator=cpu_generator(5)), torch.rand(2, generator=cpu_generator(5)))
