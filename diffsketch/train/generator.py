"""The DiffSketch sketch generator: two-level feature aggregation plus a feature-fusion decoder.

Architecture (docs/method.md §4), built entirely from a :class:`~diffsketch.capture.spec.FeatureSpec`:

1. **Lower aggregation.** The UNet taps below the highest UNet resolution are resized to the
   largest of their sizes and mixed by an :class:`AggregationNetwork` (one bottleneck per tap
   shared across timesteps, one mixing logit per (timestep, tap)). "Lower" means every tap that
   is not at the latent's own resolution, however many levels that is: SD 1.x / 2.x have three
   such levels (output blocks 0-8 at latent/8, /4, /2, e.g. 8/16/32 px of a 64 px latent), mixed
   at latent/2; SDXL, whose UNet has no latent/8 level, has two (output blocks 0-5 at latent/4
   and /2, 32/64 px of its 128 px latent at 1024x1024), also mixed at latent/2.
2. **Higher aggregation.** The taps at the highest UNet resolution (SD 1.x: blocks 9-11; SDXL:
   blocks 6-8, all at the latent's resolution) are mixed the same way, together with the lower
   result upsampled to that resolution as one extra entry with its own bottleneck and logit.
3. The unconditional and conditional CFG branches go through both levels with shared weights and
   are concatenated channel-wise.
4. **Feature-fusion decoder.** Each x2 stage concatenates the running features with channel-reduced
   VAE-decoder features of the same scale, then upsamples (nearest) -> 3x3 conv -> GroupNorm ->
   GELU. The last stage adds the VAE's RGB output and ends in a 1-channel 1x1 conv, unbounded.

Two defects of the released code are fixed here (docs/method.md §4): the lower aggregation reaches
the output (it fed nothing in the release), and the VAE channel reductions are registered,
trainable modules (they were plain Python lists, i.e. fixed random projections).

**Diffusion transformers** (the flow families, :data:`~diffsketch.capture.spec.FLOW_FAMILIES`:
Z-Image, SD 3.5, Flux.1). Their taps are the image tokens of chosen transformer blocks, unpatchified, so
every tap has the same resolution (latent/2 for patch size 2) and the same width (the hidden size).
Resolution cannot separate the two levels there, so depth does:

- **lower** = the earlier half of the tapped blocks (execution order), **higher** = the later half
  (the extra one goes to the lower level when the count is odd). This keeps each level's role in
  the UNet: the lower level mixes the taps further from the output, whose features the DiT
  literature finds the most semantic (mid-depth blocks for correspondence, DiTF; for
  representation alignment, REPA), and its result enters the higher level as one extra entry;
  the higher level mixes the blocks nearest the output, which are shaped by the velocity it
  predicts, pixel-level detail. Both run at latent/2; the fusion decoder's first stage takes
  their result resized (bilinear) to the latent's size, where the VAE decoder's first taps are,
  and climbs to the image with the VAE features exactly as for a UNet.
- **Massive activations.** A DiT's residual stream carries a few fixed hidden channels whose
  values are 100-1000x the others on every image token (DiTF, NeurIPS 2025). A per-token
  LayerNorm, which is what the next block's own pre-norm applies, does not tame them: the massive
  channel dominates each token's variance, so after it the ordinary channels are 1/100-1/1000 of
  the massive one as before. Inside the model the block's AdaLN modulation then scales them per
  channel, and DiTF does the same (a channel-wise modulation, then discarding those channels). The
  generator has no AdaLN parameters, so it does the channel-wise step directly: each tapped
  feature is standardised per channel over the tokens, per sample, timestep and branch, without a
  learned scale (:func:`~diffsketch.train.blocks.standardize_channels`, config
  ``standardize_taps``), before its bottleneck. A near-constant massive channel loses its
  constant part (an exactly constant one becomes zero, DiTF's discard) and what varies over the
  tokens comes to the scale of every other channel. UNet generators do not do this
  (``standardize_taps`` False, as their files always had).
- **Branches.** A guidance-distilled model sampled at cfg 1 (Z-Image Turbo) evaluates and
  captures one branch (cond) where CFG sampling has two (uncond, cond); the config records
  ``branches`` and the decoder's input is the higher level's output of each branch side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .. import fileio
from ..capture.identity import ModelIdentity, check_same_model
from ..capture.sampling import SCHEDULES
from ..capture.spec import (
    SD1,
    FeatureSpec,
    backbone_family,
    check_backbone_family,
    check_family,
    family_name,
    is_flow_family,
)
from ..capture.timesteps import NUM_TRAIN_TIMESTEPS
from ..errors import FileFormatError, InvalidInputError, UnsupportedModelError
from .blocks import (
    AggregationNetwork,
    Bottleneck,
    ConvBlock,
    FusionStage,
    VaeReduction,
    checkpointed_aggregation,
    largest_size,
    prepare_tap,
    reduce_vae,
    resize_to,
)

GENERATOR_KIND = "generator"
GENERATOR_VERSION = 1

#: Released-code widths of the VAE channel reductions: 16 for the wide (>=512 ch) VAE blocks.
VAE_WIDE_CHANNELS = 512
VAE_REDUCE_WIDE = 16
VAE_REDUCE_NARROW = 8
#: Branches of captured features: uncond and cond (CFG sampling), or cond alone (cfg 1 on a
#: guidance-distilled flow model).
BRANCH_COUNTS = (1, 2)
#: Config fields written to files only when they differ from these values, so the configs (and
#: the fingerprints made from them) of generators that predate the fields stay what they were.
_OMITTED_DEFAULTS = {"branches": 2, "standardize_taps": False}


def vae_reduce_width(channels: int) -> int:
    """Width a VAE tap is reduced to before fusion (16 for >=512 channels, else 8; docs/method.md §4)."""
    return VAE_REDUCE_WIDE if channels >= VAE_WIDE_CHANNELS else VAE_REDUCE_NARROW


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of a :class:`SketchGenerator`; JSON-serialisable via :meth:`to_dict`.

    Build it with :meth:`from_spec`, which derives every layout-dependent field from the
    :class:`FeatureSpec`; the remaining defaults are the released code's SD 1.x values.
    ``lower_taps``/``higher_taps`` index ``spec.unet``; ``fusion_channels[k]`` is the width after
    the k-th x2 fusion stage, and there is one stage per x2 step from the latent to the image.
    ``branches``: the captured branches per sample (2: uncond and cond; 1: cond alone, cfg 1 on a
    guidance-distilled model); ``standardize_taps``: standardise each tapped feature per channel
    over its tokens before its bottleneck (diffusion transformers' massive activations; module
    docstring).
    """

    n_timesteps: int
    lower_taps: tuple[int, ...]
    higher_taps: tuple[int, ...]
    vae_reduce_channels: tuple[int, ...]
    fusion_channels: tuple[int, ...]
    lower_dim: int = 960
    higher_dim: int = 384
    lower_groups: int = 16
    higher_groups: int = 32
    use_vae: bool = True
    vae_block_groups: int = 4
    fusion_groups: int = 16
    final_groups: int = 4
    branches: int = 2
    standardize_taps: bool = False

    @classmethod
    def from_spec(
        cls,
        spec: FeatureSpec,
        n_timesteps: int,
        *,
        n_higher_taps: int | None = None,
        final_width: int = 64,
        branches: int = 2,
        **overrides,
    ) -> GeneratorConfig:
        """Derive the layout-dependent fields from ``spec``.

        - ``higher_taps``: by default every UNet tap at the highest UNet resolution (SD 1.x: the
          last 3), or, when every tap has the same resolution (a diffusion transformer's blocks),
          the later half of them (module docstring); ``n_higher_taps`` takes that many last taps
          instead.
        - ``standardize_taps``: True for the flow-matching transformer families.
        - ``branches``: what the features were captured with (:func:`feature_branches`).
        - ``vae_reduce_channels``: :func:`vae_reduce_width` of each VAE tap.
        - ``fusion_channels``: one stage per x2 step from the latent to the image
          (log2 of the VAE scale factor), ending at ``final_width`` and doubling backwards
          (SD 1.x: 256, 128, 64).

        ``overrides`` replace any field (e.g. smaller dims for tests); the result is validated.
        """
        n_unet = len(spec.unet)
        if n_unet < 2:
            raise InvalidInputError(
                f"the FeatureSpec has {n_unet} UNet tap(s); the two-level generator needs at least 2 "
                "(some below and some at the highest UNet resolution)."
            )
        if n_higher_taps is None:
            top = max(t.log2_scale for t in spec.unet)
            higher = tuple(i for i, t in enumerate(spec.unet) if t.log2_scale == top)
            if len(higher) == n_unet:  # one resolution: the later half of the blocks
                higher = higher[n_unet - n_unet // 2 :]
        else:
            if not 0 < int(n_higher_taps) < n_unet:
                raise InvalidInputError(
                    f"n_higher_taps must be between 1 and {n_unet - 1} for a spec with {n_unet} UNet taps; "
                    f"got {n_higher_taps}."
                )
            higher = tuple(range(n_unet - int(n_higher_taps), n_unet))
        lower = tuple(i for i in range(n_unet) if i not in higher)
        n_stages = spec.rgb.log2_scale
        base = dict(
            n_timesteps=int(n_timesteps),
            lower_taps=lower,
            higher_taps=higher,
            vae_reduce_channels=tuple(vae_reduce_width(t.channels) for t in spec.vae),
            fusion_channels=tuple(int(final_width) << (n_stages - 1 - k) for k in range(max(n_stages, 0))),
            branches=int(branches),
            standardize_taps=is_flow_family(spec.family),
        )
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidInputError(f"unknown GeneratorConfig field(s): {sorted(unknown)}")
        base.update({k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
        config = cls(**base)
        config.validate(spec)
        return config

    # -- checks --------------------------------------------------------------------------------
    def validate(self, spec: FeatureSpec) -> None:
        """Raise InvalidInputError when this config cannot be built for ``spec``."""
        n_unet = len(spec.unet)
        if self.n_timesteps < 1:
            raise InvalidInputError(f"n_timesteps must be at least 1, got {self.n_timesteps}")
        if self.branches not in BRANCH_COUNTS:
            raise InvalidInputError(
                f"branches must be 1 (cond only, cfg 1) or 2 (uncond and cond), got {self.branches!r}"
            )
        taps = sorted(self.lower_taps + self.higher_taps)
        if taps != list(range(n_unet)) or not self.lower_taps or not self.higher_taps:
            raise InvalidInputError(
                f"lower_taps {list(self.lower_taps)} and higher_taps {list(self.higher_taps)} must split the "
                f"spec's {n_unet} UNet taps into two non-empty groups."
            )
        top_lower = max(spec.unet[i].log2_scale for i in self.lower_taps)
        if top_lower > min(spec.unet[i].log2_scale for i in self.higher_taps):
            raise InvalidInputError("every higher tap must be at least as large as every lower tap")
        n_stages = spec.rgb.log2_scale
        if n_stages < 1 or len(self.fusion_channels) != n_stages:
            raise InvalidInputError(
                f"fusion_channels {list(self.fusion_channels)} must have one width per x2 step from the latent to "
                f"the image ({n_stages} for this spec)."
            )
        if self.use_vae:
            if len(self.vae_reduce_channels) != len(spec.vae):
                raise InvalidInputError(
                    f"vae_reduce_channels has {len(self.vae_reduce_channels)} entries; the spec has "
                    f"{len(spec.vae)} VAE taps."
                )
            bad = [t.name for t in spec.vae if not 0 <= t.log2_scale <= n_stages]
            if bad:
                raise InvalidInputError(
                    f"VAE taps {bad} lie outside the latent..image scales this decoder fuses"
                )
        checks = [
            ("lower_dim", self.lower_dim, "lower_groups", self.lower_groups),
            ("lower_dim/4", self.lower_dim // 4, "lower_groups", self.lower_groups),
            ("higher_dim", self.higher_dim, "higher_groups", self.higher_groups),
            ("higher_dim/4", self.higher_dim // 4, "higher_groups", self.higher_groups),
            ("final width", self.fusion_channels[-1], "final_groups", self.final_groups),
        ]
        checks += [
            (f"fusion_channels[{k}]", c, "fusion_groups", self.fusion_groups)
            for k, c in enumerate(self.fusion_channels)
        ]
        if self.use_vae:
            checks += [
                (f"vae_reduce_channels[{k}]", c, "vae_block_groups", self.vae_block_groups)
                for k, c in enumerate(self.vae_reduce_channels)
            ]
        for name, value, gname, groups in checks:
            if groups < 1 or value < groups or value % groups:
                raise InvalidInputError(
                    f"{name} = {value} is not a positive multiple of {gname} = {groups} (GroupNorm needs it)."
                )
        if self.lower_dim % 4 or self.higher_dim % 4:
            raise InvalidInputError(
                "lower_dim and higher_dim must be multiples of 4 (bottleneck width is dim/4)"
            )

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The fields as JSON values; ``branches`` and ``standardize_taps`` only where they differ
        from the UNet generators' values, which :meth:`from_dict` fills in when they are absent."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(self).items()
            if k not in _OMITTED_DEFAULTS or v != _OMITTED_DEFAULTS[k]
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> GeneratorConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidInputError(f"unknown GeneratorConfig field(s): {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ---------------------------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------------------------
UnetFeatures = Mapping[int, Sequence[torch.Tensor]] | Sequence[Sequence[torch.Tensor]]


class SketchGenerator(nn.Module):
    """Features of one sample -> a one-channel sketch ``[1, 1, H, W]`` (unbounded; white ~ 1).

    Besides its weights, a generator carries how its features must be sampled, in memory and in
    its file, so whoever runs it (Generate, Distill, the command line) samples the way it was
    trained: :attr:`timesteps` (the UNet timesteps its features come from, ascending; None until
    set by the trainer or read from a file), :attr:`schedule` (``"full"`` or ``"fast"``) and its
    backbone :attr:`family` (from its spec).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        config: GeneratorConfig,
        *,
        timesteps: Sequence[int] | None = None,
        schedule: str = "full",
    ):
        super().__init__()
        config.validate(spec)
        self.spec = spec
        self.config = config
        self.meta: dict = {}  # the file's meta (load_generator) or the trainer's record
        self.timesteps = timesteps
        self.schedule = schedule
        #: Trade compute for memory in training (diffusers' name for the same switch).
        self.gradient_checkpointing = False
        c = config
        self.lower = AggregationNetwork(
            [spec.unet[i].channels for i in c.lower_taps], c.n_timesteps, c.lower_dim, c.lower_groups
        )
        self.higher = AggregationNetwork(
            [spec.unet[i].channels for i in c.higher_taps],
            c.n_timesteps,
            c.higher_dim,
            c.higher_groups,
            extra_channels=[c.lower_dim],
        )
        n_stages = len(c.fusion_channels)
        width = c.branches * c.higher_dim  # the higher level's output of each branch, side by side
        if c.use_vae:
            self.vae_reductions = nn.ModuleList(
                VaeReduction(tap.channels, r, c.vae_block_groups)
                for tap, r in zip(spec.vae, c.vae_reduce_channels, strict=True)
            )
        else:
            self.vae_reductions = nn.ModuleList()
        self.fusion_stages = nn.ModuleList()
        for k in range(n_stages):
            cin = width + self._vae_width_at(k)
            self.fusion_stages.append(FusionStage(cin, c.fusion_channels[k], c.fusion_groups))
            width = c.fusion_channels[k]
        final_in = width + self._vae_width_at(n_stages) + (spec.rgb.channels if c.use_vae else 0)
        self.final = nn.Sequential(ConvBlock(final_in, width, c.final_groups), nn.Conv2d(width, 1, 1))

    def _vae_taps_at(self, scale: int) -> list[int]:
        if not self.config.use_vae:
            return []
        return [i for i, t in enumerate(self.spec.vae) if t.log2_scale == scale]

    def _vae_width_at(self, scale: int) -> int:
        return sum(self.config.vae_reduce_channels[i] for i in self._vae_taps_at(scale))

    @property
    def n_timesteps(self) -> int:
        return self.config.n_timesteps

    @property
    def family(self) -> str:
        """The backbone family of the model it was trained on (e.g. ``"sd1"``), from its spec."""
        return backbone_family(self.spec)

    @property
    def timesteps(self) -> tuple[int, ...] | None:
        """The UNet timesteps (ascending) the generator was trained on, or None when unknown."""
        return self._timesteps

    @timesteps.setter
    def timesteps(self, value: Sequence[int] | None) -> None:
        self._timesteps = None if value is None else _checked_timesteps(value, self.config.n_timesteps)

    @property
    def schedule(self) -> str:
        """The sampling schedule of the samples it was trained on: ``"full"`` or ``"fast"``."""
        return self._schedule

    @schedule.setter
    def schedule(self, value: str) -> None:
        if value not in SCHEDULES:
            raise InvalidInputError(f"a generator's schedule must be one of {list(SCHEDULES)}, got {value!r}")
        self._schedule = value

    # -- input checks --------------------------------------------------------------------------
    @property
    def branches(self) -> int:
        """Captured branches per sample it takes: 2 (uncond, cond) or 1 (cond alone, cfg 1)."""
        return self.config.branches

    def _ordered_timesteps(self, unet: UnetFeatures) -> list[Sequence[torch.Tensor]]:
        """Timesteps in the fixed order the mixing logits index: ascending (least noisy first)."""
        if isinstance(unet, Mapping):
            ordered = [unet[t] for t in sorted(unet)]
            names = f"timesteps {sorted(int(t) for t in unet)}"
        else:
            ordered = list(unet)
            names = f"{len(ordered)} timesteps"
        if len(ordered) != self.config.n_timesteps:
            raise InvalidInputError(
                f"this generator was built for {self.config.n_timesteps} timesteps but the features have {names}. "
                "Capture features at the same number of timesteps the generator was trained with."
            )
        return ordered

    def _batch_size(self, ordered, vae: Sequence[torch.Tensor], rgb: torch.Tensor | None) -> int:
        """Samples in the input, read where there is one row per sample whatever the branches:
        ``rgb``, else the first VAE feature; else the first UNet feature's rows / branches."""
        for x in (rgb, *vae):
            if isinstance(x, torch.Tensor) and x.dim() == 4:
                return int(x.shape[0])
        first = ordered[0][0] if ordered and len(ordered[0]) else None
        if isinstance(first, torch.Tensor) and first.dim() == 4:
            return max(1, int(first.shape[0]) // self.branches)
        return 1

    def _check_unet(self, ordered, batch: int) -> None:
        n_taps = len(self.spec.unet)
        rows = self.branches * batch
        if self.branches == 2:
            layout = f"uncond and cond branches of {batch} sample(s): the uncond ones first"
        else:
            layout = f"the cond branch alone of {batch} sample(s), as sampled at cfg 1"
        for t, feats in enumerate(ordered):
            if len(feats) != n_taps:
                raise InvalidInputError(
                    f"timestep #{t} has {len(feats)} UNet features; the spec has {n_taps} UNet taps."
                )
            for i, (x, tap) in enumerate(zip(feats, self.spec.unet, strict=True)):
                if x.dim() != 4 or x.shape[1] != tap.channels:
                    raise InvalidInputError(
                        f"UNet feature {i} ({tap.name}) at timestep #{t} has shape {tuple(x.shape)}; expected "
                        f"[{rows}, {tap.channels}, h, w] ({layout})."
                    )
                if x.shape[0] != rows:
                    raise InvalidInputError(self._branch_mismatch(int(x.shape[0]), batch, layout))

    def _branch_mismatch(self, rows: int, batch: int, layout: str) -> str:
        """The error for UNet features with another number of branches than the generator's."""
        if self.branches == 2:
            fix = (
                "It was trained on features sampled with classifier-free guidance (cfg above 1: uncond and "
                "cond captured); sample with cfg above 1, or train a generator on these features"
            )
        else:
            fix = (
                "It was trained on one-branch features (cfg 1 on a guidance-distilled model: cond only); sample "
                "with cfg 1, or train a generator on these features"
            )
        return (
            f"this generator takes {self.branches} branch(es) per sample, but the UNet features have {rows} rows "
            f"for {batch} sample(s); expected {self.branches * batch} ({layout}). {fix}."
        )

    def _check_vae(self, vae: Sequence[torch.Tensor], rgb: torch.Tensor | None, batch: int) -> None:
        if not self.config.use_vae:
            return
        if len(vae) != len(self.spec.vae):
            raise InvalidInputError(
                f"got {len(vae)} VAE features; the spec has {len(self.spec.vae)} VAE taps."
            )
        for i, (x, tap) in enumerate(zip(vae, self.spec.vae, strict=True)):
            if x.dim() != 4 or x.shape[0] != batch or x.shape[1] != tap.channels:
                raise InvalidInputError(
                    f"VAE feature {i} ({tap.name}) has shape {tuple(x.shape)}; expected [{batch}, {tap.channels}, H, W]."
                )
        if rgb is None or rgb.dim() != 4 or rgb.shape[0] != batch or rgb.shape[1] != self.spec.rgb.channels:
            shape = None if rgb is None else tuple(rgb.shape)
            raise InvalidInputError(
                f"rgb has shape {shape}; expected [{batch}, {self.spec.rgb.channels}, H, W]."
            )

    # -- forward -------------------------------------------------------------------------------
    def forward(
        self, unet: UnetFeatures, vae: Sequence[torch.Tensor] = (), rgb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``unet``: ``{timestep: [tensor[2B, C, h, w] per tap]}`` (or a list in ascending-timestep
        order), the B uncond branches first, then the B cond ones ([B, C, h, w], cond only, for a
        one-branch generator); ``vae``: one [B, C, H, W] per VAE tap; ``rgb``: the VAE's
        [B, 3, H, W] raw output. Returns [B, 1, H, W] at the size of ``rgb``. B is 1 but for a
        batch from ``sample_batch``.

        With ``gradient_checkpointing`` set (and gradients enabled) the same computation runs
        block by block inside checkpoints, see :meth:`_checkpointed_forward`."""
        ordered = self._ordered_timesteps(unet)
        batch = self._batch_size(ordered, vae, rgb)
        self._check_unet(ordered, batch)
        self._check_vae(vae, rgb, batch)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._checkpointed_forward(ordered, vae, rgb, batch)
        cast = self._cast
        c = self.config
        like = self.lower.mixing_logits

        # Lower level: every lower tap prepared (standardised for a transformer) at the largest
        # lower-tap size.
        lower_size = largest_size(ordered, c.lower_taps)
        lower_in = [
            [prepare_tap(feats[i], lower_size, like, c.standardize_taps) for i in c.lower_taps]
            for feats in ordered
        ]
        low = self.lower(lower_in)

        # Higher level: its taps, plus the lower result upsampled to their size as an extra entry.
        higher_size = largest_size(ordered, c.higher_taps)
        higher_in = [
            [prepare_tap(feats[i], higher_size, like, c.standardize_taps) for i in c.higher_taps]
            for feats in ordered
        ]
        high = self.higher(higher_in, extra=[resize_to(low, higher_size)])
        x = torch.cat(high.split(batch), dim=1)  # [B, branches * P]: uncond channels (if any), then cond

        # Feature-fusion decoder: stage k fuses the VAE taps at scale k (x2**k the latent size).
        # Sizes come from the tensors themselves, so odd image sizes line up too.
        reduced = [reduction(cast(f)) for reduction, f in zip(self.vae_reductions, vae)] if c.use_vae else []
        for k in range(len(self.fusion_stages)):
            x = self._fusion_stage(k, x, *reduced)
        return self._final_stage(x, rgb, *reduced)

    def _checkpointed_forward(self, ordered, vae, rgb, batch: int) -> torch.Tensor:
        """:meth:`forward` with gradient checkpointing, for training with little memory.

        Each aggregation block runs per (tap, timestep) inside its own checkpoint, together with
        the cast and resize of its input; so does each VAE reduction (with its cast) and each
        fusion stage. What stays alive for the backward pass is the stored features themselves
        plus small block outputs; the largest recomputation is the last fusion stage. Costs about
        one more forward pass, and gives the same result and gradients (a test compares them).
        """
        c = self.config
        like = self.lower.mixing_logits
        standardize = c.standardize_taps
        lower_in = [[feats[i] for i in c.lower_taps] for feats in ordered]
        lower_size = largest_size(ordered, c.lower_taps)
        low = checkpointed_aggregation(self.lower, lower_in, lower_size, like, standardize=standardize)
        higher_in = [[feats[i] for i in c.higher_taps] for feats in ordered]
        higher_size = largest_size(ordered, c.higher_taps)
        high = checkpointed_aggregation(
            self.higher, higher_in, higher_size, like, extra=[low], standardize=standardize
        )
        x = torch.cat(high.split(batch), dim=1)  # uncond channels (if any), then cond
        reduced = []
        if c.use_vae:
            reduced = [
                checkpoint(partial(reduce_vae, reduction, like), feature, use_reentrant=False)
                for reduction, feature in zip(self.vae_reductions, vae, strict=True)
            ]
        for k in range(len(self.fusion_stages)):
            x = checkpoint(partial(self._fusion_stage, k), x, *reduced, use_reentrant=False)
        return checkpoint(self._final_stage, x, rgb, *reduced, use_reentrant=False)

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        """Features are stored fp16 on the CPU; run them at the generator's device and dtype."""
        p = self.lower.mixing_logits
        return x.to(device=p.device, dtype=p.dtype)

    def _fusion_stage(self, k: int, x: torch.Tensor, *reduced: torch.Tensor) -> torch.Tensor:
        return self.fusion_stages[k](self._stage_inputs(x, reduced, k, None))

    def _final_stage(self, x: torch.Tensor, rgb, *reduced: torch.Tensor) -> torch.Tensor:
        rgb = self._cast(rgb) if self.config.use_vae else None
        return self.final(self._stage_inputs(x, reduced, len(self.fusion_stages), rgb))

    def _stage_inputs(self, x, reduced: Sequence[torch.Tensor], scale: int, rgb) -> torch.Tensor:
        """``x``, the reduced VAE taps of ``scale`` (and ``rgb`` at the last stage), concatenated
        at one size."""
        taps = self._vae_taps_at(scale)
        if rgb is not None:
            size = tuple(rgb.shape[-2:])
        elif taps:
            size = tuple(reduced[taps[0]].shape[-2:])
        else:
            size = tuple(x.shape[-2:])
        parts = [resize_to(x, size)] + [resize_to(reduced[i], size) for i in taps]
        if rgb is not None:
            parts.append(rgb)
        return torch.cat(parts, dim=1)

    def check_model(self, spec: FeatureSpec, model_what: str = "the model in use") -> None:
        """Raise a clear error unless this generator can run on features of a model with ``spec``:
        the backbone families must match (the message names both), then the layouts."""
        check_family(
            self.family,
            spec.family,
            "the generator",
            model_what,
            f"A generator only works with the backbone it was trained on: use it with {family_name(self.family)} "
            f"checkpoints, or train a generator on this {family_name(spec.family)} model",
        )
        if not self.spec.is_compatible(spec):
            raise InvalidInputError(
                f"{model_what} has layout {spec.fingerprint()}, but this generator was built for "
                f"{self.spec.fingerprint()}. Capture with the base model the generator was trained on."
            )

    def identity(self) -> ModelIdentity:
        """The model this generator was trained on, as its meta records it (``base_model``)."""
        return ModelIdentity.from_dict(self.meta.get("base_model"), self.family, "the generator")

    def forward_sample(self, sample) -> torch.Tensor:
        """Run on a :class:`~diffsketch.capture.sample.CapturedSample`."""
        self.check_model(sample.spec, "the model the sample was captured with")
        check_same_model(
            sample.identity(),
            self.identity(),
            "the sample",
            "the generator's model",
            "Sample with the model and sampling settings the generator was trained with",
        )
        return self(sample.unet, sample.vae, sample.rgb)

    # -- introspection -------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, int]:
        return {
            "lower_aggregation": parameter_count(self.lower),
            "higher_aggregation": parameter_count(self.higher),
            "vae_reductions": parameter_count(self.vae_reductions),
            "fusion_decoder": parameter_count(self.fusion_stages) + parameter_count(self.final),
            "total": parameter_count(self),
        }


def feature_branches(sample) -> int:
    """Branches per sample in a :class:`~diffsketch.capture.sample.CapturedSample`'s UNet
    features: 2 (uncond and cond, CFG sampling) or 1 (cond alone: cfg 1 on a guidance-distilled
    model); what a generator trained on it records as ``branches``."""
    first = sample.unet[sample.timesteps[0]][0]
    rows, batch = int(first.shape[0]), sample.batch_size
    if rows % batch or rows // batch not in BRANCH_COUNTS:
        raise InvalidInputError(
            f"the sample's UNet features have {rows} rows for {batch} sample(s); expected 1 or 2 branches per "
            "sample (cond, or uncond and cond). The sample is damaged or was not captured by DiffSketch."
        )
    return rows // batch


def _checked_timesteps(value: Sequence[int], n_timesteps: int) -> tuple[int, ...]:
    try:
        timesteps = tuple(sorted(int(t) for t in value))
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"a generator's timesteps must be integers, got {value!r}") from e
    if len(set(timesteps)) != n_timesteps or not all(0 <= t < NUM_TRAIN_TIMESTEPS for t in timesteps):
        raise InvalidInputError(
            f"this generator takes features at {n_timesteps} distinct timesteps in 0..{NUM_TRAIN_TIMESTEPS - 1}; "
            f"got {list(value)}"
        )
    return timesteps


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_report(
    spec: FeatureSpec, n_timesteps: int, config: GeneratorConfig | None = None
) -> dict[str, int]:
    """Parameter counts per part of the generator for ``spec``, built on the meta device (no memory)."""
    config = config or GeneratorConfig.from_spec(spec, n_timesteps)
    with torch.device("meta"):
        generator = SketchGenerator(spec, config)
    return generator.parameter_groups()


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def save_generator(path: str | Path, generator: SketchGenerator, meta: Mapping | None = None) -> Path:
    """Write ``generator`` as a DiffSketch ``generator`` model file (v1; see
    :func:`~diffsketch.fileio.save_model_file`: checksum, no NaN or infinite weights).

    The header records the spec, the config, the backbone family, the timesteps and the
    schedule the generator samples with. ``meta`` is the caller's JSON-serialisable record
    (training settings, steps done, base-model fingerprint, ...); it comes back as
    ``load_generator(...).meta``.
    """
    header = {
        "spec": generator.spec.to_json(),
        "spec_fingerprint": generator.spec.fingerprint(),
        "config": generator.config.to_dict(),
        "parameters": parameter_count(generator),
        "family": generator.family,
        "timesteps": None if generator.timesteps is None else list(generator.timesteps),
        "schedule": generator.schedule,
        "meta": dict(meta or {}),
    }
    return fileio.save_model_file(path, generator.state_dict(), GENERATOR_KIND, GENERATOR_VERSION, header)


def read_generator_header(path: str | Path) -> dict:
    """The header of a generator file (spec JSON, config, meta) without loading the weights."""
    return fileio.read_header(path, GENERATOR_KIND, (GENERATOR_VERSION,))


def _spec_difference(saved: FeatureSpec, expected: FeatureSpec) -> str:
    a, b = saved.signature(), expected.signature()
    diffs = [k for k in a if a[k] != b.get(k)]
    return ", ".join(diffs) or "layout"


def load_generator(
    path: str | Path,
    device: torch.device | str = "cpu",
    expected_spec: FeatureSpec | None = None,
    dtype: torch.dtype = torch.float32,
) -> SketchGenerator:
    """Load a generator file; its meta is attached as ``generator.meta``.

    With ``expected_spec`` (the spec of the model in use), a generator trained on another
    backbone family raises UnsupportedModelError naming both families, and one trained for
    another layout of the same family FileFormatError, instead of failing later on shapes.
    """
    path = Path(path)
    tensors, header = fileio.load_model_file(path, GENERATOR_KIND, (GENERATOR_VERSION,))
    try:
        spec = FeatureSpec.from_json(header["spec"])
        config = GeneratorConfig.from_dict(header["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise FileFormatError(f"{path.name}: the generator header is incomplete or invalid ({e}).") from e
    _check_file_family(header, spec, path)
    if expected_spec is not None:
        check_family(
            spec.family,
            expected_spec.family,
            f"the generator {path.name}",
            "the model in use",
            f"A generator only works with the backbone it was trained on: use it with {family_name(spec.family)} "
            f"checkpoints, or train a generator on this {family_name(expected_spec.family)} model",
        )
    if expected_spec is not None and not spec.is_compatible(expected_spec):
        raise FileFormatError(
            f"{path.name} was trained for a different model layout (spec {spec.fingerprint()}) than the model in "
            f"use (spec {expected_spec.fingerprint()}; differs in {_spec_difference(spec, expected_spec)}). "
            "Use the base model it was trained with, or train a generator for this model."
        )
    meta = header.get("meta", {})
    meta = meta if isinstance(meta, dict) else {}
    # Files written before these header fields existed kept the timesteps in the trainer's meta
    # (so may a caller's own meta) and the schedule in its training settings (none: the full one).
    timesteps = header.get("timesteps") or meta.get("timesteps")
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    schedule = header.get("schedule", training.get("schedule", "full"))
    try:
        generator = SketchGenerator(spec, config, timesteps=timesteps or None, schedule=schedule)
    except InvalidInputError as e:
        raise FileFormatError(
            f"{path.name}: the stored generator config, timesteps or schedule do not fit ({e})."
        ) from e
    fileio.load_state_strict(
        generator,
        tensors,
        path.name,
        "The file is damaged or was written by an incompatible version; its header describes another generator.",
    )
    generator.meta = dict(meta)
    return generator.to(device=device, dtype=dtype)


def _check_file_family(header: Mapping, spec: FeatureSpec, path: Path) -> None:
    """The header's backbone family (SD 1.x in files written before it was recorded) must be a
    known one and agree with the family of the stored spec."""
    family = header.get("family", SD1)
    try:
        check_backbone_family(family, path.name)
    except UnsupportedModelError as e:
        raise FileFormatError(str(e)) from e
    if family != spec.family:
        raise FileFormatError(
            f"{path.name}: the header says backbone family {family!r} but the stored spec is {spec.family!r}; "
            "the file is damaged."
        )


__all__ = [
    "BRANCH_COUNTS",
    "GENERATOR_KIND",
    "GENERATOR_VERSION",
    "AggregationNetwork",
    "Bottleneck",
    "GeneratorConfig",
    "SketchGenerator",
    "load_generator",
    "parameter_count",
    "parameter_report",
    "read_generator_header",
    "feature_branches",
    "save_generator",
    "vae_reduce_width",
]
