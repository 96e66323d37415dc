"""The sketch generator on diffusion-transformer taps (Z-Image, SD 3.5): one-resolution block taps,
massive activations, one or two captured branches, files and families."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers_spec import (
    flux_spec,
    random_features,
    random_sample,
    sd15_spec,
    sd35_large_spec,
    sd35_medium_spec,
    sdxl_spec,
    tiny_dit_spec,
    tiny_spec,
    zimage_spec,
)

from diffsketch.capture.spec import SD35, ZIMAGE
from diffsketch.errors import InvalidInputError, UnsupportedModelError
from diffsketch.train.generator import (
    GeneratorConfig,
    SketchGenerator,
    feature_branches,
    load_generator,
    read_generator_header,
    save_generator,
)

TIMESTEPS = (1, 501, 941)
SMALL = dict(lower_dim=32, higher_dim=16, lower_groups=4, higher_groups=4, fusion_channels=(64, 32, 16))
#: The config fields every generator file had before ``branches`` and ``standardize_taps``.
EARLIER_FIELDS = {
    "n_timesteps",
    "lower_taps",
    "higher_taps",
    "vae_reduce_channels",
    "fusion_channels",
    "lower_dim",
    "higher_dim",
    "lower_groups",
    "higher_groups",
    "use_vae",
    "vae_block_groups",
    "fusion_groups",
    "final_groups",
}


def dit_generator(branches=2, seed=0, family=ZIMAGE, **overrides) -> SketchGenerator:
    torch.manual_seed(seed)
    spec = tiny_dit_spec(family)
    config = GeneratorConfig.from_spec(spec, len(TIMESTEPS), branches=branches, **{**SMALL, **overrides})
    return SketchGenerator(spec, config)


# --------------------------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------------------------
def test_published_dit_shapes_split_their_blocks_by_depth_at_latent_half():
    for make, hidden in (
        (zimage_spec, 3840),
        (sd35_medium_spec, 1536),
        (sd35_large_spec, 2432),
        (flux_spec, 3072),
    ):
        spec = make()
        assert {(t.channels, t.log2_scale) for t in spec.unet} == {(hidden, -1)}
        cfg = GeneratorConfig.from_spec(spec, 13)
        # 6 tapped blocks: the earlier 3 are the lower level, the later 3 the higher one
        assert cfg.lower_taps == (0, 1, 2) and cfg.higher_taps == (3, 4, 5)
        assert cfg.standardize_taps and cfg.branches == 2
        # one x2 fusion stage per step from the latent to the image, as for a UNet
        assert cfg.fusion_channels == (256, 128, 64)
        with torch.device("meta"):
            gen = SketchGenerator(spec, cfg)
        assert gen.lower.tap_channels == (hidden,) * 3 and gen.higher.extra_channels == (cfg.lower_dim,)
        assert [s[1].in_channels for s in gen.fusion_stages][0] == 2 * cfg.higher_dim + 16 * 5
    # an odd count gives the extra block to the lower level
    odd = GeneratorConfig.from_spec(zimage_spec(5), 13, branches=1)
    assert odd.lower_taps == (0, 1, 2) and odd.higher_taps == (3, 4) and odd.branches == 1
    with torch.device("meta"):
        one_branch = SketchGenerator(zimage_spec(5), odd)
    assert one_branch.fusion_stages[0][1].in_channels == odd.higher_dim + 16 * 5


def test_unet_configs_keep_their_fields_and_values():
    # The pair folders' and files' fingerprints are made from to_dict(): the new fields must not
    # appear there for the UNet generators (two branches, no standardisation).
    for spec in (sd15_spec(), sdxl_spec(), tiny_spec()):
        cfg = GeneratorConfig.from_spec(spec, 13)
        assert set(cfg.to_dict()) == EARLIER_FIELDS
        assert cfg.branches == 2 and not cfg.standardize_taps
        assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    dit = GeneratorConfig.from_spec(zimage_spec(), 13, branches=1)
    assert dit.to_dict()["branches"] == 1 and dit.to_dict()["standardize_taps"] is True
    assert GeneratorConfig.from_dict(dit.to_dict()) == dit
    with pytest.raises(InvalidInputError, match="branches must be 1"):
        GeneratorConfig.from_spec(zimage_spec(), 13, branches=3)


# --------------------------------------------------------------------------------------------
# forward and training
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("branches", [1, 2])
def test_forward_and_training_steps_on_dit_features(branches):
    gen = dit_generator(branches)
    unet, vae, rgb = random_features(gen.spec, 64, 48, TIMESTEPS, seed=1, branches=branches)
    assert unet[1][0].shape == (branches, 24, 3, 4)  # latent/2 of a 48x64 image (latent 6x8)
    target = torch.rand(1, 1, 48, 64, generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.Adam(gen.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = F.mse_loss(gen(unet, vae, rgb), target)
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            dead = [
                n for n, p in gen.named_parameters() if p.grad is None or not bool(p.grad.abs().gt(0).any())
            ]
            assert dead == []
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.5 * losses[0], losses


@torch.no_grad()
def test_a_massive_channel_does_not_swamp_the_others():
    """DiT block outputs carry a few hidden channels 100-1000x the rest on every token. How much
    the generator responds to the ordinary channels must not collapse when one is planted: at the
    first tap's bottleneck (where a tap enters the generator) and at the sketch."""
    spec = tiny_dit_spec()

    def responses(generator, massive: bool) -> tuple[float, float]:
        """Mean change of (the first tap's bottleneck output, the sketch) when the ordinary
        channels of every tap change."""
        a, vae, rgb = random_features(spec, 64, 64, TIMESTEPS, seed=4)
        b, _, _ = random_features(spec, 64, 64, TIMESTEPS, seed=5)
        if massive:
            g = torch.Generator().manual_seed(6)
            for t in TIMESTEPS:
                for x, y in zip(a[t], b[t], strict=True):
                    # the same near-constant massive channel (~800, 0.5% variation) in both
                    planted = 800.0 * (1 + 0.005 * torch.randn(x[:, :1].shape, generator=g))
                    x[:, 7:8] = planted
                    y[:, 7:8] = planted
        seen = []
        hook = generator.lower.tap_blocks[0].register_forward_hook(lambda m, i, out: seen.append(out))
        try:
            sketch_change = (generator(a, vae, rgb) - generator(b, vae, rgb)).abs().mean().item()
        finally:
            hook.remove()
        return (seen[0] - seen[1]).abs().mean().item(), sketch_change

    def ratios(generator) -> tuple[float, float]:
        (block_m, sketch_m), (block, sketch) = responses(generator, True), responses(generator, False)
        return block_m / block, sketch_m / sketch

    torch.manual_seed(0)
    config = GeneratorConfig.from_spec(spec, len(TIMESTEPS), **SMALL)
    assert config.standardize_taps
    standardized = SketchGenerator(spec, config).eval()
    block_ratio, sketch_ratio = ratios(standardized)
    assert 0.75 < block_ratio < 1.33 and 0.75 < sketch_ratio < 1.33, (block_ratio, sketch_ratio)
    # Without the standardisation (the same weights) the planted channel drowns the others where
    # the taps enter: their differences come out at a few percent of what they were.
    raw = SketchGenerator(spec, GeneratorConfig.from_dict({**config.to_dict(), "standardize_taps": False}))
    raw.load_state_dict(standardized.state_dict())
    raw_block_ratio, _ = ratios(raw.eval())
    assert raw_block_ratio < 0.1, raw_block_ratio


def test_features_with_other_branches_are_refused_naming_the_fix():
    one, two = dit_generator(1), dit_generator(2)
    unet1, vae, rgb = random_features(one.spec, 64, 64, TIMESTEPS, branches=1)
    unet2, _, _ = random_features(one.spec, 64, 64, TIMESTEPS, branches=2)
    with pytest.raises(
        InvalidInputError, match=r"takes 1 branch\(es\).*2 rows for 1 sample.*sample with cfg 1"
    ):
        one(unet2, vae, rgb)
    with pytest.raises(InvalidInputError, match=r"takes 2 branch\(es\).*1 rows for 1 sample.*cfg above 1"):
        two(unet1, vae, rgb)
    # a batch of two one-branch samples has as many rows as one two-branch sample: the VAE
    # features and rgb say how many samples there are
    batch_vae, batch_rgb = [torch.cat([x, x]) for x in vae], torch.cat([rgb, rgb])
    assert one(unet2, batch_vae, batch_rgb).shape == (2, 1, 64, 64)
    with pytest.raises(InvalidInputError, match="2 rows for 2 sample"):
        two(unet2, batch_vae, batch_rgb)


def test_feature_branches_of_a_sample():
    spec = tiny_dit_spec()
    assert feature_branches(random_sample(spec, branches=1)) == 1
    assert feature_branches(random_sample(spec, branches=2)) == 2
    assert feature_branches(random_sample(tiny_spec())) == 2


def test_the_trainer_trains_a_one_branch_generator():
    from diffsketch.backends.conditioning import Conditioning
    from diffsketch.train.conditions import ConditionSampler
    from diffsketch.train.losses import TINY_CLIP_ARCHITECTURE, ClipImageEncoder, DiffSketchLoss, build_lpips
    from diffsketch.train.trainer import TrainConfig, Trainer

    spec = tiny_dit_spec()
    example = random_sample(spec, n_timesteps=3, branches=1)

    class OneBranchBackend:  # hands back random one-branch captures, as cfg 1 on Z-Image Turbo does
        def __init__(self):
            self.spec, self.calls = spec, 0

        def check_conditioning(self, cond, name):
            return Conditioning.of(cond).map(lambda t: t.detach().float())

        def sample(self, cond, settings, **kwargs):
            self.calls += 1
            return random_sample(spec, n_timesteps=3, seed=self.calls, branches=1)

    embeddings = torch.randn(6, 7, spec.context_dim, generator=torch.Generator().manual_seed(0))
    conditions = ConditionSampler.fit(embeddings, n_components=3, family=spec.family)
    torch.manual_seed(0)
    loss = DiffSketchLoss(ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE), build_lpips(random_weights=True))
    for low_memory in (False, True):
        config = TrainConfig(
            iterations=2, lr=1e-3, cfg=1.0, checkpoint_every=0, preview_every=0, low_memory=low_memory
        )
        trainer = Trainer(
            OneBranchBackend(),
            example,
            example.image.mean(1, keepdim=True),
            conditions,
            loss,
            config,
            embeddings[:1],
        )
        before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
        trainer.run()
        assert trainer.generator.config.branches == 1 and trainer.generator.family == ZIMAGE
        assert len(trainer.history) == 2 and all(
            torch.isfinite(torch.tensor(h["total"])) for h in trainer.history
        )
        assert any(not torch.equal(before[k], v) for k, v in trainer.generator.state_dict().items())


# --------------------------------------------------------------------------------------------
# files and families
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("branches", [1, 2])
def test_dit_generator_file_round_trip(tmp_path, branches):
    gen = dit_generator(branches, seed=7).eval()
    gen.timesteps = TIMESTEPS
    unet, vae, rgb = random_features(gen.spec, 64, 64, TIMESTEPS, seed=8, branches=branches)
    path = save_generator(tmp_path / "style.safetensors", gen, {"steps_done": 3})
    header = read_generator_header(path)
    assert header["family"] == ZIMAGE and header["spec_fingerprint"] == gen.spec.fingerprint()
    assert header["config"]["standardize_taps"] is True
    assert header["config"].get("branches", 2) == branches
    loaded = load_generator(path, expected_spec=tiny_dit_spec()).eval()
    assert loaded.config == gen.config and loaded.branches == branches and loaded.family == ZIMAGE
    assert loaded.timesteps == TIMESTEPS and loaded.meta == {"steps_done": 3}
    with torch.no_grad():
        torch.testing.assert_close(loaded(unet, vae, rgb), gen(unet, vae, rgb), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("trained_on", "used_on", "names"),
    [
        (tiny_dit_spec(ZIMAGE), tiny_spec(), ("Z-Image", "SD 1.x")),
        (tiny_spec(), tiny_dit_spec(ZIMAGE), ("SD 1.x", "Z-Image")),
        (tiny_dit_spec(SD35), tiny_dit_spec(ZIMAGE), ("SD 3.5", "Z-Image")),
    ],
)
def test_a_generator_of_another_family_is_refused_by_name(tmp_path, trained_on, used_on, names):
    torch.manual_seed(0)
    gen = SketchGenerator(trained_on, GeneratorConfig.from_spec(trained_on, len(TIMESTEPS), **SMALL))
    found, expected = names
    both = f"is {found} but .* is {expected}"
    with pytest.raises(UnsupportedModelError, match=both):
        gen.check_model(used_on)
    with pytest.raises(UnsupportedModelError, match=both):
        gen.forward_sample(random_sample(used_on, n_timesteps=3))
    path = save_generator(tmp_path / "g.safetensors", gen)
    with pytest.raises(UnsupportedModelError, match=f"{both}.*use it with {found} checkpoints"):
        load_generator(path, expected_spec=used_on)
    assert load_generator(path, expected_spec=trained_on).family == trained_on.family
