"""FeatureSpecs and random feature sets for tests that do not need a real diffusion model.

``sd15_spec()``, ``sd2_spec()`` and ``sdxl_spec()`` mirror what
:func:`diffsketch.capture.spec.feature_spec_from_ldm` reads from SD 1.x, SD 2.x and SDXL checkpoints;
``tiny_spec()`` and ``tiny_sdxl_spec()`` have the same structures with small channel counts.
``zimage_spec()``, ``sd35_medium_spec()``, ``sd35_large_spec()`` and ``flux_spec()`` are hand-made diffusion
transformer specs following the DiT tap conventions (block outputs at latent/2, hidden-size
channels, the SD VAE decoder's taps, 16 latent channels); ``tiny_dit_spec()`` is their structure
with small widths.
"""

from __future__ import annotations

import torch

from diffsketch.capture.sample import CapturedSample
from diffsketch.capture.spec import FLUX, LAYOUT_LDM, SD1, SD2, SD35, SDXL, ZIMAGE, FeatureSpec, Tap
from diffsketch.capture.timesteps import ddim_grid, plan_timesteps


def _ldm_spec(unet_levels, vae_levels, mid_channels, context_dim, family=SD1, pooled_dim=0) -> FeatureSpec:
    """``unet_levels``: [(channels, log2_scale, n_blocks)] in decoder order;
    ``vae_levels``: [(channels, n_blocks)] from the latent scale up."""
    shapes = [(channels, scale) for channels, scale, n in unet_levels for _ in range(n)]
    unet = [Tap(f"output_blocks.{i}.0.out_layers", c, s) for i, (c, s) in enumerate(shapes)]
    return _spec_with_ldm_vae(unet, vae_levels, mid_channels, context_dim, family, pooled_dim, 4)


def _spec_with_ldm_vae(
    unet, vae_levels, mid_channels, context_dim, family, pooled_dim, latent_channels
) -> FeatureSpec:
    """A spec of ``unet``'s taps and the ldm VAE decoder's: ``vae_levels`` [(channels, n_blocks)]
    from the latent scale up (SD 1.x's VAE and the 16-channel VAEs of SD 3.5 and Flux share it)."""
    vae = [Tap("decoder.mid.block_1", mid_channels, 0), Tap("decoder.mid.block_2", mid_channels, 0)]
    n_levels = len(vae_levels)
    for scale, (channels, n) in enumerate(vae_levels):
        level = n_levels - 1 - scale  # ldm runs its up levels from the last index down to 0
        vae += [Tap(f"decoder.up.{level}.block.{b}", channels, scale) for b in range(n)]
    scale_factor_log2 = n_levels - 1
    return FeatureSpec(
        layout=LAYOUT_LDM,
        unet=tuple(unet),
        vae=tuple(vae),
        rgb=Tap("decoder.conv_out", 3, scale_factor_log2),
        context_dim=context_dim,
        latent_channels=latent_channels,
        vae_scale_factor=1 << scale_factor_log2,
        family=family,
        pooled_dim=pooled_dim,
    )


def sd15_spec() -> FeatureSpec:
    """SD 1.x: 12 decoder ResBlocks (1280@/8, 1280@/4, 640@/2, 320@/1 in groups of 3) and 14 VAE
    taps (mid 512 x2, then 512 x3 @x1, 512 x3 @x2, 256 x3 @x4, 128 x3 @x8)."""
    return _ldm_spec(
        unet_levels=[(1280, -3, 3), (1280, -2, 3), (640, -1, 3), (320, 0, 3)],
        vae_levels=[(512, 3), (512, 3), (256, 3), (128, 3)],
        mid_channels=512,
        context_dim=768,
    )


def sd2_spec() -> FeatureSpec:
    """SD 2.x: SD 1.x's taps with OpenCLIP-H's 1024-dim context."""
    return _ldm_spec(
        unet_levels=[(1280, -3, 3), (1280, -2, 3), (640, -1, 3), (320, 0, 3)],
        vae_levels=[(512, 3), (512, 3), (256, 3), (128, 3)],
        mid_channels=512,
        context_dim=1024,
        family=SD2,
    )


def sdxl_spec() -> FeatureSpec:
    """SDXL: 9 decoder ResBlocks (1280@/4, 640@/2, 320@/1 in groups of 3; no latent/8 level), SD's
    VAE taps, a 2048-dim context and bigG's 1280-dim pooled embedding."""
    return _ldm_spec(
        unet_levels=[(1280, -2, 3), (640, -1, 3), (320, 0, 3)],
        vae_levels=[(512, 3), (512, 3), (256, 3), (128, 3)],
        mid_channels=512,
        context_dim=2048,
        family=SDXL,
        pooled_dim=1280,
    )


def tiny_sdxl_spec() -> FeatureSpec:
    """The SDXL structure (three UNet levels, none at latent/8) with small widths."""
    return _ldm_spec(
        unet_levels=[(32, -2, 3), (16, -1, 3), (8, 0, 3)],
        vae_levels=[(16, 2), (16, 2), (8, 2), (8, 2)],
        mid_channels=16,
        context_dim=48,
        family=SDXL,
        pooled_dim=24,
    )


def tiny_spec() -> FeatureSpec:
    """The SD 1.x structure with small widths (2 taps per UNet level, 2 blocks per VAE level)."""
    return _ldm_spec(
        unet_levels=[(32, -3, 2), (32, -2, 2), (16, -1, 2), (8, 0, 2)],
        vae_levels=[(16, 2), (16, 2), (8, 2), (8, 2)],
        mid_channels=16,
        context_dim=32,
    )


#: The SD VAE decoder's levels (channels, ResNet blocks) from the latent scale up, and its mid width.
SD_VAE_LEVELS = [(512, 3), (512, 3), (256, 3), (128, 3)]
SD_VAE_MID = 512
#: The DiT taps' scale: patch size 2, so every block output is latent/2.
DIT_LOG2_SCALE = -1


def spread_blocks(n_blocks: int, n_taps: int) -> tuple[int, ...]:
    """``n_taps`` block indices spread evenly over ``n_blocks`` blocks, the last block included."""
    return tuple(round((k + 1) * n_blocks / n_taps) - 1 for k in range(n_taps))


def _dit_spec(block_prefix, hidden, blocks, context_dim, family, pooled_dim=0, vae_levels=None, mid=None):
    unet = [Tap(f"{block_prefix}.{b}", hidden, DIT_LOG2_SCALE) for b in blocks]
    return _spec_with_ldm_vae(
        unet, vae_levels or SD_VAE_LEVELS, mid or SD_VAE_MID, context_dim, family, pooled_dim, 16
    )


def zimage_spec(n_taps: int = 6) -> FeatureSpec:
    """Z-Image (ComfyUI's Lumina2 NextDiT, module names ``layers.i``): ``n_taps`` of its 30 blocks
    (hidden 3840), Qwen3-4B's 2560-dim context and no pooled vector."""
    return _dit_spec("layers", 3840, spread_blocks(30, n_taps), 2560, ZIMAGE)


def sd35_medium_spec(n_taps: int = 6) -> FeatureSpec:
    """SD 3.5 Medium (ComfyUI's MMDiT, ``joint_blocks.i``): ``n_taps`` of its 24 blocks (hidden
    1536), the 4096-dim CLIP-L/G + T5 context and the 2048-dim pooled CLIP-L + G vector."""
    return _dit_spec("joint_blocks", 1536, spread_blocks(24, n_taps), 4096, SD35, pooled_dim=2048)


def sd35_large_spec(n_taps: int = 6) -> FeatureSpec:
    """SD 3.5 Large: ``n_taps`` of its 38 blocks (hidden 2432), SD 3.5's conditioning."""
    return _dit_spec("joint_blocks", 2432, spread_blocks(38, n_taps), 4096, SD35, pooled_dim=2048)


def flux_spec(n_taps: int = 6) -> FeatureSpec:
    """Flux.1 (ComfyUI's ``double_blocks.i`` then ``single_blocks.i``): ``n_taps`` of its 19 + 38
    blocks as one depth (hidden 3072), the 4096-dim T5 context and CLIP-L's 768-dim pooled vector."""
    from diffsketch.capture.spec import FLUX_COMFY_STACKS, dit_stack_taps

    stacks = tuple(zip(FLUX_COMFY_STACKS, (19, 38)))
    unet = list(dit_stack_taps(stacks, 3072, 2, spread_blocks(19 + 38 - 1, n_taps)))
    return _spec_with_ldm_vae(unet, SD_VAE_LEVELS, SD_VAE_MID, 4096, FLUX, 768, 16)


def tiny_dit_spec(family: str = ZIMAGE, hidden: int = 24, n_taps: int = 4) -> FeatureSpec:
    """A DiT spec's structure with small widths (``n_taps`` blocks at latent/2, tiny_spec's VAE)."""
    pooled = 12 if family in (SD35, FLUX) else 0
    return _dit_spec(
        "layers",
        hidden,
        range(n_taps),
        32,
        family,
        pooled,
        vae_levels=[(16, 2), (16, 2), (8, 2), (8, 2)],
        mid=16,
    )


def random_features(
    spec: FeatureSpec,
    width: int = 64,
    height: int = 64,
    timesteps=(1, 501, 941),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    branches: int = 2,
):
    """``(unet, vae, rgb)`` shaped as a capture of ``spec`` at ``width`` x ``height`` would be, with
    ``branches`` UNet rows (2: uncond and cond; 1: cond alone, cfg 1)."""
    g = torch.Generator().manual_seed(seed)
    unet = {
        int(t): [
            torch.randn(branches, c, h, w, generator=g).to(dtype)
            for c, h, w in spec.unet_shapes(width, height)
        ]
        for t in timesteps
    }
    vae = [torch.randn(1, c, h, w, generator=g).to(dtype) for c, h, w in spec.vae_shapes(width, height)]
    rgb = torch.rand(1, 3, height, width, generator=g) * 2 - 1
    return unet, vae, rgb


def random_sample(
    spec: FeatureSpec, width=64, height=64, n_timesteps=3, steps=50, seed=0, branches=2
) -> CapturedSample:
    """A :class:`CapturedSample` with random features at ``n_timesteps`` evenly spread grid steps."""
    grid = ddim_grid(steps)
    stride = max(1, len(grid) // n_timesteps)
    timesteps = grid[::stride][:n_timesteps]
    plan = plan_timesteps(steps, timesteps)
    unet, vae, rgb = random_features(spec, width, height, plan.used, seed, branches=branches)
    lh, lw = spec.latent_size(width, height)
    g = torch.Generator().manual_seed(seed + 1)
    return CapturedSample(
        spec=spec,
        plan=plan,
        image=torch.rand(1, 3, height, width, generator=g),
        latent=torch.randn(1, spec.latent_channels, lh, lw, generator=g),
        unet=unet,
        vae=vae,
        rgb=rgb,
    )
