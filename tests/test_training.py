"""The one-example training loop, its checkpoints and the helpers around it (tiny models, CPU)."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from helpers_spec import random_features, tiny_dit_spec, tiny_spec

from diffsketch.capture.sampling import SamplingSettings
from diffsketch.capture.timesteps import PAPER_TIMESTEPS, ddim_grid
from diffsketch.errors import (
    Cancelled,
    FileFormatError,
    InvalidInputError,
    TrainingDiverged,
    TrainingInterrupted,
)
from diffsketch.fileio import read_header
from diffsketch.train.conditions import ConditionSampler
from diffsketch.train.generator import GeneratorConfig, SketchGenerator, load_generator, save_generator
from diffsketch.train.inference import generate_pair
from diffsketch.train.losses import (
    TINY_CLIP_ARCHITECTURE,
    ClipImageEncoder,
    DiffSketchLoss,
    LossWeights,
    build_lpips,
)
from diffsketch.train.state import load_training_state, save_training_state
from diffsketch.train.trainer import (
    CHECKPOINT_KIND,
    TrainConfig,
    Trainer,
    iteration_timesteps,
    prepare_sketch,
)

W = H = 64
STEPS = 20
TIMESTEPS = (1, 501, 951)
PROMPT = "a photo of a horse in mud"
PROMPTS = [
    "a cat on a windowsill",
    "a dog on a sofa",
    "a mountain at dawn",
    "portrait of an old man",
    "a red car in the rain",
    "a bowl of fruit",
    "a city street at night",
    "a horse in a field",
]
SMALL = dict(lower_dim=32, higher_dim=16, lower_groups=4, higher_groups=4, final_width=16)


def small_generator(spec, n_timesteps=None) -> SketchGenerator:
    n_timesteps = len(TIMESTEPS) if n_timesteps is None else n_timesteps
    torch.manual_seed(0)
    return SketchGenerator(spec, GeneratorConfig.from_spec(spec, n_timesteps, **SMALL))


def config(**overrides) -> TrainConfig:
    base = dict(
        iterations=4, lr=3e-3, h_iter=4, steps=STEPS, schedule="fast", checkpoint_every=2, preview_every=2
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def env(tiny_backend):
    example = tiny_backend.sample(
        PROMPT,
        SamplingSettings(seed=50, steps=STEPS, width=W, height=H, timesteps=TIMESTEPS, schedule="fast"),
    )
    torch.manual_seed(0)
    loss_models = (ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE), build_lpips(random_weights=True))
    return SimpleNamespace(
        backend=tiny_backend,
        example=example,
        # a target the generator can learn quickly: the example image in grey
        sketch=example.image.mean(1, keepdim=True),
        conditions=ConditionSampler.fit_from_prompts(
            tiny_backend.encode_prompt, PROMPTS, n_components=4, family=tiny_backend.spec.family
        ),
        pivot=tiny_backend.encode_prompt(PROMPT),
        loss_models=loss_models,
    )


def make_trainer(env, cfg: TrainConfig, generator="small", **kwargs) -> Trainer:
    if generator == "small":
        generator = small_generator(env.backend.spec)
    loss = DiffSketchLoss(*env.loss_models)
    return Trainer(
        env.backend, env.example, env.sketch, env.conditions, loss, cfg, env.pivot, generator, **kwargs
    )


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


LOSS_KEYS = ("total", "l1", "lpips", "clip_sim", "across", "within")


def assert_same_losses(h1: list[dict], h2: list[dict]):
    assert [h["step"] for h in h1] == [h["step"] for h in h2]
    for a, b in zip(h1, h2):
        for k in LOSS_KEYS:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["step"], k)


@pytest.fixture(scope="module")
def reference(env):
    """An uninterrupted 4-step run: what every resumed run must reproduce."""
    trainer = make_trainer(env, config())
    trainer.run()
    return SimpleNamespace(trainer=trainer, weights=weights(trainer.generator), history=list(trainer.history))


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def test_training_drives_the_example_reconstruction_down(env):
    cfg = config(iterations=20, h_iter=20, checkpoint_every=0, preview_every=10)
    trainer = make_trainer(env, cfg)
    calls = []
    trainer.run(on_step=lambda step, losses, preview: calls.append((step, losses, preview)))
    assert [c[0] for c in calls] == list(range(1, 21))
    l1 = [c[1]["l1"] for c in calls]
    assert l1[-1] < l1[0] / 5, l1
    previews = {step: p for step, _, p in calls if p is not None}
    assert sorted(previews) == [10, 20]
    for p in previews.values():
        assert p.shape == (1, H, 4 * W, 3) and 0 <= float(p.min()) and float(p.max()) <= 1
    # CDST: the random condition's weight grows from 0; every iteration gets its own sample seed
    cdst = [h["cdst_weight"] for h in trainer.history]
    assert cdst[0] == 0 and all(a < b for a, b in zip(cdst, cdst[1:]))
    assert len({h["sample_seed"] for h in trainer.history}) == 20
    image = trainer.loss_curve_image(size=(320, 200))
    assert image.size == (320, 200)


def test_resume_equals_uninterrupted_run(env, reference, tmp_path):
    path = tmp_path / "run.safetensors"
    first = make_trainer(env, config(iterations=2), checkpoint_path=path)
    first.run()
    assert read_header(path)["step"] == 2
    # generator=None: the trainer rebuilds the generator the checkpoint describes
    resumed = make_trainer(env, config(), generator=None, resume_from=path, checkpoint_path=path)
    assert resumed.step == 2 and not resumed.notices
    resumed.run()
    assert_same_weights(weights(resumed.generator), reference.weights)
    assert_same_losses(resumed.history, reference.history)


def test_cancel_writes_a_checkpoint_that_resumes(env, reference, tmp_path):
    path = tmp_path / "cancelled.safetensors"
    trainer = make_trainer(env, config(), checkpoint_path=path)
    saved = []
    with pytest.raises(TrainingInterrupted) as info:
        trainer.run(should_stop=lambda: trainer.step >= 2, on_checkpoint=lambda p, s: saved.append(s))
    assert isinstance(info.value, Cancelled)
    assert str(path) in str(info.value) and "resume" in str(info.value)
    assert saved == [2] and read_header(path)["step"] == 2
    resumed = make_trainer(env, config(), resume_from=path)
    resumed.run()
    assert_same_weights(weights(resumed.generator), reference.weights)
    assert_same_losses(resumed.history, reference.history)


def test_cancel_during_sampling(env, tmp_path):
    path = tmp_path / "early.safetensors"
    trainer = make_trainer(env, config(), checkpoint_path=path)
    before = weights(trainer.generator)
    polls = []

    def should_stop():  # first poll: top of the loop; the second comes from inside the sampler
        polls.append(1)
        return len(polls) >= 2

    steps = []
    with pytest.raises(TrainingInterrupted):
        trainer.run(on_step=lambda *a: steps.append(a[0]), should_stop=should_stop)
    assert steps == [] and trainer.step == 0 and read_header(path)["step"] == 0
    assert_same_weights(weights(trainer.generator), before, atol=0)


def test_other_exception_keeps_progress(env, tmp_path):
    path = tmp_path / "crash.safetensors"
    trainer = make_trainer(env, config(), checkpoint_path=path)

    def on_step(step, losses, preview):
        raise RuntimeError("interrupted by the host")

    with pytest.raises(RuntimeError, match="interrupted by the host") as info:
        trainer.run(on_step=on_step)
    assert read_header(path)["step"] == 1
    if sys.version_info >= (3, 11):  # exceptions take notes from Python 3.11 on
        assert any(str(path) in note for note in getattr(info.value, "__notes__", []))


def test_non_finite_loss_keeps_the_last_good_checkpoint(env, tmp_path):
    path = tmp_path / "nan.safetensors"
    trainer = make_trainer(env, config(iterations=6), checkpoint_path=path)
    original = trainer.generator.forward
    calls = []

    def poisoned(*args, **kwargs):  # two generator calls per iteration; poison iteration 3
        calls.append(1)
        out = original(*args, **kwargs)
        return out * float("nan") if len(calls) == 7 else out

    trainer.generator.forward = poisoned
    seen = {}
    with pytest.raises(TrainingDiverged) as info:
        trainer.run(on_step=lambda step, losses, preview: seen.update({step: weights(trainer.generator)}))
    message = str(info.value)
    assert "step 4" in message and "l1" in message and str(path) in message and "step 2" in message
    assert trainer.step == 3  # the poisoned step was not applied
    assert_same_weights(weights(trainer.generator), seen[3], atol=0)
    assert read_header(path)["step"] == 2  # not overwritten
    fresh = small_generator(env.backend.spec)
    load_training_state(path, kind=CHECKPOINT_KIND, model=fresh, optimizer=None)
    assert_same_weights(weights(fresh), seen[2], atol=0)


def test_low_memory_forward_matches_the_generator():
    # UNet taps with and without the VAE; DiT taps (one resolution, standardised, a massive
    # channel planted) with one and two branches
    cases = [
        (tiny_spec(), True, 2),
        (tiny_spec(), False, 2),
        (tiny_dit_spec(), True, 1),
        (tiny_dit_spec(), True, 2),
    ]
    for spec, use_vae, branches in cases:
        torch.manual_seed(0)
        config = GeneratorConfig.from_spec(spec, 3, use_vae=use_vae, branches=branches, **SMALL)
        gen = SketchGenerator(spec, config).double()
        unet, vae, rgb = random_features(spec, 64, 64, TIMESTEPS, dtype=torch.float64, branches=branches)
        unet[TIMESTEPS[0]][0][:, 5] += 500.0
        rgb = rgb.double()
        results = []
        for checkpointing in (False, True):
            gen.zero_grad()
            gen.gradient_checkpointing = checkpointing
            out = gen(unet, vae, rgb)
            (out * torch.linspace(0, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
            results.append((out.detach(), {n: p.grad.clone() for n, p in gen.named_parameters()}))
        (out_a, grads_a), (out_b, grads_b) = results
        torch.testing.assert_close(out_b, out_a, atol=1e-10, rtol=1e-10)
        for name in grads_a:
            torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-10, rtol=1e-8, msg=name)


def test_low_memory_training_follows_the_same_path(env, reference):
    trainer = make_trainer(env, config(iterations=2, low_memory=True, checkpoint_every=0))
    trainer.run()
    for got, want in zip(trainer.history, reference.history[:2]):
        for k in LOSS_KEYS:
            assert got[k] == pytest.approx(want[k], rel=1e-3, abs=1e-5), k


def test_comfyui_inference_tensors(env):
    # ComfyUI runs every node under torch.inference_mode(): all inputs, even the loss networks'
    # weights, are inference tensors, and the node calls run() from inside that mode.
    with torch.inference_mode():
        ex = env.example
        example = replace(
            ex,
            unet={t: [x.clone() for x in xs] for t, xs in ex.unet.items()},
            vae=[x.clone() for x in ex.vae],
            rgb=ex.rgb.clone(),
            image=ex.image.clone(),
        )
        loss = DiffSketchLoss(
            ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE), build_lpips(random_weights=True)
        )
        generator = small_generator(env.backend.spec)
        assert next(generator.parameters()).is_inference()
        trainer = Trainer(
            env.backend,
            example,
            env.sketch.clone(),
            env.conditions,
            loss,
            config(iterations=2),
            env.pivot.map(torch.clone),
            generator,
        )
        before = weights(trainer.generator)
        trainer.run()
    after = weights(trainer.generator)
    assert not next(trainer.generator.parameters()).is_inference()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(math.isfinite(h["total"]) for h in trainer.history)


def test_random_timesteps_policy(env):
    cfg = config(timestep_policy="random13", iterations=2, checkpoint_every=0)
    drawn = [iteration_timesteps(cfg, i, TIMESTEPS) for i in range(5)]
    grid = set(ddim_grid(STEPS))
    for ts in drawn:
        assert len(set(ts)) == len(TIMESTEPS) and ts == sorted(ts) and set(ts) <= grid
    assert len({tuple(ts) for ts in drawn}) > 1
    assert drawn == [iteration_timesteps(cfg, i, TIMESTEPS) for i in range(5)]
    assert iteration_timesteps(config(), 3, TIMESTEPS) == list(TIMESTEPS)
    trainer = make_trainer(env, cfg)
    trainer.run()
    assert trainer.step == 2 and all(math.isfinite(h["total"]) for h in trainer.history)


def test_fast_schedule_needs_far_fewer_unet_evaluations(env):
    # The paper's 13 timesteps on the 50-step grid: fast visits them (and the final step) only.
    example = env.backend.sample(
        PROMPT, SamplingSettings(seed=50, steps=50, width=W, height=H, schedule="fast")
    )
    assert example.timesteps == PAPER_TIMESTEPS
    cfg = config(iterations=1, steps=50, checkpoint_every=0, preview_every=0)
    loss = DiffSketchLoss(*env.loss_models)
    generator = small_generator(env.backend.spec, 13)
    trainer = Trainer(env.backend, example, env.sketch, env.conditions, loss, cfg, env.pivot, generator)
    trainer.run()
    fast = trainer.history[0]["unet_evaluations"]
    assert fast == 13
    assert len(ddim_grid(50)) / fast >= 3.5


# --------------------------------------------------------------------------------------------
# inputs and settings
# --------------------------------------------------------------------------------------------
def test_prepare_sketch_conversions():
    rgb = torch.rand(1, 16, 24, 3, generator=torch.Generator().manual_seed(0))
    out, notices = prepare_sketch(rgb, (24, 16))
    assert out.shape == (1, 1, 16, 24) and not notices
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    torch.testing.assert_close(out[0, 0], luma[0])

    # [1, C, H, W] grey, same values through
    grey = torch.rand(1, 1, 16, 24)
    torch.testing.assert_close(prepare_sketch(grey, (24, 16))[0], grey)

    # RGBA: fully transparent -> white paper; opaque black stays black
    rgba = torch.zeros(1, 4, 16, 24)
    rgba[:, 3, :, :12] = 1.0
    out, notices = prepare_sketch(rgba, (24, 16))
    assert float(out[..., :12].max()) == 0.0 and float(out[..., 12:].min()) == 1.0
    assert any("white" in n for n in notices)

    # uint8 image, other size -> resized with a notice that names both sizes
    u8 = torch.full((1, 32, 32, 3), 255, dtype=torch.uint8)
    out, notices = prepare_sketch(u8, (24, 16))
    assert out.shape == (1, 1, 16, 24) and torch.allclose(out, torch.ones_like(out))
    assert any("32x32" in n and "24x16" in n for n in notices)

    # inference tensors in (ComfyUI) -> a normal tensor out
    with torch.inference_mode():
        inf = torch.rand(1, 16, 24, 3)
    assert not prepare_sketch(inf, (24, 16))[0].is_inference()


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(2, 16, 16, 3), "single sketch"),
        (torch.rand(1, 16, 16, 3) * 255, "divide by 255"),
        (torch.rand(1, 16, 16, 7), "channels"),
        (torch.full((1, 16, 16, 1), float("nan")), "NaN"),
        ("sketch.png", "image tensor"),
    ],
)
def test_prepare_sketch_errors(bad, match):
    with pytest.raises(InvalidInputError, match=match):
        prepare_sketch(bad, (16, 16))


def test_train_config_json_and_validation():
    cfg = TrainConfig(
        iterations=10, loss_weights=LossWeights(lpips=0), schedule="fast", timestep_policy="random13"
    )
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg and isinstance(again.loss_weights, LossWeights)
    defaults = TrainConfig()
    assert (defaults.iterations, defaults.lr, defaults.h_iter, defaults.steps, defaults.cfg) == (
        1200,
        1e-4,
        1000,
        50,
        5.0,
    )
    assert defaults.timestep_policy == "fixed" and defaults.schedule == "full"
    for bad in (
        dict(schedule="slow"),
        dict(timestep_policy="random"),
        dict(lr=0),
        dict(iterations=0),
        dict(loss_weights=LossWeights(l1=float("nan"))),
        dict(loss_weights={"l1": -1.0}),
    ):
        with pytest.raises(InvalidInputError):
            TrainConfig(**bad)
    with pytest.raises(InvalidInputError, match="unknown"):
        TrainConfig.from_dict({"iterationz": 3})


def test_trainer_input_checks(env, tmp_path):
    with pytest.raises(InvalidInputError, match="prepare_sketch"):
        Trainer(
            env.backend, env.example, torch.ones(1, 1, 32, 32), env.conditions, DiffSketchLoss(*env.loss_models),
            config(), env.pivot, small_generator(env.backend.spec),
        )  # fmt: skip
    with pytest.raises(InvalidInputError, match="timesteps"):
        make_trainer(env, config(), generator=small_generator(env.backend.spec, 5))
    # the trainer gives the loss the config's weights, and needs LPIPS only when it is weighted
    loss = DiffSketchLoss(env.loss_models[0], None, LossWeights(lpips=0))
    with pytest.raises(InvalidInputError, match="LPIPS"):
        Trainer(
            env.backend,
            env.example,
            env.sketch,
            env.conditions,
            loss,
            config(),
            env.pivot,
            small_generator(env.backend.spec),
        )
    weights_no_lpips = LossWeights(lpips=0, within=2.0)
    trainer = Trainer(
        env.backend, env.example, env.sketch, env.conditions, loss, config(loss_weights=weights_no_lpips),
        env.pivot, small_generator(env.backend.spec),
    )  # fmt: skip
    assert trainer.loss.weights == weights_no_lpips
    # resuming from a file of another kind
    other = tmp_path / "other.safetensors"
    save_training_state(
        other, kind="distillation_checkpoint", model=torch.nn.Linear(2, 2),
        optimizer=torch.optim.Adam(torch.nn.Linear(2, 2).parameters()), step=1,
    )  # fmt: skip
    with pytest.raises(FileFormatError, match="training_checkpoint"):
        make_trainer(env, config(), resume_from=other)


def test_changed_settings_are_reported_on_resume(env, tmp_path):
    path = tmp_path / "settings.safetensors"
    trainer = make_trainer(env, config(iterations=1), checkpoint_path=path)
    trainer.run()
    resumed = make_trainer(env, config(iterations=1, lr=1e-3), resume_from=path)
    assert any("lr 0.003 -> 0.001" in n for n in resumed.notices)
    assert any("already at step 1" in n for n in resumed.notices)
    assert all(g["lr"] == 1e-3 for g in resumed.optimizer.param_groups)
    bigger = GeneratorConfig.from_spec(env.backend.spec, 3, **{**SMALL, "higher_dim": 32})
    with pytest.raises(FileFormatError, match="architecture"):
        make_trainer(env, config(), generator=SketchGenerator(env.backend.spec, bigger), resume_from=path)


# --------------------------------------------------------------------------------------------
# saved generator and generation
# --------------------------------------------------------------------------------------------
def test_saved_generator_and_generate_pair(env, reference, tmp_path):
    path = reference.trainer.save_generator(tmp_path / "style.safetensors")
    generator = load_generator(path, expected_spec=env.backend.spec)
    meta = generator.meta
    assert meta["steps_done"] == 4 and meta["timesteps"] == list(TIMESTEPS)
    assert meta["example"]["prompt"] == PROMPT and meta["example"]["seed"] == 50
    assert meta["base_model"]["spec_fingerprint"] == env.backend.spec.fingerprint()
    assert meta["base_model"]["model_hash"] == env.backend.model_hash()
    assert meta["training"] == config().to_dict()
    assert_same_weights(weights(generator), reference.weights, atol=0)

    image, sketch = generate_pair(
        env.backend,
        generator,
        "a cat",
        SamplingSettings(seed=3, steps=STEPS, width=W, height=H, schedule="fast"),
    )
    assert image.shape == (1, 3, H, W) and sketch.shape == (1, 1, H, W)
    assert 0 <= float(sketch.min()) and float(sketch.max()) <= 1
    # the same sample through the generator directly gives the same (clamped) sketch
    sample = env.backend.sample(
        "a cat",
        SamplingSettings(seed=3, steps=STEPS, width=W, height=H, timesteps=TIMESTEPS, schedule="fast"),
    )
    with torch.no_grad():
        torch.testing.assert_close(sketch, generator.forward_sample(sample).clamp(0, 1))
    with pytest.raises(InvalidInputError, match="timesteps"):
        generate_pair(
            env.backend,
            generator,
            "a cat",
            SamplingSettings(seed=3, steps=STEPS, width=W, height=H, timesteps=[1, 501]),
        )


# --------------------------------------------------------------------------------------------
# checkpoint files
# --------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_restores_optimizer_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GroupNorm(2, 4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        model(torch.randn(5, 3)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    rng = {"torch_cpu": torch.Generator().manual_seed(5).get_state()}
    path = save_training_state(
        tmp_path / "ckpt.safetensors", kind="test_kind", model=model, optimizer=optimizer, step=3, rng=rng,
        meta={"history": [{"step": 1, "total": 0.5}]},
    )  # fmt: skip

    torch.manual_seed(1)
    clone = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GroupNorm(2, 4), torch.nn.Linear(4, 1))
    clone_opt = torch.optim.Adam(clone.parameters(), lr=5.0)
    step, rng_back, meta = load_training_state(path, kind="test_kind", model=clone, optimizer=clone_opt)
    assert step == 3 and meta == {"history": [{"step": 1, "total": 0.5}]}
    assert torch.equal(rng_back["torch_cpu"], rng["torch_cpu"])
    assert_same_weights(weights(clone), weights(model), atol=0)
    want, got = optimizer.state_dict(), clone_opt.state_dict()
    assert got["param_groups"] == want["param_groups"]  # lr 1e-3 and the betas tuple are back
    for index, entries in want["state"].items():
        for key, value in entries.items():
            assert torch.equal(got["state"][index][key], value), (index, key)
    # both continue identically
    x = torch.randn(5, 3)
    for m, o in ((model, optimizer), (clone, clone_opt)):
        m(x).square().mean().backward()
        o.step()
    assert_same_weights(weights(clone), weights(model), atol=0)


def test_checkpoint_rejects_other_kinds_versions_and_models(tmp_path):
    model = torch.nn.Linear(3, 4)
    optimizer = torch.optim.Adam(model.parameters())
    path = save_training_state(
        tmp_path / "c.safetensors", kind="kind_a", model=model, optimizer=optimizer, step=0, version=2
    )
    with pytest.raises(FileFormatError, match="kind_b"):
        load_training_state(path, kind="kind_b", model=model, optimizer=optimizer, versions=(2,))
    with pytest.raises(FileFormatError, match="version"):
        load_training_state(path, kind="kind_a", model=model, optimizer=optimizer, versions=(1,))
    other = torch.nn.Linear(3, 5)
    with pytest.raises(FileFormatError, match="do not fit"):
        load_training_state(
            path, kind="kind_a", model=other, optimizer=torch.optim.Adam(other.parameters()), versions=(2,)
        )
    with pytest.raises(InvalidInputError, match="uint8"):
        save_training_state(
            tmp_path / "d.safetensors",
            kind="k",
            model=model,
            optimizer=optimizer,
            step=0,
            rng={"x": torch.zeros(3)},
        )


# --------------------------------------------------------------------------------------------
# a trained generator carries its timesteps, schedule and backbone family (issue 18.1)
# --------------------------------------------------------------------------------------------
CUSTOM_13 = (21, 81, 181, 261, 341, 441, 521, 581, 661, 721, 801, 881, 961)  # not the paper's


def _trained(env, tmp_path, timesteps, steps, schedule="fast"):
    """(the Trainer's generator in memory, the same generator saved and loaded back)."""
    example = env.backend.sample(
        PROMPT,
        SamplingSettings(seed=50, steps=steps, width=W, height=H, timesteps=timesteps, schedule=schedule),
    )
    cfg = config(iterations=1, steps=steps, schedule=schedule, checkpoint_every=0, preview_every=0)
    loss = DiffSketchLoss(*env.loss_models)
    generator = small_generator(env.backend.spec, len(timesteps))
    trainer = Trainer(env.backend, example, env.sketch, env.conditions, loss, cfg, env.pivot, generator)
    trainer.run()
    path = trainer.save_generator(tmp_path / "style.safetensors")
    return trainer.generator.eval(), load_generator(path)


def _sketch(env, generator, steps, **kwargs):
    sampling = SamplingSettings(seed=3, steps=steps, width=W, height=H, **kwargs)
    return generate_pair(env.backend, generator, "a cat", sampling)[1]


def test_the_trained_generator_in_memory_carries_its_timesteps_and_schedule(env, tmp_path):
    in_memory, loaded = _trained(env, tmp_path, TIMESTEPS, STEPS)
    for generator in (in_memory, loaded):
        assert generator.timesteps == TIMESTEPS and generator.schedule == "fast" and generator.family == "sd1"
    assert in_memory.meta == loaded.meta and in_memory.meta["timesteps"] == list(TIMESTEPS)
    # straight from training (no file) Generate needs nothing more, and draws what the file draws
    torch.testing.assert_close(_sketch(env, in_memory, STEPS), _sketch(env, loaded, STEPS), rtol=0, atol=0)
    # ... with the training schedule: "fast" unless asked otherwise
    torch.testing.assert_close(
        _sketch(env, in_memory, STEPS), _sketch(env, in_memory, STEPS, schedule="fast"), rtol=0, atol=0
    )
    assert not torch.equal(_sketch(env, in_memory, STEPS), _sketch(env, in_memory, STEPS, schedule="full"))


def test_thirteen_custom_timesteps_are_not_taken_for_the_papers(env, tmp_path):
    in_memory, loaded = _trained(env, tmp_path, CUSTOM_13, 50)
    assert in_memory.timesteps == loaded.timesteps == CUSTOM_13
    from_memory = _sketch(env, in_memory, 50)
    torch.testing.assert_close(from_memory, _sketch(env, loaded, 50), rtol=0, atol=0)
    assert not torch.equal(from_memory, _sketch(env, in_memory, 50, timesteps=PAPER_TIMESTEPS))


def test_distill_pair_settings_take_the_generators_timesteps_and_schedule(env, tmp_path):
    from diffsketch.distill import pair_settings

    in_memory, loaded = _trained(env, tmp_path, TIMESTEPS, STEPS)
    sampling = SamplingSettings(steps=STEPS, width=W, height=H)
    settings = pair_settings(env.backend, in_memory, env.conditions, sampling)
    assert settings["timesteps"] == list(TIMESTEPS) and settings["schedule"] == "fast"
    assert settings == pair_settings(env.backend, loaded, env.conditions, sampling)


def test_generator_files_without_the_new_header_fields_still_load(env, tmp_path):
    """Files written before the family, timesteps and schedule had header fields of their own."""
    from diffsketch.fileio import save_tensors
    from diffsketch.train.generator import GENERATOR_KIND, GENERATOR_VERSION, parameter_count

    generator = small_generator(env.backend.spec)

    def old_file(name, meta):
        header = {
            "spec": generator.spec.to_json(),
            "spec_fingerprint": generator.spec.fingerprint(),
            "config": generator.config.to_dict(),
            "parameters": parameter_count(generator),
            "meta": meta,
        }
        path = tmp_path / name
        save_tensors(path, generator.state_dict(), GENERATOR_KIND, GENERATOR_VERSION, header)
        return path

    trained = load_generator(
        old_file("trained.safetensors", {"timesteps": list(TIMESTEPS), "training": {"schedule": "fast"}})
    )
    assert trained.family == "sd1" and trained.timesteps == TIMESTEPS and trained.schedule == "fast"
    bare = load_generator(old_file("bare.safetensors", {}))
    assert bare.family == "sd1" and bare.timesteps is None and bare.schedule == "full"
    # A generator saved without timesteps of its own takes those its caller's meta records.
    recorded = save_generator(tmp_path / "recorded.safetensors", generator, {"timesteps": list(TIMESTEPS)})
    assert load_generator(recorded).timesteps == TIMESTEPS


def test_a_generator_meets_only_a_model_of_its_backbone_family(env, tmp_path):
    from dataclasses import replace as replace_spec

    from diffsketch.errors import UnsupportedModelError
    from diffsketch.fileio import read_header, save_tensors
    from diffsketch.train.generator import save_generator

    generator = small_generator(env.backend.spec)
    generator.timesteps = TIMESTEPS
    path = save_generator(tmp_path / "style.safetensors", generator)
    header = read_header(path)
    assert (
        header["family"] == "sd1" and header["timesteps"] == list(TIMESTEPS) and header["schedule"] == "full"
    )
    # a family this version does not know is refused by name when the file is loaded
    tensors = {k: v for k, v in generator.state_dict().items()}
    header.update(family="sd9")
    del header["format"], header["kind"], header["version"]
    save_tensors(tmp_path / "future.safetensors", tensors, "generator", 1, header)
    with pytest.raises(FileFormatError, match="'sd9'"):
        load_generator(tmp_path / "future.safetensors")

    # two known families: the mismatch is found before anything is sampled, naming both
    other = SketchGenerator(
        replace_spec(env.backend.spec, family="sd2"), generator.config, timesteps=TIMESTEPS
    )
    assert other.family == "sd2" and not other.spec.is_compatible(env.backend.spec)
    sampled = []
    backend = SimpleNamespace(spec=env.backend.spec, sample=lambda *a, **k: sampled.append(1))
    both = "the generator is SD 2.x but the model connected is SD 1.x"
    with pytest.raises(UnsupportedModelError, match=both):
        generate_pair(backend, other, "a cat", SamplingSettings(steps=STEPS, width=W, height=H))
    from diffsketch.distill import pair_settings

    with pytest.raises(UnsupportedModelError, match=both):
        pair_settings(backend, other, env.conditions, SamplingSettings(steps=STEPS, width=W, height=H))
    assert sampled == []


def test_an_example_with_overflowed_features_says_what_to_do(env):
    vae = [x.clone() for x in env.example.vae]
    vae[1][0, 0, 0, 0] = float("inf")
    with pytest.raises(InvalidInputError, match=r"VAE decoder feature 1 .*--fp32-vae"):
        Trainer(
            env.backend,
            replace(env.example, vae=vae),
            env.sketch,
            env.conditions,
            DiffSketchLoss(*env.loss_models),
            config(),
            env.pivot,
            small_generator(env.backend.spec),
        )


def test_a_sample_with_overflowed_features_names_the_cause(env, monkeypatch):
    trainer = make_trainer(env, config(iterations=2))
    real = env.backend.sample

    def overflowing(*args, **kwargs):
        sample = real(*args, **kwargs)
        t = sample.timesteps[0]
        unet = dict(sample.unet)
        unet[t] = [x.clone() for x in unet[t]]
        unet[t][0].fill_(float("inf"))
        return replace(sample, unet=unet)

    monkeypatch.setattr(env.backend, "sample", overflowing)
    with pytest.raises(TrainingDiverged, match=r"UNet feature 0 .* at timestep .*--fp32-unet"):
        trainer.run()
