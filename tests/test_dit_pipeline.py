"""The whole DiffSketch pipeline on Z-Image-, SD 3.5- and Flux.1-shaped tiny random-weight diffusers models:
sample -> fit conditions -> train -> save/load the generator -> generate -> distill -> extract, on
the flow-matching grid, with one branch (Z-Image Turbo and Flux.1 dev at cfg 1) and two (SD 3.5 with
guidance);
and the hand-overs a flow model changes: the trainer's timestep grid, the branches sampled by
Train, Generate and Distill, the capture command's checks before the model loads."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers_spec import random_features, tiny_dit_spec
from test_backbone_pipeline import SMALL_GENERATOR, TINY_DISTILL, distill_on_two_photos
from tiny_models import tiny_backend, tiny_flux_backend, tiny_sd35_backend, tiny_zimage_backend

from diffsketch.backends.conditioning import Conditioning
from diffsketch.capture.sample import CapturedSample
from diffsketch.capture.sampling import SamplingSettings
from diffsketch.capture.spec import FLOW_FAMILIES, FLUX, FLUX_DEFAULT_GUIDANCE, SD35, ZIMAGE
from diffsketch.capture.timesteps import FLOW_TIMESTEPS, flow_grid, plan_timesteps
from diffsketch.distill import distill
from diffsketch.distill.extract import extract
from diffsketch.distill.extractor import load_extractor, save_extractor
from diffsketch.distill.pairs import generate_pairs, pair_settings
from diffsketch.errors import InvalidInputError, UnsupportedModelError
from diffsketch.train.conditions import ConditionSampler
from diffsketch.train.config import iteration_timesteps
from diffsketch.train.generator import GeneratorConfig, SketchGenerator, load_generator
from diffsketch.train.inference import generate_pair, generator_guidance, generator_timesteps
from diffsketch.train.losses import TINY_CLIP_ARCHITECTURE, ClipImageEncoder, DiffSketchLoss, build_lpips
from diffsketch.train.trainer import TrainConfig, Trainer

SIZE = 64
#: Z-Image Turbo's 8 steps: the flow families' default capture timesteps all lie on that grid
STEPS = 8
SAMPLING = SamplingSettings(steps=STEPS, width=SIZE, height=SIZE, schedule="fast")
#: The tiny Z-Image text encoder's tokenizer is byte-level, so a prompt's token count is its length
#: in characters; ConditionSampler fits one token length, so every prompt (the pivot's too) has 15
#: characters here. SD 3.5's context has a fixed length (77 CLIP + 256 T5 tokens) anyway.
PROMPTS = [
    "a cat on a sofa",
    "a red car drive",
    "an old man sits",
    "a bowl of fruit",
    "a street at dus",
    "a hill at dawns",
]
PIVOT = "a horse in muds"

#: name -> (backend maker, family, cfg it samples at, branches captured at that cfg, policy)
BACKBONES = {
    "zimage-turbo-cfg1": (tiny_zimage_backend, ZIMAGE, 1.0, 1, "fixed"),
    "sd35-cfg3": (tiny_sd35_backend, SD35, 3.0, 2, "random13"),
    "flux-dev-cfg1": (tiny_flux_backend, FLUX, 1.0, 1, "fixed"),
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def backbone(request):
    make, family, cfg, branches, policy = BACKBONES[request.param]
    return make(0), family, cfg, branches, policy


def tiny_loss() -> DiffSketchLoss:
    return DiffSketchLoss(ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE), build_lpips(random_weights=True))


def check_flux_guidance_is_recorded(backend, example, sketch, conditions, config, generator, sampling):
    """Flux.1 dev's guidance travels with what it made: the generator records its example's (which
    generate and distill on the command line sample at), the pair settings the backend's (another
    guidance, another folder), and training on an example of another guidance gives a notice."""
    assert example.meta["guidance"] == backend.guidance == FLUX_DEFAULT_GUIDANCE
    assert generator_guidance(generator) == FLUX_DEFAULT_GUIDANCE
    settings = pair_settings(backend, generator, conditions, sampling.replace(timesteps=None))
    assert settings["guidance"] == FLUX_DEFAULT_GUIDANCE
    other = dataclasses.replace(example, meta={**example.meta, "guidance": 5.0})
    notices = Trainer(backend, other, sketch, conditions, tiny_loss(), config, None, generator).notices
    assert any(
        "captured at Flux.1 guidance 5, but the model you train on samples at 3.5" in n for n in notices
    )
    assert not any(
        "guidance" in n for n in Trainer(backend, example, sketch, conditions, tiny_loss(), config).notices
    )


def test_sample_fit_train_generate_distill_extract(backbone, tmp_path):
    backend, family, cfg, branches, policy = backbone
    sampling = SAMPLING.replace(cfg=cfg)
    example = backend.sample(PIVOT, sampling.replace(seed=5))
    assert example.spec.family == family and example.plan.flow
    assert example.timesteps == FLOW_TIMESTEPS and example.branches == branches
    assert torch.isfinite(example.image).all() and example.image.shape == (1, 3, SIZE, SIZE)

    conditions = ConditionSampler.fit_from_prompts(
        backend.encode_prompt, PROMPTS, n_components=3, family=family
    )
    drawn = conditions.sample(torch.Generator().manual_seed(0))
    assert drawn.context.shape[-1] == backend.spec.context_dim and drawn.pooled_dim == backend.spec.pooled_dim
    # every flow family keeps float16 components; the fixed-length ones (SD 3.5, Flux.1) draw the
    # prompts' own token count
    assert conditions.components.dtype == torch.float16
    if family != ZIMAGE:
        assert drawn.context.shape[1] == backend.encode_prompt(PIVOT).context.shape[1]

    torch.manual_seed(0)
    generator = SketchGenerator(
        backend.spec,
        GeneratorConfig.from_spec(backend.spec, len(example.timesteps), branches=branches, **SMALL_GENERATOR),
    )
    config = TrainConfig(
        iterations=2, lr=3e-3, h_iter=2, steps=STEPS, cfg=cfg, schedule="fast", timestep_policy=policy
    )
    sketch = example.image.mean(1, keepdim=True)
    trainer = Trainer(backend, example, sketch, conditions, tiny_loss(), config, None, generator)
    drawn_timesteps = []
    sample = backend.sample

    def recording(cond, settings, **kwargs):
        drawn_timesteps.append(settings.plan(family).requested)
        return sample(cond, settings, **kwargs)

    backend.sample = recording
    try:
        trainer.run()
    finally:
        del backend.sample
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in trainer.history)
    # every new sample is captured on the flow grid, at distinct steps (random13: drawn from it)
    grid = set(flow_grid(STEPS))
    assert len(drawn_timesteps) == 2 and all(set(t) <= grid and len(set(t)) == 4 for t in drawn_timesteps)

    path = trainer.save_generator(tmp_path / "style.safetensors")
    loaded = load_generator(path, expected_spec=backend.spec)
    assert (loaded.family, loaded.branches, loaded.timesteps) == (family, branches, FLOW_TIMESTEPS)
    others = [tiny_dit_spec(f) for f in FLOW_FAMILIES if f != family]
    for other in (tiny_backend(0).spec, *others):
        with pytest.raises(UnsupportedModelError, match="same backbone family"):
            load_generator(path, expected_spec=other)

    if family == FLUX:
        check_flux_guidance_is_recorded(backend, example, sketch, conditions, config, loaded, sampling)

    image, drawn_sketch = generate_pair(backend, loaded, "a cat", sampling.replace(seed=3, timesteps=None))
    assert image.shape == (1, 3, SIZE, SIZE) and drawn_sketch.shape == (1, 1, SIZE, SIZE)
    assert torch.isfinite(drawn_sketch).all()

    student = distill(
        backend, loaded, conditions, tmp_path / "pairs", 2, TINY_DISTILL, sampling.replace(timesteps=None)
    )
    extractor = load_extractor(save_extractor(tmp_path / "extractor.safetensors", student, student.meta))
    sketches, _ = extract(extractor, image.movedim(1, -1))
    assert sketches.shape[:3] == (1, SIZE, SIZE) and torch.isfinite(sketches).all()


# --------------------------------------------------------------------------------------------
# the trainer plans on the model's own grid
# --------------------------------------------------------------------------------------------
class FlowBackend:
    """A Z-Image-shaped stand-in that hands back random captures at the timesteps it is asked
    for, on the flow grid, with the branches its cfg evaluates (records every settings)."""

    def __init__(self, spec):
        self.spec, self.settings = spec, []

    def check_conditioning(self, cond, name):
        return Conditioning.of(cond).map(lambda t: t.detach().float())

    def sample(self, cond, settings, **kwargs):
        self.settings.append(settings)
        plan = settings.plan(self.spec.family)
        return flow_sample(
            self.spec, plan.used, settings.steps, len(self.settings), 1 if settings.cfg == 1 else 2
        )


def flow_sample(spec, timesteps, steps, seed=0, branches=1) -> CapturedSample:
    plan = plan_timesteps(steps, timesteps, spec.family)
    unet, vae, rgb = random_features(spec, SIZE, SIZE, plan.used, seed, branches=branches)
    g = torch.Generator().manual_seed(seed + 1)
    lh, lw = spec.latent_size(SIZE, SIZE)
    return CapturedSample(
        spec,
        plan,
        torch.rand(1, 3, SIZE, SIZE, generator=g),
        torch.randn(1, spec.latent_channels, lh, lw, generator=g),
        unet,
        vae,
        rgb,
        {"cfg": 1.0 if branches == 1 else 5.0, "branches": branches},
    )


@pytest.fixture(scope="module")
def flow_env():
    spec = tiny_dit_spec()
    embeddings = torch.randn(6, 7, spec.context_dim, generator=torch.Generator().manual_seed(0))
    conditions = ConditionSampler.fit(embeddings, n_components=3, family=spec.family)
    return spec, conditions, embeddings[:1], tiny_loss()


def flow_trainer(flow_env, example, **config) -> Trainer:
    spec, conditions, pivot, loss = flow_env
    settings = dict(iterations=1, lr=1e-3, cfg=1.0, checkpoint_every=0, preview_every=0) | config
    return Trainer(
        FlowBackend(spec),
        example,
        example.image.mean(1, keepdim=True),
        conditions,
        loss,
        TrainConfig(**settings),
        pivot,
    )


def test_fixed_timesteps_are_planned_on_the_flow_grid(flow_env):
    """874 and 999 are two steps of the 8-step flow grid; on DDIM's (1, 126, ..., 876) both map to
    876, which refused the example."""
    spec = flow_env[0]
    example = flow_sample(spec, (874, 999), STEPS)
    trainer = flow_trainer(flow_env, example, steps=STEPS)
    trainer.run()
    (settings,) = trainer.backend.settings
    assert settings.plan(spec.family).used == (874, 999)
    # too few steps for them on the flow grid is still refused
    with pytest.raises(InvalidInputError, match="too few"):
        flow_trainer(flow_env, example, steps=2)


def test_random13_draws_from_the_flow_grid(flow_env):
    spec = flow_env[0]
    config = TrainConfig(steps=STEPS, timestep_policy="random13")
    for i in range(6):
        drawn = iteration_timesteps(config, i, FLOW_TIMESTEPS, ZIMAGE)
        assert len(set(drawn)) == 4 and set(drawn) <= set(flow_grid(STEPS))
    example = flow_sample(spec, FLOW_TIMESTEPS, STEPS)
    trainer = flow_trainer(flow_env, example, steps=STEPS, timestep_policy="random13", iterations=2)
    trainer.run()
    assert all(set(s.timesteps) <= set(flow_grid(STEPS)) for s in trainer.backend.settings)
    # 3 flow steps cannot give 4 timesteps (DDIM's 3-step grid has 4 entries, the flow one 3)
    with pytest.raises(InvalidInputError, match="random13"):
        flow_trainer(flow_env, example, steps=3, timestep_policy="random13")


def test_a_flow_generator_without_recorded_timesteps_takes_its_family_defaults():
    torch.manual_seed(0)
    spec = tiny_dit_spec()
    generator = SketchGenerator(spec, GeneratorConfig.from_spec(spec, len(FLOW_TIMESTEPS), **SMALL_GENERATOR))
    assert generator_timesteps(generator) == FLOW_TIMESTEPS


# --------------------------------------------------------------------------------------------
# the branches a generator was trained on decide the cfg it samples at
# --------------------------------------------------------------------------------------------
def test_the_command_line_cfg_default_follows_the_generator_then_the_model():
    """Without --cfg: a generator's branches decide (one: 1; two: the default 5, also on a
    guidance-distilled model, where 1 would capture one branch and be refused); without a
    generator, a guidance-distilled model samples at 1."""
    from types import SimpleNamespace

    from diffsketch.capture.sampling import DEFAULT_CFG
    from diffsketch.cli.common import sampling_cfg

    no_cfg, cfg_3 = SimpleNamespace(cfg=None), SimpleNamespace(cfg=3.0)
    turbo, unet = SimpleNamespace(guidance_distilled=True), SimpleNamespace(guidance_distilled=False)
    one, two = SimpleNamespace(branches=1), SimpleNamespace(branches=2)
    assert sampling_cfg(no_cfg, turbo, two) == DEFAULT_CFG
    assert sampling_cfg(no_cfg, turbo, one) == 1.0 and sampling_cfg(no_cfg, unet, one) == 1.0
    assert sampling_cfg(no_cfg, unet, two) == DEFAULT_CFG
    assert sampling_cfg(no_cfg, turbo) == 1.0 and sampling_cfg(no_cfg, unet) == DEFAULT_CFG
    assert sampling_cfg(cfg_3, turbo, one) == 3.0


def test_training_at_a_cfg_that_changes_the_branches_is_refused_before_sampling(flow_env):
    spec = flow_env[0]
    one = flow_sample(spec, FLOW_TIMESTEPS, STEPS, branches=1)
    with pytest.raises(InvalidInputError, match=r"one-branch features .* cfg 5 .* sample with cfg 1"):
        flow_trainer(flow_env, one, steps=STEPS, cfg=5.0)
    two = flow_sample(spec, FLOW_TIMESTEPS, STEPS, branches=2)
    with pytest.raises(InvalidInputError, match=r"two-branch features .* cfg 1 .* sample with cfg above 1"):
        flow_trainer(flow_env, two, steps=STEPS, cfg=1.0)
    flow_trainer(flow_env, two, steps=STEPS, cfg=2.0)  # two branches at cfg 2: fine


@pytest.mark.parametrize("branches, wrong_cfg", [(1, 4.0), (2, 1.0)])
def test_generate_and_distill_refuse_a_cfg_that_changes_the_branches_before_sampling(
    branches, wrong_cfg, tmp_path
):
    backend = tiny_zimage_backend(0) if branches == 1 else tiny_sd35_backend(0)
    torch.manual_seed(0)
    generator = SketchGenerator(
        backend.spec,
        GeneratorConfig.from_spec(backend.spec, len(FLOW_TIMESTEPS), branches=branches, **SMALL_GENERATOR),
        timesteps=FLOW_TIMESTEPS,
    ).eval()
    conditions = (
        ConditionSampler.fit(
            torch.randn(4, 5, backend.spec.context_dim, generator=torch.Generator().manual_seed(0)),
            n_components=2,
            family=backend.spec.family,
        )
        if branches == 1
        else None
    )

    def sampled(*args, **kwargs):
        raise AssertionError("sampled before the branches were checked")

    backend.sample = backend.sample_batch = sampled
    fix = "sample with cfg 1" if branches == 1 else "sample with cfg above 1"
    with pytest.raises(InvalidInputError, match=fix):
        generate_pair(backend, generator, "a cat", SAMPLING.replace(cfg=wrong_cfg))
    if conditions is not None:
        with pytest.raises(InvalidInputError, match=fix):
            generate_pairs(
                backend, generator, conditions, tmp_path / "pairs", 1, SAMPLING.replace(cfg=wrong_cfg)
            )
        assert not (tmp_path / "pairs").exists()


def test_a_one_branch_batch_splits_into_its_samples():
    backend = tiny_zimage_backend(0)
    settings = SAMPLING.replace(cfg=1.0)
    batch = backend.sample_batch(["a cat", "a dog"], settings, seeds=[1, 2])
    assert batch.branches == 1
    for seed, prompt, part in zip((1, 2), ("a cat", "a dog"), batch.split(), strict=True):
        alone = backend.sample(prompt, settings.replace(seed=seed))
        assert part.branches == 1 and part.meta["seed"] == seed and part.meta["prompt"] == prompt
        for t in alone.timesteps:
            for x, y in zip(part.unet[t], alone.unet[t], strict=True):
                assert x.shape == y.shape and torch.allclose(x.float(), y.float(), atol=2e-2, rtol=1e-2)


# --------------------------------------------------------------------------------------------
# the command line on a diffusers folder of a diffusion transformer
# --------------------------------------------------------------------------------------------
#: the parts of a diffusers folder of a DiT a tiny backend has (SD 3.5's CLIP tokenizers are left
#: out: the backend then uses the CLIP BPE vocabulary DiffSketch ships)
FOLDER_PARTS = (
    "transformer",
    "vae",
    "text_encoder",
    "tokenizer",
    "text_encoder_2",
    "tokenizer_2",
    "text_encoder_3",
    "tokenizer_3",
)


def save_dit_folder(backend, root):
    """``backend``'s models as a diffusers folder of a diffusion transformer, at its shift."""
    for part in FOLDER_PARTS:
        model = getattr(backend, part)
        if model is not None and hasattr(model, "save_pretrained"):
            model.save_pretrained(root / part)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"shift": backend.shift}))
    return root


@pytest.fixture(scope="module")
def zimage_folder(tmp_path_factory):
    return save_dit_folder(tiny_zimage_backend(0), tmp_path_factory.mktemp("models") / "zimage")


@pytest.mark.parametrize("family, cfg, branches", [(ZIMAGE, 1.0, 1), (SD35, 3.0, 2)])
def test_the_capture_command_plans_a_flow_model_on_its_own_grid(
    zimage_folder, tmp_path, family, cfg, branches
):
    """8 steps keep the flow families' 4 default timesteps apart on the flow grid; the paper's 13 on
    DDIM's 8-step grid would not, which refused the command before the model loaded."""
    from diffsketch.cli import main
    from diffsketch.images import save_png

    model = zimage_folder if family == ZIMAGE else save_dit_folder(tiny_sd35_backend(0), tmp_path / "sd35")
    picture = tmp_path / "picture.png"
    save_png(torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)), picture)
    out = tmp_path / "features.safetensors"
    args = ["capture", "--model", str(model), "--picture", str(picture), "--steps", str(STEPS)]
    assert (
        main([*args, "--cfg", f"{cfg:g}", "--schedule", "fast", "--caption", "a cat", "--out", str(out)]) == 0
    )
    sample = CapturedSample.load(out)
    assert sample.spec.family == family and sample.timesteps == FLOW_TIMESTEPS and sample.branches == branches


def test_the_commands_sample_fit_train_generate_distill_extract_on_a_zimage_folder(
    zimage_folder, tmp_path, capfd
):
    """The command line on a Z-Image Turbo folder: without --cfg the commands sample at cfg 1 (Turbo
    is guidance-distilled; the generator is one-branch) and without --steps in Turbo's 8 steps;
    Generate asked for cfg 5 is refused naming the fix, before sampling."""
    from PIL import Image
    from test_cli import loss_model_files

    from diffsketch.cli import main

    clip, alex = loss_model_files(tmp_path)
    model = ["--model", str(zimage_folder), "--device", "cpu"]
    small = ["--width", str(SIZE), "--height", str(SIZE), "--steps", str(STEPS)]
    example = tmp_path / "ex.safetensors"
    size = ["--width", str(SIZE), "--height", str(SIZE)]
    assert main(["sample", *model, *size, "--prompt", PIVOT, "--out", str(example)]) == 0
    captured = CapturedSample.load(example)
    assert captured.timesteps == FLOW_TIMESTEPS and captured.meta["cfg"] == 1.0
    assert captured.meta["steps"] == STEPS  # Turbo's own, --steps not given
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    conditions = tmp_path / "cond.safetensors"
    fit = ["--prompts", str(tmp_path / "prompts.txt"), "--components", "3", "--out", str(conditions)]
    assert main(["fit-conditions", *model, *fit]) == 0
    sketch = (np.asarray(Image.open(tmp_path / "ex.png").convert("L")) > 128).astype(np.uint8) * 255
    Image.fromarray(sketch).save(tmp_path / "sketch.png")
    style = tmp_path / "style.safetensors"
    train = ["train", *model, "--example", str(example), "--sketch", str(tmp_path / "sketch.png")]
    train += [
        "--conditions",
        str(conditions),
        "--clip",
        str(clip),
        "--lpips",
        str(alex),
        "--schedule",
        "fast",
    ]
    assert main([*train, "--iterations", "2", "--out", str(style)]) == 0
    trained = load_generator(style)
    assert trained.branches == 1 and trained.timesteps == FLOW_TIMESTEPS

    generate = ["generate", *model, *small, "--generator", str(style), "--prompt", "a cat"]
    capfd.readouterr()
    assert main([*generate, "--cfg", "5", "--out", str(tmp_path / "refused")]) != 0
    assert "sample with cfg 1" in capfd.readouterr().err
    assert main([*generate, "--out", str(tmp_path / "gen")]) == 0
    assert Image.open(tmp_path / "gen" / "000000_sketch.png").size == (SIZE, SIZE)

    extractor = tmp_path / "ext.safetensors"
    distill_args = ["distill", *model, *small, "--generator", str(style)]
    distill_args += ["--conditions", str(conditions), "--pairs", "2", "--pairs-dir", str(tmp_path / "pairs")]
    distill_args += ["--schedule", "fast", "--iterations", "2", "--batch-size", "2", "--crop-size", "32"]
    assert main([*distill_args, "--no-lpips", "--out", str(extractor)]) == 0
    extract = ["extract", str(tmp_path / "ex.png"), "--extractor", str(extractor), "--device", "cpu"]
    assert main([*extract, "--out", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "ex.png").size == (SIZE, SIZE)


@pytest.mark.parametrize("which", [ZIMAGE, SD35])
def test_a_prompt_longer_than_the_text_encoders_read_gets_a_notice(which):
    """The commands that take a prompt print it (they asked DiT backends for it and failed): the
    long prompt is encoded in full, as ComfyUI encodes it, where the family's pipeline cuts it."""
    backend = tiny_zimage_backend(0) if which == ZIMAGE else tiny_sd35_backend(0)
    assert backend.prompt_notice("a cat") is None
    notice = backend.prompt_notice("a cat " * 100)
    expected = (
        "all are encoded, as ComfyUI encodes them (ZImagePipeline would read the first 512)"
        if which == ZIMAGE
        else "CLIP-L and bigG encode it in 3 windows"
    )
    assert expected in notice


# Flux.1 left out: its inversion is the shared Euler inversion on the velocity its sampling parity
# test checks, and tier 1 stays short
@pytest.mark.parametrize("backbone", ["sd35-cfg3", "zimage-turbo-cfg1"], indirect=True)
def test_a_picture_of_ones_own_captures_trains_and_distills_on_photos(backbone, tmp_path):
    """picture -> capture (Euler inversion + replay, the branches of the cfg Train samples at) ->
    train -> generate -> distill on generated pairs and photos -> extract."""
    backend, family, cfg, branches, _ = backbone
    sampling = SAMPLING.replace(cfg=cfg)
    picture = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    example = backend.capture_from_image(picture, sampling, caption=PIVOT).sample
    assert example.meta["source"] == "picture" and example.branches == branches
    conditions = ConditionSampler.fit_from_prompts(
        backend.encode_prompt, PROMPTS, n_components=3, family=family
    )
    torch.manual_seed(0)
    generator = SketchGenerator(
        backend.spec,
        GeneratorConfig.from_spec(backend.spec, len(example.timesteps), branches=branches, **SMALL_GENERATOR),
    )
    config = TrainConfig(iterations=2, lr=3e-3, h_iter=2, steps=STEPS, cfg=cfg, schedule="fast")
    trainer = Trainer(
        backend, example, picture.mean(1, keepdim=True), conditions, tiny_loss(), config, None, generator
    )
    trainer.run()
    loaded = load_generator(
        trainer.save_generator(tmp_path / "style.safetensors"), expected_spec=backend.spec
    )
    student = distill_on_two_photos(
        backend, loaded, conditions, tmp_path / "pairs", sampling.replace(timesteps=None)
    )
    sources = student.meta["pair_sources"]
    assert (sources["generated"], sources["photos"]) == (2, 2)
    extractor = load_extractor(save_extractor(tmp_path / "extractor.safetensors", student, student.meta))
    sketches, _ = extract(extractor, picture.movedim(1, -1))
    assert sketches.shape[:3] == (1, SIZE, SIZE) and torch.isfinite(sketches).all()
