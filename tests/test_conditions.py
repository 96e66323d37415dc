"""CDST: the PCA Gaussian over prompt embeddings, the blend schedule, files and the prompt list."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
from compare import relative_error

from diffsketch import fileio
from diffsketch.backends.conditioning import Conditioning
from diffsketch.capture.spec import SD1
from diffsketch.errors import FileFormatError, InvalidInputError, TrainingInterrupted, UnsupportedModelError
from diffsketch.train import conditions
from diffsketch.train.conditions import (
    ConditionSampler,
    blend,
    blend_weight,
    load_default_prompts,
    parse_prompts,
)

REPO = Path(__file__).resolve().parents[1]
TOKENS, DIM = 77, 16  # the real token count, a tiny width
KNOWN_VARIANCES = torch.tensor([9.0, 4.0, 2.25, 1.0, 0.25, 0.04], dtype=torch.float64)


def low_rank_embeddings(n=50, tokens=TOKENS, dim=DIM, variances=KNOWN_VARIANCES, seed=0):
    """Embeddings whose sample covariance is exactly diag(variances) in a known orthonormal basis.

    Returns (embeddings [n, tokens, dim] float32, basis [F, r] float64, mean [F] float64).
    """
    g = torch.Generator().manual_seed(seed)
    features = tokens * dim
    rank = variances.numel()
    basis = torch.linalg.qr(torch.randn(features, rank, generator=g, dtype=torch.float64)).Q
    scores = torch.randn(n, rank, generator=g, dtype=torch.float64)
    scores = torch.linalg.qr(scores - scores.mean(0)).Q  # centred, orthonormal columns
    scores = scores * math.sqrt(n - 1) * variances.sqrt()  # sample variances exactly `variances`
    mean = torch.randn(features, generator=g, dtype=torch.float64)
    rows = mean + scores @ basis.T
    return rows.float().reshape(n, tokens, dim), basis, mean


def random_embeddings(n, tokens=TOKENS, dim=DIM, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, tokens, dim, generator=g) * torch.linspace(2.0, 0.1, dim)


def reference_pca(embeddings):
    """Plain full SVD of the centred matrix, to check the chunked Gram-matrix fit against."""
    rows = embeddings.reshape(embeddings.shape[0], -1).double()
    centred = rows - rows.mean(0)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    return singular**2 / (rows.shape[0] - 1), vh


# --- the fit -------------------------------------------------------------------------------------


def test_fit_recovers_known_variances_and_directions():
    embeddings, basis, mean = low_rank_embeddings()
    sampler = ConditionSampler.fit(embeddings, n_components=6)
    assert sampler.n_components == 6
    assert sampler.notice == ""
    torch.testing.assert_close(sampler.variance.double(), KNOWN_VARIANCES, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sampler.mean.double(), mean, rtol=0, atol=1e-5)
    # Each component is one known direction (up to sign): distinct variances fix the order.
    overlap = sampler.components.double() @ basis
    torch.testing.assert_close(overlap.abs(), torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-4)
    # Components are orthonormal and the scores of the prompts are centred.
    gram = sampler.components @ sampler.components.T
    torch.testing.assert_close(gram, torch.eye(6), rtol=0, atol=1e-5)
    assert sampler.score_mean.abs().max() < 1e-4


def test_fit_matches_full_svd_on_full_rank_data():
    embeddings = random_embeddings(40)
    sampler = ConditionSampler.fit(embeddings, n_components=12)
    variances, vh = reference_pca(embeddings)
    torch.testing.assert_close(sampler.variance.double(), variances[:12], rtol=1e-4, atol=1e-6)
    overlap = (sampler.components.double() * vh[:12]).sum(dim=1).abs()
    torch.testing.assert_close(overlap, torch.ones(12, dtype=torch.float64), rtol=0, atol=1e-4)


def test_fit_with_fewer_features_than_prompts_uses_the_feature_side():
    embeddings = random_embeddings(60, tokens=2, dim=8)  # F = 16 < N = 60
    sampler = ConditionSampler.fit(embeddings, n_components=10)
    variances, _ = reference_pca(embeddings)
    torch.testing.assert_close(sampler.variance.double(), variances[:10], rtol=1e-4, atol=1e-6)
    too_many = ConditionSampler.fit(embeddings, n_components=40)
    assert too_many.n_components == 16
    assert "16" in too_many.notice and "40" in too_many.notice


def test_randomized_fit_agrees_with_exact_fit(monkeypatch):
    embeddings, _, _ = low_rank_embeddings(n=60)
    noise = torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(5)) * 1e-3
    embeddings = embeddings + noise
    exact = ConditionSampler.fit(embeddings, n_components=6)
    monkeypatch.setattr(conditions, "EXACT_FIT_MAX_ROWS", 10)
    randomized = ConditionSampler.fit(embeddings, n_components=6, seed=3)
    again = ConditionSampler.fit(embeddings, n_components=6, seed=3)
    torch.testing.assert_close(randomized.variance, exact.variance, rtol=1e-3, atol=1e-6)
    overlap = (randomized.components * exact.components).sum(dim=1)
    torch.testing.assert_close(overlap, torch.ones(6), rtol=0, atol=1e-3)  # same signs too
    assert torch.equal(randomized.components, again.components)


def test_fewer_prompts_than_components_keeps_fewer_with_a_notice():
    sampler = ConditionSampler.fit(random_embeddings(20), n_components=512)
    assert sampler.n_components == 19
    assert sampler.n_components_requested == 512
    assert "19 of 512" in sampler.notice and "20 prompts" in sampler.notice
    assert sampler.notice in sampler.describe()


def test_repeated_prompts_drop_the_empty_directions():
    embeddings, _, _ = low_rank_embeddings()
    sampler = ConditionSampler.fit(embeddings, n_components=30)  # only 6 directions exist
    assert sampler.n_components == 6
    assert "span 6 directions" in sampler.notice
    assert torch.isfinite(sampler.components).all()


def test_fit_rejects_too_few_or_identical_prompts():
    with pytest.raises(InvalidInputError, match="prompt list"):
        ConditionSampler.fit(random_embeddings(1))
    same = random_embeddings(1).repeat(5, 1, 1)
    with pytest.raises(InvalidInputError, match="same embedding"):
        ConditionSampler.fit(same)
    with pytest.raises(InvalidInputError, match="tokens, dim"):
        ConditionSampler.fit(torch.zeros(5, 10))
    with pytest.raises(InvalidInputError, match="n_components"):
        ConditionSampler.fit(random_embeddings(5), n_components=0)


def test_fit_is_deterministic():
    embeddings = random_embeddings(30)
    first = ConditionSampler.fit(embeddings, n_components=8)
    second = ConditionSampler.fit(embeddings.clone(), n_components=8)
    assert torch.equal(first.components, second.components)
    assert torch.equal(first.variance, second.variance)


# --- fitting from prompts ------------------------------------------------------------------------


def fake_encoder(tokens=TOKENS, dim=DIM):
    """A stand-in text encoder: a fixed pseudo-random embedding per prompt, plus a call log."""
    calls = []

    def encode(prompt: str) -> torch.Tensor:
        calls.append(prompt)
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
        return torch.randn(1, tokens, dim, generator=torch.Generator().manual_seed(seed)).half()

    return encode, calls


def test_fit_from_prompts_encodes_every_prompt_and_reports_progress():
    prompts = [f"a photo of thing number {i}" for i in range(25)]
    encode, calls = fake_encoder()
    seen = []
    sampler = ConditionSampler.fit_from_prompts(
        encode,
        prompts,
        n_components=8,
        progress=lambda done, total: seen.append((done, total)),
        text_encoder_fingerprint="fake",
        family=SD1,
    )
    assert calls == prompts
    assert seen == [(i, 25) for i in range(1, 26)]
    stacked = torch.cat([encode(p) for p in prompts]).float()
    direct = ConditionSampler.fit(stacked, n_components=8)
    assert torch.equal(sampler.components, direct.components)
    assert sampler.n_prompts == 25 and sampler.text_encoder_fingerprint == "fake"


def test_fit_from_prompts_stops_when_asked():
    encode, calls = fake_encoder()
    with pytest.raises(TrainingInterrupted, match="3 of 10"):
        ConditionSampler.fit_from_prompts(
            encode, [f"p{i}" for i in range(10)], should_stop=lambda: len(calls) >= 3, family=SD1
        )
    assert len(calls) == 3


def test_fit_from_prompts_rejects_bad_input():
    encode, _ = fake_encoder()
    with pytest.raises(InvalidInputError, match="prompt list is empty"):
        ConditionSampler.fit_from_prompts(encode, [], family=SD1)

    def uneven(prompt):
        return torch.zeros(1, 154 if "long" in prompt else 77, DIM)

    with pytest.raises(InvalidInputError, match="'a long prompt'"):
        ConditionSampler.fit_from_prompts(uneven, ["short", "a long prompt"], family=SD1)


# --- sampling and the schedule -------------------------------------------------------------------


def test_samples_follow_the_fitted_gaussian_in_pca_space():
    embeddings, _, _ = low_rank_embeddings()
    sampler = ConditionSampler.fit(embeddings, n_components=6)
    n = 4000
    draws = sampler.sample(torch.Generator().manual_seed(7), n=n)
    assert draws.pooled is None
    draws = draws.context
    assert draws.shape == (n, TOKENS, DIM) and draws.dtype == torch.float32
    centred = draws.reshape(n, -1).double() - sampler.mean.double()
    scores = centred @ sampler.components.double().T
    # Draws lie in the PCA subspace (inverse transform of the scores).
    residual = centred - scores @ sampler.components.double()
    assert residual.abs().max() < 1e-3
    variance = sampler.variance.double()
    standard_error = (variance / n).sqrt()
    assert ((scores.mean(0) - sampler.score_mean.double()).abs() < 5 * standard_error).all()
    ratio = scores.var(0) / variance
    assert ((ratio > 0.9) & (ratio < 1.1)).all(), ratio
    # Components are drawn independently.
    correlation = torch.corrcoef(scores.T) - torch.eye(6, dtype=torch.float64)
    assert correlation.abs().max() < 0.1


def test_sampling_is_deterministic_for_a_seed():
    sampler = ConditionSampler.fit(random_embeddings(30), n_components=8)
    first = sampler.sample(torch.Generator().manual_seed(11), n=3).context
    second = sampler.sample(torch.Generator().manual_seed(11), n=3).context
    other = sampler.sample(torch.Generator().manual_seed(12), n=3).context
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)
    with pytest.raises(InvalidInputError):
        sampler.sample(None, n=0)


def test_blend_weight_follows_the_sqrt_schedule():
    assert blend_weight(0, 1000) == 0.0
    assert blend_weight(500, 1000) == pytest.approx(0.5, abs=1e-12)
    assert blend_weight(1000, 1000) == 1.0
    assert blend_weight(1500, 1000) == 1.0
    # docs/method.md §6: "0.09 at i = 10"
    assert blend_weight(10, 1000) == pytest.approx(0.1 / (0.1 + math.sqrt(0.99)))
    assert 0.09 < blend_weight(10, 1000) < 0.095
    weights = [blend_weight(i, 1000) for i in range(0, 1001, 50)]
    assert all(a < b for a, b in zip(weights[:-1], weights[1:], strict=True))
    assert blend_weight(0, 0) == 1.0  # no warm-up: random from the start
    with pytest.raises(InvalidInputError):
        blend_weight(-1, 1000)
    with pytest.raises(InvalidInputError):
        blend_weight(0, -5)


def test_blend_moves_from_pivot_to_random():
    g = torch.Generator().manual_seed(0)
    pivot = torch.randn(1, TOKENS, DIM, generator=g)
    c_rand = torch.randn(1, TOKENS, DIM, generator=g)
    assert torch.equal(blend(pivot, c_rand, 0, 1000).context, pivot)
    torch.testing.assert_close(blend(pivot, c_rand, 500, 1000).context, 0.5 * (pivot + c_rand))
    assert torch.equal(blend(pivot, c_rand, 1000, 1000).context, c_rand)
    w = blend_weight(10, 1000)
    torch.testing.assert_close(blend(pivot, c_rand, 10, 1000).context, (1 - w) * pivot + w * c_rand)
    with pytest.raises(InvalidInputError, match="text encoder"):
        blend(pivot, torch.randn(1, TOKENS, DIM + 1), 10, 1000)


def test_condition_for_iteration_draws_then_blends():
    sampler = ConditionSampler.fit(random_embeddings(30), n_components=8)
    pivot = torch.randn(1, TOKENS, DIM, generator=torch.Generator().manual_seed(1))
    at_start = sampler.condition_for_iteration(pivot, 0, 1000, torch.Generator().manual_seed(4))
    assert torch.equal(at_start.context, pivot)
    late = sampler.condition_for_iteration(pivot, 1000, 1000, torch.Generator().manual_seed(4))
    assert torch.equal(late.context, sampler.sample(torch.Generator().manual_seed(4)).context)
    middle = sampler.condition_for_iteration(pivot, 250, 1000, torch.Generator().manual_seed(4))
    w = blend_weight(250, 1000)
    expected = (1 - w) * pivot + w * sampler.sample(torch.Generator().manual_seed(4)).context
    torch.testing.assert_close(middle.context, expected)
    with pytest.raises(InvalidInputError, match="refit"):
        sampler.condition_for_iteration(torch.zeros(1, 77, 32), 5, 1000, None)


def pooled_embeddings(n: int, pooled_dim: int = 5, seed: int = 0) -> Conditioning:
    """SDXL-like conditionings: contexts plus pooled vectors that depend on them (correlated)."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(n, TOKENS, DIM, generator=g)
    mix = torch.randn(TOKENS * DIM, pooled_dim, generator=g) / (TOKENS * DIM) ** 0.5
    pooled = context.reshape(n, -1) @ mix + 0.01 * torch.randn(n, pooled_dim, generator=g)
    return Conditioning(context, pooled)


def test_the_fit_covers_the_pooled_embedding_too():
    """SDXL: one Gaussian over context and pooled values together, draws split back into both, and
    the blend moves both parts with the same weight."""
    data = pooled_embeddings(40)
    sampler = ConditionSampler.fit(data, n_components=12, family="sdxl")
    assert sampler.pooled_dim == 5 and sampler.mean.shape == (TOKENS * DIM + 5,)
    torch.testing.assert_close(sampler.mean[-5:], data.pooled.mean(0))
    draw = sampler.sample(torch.Generator().manual_seed(3), n=2)
    assert draw.context.shape == (2, TOKENS, DIM) and draw.pooled.shape == (2, 5)
    # the pooled part of a draw follows its context as in the data (fitted jointly, not apart)
    many = sampler.sample(torch.Generator().manual_seed(4), n=2000)
    mix_fit = torch.linalg.lstsq(data.context.reshape(40, -1), data.pooled).solution
    predicted = many.context.reshape(2000, -1) @ mix_fit
    assert relative_error(predicted, many.pooled) < 0.5
    pivot = Conditioning(data.context[:1], data.pooled[:1])
    w = blend_weight(300, 1000)
    mid = sampler.condition_for_iteration(pivot, 300, 1000, torch.Generator().manual_seed(5))
    rand = sampler.sample(torch.Generator().manual_seed(5), 1)
    torch.testing.assert_close(mid.pooled, (1 - w) * pivot.pooled + w * rand.pooled)
    torch.testing.assert_close(mid.context, (1 - w) * pivot.context + w * rand.context)
    with pytest.raises(InvalidInputError, match="pooled"):
        sampler.check_pivot(data.context[:1])
    with pytest.raises(InvalidInputError, match="text encoder"):
        blend(pivot, Conditioning(data.context[:1]), 10, 1000)


def test_fit_from_prompts_keeps_the_pooled_part_and_the_family(tmp_path):
    data = pooled_embeddings(6)
    prompts = [f"p{i}" for i in range(6)]
    table = {p: Conditioning(data.context[i : i + 1], data.pooled[i : i + 1]) for i, p in enumerate(prompts)}
    sampler = ConditionSampler.fit_from_prompts(table.__getitem__, prompts, n_components=3, family="sdxl")
    direct = ConditionSampler.fit(data, n_components=3, family="sdxl")
    torch.testing.assert_close(sampler.components, direct.components)
    loaded = ConditionSampler.load(sampler.save(tmp_path / "sdxl.safetensors"))
    assert loaded.family == "sdxl" and loaded.pooled_dim == 5 and "SDXL" in loaded.describe()
    loaded.check_family("sdxl")
    with pytest.raises(UnsupportedModelError, match="CDST.*SDXL.*SD 1.x"):
        loaded.check_family("sd1")

    def mixed(prompt):
        c = table[prompt]
        return c if prompt != "p3" else c.context

    with pytest.raises(InvalidInputError, match="'p3'"):
        ConditionSampler.fit_from_prompts(mixed, prompts, n_components=3, family="sdxl")


# --- files ---------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    sampler = ConditionSampler.fit(random_embeddings(20), n_components=64, text_encoder_fingerprint="clip-a")
    path = sampler.save(tmp_path / "cdst.safetensors", text_encoder_fingerprint="clip-b")
    header = fileio.read_header(path, "conditions", (1,))
    assert header["n_prompts"] == 20 and header["n_components"] == 19
    assert header["embedding_shape"] == [TOKENS, DIM]
    assert header["text_encoder_fingerprint"] == "clip-b"
    assert header["notice"] == sampler.notice != ""
    loaded = ConditionSampler.load(path)
    for name in ("mean", "components", "score_mean", "variance"):
        assert torch.equal(getattr(loaded, name), getattr(sampler, name))
    assert loaded.embedding_shape == sampler.embedding_shape
    assert loaded.n_components_requested == 64
    assert loaded.text_encoder_fingerprint == "clip-b"
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    assert torch.equal(loaded.sample(g1, 2).context, sampler.sample(g2, 2).context)
    assert loaded.family == "sd1" and loaded.pooled_dim == 0
    loaded.check_text_encoder("clip-b")
    with pytest.raises(InvalidInputError, match="clip-b"):
        loaded.check_text_encoder("clip-c")


def test_load_rejects_other_kinds_versions_and_broken_files(tmp_path):
    sampler = ConditionSampler.fit(random_embeddings(10), n_components=4)
    tensors = {
        "mean": sampler.mean,
        "components": sampler.components,
        "score_mean": sampler.score_mean,
        "variance": sampler.variance,
    }
    fileio.save_tensors(tmp_path / "other.safetensors", tensors, "features", 1, sampler.header())
    with pytest.raises(FileFormatError, match="conditions"):
        ConditionSampler.load(tmp_path / "other.safetensors")
    fileio.save_tensors(tmp_path / "future.safetensors", tensors, "conditions", 2, sampler.header())
    with pytest.raises(FileFormatError, match="version"):
        ConditionSampler.load(tmp_path / "future.safetensors")
    fileio.save_tensors(
        tmp_path / "partial.safetensors", {"mean": sampler.mean}, "conditions", 1, sampler.header()
    )
    with pytest.raises(FileFormatError, match="components"):
        ConditionSampler.load(tmp_path / "partial.safetensors")
    wrong_shape = dict(sampler.header(), embedding_shape=[TOKENS, DIM * 2])
    fileio.save_tensors(tmp_path / "shape.safetensors", tensors, "conditions", 1, wrong_shape)
    with pytest.raises(FileFormatError, match="not a valid conditions file"):
        ConditionSampler.load(tmp_path / "shape.safetensors")


# --- the default prompt list ---------------------------------------------------------------------


def test_default_prompt_list_is_large_unique_and_comfyui_safe():
    prompts = load_default_prompts()
    assert len(prompts) >= 2000
    raw = (resources.files("diffsketch") / "data" / "prompts.txt").read_bytes().decode("utf-8")
    lines = raw.splitlines()
    assert lines == prompts  # one per line: no blanks, comments, repeats or stray spaces
    assert len(set(prompts)) == len(prompts)
    for prompt in prompts:
        assert not any(c in prompt for c in "()[]{}|\\"), prompt
        assert prompt == prompt.strip() and prompt
    assert len({p.split(",")[0].split(" of ")[-1] for p in prompts}) > 300  # varied, not one template


def test_parse_prompts_skips_blanks_comments_and_repeats():
    assert parse_prompts("# my list\n a cat \n\na dog\na cat\n") == ["a cat", "a dog"]


def test_generator_script_reproduces_the_prompt_file(tmp_path):
    out = tmp_path / "prompts.txt"
    script = REPO / "tools" / "make_prompts.py"
    subprocess.run([sys.executable, str(script), "--output", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == (REPO / "diffsketch" / "data" / "prompts.txt").read_bytes()
    check = subprocess.run([sys.executable, str(script), "--check"], capture_output=True)
    assert check.returncode == 0, check.stderr
    out.write_text("a stale list\n", encoding="utf-8")
    stale = subprocess.run(
        [sys.executable, str(script), "--check", "--output", str(out)], capture_output=True
    )
    assert stale.returncode == 1
