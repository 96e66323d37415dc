"""Which transformer blocks and timesteps of a DiT carry dense, image-varying features: the block
analysis (Z-Image, SD 3.5, Flux.1), in the spirit of the timestep analysis (:mod:`.analysis`).

A DiT has no decoder pyramid to tap, so the blocks are a choice
(:func:`~diffsketch.capture.spec.default_dit_blocks`). This samples a few images with a backend
whose spec taps every block of interest (e.g. ``DiffusersFlowBackend(..., blocks=range(n))``) and,
at every timestep of the grid, reduces each block's image-token map as the hook fires
(:class:`BlockReducer`, so no full map is stored) to:

- ``massive``: the massive-activation ratio, the largest channel's mean magnitude over the
  median channel's. DiTF (NeurIPS 2025) finds that a handful of channels in mid/late DiT blocks
  are orders of magnitude larger than the rest and nearly constant over the image (they act as
  biases); left in, they dominate any distance or normalisation of the features. Channels above
  :data:`MASSIVE_RATIO` times the median are flagged (:func:`massive_channels`).
- ``spatial``: the share of the map's energy that varies over the image (per-channel variance
  over positions / mean square), 0 for a map constant over the image, and ``spatial_clean``, the
  same with the massive channels left out (what a per-channel normalisation that handles them, as
  DiTF's channel discard, leaves).
- ``similarity``: the cosine similarity of each block's pooled, projected map with the next
  block's (one shared random projection), near 1 where consecutive blocks are redundant.

Good tap candidates have a high ``spatial_clean`` (dense information) and low similarity to the
blocks already chosen (different levels). The defaults were not chosen by this tool yet: running it
needs the real weights (``tools/dit_block_analysis.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InvalidInputError
from .analysis import FeatureReducer
from .sampling import SamplingSettings

#: A channel is "massive" when its mean magnitude over the image exceeds this many times the
#: median channel's (DiTF reports ratios of 100 to 1000+ in FLUX/SD3.5 blocks).
MASSIVE_RATIO = 100.0
#: Statistics at the head of each reduced vector (then the projected features).
_STATS = 3


def channel_magnitudes(x: torch.Tensor) -> torch.Tensor:
    """``[B, C]``: each channel's mean absolute value over the positions of ``x`` ([B, C, h, w])."""
    return x.float().abs().mean(dim=(-2, -1))


def massive_channels(x: torch.Tensor, ratio: float = MASSIVE_RATIO) -> torch.Tensor:
    """``[B, C]`` bool: the channels of ``x`` ([B, C, h, w]) whose mean magnitude exceeds ``ratio``
    times the median channel's."""
    m = channel_magnitudes(x)
    return m > ratio * m.median(dim=1, keepdim=True).values.clamp_min(1e-12)


def spatial_share(x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]``: the share of the energy of ``x`` ([B, C, h, w]) that varies over the positions,
    over the channels ``keep`` ([B, C] bool; all when None)."""
    x = x.float().flatten(2)
    var, energy = x.var(dim=2, unbiased=False), x.pow(2).mean(dim=2)
    if keep is not None:
        var, energy = var * keep, energy * keep
    return var.sum(dim=1) / energy.sum(dim=1).clamp_min(1e-12)


class BlockReducer:
    """``reducer(layer, x [B, C, h, w]) -> [B, 3 + dim]``: the massive-activation ratio, the
    spatial share with and without the massive channels, then the map average-pooled and projected
    to ``dim`` values by ONE projection shared by every block (so blocks can be compared)."""

    def __init__(self, dim: int = 64, pool: int = 4, seed: int = 0, ratio: float = MASSIVE_RATIO):
        self.projector = FeatureReducer(dim=dim, pool=pool, seed=seed, area_weight=False, out_device="cpu")
        self.ratio = float(ratio)

    def __call__(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        m = channel_magnitudes(x)
        massive = m > self.ratio * m.median(dim=1, keepdim=True).values.clamp_min(1e-12)
        ratio = m.max(dim=1).values / m.median(dim=1).values.clamp_min(1e-12)
        stats = torch.stack([ratio, spatial_share(x), spatial_share(x, ~massive)], dim=1).cpu()
        clean = x.float() * (~massive)[:, :, None, None]  # compared without the massive channels
        return torch.cat([stats, self.projector(0, clean)], dim=1)


@dataclass
class BlockAnalysis:
    """Per timestep (rows, ascending) and tapped block (columns): the means over the images of
    ``massive``, ``spatial`` and ``spatial_clean`` ([T, L]) and ``similarity`` ([T, L-1], block
    l with block l+1)."""

    blocks: list[str]
    timesteps: list[int]
    massive: torch.Tensor
    spatial: torch.Tensor
    spatial_clean: torch.Tensor
    similarity: torch.Tensor
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "blocks": self.blocks,
            "timesteps": self.timesteps,
            "massive": self.massive.tolist(),
            "spatial": self.spatial.tolist(),
            "spatial_clean": self.spatial_clean.tolist(),
            "similarity": self.similarity.tolist(),
            "meta": self.meta,
        }

    def table(self) -> str:
        """A text table: one row per block, its statistics averaged over the timesteps."""
        lines = [
            f"{'block':<24} {'massive ratio':>14} {'spatial':>8} {'spatial clean':>14} {'sim. next':>10}"
        ]
        for i, name in enumerate(self.blocks):
            sim = f"{float(self.similarity[:, i].mean()):10.3f}" if i < len(self.blocks) - 1 else f"{'':>10}"
            lines.append(
                f"{name:<24} {float(self.massive[:, i].mean()):14.1f} {float(self.spatial[:, i].mean()):8.3f} "
                f"{float(self.spatial_clean[:, i].mean()):14.3f} {sim}"
            )
        return "\n".join(lines)


def run_block_analysis(
    backend,
    prompts: Sequence[str],
    n_samples: int,
    steps: int,
    *,
    seed: int = 0,
    cfg: float = 1.0,
    width: int = 512,
    height: int = 512,
    reducer: BlockReducer | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BlockAnalysis:
    """Sample ``n_samples`` images (prompt ``i % len(prompts)``, seed ``seed + i``) with
    ``backend`` and reduce its taps at every grid timestep (:class:`BlockReducer`), the
    conditional branch; ``progress(done, total)`` after each image."""
    prompts = [prompts] if isinstance(prompts, str) else [str(p) for p in prompts]
    if not prompts or int(n_samples) < 1:
        raise InvalidInputError("the block analysis needs at least one prompt and one sample")
    if len(backend.spec.unet) < 2:
        raise InvalidInputError("the block analysis compares blocks: tap at least two (e.g. blocks=range(n))")
    reducer = reducer if reducer is not None else BlockReducer(seed=seed)
    grid = list(backend.grid(int(steps)))
    sums: torch.Tensor | None = None
    for i in range(int(n_samples)):
        settings = SamplingSettings(
            seed=int(seed) + i, steps=int(steps), cfg=cfg, width=width, height=height, timesteps=tuple(grid)
        )
        out = backend.sample(prompts[i % len(prompts)], settings, unet_reduce=reducer, decode=False)
        # [T, L, 3 + dim] of the cond branch (the last captured)
        rows = torch.stack([torch.stack([x[-1] for x in out.unet[t]]) for t in grid])
        stats = rows[..., :_STATS]
        feats = torch.nn.functional.normalize(rows[..., _STATS:], dim=-1)
        similarity = (feats[:, :-1] * feats[:, 1:]).sum(-1, keepdim=True)
        sample = torch.cat([stats, torch.nn.functional.pad(similarity, (0, 0, 0, 1))], dim=-1)
        sums = sample if sums is None else sums + sample
        if progress is not None:
            progress(i + 1, int(n_samples))
    mean = sums / int(n_samples)
    return BlockAnalysis(
        blocks=[t.name for t in backend.spec.unet],
        timesteps=grid,
        massive=mean[..., 0],
        spatial=mean[..., 1],
        spatial_clean=mean[..., 2],
        similarity=mean[:, :-1, 3],
        meta={
            "steps": int(steps),
            "n_samples": int(n_samples),
            "cfg": float(cfg),
            "width": width,
            "height": height,
        },
    )
