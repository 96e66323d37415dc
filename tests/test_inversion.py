"""Capture from the user's own picture: DDIM inversion checked against an analytic model (exact)
and against diffusers' DDIMInverseScheduler on the tiny UNets, the capture it returns on SD 1.x,
SD 2.x (v) and SDXL, and the pictures that are refused."""

from __future__ import annotations

import math

import pytest
import torch
from compare import ldm_ddim, relative_error
from tiny_models import tiny_backend, tiny_sd2_backend, tiny_sdxl_backend

from diffsketch.backends.base import check_picture, rescale_zero_terminal_snr, scaled_linear_alphas_cumprod
from diffsketch.backends.inversion import (
    MIN_REPLAY_PSNR,
    PictureCapture,
    ddim_denoise,
    ddim_invert,
    x0_to_model_output,
)
from diffsketch.capture.sampling import SamplingSettings
from diffsketch.capture.spec import SD1, SD2, SDXL
from diffsketch.errors import InvalidInputError

SCHEDULES = {
    "scaled-linear": scaled_linear_alphas_cumprod(),
    "zero-terminal-snr": rescale_zero_terminal_snr(scaled_linear_alphas_cumprod()),
}
# The 10-step grid, and one that reaches the last timestep (pure noise on the zero-SNR schedule).
GRIDS = {"10-step": [901, 801, 701, 601, 501, 401, 301, 201, 101, 1], "to-999": [999, 901, 501, 101, 1]}
SMALL = SamplingSettings(steps=10, cfg=5.0, width=64, height=64, timesteps=(1, 501, 901), schedule="fast")


def single_point_model(mu, alphas_cumprod, prediction_type, calls):
    """The exact noise (or v) prediction when the data is the single point ``mu``: x_t can only be
    sqrt(a) mu + sqrt(1 - a) eps, so eps is known from x_t. It records where it is evaluated."""

    def predict(x, t):
        calls.append((t, x.clone()))
        a = float(alphas_cumprod[t])
        eps = (x - math.sqrt(a) * mu) / math.sqrt(1 - a)
        return eps if prediction_type == "epsilon" else math.sqrt(a) * eps - math.sqrt(1 - a) * mu

    return predict


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_replay_retraces_the_inversion_exactly_for_a_single_point_model(prediction_type, schedule, grid):
    """DDIM is exact for this model (its noise prediction is constant along a trajectory), so the
    replay from the inverted x_T must pass through every inverted latent and end on the input."""
    acp, steps = SCHEDULES[schedule], GRIDS[grid]
    mu = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inverted, replayed = [], []
    x_T = ddim_invert(single_point_model(mu, acp, prediction_type, inverted), mu, steps, acp, prediction_type)
    out = ddim_denoise(
        single_point_model(mu, acp, prediction_type, replayed), x_T, steps, acp, prediction_type
    )

    torch.testing.assert_close(out, mu, rtol=1e-12, atol=1e-12)
    # inversion: the clean latent at the lowest timestep, then each latent at its own timestep
    assert [t for t, _ in inverted] == [steps[-1]] + sorted(steps)[:-1]
    # replay: x_T at the top, then the same latents at the same timesteps, in reverse
    assert [t for t, _ in replayed] == steps
    for (t_inv, x_inv), (t_rep, x_rep) in zip(inverted[1:], reversed(replayed[1:])):
        assert t_inv == t_rep
        torch.testing.assert_close(x_rep, x_inv, rtol=1e-10, atol=1e-10)
    # x_T lies on the model's trajectory through the first inverted latent
    a0, a_T = float(acp[steps[-1]]), float(acp[steps[0]])
    eps = (inverted[1][1] - math.sqrt(a0) * mu) / math.sqrt(1 - a0)
    torch.testing.assert_close(x_T, math.sqrt(a_T) * mu + math.sqrt(1 - a_T) * eps, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_to_model_output_inverts_the_model_output_reading(prediction_type):
    from diffsketch.backends.inversion import model_output_to_x0_eps

    g = torch.Generator().manual_seed(1)
    x, out = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    x0, _ = model_output_to_x0_eps(out, x, 0.3, prediction_type)
    torch.testing.assert_close(x0_to_model_output(x0, x, 0.3, prediction_type), out, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidInputError, match="prediction_type"):
        x0_to_model_output(x0, x, 0.3, "sample")


def _diffusers_inversion(backend, latent, cond, steps, prediction_type):
    """diffusers' DDIMInverseScheduler on ldm's grid driving the backend's UNet, evaluated where the
    latent is (the clean latent at the lowest timestep)."""
    scheduler = ldm_ddim("DDIMInverseScheduler", prediction_type)
    scheduler.set_timesteps(steps)
    x, where = latent.clone(), int(scheduler.timesteps[0])
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = backend.unet(x, torch.tensor([where]), encoder_hidden_states=cond.context).sample
            x = scheduler.step(out, t, x).prev_sample
            where = int(t)
    return x


@pytest.mark.parametrize(
    "make, prediction_type", [(tiny_backend, "epsilon"), (tiny_sd2_backend, "v_prediction")]
)
def test_inversion_matches_diffusers_ddim_inverse_scheduler(make, prediction_type):
    backend = make(0)
    assert backend.prediction_type == prediction_type
    cond = backend.encode_prompt("a horse")
    picture = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    latent = backend._encode(picture) * backend.latent_scaling_factor
    grid = sorted(backend.grid(10), reverse=True)
    ours = backend._invert(latent, cond, grid, None)
    theirs = _diffusers_inversion(backend, latent, cond, 10, prediction_type)
    assert relative_error(ours, theirs) < 1e-4
    # the UNet is used: read the other way, the same UNet inverts elsewhere
    backend.prediction_type = "epsilon" if prediction_type == "v_prediction" else "v_prediction"
    assert relative_error(backend._invert(latent, cond, grid, None), theirs) > 1e-2


BACKBONES = {
    "sd1-epsilon": (tiny_backend, SD1, "epsilon"),
    "sd2-v": (tiny_sd2_backend, SD2, "v_prediction"),
    "sdxl-epsilon": (tiny_sdxl_backend, SDXL, "epsilon"),
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def backbone(request):
    make, family, prediction = BACKBONES[request.param]
    return make(0), family, prediction


def test_capture_from_a_picture_is_the_replay_of_its_inversion(backbone):
    backend, family, prediction = backbone
    picture = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(3))
    steps = []
    result = backend.capture_from_image(
        picture, SMALL, caption="a horse", progress=lambda i, n: steps.append((i, n))
    )
    sample = result.sample
    # the picture sets the size; the Sample rule's grid and schedule are used, inverted then replayed
    assert sample.size == (128, 64) and sample.image.shape == (1, 3, 64, 128)
    assert sample.timesteps == (1, 501, 901) and sample.meta["schedule"] == [901, 501, 1]
    assert steps == [(i, 6) for i in range(1, 7)]
    assert sample.meta["family"] == family and sample.meta["prediction_type"] == prediction
    assert sample.meta["source"] == "picture" and sample.meta["prompt"] == "a horse"
    assert sample.meta["cfg"] == SMALL.cfg and sample.meta["replay_cfg"] == 1.0
    # both branches captured, and they differ (caption vs "")
    for xs in sample.unet.values():
        assert len(xs) == len(backend.spec.unet) and all(x.shape[0] == 2 for x in xs)
    assert not torch.equal(sample.unet[501][0][0], sample.unet[501][0][1])
    assert len(sample.vae) == len(backend.spec.vae)
    # the features are those of the replay: the same x_T sampled with capture gives them again
    cond, uncond = backend.encode_prompt("a horse"), backend.encode_prompt("")
    again = backend._denoise(result.noise, cond, uncond, 1.0, [901, 501, 1], None, None)
    torch.testing.assert_close(sample.latent, again)
    # the PSNR is the decoded replay's against the picture
    expected = 10 * math.log10(1 / float((sample.image - picture).pow(2).mean()))
    assert result.replay_psnr == pytest.approx(expected)


def test_low_replay_psnr_warns_in_words():
    backend = tiny_backend(0)
    result = backend.capture_from_image(torch.rand(1, 3, 64, 64), SMALL)
    low = PictureCapture(result.sample, MIN_REPLAY_PSNR - 5, result.noise)
    assert "more steps (now 10" in low.warning and "caption" in low.warning
    assert PictureCapture(result.sample, MIN_REPLAY_PSNR + 1, result.noise).warning is None


@pytest.mark.parametrize(
    "picture, settings, message",
    [
        (torch.rand(2, 3, 64, 64), SMALL, "the picture is a batch of 2 images"),
        (torch.full((1, 3, 64, 64), float("nan")), SMALL, "the picture: NaN"),
        (torch.rand(1, 3, 64, 64) * 255, SMALL, r"the picture: values span .*divide by 255"),
        (
            torch.rand(1, 3, 32, 32),
            SMALL,
            "the picture is 32x32 pixels.*the smallest picture it takes is 64x64",
        ),
        (
            torch.rand(1, 3, 40, 100),
            SMALL,
            "the picture is 100x40 pixels.*the smallest picture it takes is 64x64",
        ),
        (torch.rand(1, 3, 64, 64), SMALL.replace(steps=2), "steps=2 is too few"),
    ],
    ids=["batch", "nan", "0-255", "too-small", "a-side-too-small", "too-few-steps"],
)
def test_bad_pictures_are_refused_by_name(picture, settings, message):
    with pytest.raises(InvalidInputError, match=message):
        tiny_backend(0).capture_from_image(picture, settings)


def test_a_picture_as_uint8_hwc_is_read_like_the_float_one():
    pixels = (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(5)) * 255).round().to(torch.uint8)
    as_float = pixels.permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(check_picture(pixels), as_float)


def test_no_hooks_left_when_the_capture_fails_midway():
    backend = tiny_backend(0)

    def hook_count():
        return sum(len(m._forward_hooks) for m in (*backend.unet.modules(), *backend.vae.modules()))

    before = hook_count()
    for stop_at in (2, 5):  # during the inversion, during the replay

        def boom(i, n, stop_at=stop_at):
            if i == stop_at:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            backend.capture_from_image(torch.rand(1, 3, 64, 64), SMALL, progress=boom)
        assert hook_count() == before


def test_psnr_of_identical_pictures_is_a_finite_number():
    from diffsketch.backends.inversion import psnr

    x = torch.rand(1, 3, 8, 8)
    assert psnr(x, x) == 100.0
    assert psnr(torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.1)) == pytest.approx(20.0)
