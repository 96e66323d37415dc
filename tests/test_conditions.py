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
    # a longer example prompt (another CLIP window) is named as such, not as another text encoder
    longer = Conditioning(torch.cat([data.context[:1]] * 2, dim=1), data.pooled[:1])
    with pytest.raises(
        InvalidInputError, match=rf"{2 * TOKENS} tokens .* fitted at {TOKENS} .*shorten the example"
    ):
        sampler.check_pivot(longer)
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


# --- the transformer families: bounded fit, token length, float16 components (issue 29) ---------


def streamed_fit(embeddings, family=SD1, **kwargs):
    """fit_from_prompts over the rows of ``embeddings`` (a list of conditionings, one per prompt):
    the fit that streams the rows to a temporary file."""
    prompts = [str(i) for i in range(len(embeddings))]
    return ConditionSampler.fit_from_prompts(lambda p: embeddings[int(p)], prompts, family=family, **kwargs)


def assert_same_pca(sampler, embeddings, k, atol):
    """Components equal to the full SVD's up to sign, variances equal (embeddings [N, T, D] or rows)."""
    variances, vh = reference_pca(embeddings)
    torch.testing.assert_close(sampler.variance.double(), variances[:k], rtol=1e-4, atol=1e-6)
    overlap = (sampler.components.double() * vh[:k]).sum(dim=1).abs()
    torch.testing.assert_close(overlap, torch.ones(k, dtype=torch.float64), rtol=0, atol=atol)


def test_streamed_fit_equals_the_exact_fit():
    embeddings = random_embeddings(40)
    streamed = streamed_fit([embeddings[i : i + 1] for i in range(40)], n_components=12)
    assert_same_pca(streamed, embeddings, 12, atol=1e-4)
    in_memory = ConditionSampler.fit(embeddings, n_components=12)
    for name in ("mean", "components", "score_mean", "variance"):
        assert torch.equal(getattr(streamed, name), getattr(in_memory, name)), name
    assert streamed.components.dtype == torch.float32  # the UNet families keep float32


def test_streamed_randomized_fit_agrees_with_the_exact_fit(monkeypatch):
    embeddings, _, _ = low_rank_embeddings(n=60)
    embeddings = embeddings + 1e-3 * torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(5))
    exact = ConditionSampler.fit(embeddings, n_components=6)
    monkeypatch.setattr(conditions, "EXACT_FIT_MAX_ROWS", 10)
    randomized = streamed_fit([embeddings[i : i + 1] for i in range(60)], n_components=6, seed=3)
    torch.testing.assert_close(randomized.variance, exact.variance, rtol=1e-3, atol=1e-6)
    overlap = (randomized.components * exact.components).sum(dim=1)
    torch.testing.assert_close(overlap, torch.ones(6), rtol=0, atol=1e-3)


def sd35_like(n, tokens=154, dim=8, pooled_dim=6, seed=0) -> list[Conditioning]:
    """SD 3.5-shaped conditionings (CLIP + T5 tokens and a pooled vector correlated with them), tiny width."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(n, tokens, dim, generator=g) * torch.linspace(2.0, 0.2, dim)
    mix = torch.randn(tokens * dim, pooled_dim, generator=g) / (tokens * dim) ** 0.5
    pooled = context.reshape(n, -1) @ mix + 0.01 * torch.randn(n, pooled_dim, generator=g)
    return [Conditioning(context[i : i + 1], pooled[i : i + 1]) for i in range(n)]


def test_sd35_fit_keeps_float16_components_and_draws_the_pooled_part_with_the_tokens(tmp_path):
    items = sd35_like(50)
    data = Conditioning.cat(items)
    sampler = streamed_fit(items, family="sd35", n_components=20)
    assert sampler.components.dtype == torch.float16
    assert sampler.mean.dtype == sampler.variance.dtype == torch.float32
    rows = data.flatten()
    assert_same_pca(sampler, rows.reshape(50, 1, -1), 20, atol=2e-3)  # float16 rounding of the components
    draws = sampler.sample(torch.Generator().manual_seed(3), n=2000)
    assert draws.context.shape == (2000, 154, 8) and draws.pooled.shape == (2000, 6)
    assert draws.context.dtype == torch.float32
    # drawn together: a draw's pooled part follows its tokens as in the data
    mix_fit = torch.linalg.lstsq(data.context.reshape(50, -1), data.pooled).solution
    assert relative_error(draws.context.reshape(2000, -1) @ mix_fit, draws.pooled) < 0.5
    # the chunked float16 product is the float32 product of the same components
    g = torch.Generator().manual_seed(9)
    drawn = sampler.sample(g, 3)
    g = torch.Generator().manual_seed(9)
    z = sampler.score_mean + torch.randn(3, sampler.n_components, generator=g) * sampler.variance.sqrt()
    torch.testing.assert_close(drawn.flatten(), sampler.mean + z @ sampler.components.float())
    # the file keeps float16 and loads as it was written, at about half the float32 size
    path = sampler.save(tmp_path / "sd35.safetensors")
    loaded = ConditionSampler.load(path)
    assert loaded.components.dtype == torch.float16 and torch.equal(loaded.components, sampler.components)
    assert loaded.family == "sd35" and loaded.pooled_dim == 6 and loaded.token_length == 154
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    assert torch.equal(loaded.sample(g1, 2).context, sampler.sample(g2, 2).context)
    float32_size = sampler.components.numel() * 4
    assert path.stat().st_size < 0.6 * float32_size
    assert "token_length" not in fileio.read_header(path, "conditions", (1,))  # a fixed-length encoder


def zimage_like(lengths, dim=12, seed=0) -> list[torch.Tensor]:
    """Z-Image-shaped contexts [1, L, D], each prompt at its own length (no padding, as ComfyUI's
    Qwen3 encoder gives them); token j of every prompt comes from one low-rank model, so the fit has
    structure."""
    g = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    basis = torch.randn(4, longest * dim, generator=g, dtype=torch.float64)
    items = []
    for length in lengths:
        row = torch.randn(4, generator=g, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0, 0.5]) @ basis
        row += 0.05 * torch.randn(longest * dim, generator=g, dtype=torch.float64)
        items.append(row.float().reshape(1, longest, dim)[:, :length])
    return items


def test_a_variable_length_prompt_list_fits_at_the_longest_length():
    lengths = [9, 14, 11, 20, 9, 17, 13, 20, 10, 15] * 3
    items = zimage_like(lengths)
    sampler = streamed_fit(items, family="zimage", n_components=8)
    assert sampler.embedding_shape == (20, 12) and sampler.token_length == 20
    assert sampler.prompt_tokens == (9, 20) and sampler.notice == ""
    padded = torch.cat([conditions.to_token_length(c, 20).context for c in items])
    assert torch.equal(padded[0, 9:], torch.zeros(11, 12))  # zero tokens after a prompt's own
    assert_same_pca(sampler, padded, 8, atol=3e-3)
    exact = ConditionSampler.fit(padded, n_components=8, family="zimage")
    torch.testing.assert_close(sampler.mean, exact.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(sampler.variance, exact.variance, rtol=1e-5, atol=1e-7)
    draws = sampler.sample(torch.Generator().manual_seed(0), n=5)
    assert draws.context.shape == (5, 20, 12) and draws.pooled is None


def test_a_variable_length_fit_at_a_given_length_truncates_and_pads(tmp_path):
    lengths = [6, 18, 9, 12, 7, 15, 10, 11] * 2
    items = zimage_like(lengths, seed=1)
    sampler = streamed_fit(items, family="zimage", n_components=5, token_length=10)
    assert sampler.token_length == 10 and sampler.prompt_tokens == (6, 18)
    assert "8 of 16 prompts are longer than the 10 tokens" in sampler.notice
    at_ten = torch.cat([conditions.to_token_length(c, 10).context for c in items])
    assert torch.equal(at_ten[1], items[1][0, :10])  # the first 10 tokens kept
    exact = ConditionSampler.fit(at_ten, n_components=5, family="zimage")
    torch.testing.assert_close(sampler.variance, exact.variance, rtol=1e-5, atol=1e-7)
    overlap = (sampler.components.double() * exact.components.double()).sum(dim=1)
    torch.testing.assert_close(overlap, torch.ones(5, dtype=torch.float64), rtol=0, atol=2e-3)
    assert sampler.sample(None, 3).context.shape == (3, 10, 12)
    # the length and the prompts' range are in the file
    path = sampler.save(tmp_path / "zimage.safetensors")
    header = fileio.read_header(path, "conditions", (1,))
    assert header["token_length"] == 10 and header["prompt_tokens"] == [6, 18]
    assert header["embedding_shape"] == [10, 12] and "zero" in header["token_padding"]
    loaded = ConditionSampler.load(path)
    assert loaded.token_length == 10 and loaded.prompt_tokens == (6, 18)
    assert loaded.components.dtype == torch.float16


def test_the_pivot_is_brought_to_the_fitted_length():
    items = zimage_like([8, 12, 10, 9, 12, 11] * 2, seed=2)
    sampler = streamed_fit(items, family="zimage", n_components=4)
    assert sampler.token_length == 12
    g = torch.Generator().manual_seed(3)
    for pivot_tokens in (5, 12):
        pivot = torch.randn(1, pivot_tokens, 12, generator=g)
        sampler.check_pivot(pivot)  # a shorter one is padded to 12
        at_start = sampler.condition_for_iteration(pivot, 0, 1000, torch.Generator().manual_seed(4))
        assert at_start.context.shape == (1, 12, 12)
        assert torch.equal(at_start.context, conditions.to_token_length(pivot, 12).context)
        late = sampler.condition_for_iteration(pivot, 1000, 1000, torch.Generator().manual_seed(4))
        assert torch.equal(late.context, sampler.sample(torch.Generator().manual_seed(4)).context)
    with pytest.raises(InvalidInputError, match="refit"):
        sampler.check_pivot(torch.zeros(1, 12, 13))  # another encoder's width
    # a longer one would lose its last tokens: refused, naming both lengths and the fix
    with pytest.raises(InvalidInputError, match="20 tokens, more than the 12.*token length of 20"):
        sampler.check_pivot(torch.zeros(1, 20, 12))


def test_a_full_temporary_folder_is_named(tmp_path, monkeypatch):
    def no_space(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(conditions._RowFile, "_write", no_space, raising=False)
    encode, _ = fake_encoder()
    with pytest.raises(OSError, match=f"temporary folder {tmp_path}.*No space left.*store_dir"):
        ConditionSampler.fit_from_prompts(encode, ["a", "b"], family=SD1, store_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # the unnamed file is gone


def test_variable_lengths_with_a_pooled_part_read_back_in_place(monkeypatch):
    """The file store's offsets with a pooled part after contexts of different lengths."""
    monkeypatch.setattr(conditions, "VARIABLE_LENGTH_FAMILIES", ("zimage", "sd35"))
    monkeypatch.setattr(conditions, "_FIT_CHUNK", 7)  # chunks that cut tokens and the pooled part
    g = torch.Generator().manual_seed(0)
    items = [
        Conditioning(torch.randn(1, length, 3, generator=g), torch.randn(1, 4, generator=g))
        for length in [2, 5, 3, 4, 5, 1, 3, 4]
    ]
    sampler = streamed_fit(items, family="sd35", n_components=6, token_length=4)
    fixed = Conditioning.cat([conditions.to_token_length(c, 4) for c in items])
    exact = ConditionSampler.fit(fixed, n_components=6, family="sd35")
    torch.testing.assert_close(sampler.mean, fixed.flatten().mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(sampler.variance, exact.variance, rtol=1e-5, atol=1e-7)
    assert torch.equal(sampler.components, exact.components)


def test_token_length_is_refused_where_the_encoder_fixes_it():
    encode, _ = fake_encoder()
    with pytest.raises(InvalidInputError, match="token_length.*Z-Image"):
        ConditionSampler.fit_from_prompts(encode, ["a", "b"], family=SD1, token_length=40)
    with pytest.raises(InvalidInputError, match="at least 1"):
        ConditionSampler.fit_from_prompts(encode, ["a", "b"], family="zimage", token_length=0)
    items = zimage_like([5, 6])

    def other_width(prompt):
        return items[0] if prompt == "a" else torch.zeros(1, 6, 13)

    with pytest.raises(InvalidInputError, match="'b'.*one CLIP"):
        ConditionSampler.fit_from_prompts(other_width, ["a", "b"], family="zimage")


def test_the_stated_memory_bound_covers_the_fit_s_own_tensors():
    # SD 3.5 and the default list: the float16 components dominate, far below the rows' 6.1 GB
    bound = conditions.fit_memory_bound(2400, 632_832, 512, component_bytes=2)
    assert 512 * 632_832 * 2 < bound < 1.5 * 2**30
    assert conditions.fit_memory_bound(2400, 59_136, 512) < conditions.fit_memory_bound(2400, 158_976, 512)
