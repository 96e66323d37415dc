"""The building blocks of the sketch generator (:class:`~diffsketch.train.generator.SketchGenerator`):
the per-tap bottlenecks and the aggregation network that mixes them over timesteps, the fusion
decoder's stages, the VAE channel reductions, the per-channel standardisation of transformer taps
(:func:`standardize_channels`), and the memory-saving (checkpointed) forms of the aggregation used
with ``low_memory``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import InvalidInputError


def msra_conv(cin: int, cout: int, kernel: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
    # Detectron2's c2_msra_fill: He init for ReLU, fan_out.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class Bottleneck(nn.Module):
    """Detectron2-style bottleneck: 1x1 -> 3x3 -> 1x1 (GN after each), projection shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        mid = out_channels // 4
        self.conv1 = msra_conv(in_channels, mid, 1)
        self.norm1 = nn.GroupNorm(groups, mid)
        self.conv2 = msra_conv(mid, mid, 3)
        self.norm2 = nn.GroupNorm(groups, mid)
        self.conv3 = msra_conv(mid, out_channels, 1)
        self.norm3 = nn.GroupNorm(groups, out_channels)
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                msra_conv(in_channels, out_channels, 1), nn.GroupNorm(groups, out_channels)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


def standardize_channels(x: torch.Tensor) -> torch.Tensor:
    """Each channel of each sample standardised over its tokens (positions): zero mean, unit
    variance, no learned scale (a non-affine instance norm), computed in float32 at least and
    returned in ``x``'s dtype.

    This is how the generator takes a diffusion transformer's block outputs, whose "massive
    activations" (a few fixed hidden channels, near-constant over the image tokens, 100-1000x the
    others) would otherwise dominate every 1x1 projection of the bottleneck: their constant part is
    removed and what varies over the tokens is brought to the scale of every other channel. float32
    because the variance of a 1000-valued channel does not fit in float16.
    """
    return F.instance_norm(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)


def prepare_tap(
    x: torch.Tensor, size: tuple[int, int], like: torch.Tensor, standardize: bool
) -> torch.Tensor:
    """A stored tap as a block takes it: cast to ``like``'s device and dtype, channel-standardised
    (:func:`standardize_channels`) when ``standardize``, and resized to ``size``."""
    x = x.to(device=like.device, dtype=like.dtype)
    return resize_to(standardize_channels(x) if standardize else x, size)


class AggregationNetwork(nn.Module):
    """Diffusion-Hyperfeatures aggregation (docs/method.md §4).

    One :class:`Bottleneck` per tap, shared across timesteps, plus one per ``extra`` entry (an
    input consumed once, not per timestep). One mixing logit per (timestep, tap) and per extra
    entry, all initialised to 1; a single softmax over all of them weights the bottleneck outputs,
    which are summed. Logit ``t * n_taps + l`` belongs to timestep ``t`` (in the order the caller
    passes them) and tap ``l``; the extra entries' logits come last. The inputs come prepared
    (:func:`prepare_tap`): this network has no parameters of its own outside the blocks and logits.
    """

    def __init__(
        self,
        tap_channels: Sequence[int],
        n_timesteps: int,
        projection_dim: int,
        groups: int,
        extra_channels: Sequence[int] = (),
    ):
        super().__init__()
        self.tap_channels = tuple(int(c) for c in tap_channels)
        self.extra_channels = tuple(int(c) for c in extra_channels)
        self.n_timesteps = int(n_timesteps)
        self.projection_dim = int(projection_dim)
        self.tap_blocks = nn.ModuleList(Bottleneck(c, projection_dim, groups) for c in self.tap_channels)
        self.extra_blocks = nn.ModuleList(Bottleneck(c, projection_dim, groups) for c in self.extra_channels)
        self.mixing_logits = nn.Parameter(
            torch.ones(self.n_timesteps * len(self.tap_channels) + len(self.extra_channels))
        )

    @property
    def n_mixing_weights(self) -> int:
        return self.mixing_logits.numel()

    def mixing_weights(self) -> torch.Tensor:
        return torch.softmax(self.mixing_logits, dim=0)

    def forward(
        self, per_timestep: Sequence[Sequence[torch.Tensor]], extra: Sequence[torch.Tensor] = ()
    ) -> torch.Tensor:
        """``per_timestep[t][l]``: [B, C_l, h, w] (all the same h, w); ``extra[e]``: [B, C_e, h, w]."""
        n_t, n_l = self.n_timesteps, len(self.tap_channels)
        if (
            len(per_timestep) != n_t
            or any(len(x) != n_l for x in per_timestep)
            or len(extra) != len(self.extra_blocks)
        ):
            raise InvalidInputError(
                f"aggregation expects {n_t} timesteps x {n_l} taps and {len(self.extra_blocks)} extra inputs"
            )
        weights = self.mixing_weights()
        tap_weights = weights[: n_t * n_l].view(n_t, n_l)
        out = None
        for tap, block in enumerate(self.tap_blocks):
            batch = per_timestep[0][tap].shape[0]
            # All timesteps of one tap share the block, so run them as one batch (GroupNorm is per
            # sample, so this equals one call per timestep).
            y = block(torch.cat([per_timestep[t][tap] for t in range(n_t)], dim=0))
            y = y.unflatten(0, (n_t, batch))
            term = (tap_weights[:, tap].view(n_t, 1, 1, 1, 1).to(y.dtype) * y).sum(0)
            out = term if out is None else out + term
        for e, block in enumerate(self.extra_blocks):
            out = out + weights[n_t * n_l + e].to(extra[e].dtype) * block(extra[e])
        return out


class ConvBlock(nn.Sequential):
    """3x3 conv (no bias) -> GroupNorm -> GELU (the released ``Conv_block``)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.GELU()
        )


class FusionStage(nn.Sequential):
    """Nearest x2 upsample -> 3x3 conv (no bias) -> GroupNorm -> GELU (the released ``Fusion``)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.GroupNorm(groups, cout),
            nn.GELU(),
        )


class VaeReduction(nn.Sequential):
    """1x1 conv (with bias) to a few channels, then a :class:`ConvBlock`."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__(nn.Conv2d(cin, cout, 1), ConvBlock(cout, cout, groups))


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def largest_size(ordered: Sequence[Sequence[torch.Tensor]], taps: Sequence[int]) -> tuple[int, int]:
    return max((tuple(ordered[0][i].shape[-2:]) for i in taps), key=lambda s: s[0] * s[1])


def _weighted_block(
    block: nn.Module, size, like: torch.Tensor, standardize: bool, x: torch.Tensor, weight: torch.Tensor
):
    # Prepare the input inside the checkpoint, so only the stored (fp16) feature is kept for backward.
    x = prepare_tap(x, size, like, standardize)
    return weight.to(x.dtype) * block(x)


def checkpointed_aggregation(
    net, per_timestep, size, like: torch.Tensor, extra=(), standardize: bool = False
) -> torch.Tensor:
    """:class:`AggregationNetwork` forward, one checkpointed (tap, timestep) block at a time (the
    batched forward runs all timesteps of a tap together; GroupNorm and :func:`standardize_channels`
    are per sample, so it is the same sum). ``per_timestep`` holds the stored taps, prepared here
    (:func:`prepare_tap`, channel-standardised when ``standardize``); ``extra`` is never standardised."""
    weights = net.mixing_weights()
    n_t, n_l = net.n_timesteps, len(net.tap_channels)
    out = None
    for tap, block in enumerate(net.tap_blocks):
        for t in range(n_t):
            term = checkpoint(
                partial(_weighted_block, block, size, like, standardize),
                per_timestep[t][tap],
                weights[t * n_l + tap],
                use_reentrant=False,
            )
            out = term if out is None else out + term
    for e, block in enumerate(net.extra_blocks):
        term = checkpoint(
            partial(_weighted_block, block, size, like, False),
            extra[e],
            weights[n_t * n_l + e],
            use_reentrant=False,
        )
        out = out + term
    return out


def reduce_vae(reduction: nn.Module, like: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    return reduction(feature.to(device=like.device, dtype=like.dtype))
