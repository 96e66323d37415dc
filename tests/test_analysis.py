"""The representative-timestep analysis: reducer, PCA/k-means/elbow, result files, driver."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffsketch.capture.analysis import (
    FeatureReducer,
    TimestepAnalysis,
    analyse,
    elbow_k,
    kmeans,
    pca,
    plots,
    run_timestep_analysis,
)
from diffsketch.capture.timesteps import ddim_grid
from diffsketch.errors import CaptureError, FileFormatError, InvalidInputError, TrainingInterrupted


def blobs(sizes, n_images=5, dim=24, separation=12.0, noise=0.5, seed=0):
    """[N, T, D] vectors whose consecutive timesteps come in groups of ``sizes`` from
    well-separated Gaussian blobs; returns (vectors, true group of each timestep)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), dim, generator=g) * separation
    groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    t = len(groups)
    vectors = centres[groups].expand(n_images, t, dim) + noise * torch.randn(n_images, t, dim, generator=g)
    return vectors, groups.tolist()


def grid_for(t: int) -> list[int]:
    return [1 + 20 * i for i in range(t)]


# -- reducer -------------------------------------------------------------------------------------
def test_reducer_size_is_independent_of_resolution():
    reducer = FeatureReducer(dim=16, pool=2, seed=3)
    outs = [reducer(0, torch.randn(2, 8, s, s)) for s in (4, 9, 32)]
    assert [tuple(o.shape) for o in outs] == [(2, 16)] * 3
    assert all(o.dtype == torch.float32 for o in outs)
    # Another layer with other channels still gives the same size.
    assert tuple(reducer(5, torch.randn(3, 20, 6, 10)).shape) == (3, 16)
    # An unbatched map gives an unbatched vector equal to the batched result.
    x = torch.randn(8, 12, 12)
    assert torch.allclose(reducer(0, x), reducer(0, x[None])[0])


def test_reducer_is_deterministic_for_a_seed_and_depends_on_it():
    x = torch.randn(2, 6, 8, 8)
    a = FeatureReducer(dim=12, seed=7)(1, x)
    b = FeatureReducer(dim=12, seed=7)(1, x)
    c = FeatureReducer(dim=12, seed=8)(1, x)
    d = FeatureReducer(dim=12, seed=7)(2, x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, d)  # each layer has its own projection


def test_reducer_pools_before_projecting_and_weights_by_area():
    reducer = FeatureReducer(dim=10, pool=2, seed=0)
    # Two maps with the same 2x2 block means give the same vector (the detail is pooled away)...
    coarse = torch.randn(1, 4, 2, 2)
    smooth = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # 8x8, constant blocks
    detail = smooth + torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4)  # sums to zero in each 4x4 cell
    small = FeatureReducer(dim=10, pool=2, seed=0, area_weight=False)
    assert torch.allclose(small(0, smooth), small(0, detail), atol=1e-5)
    # ...and with area weighting an 8x8 map weighs sqrt(64 / 4) = 4 times its 2x2 version.
    assert torch.allclose(reducer(0, smooth), 4 * reducer(0, coarse), atol=1e-4)
    with pytest.raises(InvalidInputError):
        reducer(0, torch.randn(4, 4))
    with pytest.raises(InvalidInputError):
        FeatureReducer(dim=0)


def test_reducer_keeps_distinct_features_apart():
    reducer = FeatureReducer(dim=32, pool=2, seed=1)
    x = torch.randn(2, 16, 8, 8)
    y = x.clone()
    y[1] += 3.0
    out = reducer(0, y)
    assert torch.allclose(reducer(0, x)[0], out[0])
    assert (out[1] - reducer(0, x)[1]).norm() > 1.0


# -- PCA, k-means, elbow ---------------------------------------------------------------------------
def test_pca_matches_svd_and_is_sign_stable():
    g = torch.Generator().manual_seed(0)
    for shape in ((60, 10), (8, 30)):  # covariance path and Gram path
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.linspace(4, 0.5, shape[1])
        coords, comps, ratio = pca(x, 5)
        xc = x - x.mean(0)
        _, s, _ = torch.linalg.svd(xc, full_matrices=False)
        assert torch.allclose(ratio, s[:5] ** 2 / (s**2).sum(), atol=1e-10)
        assert torch.allclose(coords.abs(), (xc @ comps.T).abs())
        assert torch.allclose(comps @ comps.T, torch.eye(5, dtype=torch.float64), atol=1e-8)
        assert torch.allclose(coords.pow(2).sum(0), s[:5] ** 2, atol=1e-8)
        # Flipping the data's sign flips nothing in the components' sign convention.
        _, comps_neg, _ = pca(-x, 5)
        assert torch.allclose(comps, comps_neg, atol=1e-8)


def test_kmeans_finds_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + 0.1 * rng.standard_normal((7, 2)) for c in centres])
    _, labels, inertia = kmeans(points, 3, seed=1)
    groups = [set(labels[i * 7 : (i + 1) * 7]) for i in range(3)]
    assert all(len(gr) == 1 for gr in groups) and len(set().union(*groups)) == 3
    assert inertia < 21 * 0.1
    # Duplicate points and k equal to the number of points: every cluster non-empty, zero inertia.
    dup = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    _, labels, inertia = kmeans(dup, 3, seed=0)
    assert sorted(labels.tolist()) == [0, 1, 2] and inertia == 0.0
    with pytest.raises(InvalidInputError):
        kmeans(dup, 4)


def test_elbow_finds_the_knee_of_a_curve():
    ks = list(range(1, 11))
    for knee in (2, 4, 7):
        curve = [100.0 - 90.0 * (k - 1) / (knee - 1) if k <= knee else 10.0 - (k - knee) * 0.5 for k in ks]
        assert elbow_k(ks, curve) == knee
    assert elbow_k(ks, [5.0] * 10) == 1  # flat: nothing to gain from clusters
    with pytest.raises(InvalidInputError):
        elbow_k([1, 2], [3.0, 1.0])


# -- analyse ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sizes", [(5, 5, 5, 5), (3, 6, 2, 7, 4), (6, 8, 6)])
def test_analyse_recovers_k_and_members(sizes):
    vectors, groups = blobs(sizes)
    grid = grid_for(len(groups))
    result = analyse(vectors, grid, seed=0)
    assert result.k == len(sizes) and result.k_from_elbow
    assert result.labels == groups  # labels are numbered in schedule order
    assert len(result.chosen) == len(sizes) and result.chosen == sorted(result.chosen)
    for j, members in enumerate(result.clusters()):
        assert result.chosen[j] in members
        assert members == [t for t, gr in zip(grid, groups, strict=True) if gr == j]
    # The representative is the member whose timestep point is nearest its cluster centre.
    for j, t in enumerate(result.chosen):
        idx = [i for i, lab in enumerate(result.labels) if lab == j]
        d = (result.timestep_points[idx] - result.centres[j]).norm(dim=1)
        assert grid[idx[int(d.argmin())]] == t
    assert result.ks == list(range(1, min(20, len(groups)) + 1))
    assert result.coords.shape == (5, len(groups), min(25, vectors.shape[-1]))


def test_analyse_is_deterministic_for_a_seed():
    vectors, _ = blobs((4, 4, 4), noise=3.0, separation=4.0, seed=2)
    a = analyse(vectors, grid_for(12), seed=5)
    b = analyse(vectors.clone(), grid_for(12), seed=5)
    assert a.to_json() == b.to_json()


def test_analyse_respects_k_and_clips_k_max():
    vectors, groups = blobs((4, 4, 4, 4))
    result = analyse(vectors, grid_for(16), k=2, k_max=100)
    assert result.k == 2 and not result.k_from_elbow
    assert len(result.chosen) == 2 and sorted(set(result.labels)) == [0, 1]
    assert result.ks == list(range(1, 17))  # k_max clipped to T
    # k = T: every timestep is its own cluster and its own representative.
    every = analyse(vectors, grid_for(16), k=16)
    assert every.chosen == grid_for(16)


def test_analyse_pca_components_are_bounded_by_the_data():
    vectors, _ = blobs((2, 2), n_images=1, dim=3)
    result = analyse(vectors, grid_for(4), k=2)
    assert result.coords.shape == (1, 4, 3)  # min(25, N*T=4, D=3)
    assert len(result.explained_variance_ratio) == 3
    assert abs(sum(result.explained_variance_ratio) - 1.0) < 1e-6


def test_analyse_rejects_bad_input():
    vectors, _ = blobs((3, 3))
    grid = grid_for(6)
    with pytest.raises(InvalidInputError, match="more than the 6 timesteps"):
        analyse(vectors, grid, k=7)
    with pytest.raises(InvalidInputError, match="at least 1"):
        analyse(vectors, grid, k=0)
    with pytest.raises(InvalidInputError, match="at least 2 timesteps"):
        analyse(vectors[:, :1], grid[:1], k=1)
    with pytest.raises(InvalidInputError, match="at least 1 sampled image"):
        analyse(vectors[:0], grid)
    with pytest.raises(InvalidInputError, match="elbow"):
        analyse(vectors[:, :2], grid[:2])  # auto k with only k = 1, 2 possible
    with pytest.raises(InvalidInputError, match="elbow"):
        analyse(vectors, grid, k_max=2)
    with pytest.raises(InvalidInputError, match="grid has 5"):
        analyse(vectors, grid[:5])
    with pytest.raises(InvalidInputError, match="ascending"):
        analyse(vectors, list(reversed(grid)))
    with pytest.raises(InvalidInputError, match=r"\[N_images, T_timesteps, D\]"):
        analyse(vectors[0], grid)
    bad = vectors.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        analyse(bad, grid)
    with pytest.raises(InvalidInputError, match="identical"):
        analyse(torch.ones(2, 6, 4), grid)


def test_result_json_round_trip():
    vectors, _ = blobs((3, 4, 3))
    result = analyse(vectors, grid_for(10))
    back = TimestepAnalysis.from_json(result.to_json())
    assert back.chosen == result.chosen and back.labels == result.labels and back.k == result.k
    assert back.grid == result.grid and back.ks == result.ks and back.inertia == result.inertia
    assert torch.allclose(back.coords, result.coords) and torch.allclose(back.centres, result.centres)
    assert back.to_json() == result.to_json()
    assert result.chosen_text() == ", ".join(map(str, result.chosen))
    with pytest.raises(FileFormatError):
        TimestepAnalysis.from_json("{not json")
    with pytest.raises(FileFormatError, match="kind"):
        TimestepAnalysis.from_json('{"kind": "generator"}')
    with pytest.raises(FileFormatError, match="version"):
        TimestepAnalysis.from_json(result.to_json().replace('"version": 1', '"version": 99'))


def test_plots_are_images_of_the_data():
    vectors, _ = blobs((3, 3, 3))
    result = analyse(vectors, grid_for(9))
    images = plots(result, size=(480, 300))
    assert set(images) == {"pca", "elbow", "schedule"}
    assert images["pca"].size == (480, 300) and images["elbow"].size == (480, 300)
    assert images["schedule"].size[0] == 480
    for im in images.values():
        assert len(im.getcolors(1 << 20)) > 10  # axes, text and data, not a blank canvas
    other = analyse(vectors, grid_for(9), k=2)
    assert plots(other, size=(480, 300))["schedule"].tobytes() != images["schedule"].tobytes()


# -- driver ----------------------------------------------------------------------------------------
class FakeBackend:
    """Implements the backend calls the driver makes. Its features follow the schedule in
    phases: the cond branch has ``cond_phases`` distinct phases, the uncond branch has 2."""

    layers = ((8, 2), (6, 4))  # (channels, size relative to latent/8)

    def __init__(self, cond_phases=3):
        self.cond_phases = cond_phases
        self.calls = []
        self.encoded = []

    def encode_prompt(self, text):
        self.encoded.append(text)
        return torch.full((1, 77, 4), float(len(text)))

    def _phase_map(self, phase, channels, h, w, salt):
        g = torch.Generator().manual_seed(1000 * salt + phase)
        return 10.0 * torch.randn(channels, 1, 1, generator=g).expand(channels, h, w)

    def sample(self, cond, settings, *, unet_reduce, decode):
        seed, steps, timesteps = settings.seed, settings.steps, settings.timesteps
        width, height = settings.width, settings.height
        self.calls.append({"seed": seed, "steps": steps, "timesteps": list(timesteps), "decode": decode})
        g = torch.Generator().manual_seed(seed)
        unet = {}
        for t in timesteps:
            cond_phase = min(t * self.cond_phases // 1000, self.cond_phases - 1)
            uncond_phase = min(t * 2 // 1000, 1)
            reduced = []
            for layer, (c, f) in enumerate(self.layers):
                h, w = height // 8 * f // 2, width // 8 * f // 2
                u = self._phase_map(uncond_phase, c, h, w, salt=1)
                k = self._phase_map(cond_phase, c, h, w, salt=2)
                x = torch.stack([u, k]) + 0.2 * torch.randn(2, c, h, w, generator=g)
                reduced.append(unet_reduce(layer, x))
            unet[t] = reduced
        return SimpleNamespace(unet=unet)


def test_driver_samples_reduces_and_analyses():
    backend = FakeBackend(cond_phases=3)
    seen = []
    result = run_timestep_analysis(
        backend,
        ["a cat", "a dog"],
        n_samples=3,
        steps=10,
        seed=4,
        progress=lambda d, n: seen.append((d, n)),
        width=64,
        height=64,
    )
    grid = ddim_grid(10)
    assert [c["seed"] for c in backend.calls] == [4, 5, 6]
    assert all(c["timesteps"] == grid and c["decode"] is False for c in backend.calls)
    assert backend.encoded == ["a cat", "a dog"]  # each prompt encoded once, reused when cycling
    assert seen == [(1, 3), (2, 3), (3, 3)]
    # The cond branch has 3 phases along the schedule; the analysis sees them.
    assert result.k == 3 and result.grid == grid
    assert result.labels == [min(t * 3 // 1000, 2) for t in grid]
    assert result.meta["n_samples"] == 3 and not result.meta["stopped_early"]
    assert result.meta["feature_dim"] == 2 * 64  # two layers x reducer dim, cond only
    # With the uncond branch too, the vectors double in size.
    both = run_timestep_analysis(
        FakeBackend(), ["a cat"], n_samples=1, steps=10, k=2, include_uncond=True, width=64, height=64
    )
    assert both.meta["feature_dim"] == 4 * 64 and both.meta["branches"] == ["uncond", "cond"]


def test_driver_uses_the_cond_branch():
    # Cond with 4 phases, uncond with 2: cond-only analysis must find 4.
    result = run_timestep_analysis(
        FakeBackend(cond_phases=4), [""], n_samples=2, steps=20, width=64, height=64
    )
    assert result.k == 4


def test_driver_stops_early_and_rejects_bad_settings():
    backend = FakeBackend()
    stops = iter([False, False, True])
    result = run_timestep_analysis(
        backend, ["x"], n_samples=5, steps=10, k=2, should_stop=lambda: next(stops), width=64, height=64
    )
    assert len(backend.calls) == 2
    assert result.meta["stopped_early"] and result.meta["n_samples"] == 2 and result.n_images == 2
    with pytest.raises(TrainingInterrupted):
        run_timestep_analysis(FakeBackend(), ["x"], n_samples=2, steps=10, should_stop=lambda: True)
    # Settings that would fail after sampling fail before it.
    for kwargs, match in (
        ({"k": 11}, "1..10"),
        ({"n_samples": 0}, "n_samples"),
        ({"steps": 1, "k": 1}, "at least 2"),
        ({"steps": 2}, "elbow"),
        ({"prompts": []}, "prompt"),
    ):
        backend = FakeBackend()
        args = {"prompts": ["x"], "n_samples": 2, "steps": 10} | kwargs
        with pytest.raises(InvalidInputError, match=match):
            run_timestep_analysis(backend, **args)
        assert backend.calls == []


def test_driver_reports_missing_timesteps():
    class Skipping(FakeBackend):
        def sample(self, cond, settings, **kw):
            out = super().sample(cond, settings, **kw)
            out.unet.pop(settings.timesteps[3])
            return out

    with pytest.raises(CaptureError, match="no features for timesteps"):
        run_timestep_analysis(Skipping(), ["x"], n_samples=1, steps=10, k=2, width=64, height=64)
