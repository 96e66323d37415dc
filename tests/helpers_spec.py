"""FeatureSpecs and random feature sets for tests that do not need a real diffusion model.

``sd15_spec()``, ``sd2_spec()`` and ``sdxl_spec()`` mirror what
:func:`diffsketch.capture.spec.feature_spec_from_ldm` reads from SD 1.x, SD 2.x and SDXL checkpoints;
``tiny_spec()`` and ``tiny_sdxl_spec()`` have the same structures with small channel counts.
"""

from __future__ import annotations

import torch

from diffsketch.capture.sample import CapturedSample
from diffsketch.capture.spec import LAYOUT_LDM, SD1, SD2, SDXL, FeatureSpec, Tap
from diffsketch.capture.timesteps import ddim_grid, plan_timesteps


def _ldm_spec(unet_levels, vae_levels, mid_channels, context_dim, family=SD1, pooled_dim=0) -> FeatureSpec:
    """``unet_levels``: [(channels, log2_scale, n_blocks)] in decoder order;
    ``vae_levels``: [(channels, n_blocks)] from the latent scale up."""
    shapes = [(channels, scale) for channels, scale, n in unet_levels for _ in range(n)]
    unet = [Tap(f"output_blocks.{i}.0.out_layers", c, s) for i, (c, s) in enumerate(shapes)]
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
        latent_channels=4,
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


def random_features(
    spec: FeatureSpec,
    width: int = 64,
    height: int = 64,
    timesteps=(1, 501, 941),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """``(unet, vae, rgb)`` shaped as a capture of ``spec`` at ``width`` x ``height`` would be."""
    g = torch.Generator().manual_seed(seed)
    unet = {
        int(t): [
            torch.randn(2, c, h, w, generator=g).to(dtype) for c, h, w in spec.unet_shapes(width, height)
        ]
        for t in timesteps
    }
    vae = [torch.randn(1, c, h, w, generator=g).to(dtype) for c, h, w in spec.vae_shapes(width, height)]
    rgb = torch.rand(1, 3, height, width, generator=g) * 2 - 1
    return unet, vae, rgb


def random_sample(spec: FeatureSpec, width=64, height=64, n_timesteps=3, steps=50, seed=0) -> CapturedSample:
    """A :class:`CapturedSample` with random features at ``n_timesteps`` evenly spread grid steps."""
    grid = ddim_grid(steps)
    stride = max(1, len(grid) // n_timesteps)
    timesteps = grid[::stride][:n_timesteps]
    plan = plan_timesteps(steps, timesteps)
    unet, vae, rgb = random_features(spec, width, height, plan.used, seed)
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
