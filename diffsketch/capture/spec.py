"""What DiffSketch taps in a diffusion model, read from the model itself.

A :class:`FeatureSpec` lists the UNet decoder ResBlocks and VAE decoder blocks whose outputs
DiffSketch uses, with their channel counts and spatial scales. It is discovered from the model
(ldm/ComfyUI layout or diffusers layout), never hard-coded to SD 1.5 numbers, so the generator
can be built for any layout that follows the same pattern.

Three backbone families follow that pattern (an ldm UNet with ResBlock decoder levels and the
KL-f8 VAE); the spec records which one it was read from:

- ``sd1``: SD 1.x. 12 decoder ResBlocks (1280 ch at latent/8 and /4, 640 at /2, 320 at /1),
  768-dim CLIP-L context.
- ``sd2``: SD 2.x (512-base, epsilon; 768-v, v-prediction). The same 12 taps, 1024-dim
  OpenCLIP-H context.
- ``sdxl``: SDXL base and its fine-tunes. 9 decoder ResBlocks, three per level at 1280/640/320
  channels (latent/4, /2, /1: there is no latent/8 level), 2048-dim context (CLIP-L and OpenCLIP
  bigG hidden states side by side) plus bigG's 1280-dim pooled embedding.

Three flow-matching diffusion transformers (experimental) are tapped differently: a DiT has no
decoder pyramid, so ``FeatureSpec.unet`` holds the image-token outputs of chosen transformer
blocks, each unpatchified into a map at latent/2 (patch 2), all at the hidden size:

- ``zimage``: Z-Image (Turbo and base; diffusers ``ZImageTransformer2DModel``, ComfyUI's
  Lumina2/NextDiT ``layers``): 30 single-stream blocks of 3840 channels over [image tokens,
  caption tokens], 2560-dim Qwen3-4B context, no pooled embedding.
- ``sd35``: SD 3.5 Medium and Large (diffusers ``SD3Transformer2DModel``, ComfyUI's MM-DiT
  ``joint_blocks``): 24 blocks of 1536 channels (Medium) or 38 of 2432 (Large) with a separate
  image stream, 4096-dim context (CLIP-L/G padded to 4096, then T5-XXL) and a 2048-dim pooled one.

- ``flux``: Flux.1 dev and schnell (diffusers ``FluxTransformer2DModel``, ComfyUI's ``Flux``): 19
  double-stream blocks (separate image and text streams, as SD 3.5's) then 38 single-stream blocks
  over [text tokens, image tokens], 3072 channels, counted as one depth of 57 for the taps
  (:func:`dit_stack_taps`); 4096-dim T5-XXL context and CLIP-L's 768-dim pooled embedding; dev
  also embeds a guidance value (:data:`FLUX_DEFAULT_GUIDANCE`).

All decode with a 16-channel VAE whose decoder has SD's layout, so its taps are read as SD's.

Which blocks (:func:`default_dit_blocks`): five, at 1/4, 3/8, 1/2, 5/8 and 3/4 of the depth. The
DiT-feature literature finds the semantic, dense features in the middle of the stack: DiTF
(NeurIPS 2025) reads FLUX/SD3.5 features for dense correspondence from mid-depth blocks (the first
blocks are still close to the noisy patches, the last ones specialise in predicting the velocity),
and MMDiff (2026) fuses mid-depth blocks over several timesteps for dense prediction. DiffSketch's
generator wants both levels of the paper's UNet taps, semantic and local, so the taps spread over
the middle half of the depth rather than one block. The choice has not yet been measured on real
weights here (:mod:`diffsketch.capture.analysis` does so for timesteps on UNets); the spec records
the block indices, so files stay readable if the defaults change.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch.nn as nn

from ..errors import InvalidInputError, UnsupportedModelError

LAYOUT_LDM = "ldm"
LAYOUT_DIFFUSERS = "diffusers"

SD1 = "sd1"
SD2 = "sd2"
SDXL = "sdxl"
ZIMAGE = "zimage"
SD35 = "sd35"
FLUX = "flux"
#: Backbone families, by the id files record, and their names in messages.
BACKBONE_FAMILIES = {
    SD1: "SD 1.x",
    SD2: "SD 2.x",
    SDXL: "SDXL",
    ZIMAGE: "Z-Image",
    SD35: "SD 3.5",
    FLUX: "Flux.1",
}
#: The families that are flow-matching diffusion transformers (Euler sampling on a shifted sigma
#: schedule, one-resolution block taps); the rest are DDPM UNets (DDIM sampling, multi-level taps).
FLOW_FAMILIES = (ZIMAGE, SD35, FLUX)
#: The families whose model takes a pooled text embedding besides the context (SDXL: bigG's 1280;
#: SD 3.5: CLIP-L's 768 and CLIP-G's 1280; Flux.1: CLIP-L's 768), so a condition fit keeps it.
POOLED_FAMILIES = (SDXL, SD35, FLUX)
#: The families taken as guidance-distilled (sampled at cfg 1 with one branch by default; cfg > 1
#: gets a notice): Z-Image, as the Turbo most use (nothing in the weights tells base from Turbo),
#: and Flux.1 dev and schnell (dev takes the guidance it was distilled with as an input instead).
GUIDANCE_DISTILLED_FAMILIES = (ZIMAGE, FLUX)
#: What every "not supported" message says is supported.
SUPPORTED_MODELS = (
    "SD 1.x, SD 2.x (512-base and 768-v) and SDXL-family checkpoints (SDXL base and its fine-tunes, "
    "e.g. Illustrious, NoobAI, Pony, Juggernaut), and, experimental, the diffusion transformers Z-Image "
    "(Turbo and base), SD 3.5 (Medium and Large) and Flux.1 (dev and schnell)"
)
#: The multiple of pixels each family's image sides must be (``FeatureSpec.size_multiple``), in words.
SIZE_MULTIPLES_TEXT = "64 for SD 1.x and SD 2.x, 32 for SDXL, 16 for Z-Image, SD 3.5 and Flux.1"
#: The families by name, for a tooltip: "SD 1.x, SD 2.x, SDXL, Z-Image, SD 3.5 or Flux.1".
FAMILY_NAMES_TEXT = (
    ", ".join(list(BACKBONE_FAMILIES.values())[:-1]) + " or " + list(BACKBONE_FAMILIES.values())[-1]
)
#: The diffusion-transformer families by name: "Z-Image, SD 3.5 and Flux.1".
DIT_NAMES_TEXT = (
    ", ".join(BACKBONE_FAMILIES[f] for f in FLOW_FAMILIES[:-1])
    + " and "
    + BACKBONE_FAMILIES[FLOW_FAMILIES[-1]]
)
#: Why the diffusion transformers are experimental (node descriptions, README).
DIT_EXPERIMENTAL_NOTE = (
    f"{DIT_NAMES_TEXT} support is experimental: the method was validated on UNet backbones, and sketch "
    "quality on diffusion transformers has not been measured with real weights."
)
#: The DiT families' transformer classes, diffusers' names (the diffusers backend's layout).
DIFFUSERS_DIT_CLASSES = {
    "ZImageTransformer2DModel": ZIMAGE,
    "SD3Transformer2DModel": SD35,
    "FluxTransformer2DModel": FLUX,
}
#: The diffusers transformer classes of DiTs this version does not take yet, in words.
UNSUPPORTED_DIT_CLASSES = {
    "Flux2Transformer2DModel": "a Flux.2 transformer",
    "QwenImageTransformer2DModel": "a Qwen-Image transformer",
    "Lumina2Transformer2DModel": "a Lumina 2 transformer",
    "PixArtTransformer2DModel": "a PixArt transformer",
    "SanaTransformer2DModel": "a Sana transformer",
    "AuraFlowTransformer2DModel": "an AuraFlow transformer",
    "HiDreamImageTransformer2DModel": "a HiDream transformer",
    "ChromaTransformer2DModel": "a Chroma transformer",
}
#: The fractions of a DiT's depth whose blocks are tapped by default (module docstring).
DIT_TAP_DEPTHS = (1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4)
#: Latent channels of the 16-channel VAEs the DiT families decode with.
DIT_LATENT_CHANNELS = 16
#: Flux.1's block stacks in diffusers' module names: 19 double-stream blocks (an image and a text
#: stream; their image stream is tapped), then 38 single-stream blocks over [text tokens, image
#: tokens] (their image tokens are tapped). Taps index the 57 blocks as one depth.
FLUX_DIFFUSERS_STACKS = ("transformer_blocks", "single_transformer_blocks")
#: The same stacks in ComfyUI's ``comfy.ldm.flux.model.Flux``.
FLUX_COMFY_STACKS = ("double_blocks", "single_blocks")
#: Flux.1's patch: diffusers packs 2x2 latent patches into 64-channel tokens (its config says
#: patch_size 1 of the packed latent; ComfyUI's says 2).
FLUX_PATCH = 2
#: The guidance Flux.1 dev embeds (its guidance-distillation input) unless told otherwise:
#: ComfyUI's ``model_base.Flux`` default and the FluxGuidance node's.
FLUX_DEFAULT_GUIDANCE = 3.5
#: The most ComfyUI's FluxGuidance node takes.
FLUX_MAX_GUIDANCE = 100.0
#: SDXL's size/crop conditioning: six numbers (original h/w, crop top/left, target h/w), each
#: embedded with 256 sinusoidal features next to the pooled text embedding.
SDXL_TIME_IDS = 6
SDXL_TIME_EMBED_DIM = 256


#: The image side each family's published checkpoints were trained at, in words (node tooltips).
NATIVE_SIZES_TEXT = (
    "512 for SD 1.x and SD 2.x-base, 768 for SD 2.x 768-v, 1024 for SDXL, Z-Image, SD 3.5 and Flux.1"
)


def family_native_side(family: str, prediction_type: str) -> int:
    """The side a model known only by family and prediction type (what ComfyUI's MODEL tells; its
    checkpoint does not record it) was trained at: :data:`NATIVE_SIZES_TEXT`, SD 2.x 768-v being
    the v-prediction SD 2.x."""
    if family == SD2 and prediction_type == "v_prediction":
        return 768
    return {SD1: 512, SD2: 512, SDXL: 1024, ZIMAGE: 1024, SD35: 1024, FLUX: 1024}[
        check_backbone_family(family)
    ]


def is_flow_family(family: str) -> bool:
    """Whether ``family`` is a flow-matching transformer (:data:`FLOW_FAMILIES`)."""
    return check_backbone_family(family) in FLOW_FAMILIES


def family_name(family: str) -> str:
    return BACKBONE_FAMILIES.get(family, repr(family))


def check_backbone_family(family, where: str = "the model") -> str:
    """``family`` if it is one of :data:`BACKBONE_FAMILIES`, else UnsupportedModelError."""
    if family not in BACKBONE_FAMILIES:
        known = ", ".join(f"'{k}' ({v})" for k, v in BACKBONE_FAMILIES.items())
        raise UnsupportedModelError(
            f"{where} is for the backbone family {family!r}, which this version of DiffSketch does not know "
            f"(it knows {known}). Update DiffSketch, or use a model of a known family."
        )
    return family


def backbone_family(item) -> str:
    """The backbone family (e.g. ``"sd1"``) of a :class:`FeatureSpec`, or of anything carrying one
    as ``.spec``: a backend, a captured sample, a generator. The one place it is read."""
    spec = item if isinstance(item, FeatureSpec) else getattr(item, "spec", None)
    if not isinstance(spec, FeatureSpec):
        raise TypeError(f"{type(item).__name__} has no FeatureSpec to read a backbone family from")
    return check_backbone_family(spec.family, "this spec")


def check_embedded_guidance(
    guidance, family: str | None, guidance_embeds: bool, option: str = "guidance"
) -> float | None:
    """The guidance value a model embeds, checked (``option`` names it in messages). Flux.1 dev
    (``family`` FLUX with ``guidance_embeds``, its config's word for the guidance-distillation
    input) takes 0 to :data:`FLUX_MAX_GUIDANCE`, as ComfyUI's FluxGuidance node does; None gives
    :data:`FLUX_DEFAULT_GUIDANCE`. A model without that input (Flux.1 schnell, the other families;
    ``family`` None: a UNet) gets None, and a value given for it is refused rather than ignored.
    It is not cfg."""
    if family != FLUX or not guidance_embeds:
        if guidance is None:
            return None
        if family == FLUX:
            model = "Flux.1 schnell"
        else:
            model = (
                f"this {family_name(family)} model" if family else "this UNet model (SD 1.x, SD 2.x, SDXL)"
            )
        raise InvalidInputError(
            f"{option} {guidance} was given, but {model} has no guidance input: only Flux.1 dev embeds a "
            f"guidance value (it is not cfg). Leave {option} out for this model."
        )
    if guidance is None:
        return FLUX_DEFAULT_GUIDANCE
    try:
        value = float(guidance)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= FLUX_MAX_GUIDANCE:
        raise InvalidInputError(
            f"{option} must be a number from 0 to {FLUX_MAX_GUIDANCE:g} (Flux.1 dev's embedded guidance; "
            f"{FLUX_DEFAULT_GUIDANCE:g} by default), got {guidance!r}."
        )
    return value


def unsupported_model(what: str) -> UnsupportedModelError:
    """The one wording for a model DiffSketch cannot use: what it is, and what is supported."""
    return UnsupportedModelError(f"{what}. DiffSketch works with {SUPPORTED_MODELS}; load one of those.")


def check_family(found: str, expected: str, found_what: str, expected_what: str, fix: str = "") -> None:
    """Raise a clear error when two things from different backbone families meet (a generator
    trained on SDXL and an SD 1.x model, a MODEL and a CLIP of two checkpoints, ...): it names
    both families, and ``fix`` (default: use the first with a model of its family)."""
    if found != expected:
        fix = fix or f"Use {found_what} with an {family_name(found)} model"
        raise UnsupportedModelError(
            f"{found_what} is {family_name(found)} but {expected_what} is {family_name(expected)}: they must come "
            f"from the same backbone family. {fix}."
        )


def family_from_ldm_config(unet_config: Mapping, what: str = "the model") -> str:
    """The backbone family of an ldm UNet config (ComfyUI's ``unet_config``, or one read from a
    checkpoint's tensor shapes), or :class:`UnsupportedModelError` naming what it is instead."""
    context = unet_config.get("context_dim")
    if isinstance(context, (list, tuple)):
        context = context[0] if context else None
    adm = unet_config.get("adm_in_channels") or 0
    in_channels = unet_config.get("in_channels", 4)
    if unet_config.get("use_temporal_attention") or unet_config.get("use_temporal_resblock"):
        raise unsupported_model(f"{what} is a video model")
    if in_channels != 4:
        raise unsupported_model(
            f"{what} takes {in_channels}-channel input (an inpainting or instruct-pix2pix model), not plain latents"
        )
    if context == 768 and not adm:
        return SD1
    if context == 1024 and not adm:
        return SD2
    if context == 2048 and adm == 1280 + SDXL_TIME_IDS * SDXL_TIME_EMBED_DIM:
        return SDXL
    if context == 1280 and adm:
        raise unsupported_model(
            f"{what} is an SDXL refiner: it has no CLIP-L text encoder and only learned the last denoising steps. "
            "Load an SDXL base model or a fine-tune of it"
        )
    if context == 1024 and adm:
        raise unsupported_model(f"{what} is an SD 2.1 unCLIP (image-variation) model")
    raise unsupported_model(
        f"{what} has a {context}-dim text context and {adm} extra conditioning channels, which matches none of "
        "the supported backbones"
    )


@dataclass(frozen=True)
class Tap:
    """One tapped module.

    ``name`` is the module path relative to the model root the backend hooks (the UNet, or the
    VAE ``AutoencoderKL``). ``log2_scale`` is the tapped tensor's spatial size relative to the
    latent, as a power of two: -3 means latent/8, 0 the latent size, 3 means latent*8.
    """

    name: str
    channels: int
    log2_scale: int

    def size(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = latent_hw
        if self.log2_scale >= 0:
            return h << self.log2_scale, w << self.log2_scale
        f = 1 << -self.log2_scale
        return -(-h // f), -(-w // f)


@dataclass(frozen=True)
class FeatureSpec:
    """The taps of one model layout.

    ``unet`` are the decoder ResBlocks' residual branches (before the skip add), in execution
    order, or for a DiT family (:data:`FLOW_FAMILIES`) the chosen transformer blocks' image-token
    outputs, unpatchified to latent/2 (``log2_scale`` -1), in block order; ``vae`` are the VAE decoder's mid and up ResNet blocks in execution order; ``rgb`` is
    the decoder's output conv. ``context_dim``, ``pooled_dim`` (0: none) and ``latent_channels``
    are what the text conditioning and latents must look like; ``family`` is the backbone family
    (``sd1``, ``sd2``, ``sdxl``; files written before it was recorded are SD 1.x).
    """

    layout: str
    unet: tuple[Tap, ...]
    vae: tuple[Tap, ...]
    rgb: Tap
    context_dim: int
    latent_channels: int = 4
    vae_scale_factor: int = 8
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    family: str = SD1
    pooled_dim: int = 0

    # -- shapes --------------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this many pixels: the VAE's scale factor times 2 per
        UNet downsampling or per patch side (read from the coarsest tap). SD 1.x/2.x: 64, SDXL: 32,
        Z-Image and SD 3.5: 16 (VAE 8 x patch 2)."""
        coarsest = min((t.log2_scale for t in self.unet), default=0)
        return self.vae_scale_factor << max(0, -coarsest)

    def latent_size(self, width: int, height: int) -> tuple[int, int]:
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    def unet_shapes(self, width: int, height: int) -> list[tuple[int, int, int]]:
        lat = self.latent_size(width, height)
        return [(t.channels, *t.size(lat)) for t in self.unet]

    def vae_shapes(self, width: int, height: int) -> list[tuple[int, int, int]]:
        lat = self.latent_size(width, height)
        return [(t.channels, *t.size(lat)) for t in self.vae]

    def capture_numel(self, width: int, height: int, n_timesteps: int, branches: int = 2) -> int:
        """Number of stored values for one captured sample (UNet + VAE + RGB + image + latent)."""
        unet = sum(c * h * w for c, h, w in self.unet_shapes(width, height)) * branches * n_timesteps
        vae = sum(c * h * w for c, h, w in self.vae_shapes(width, height))
        lh, lw = self.latent_size(width, height)
        rgb_and_image = 2 * 3 * height * width
        return unet + vae + rgb_and_image + self.latent_channels * lh * lw

    # -- identity ------------------------------------------------------------------------------
    def signature(self) -> dict:
        """The layout as the generator sees it: channels and scales, not module names.

        The family and the pooled width appear only where they differ from SD 1.x's (``sd1``, no
        pooled embedding), so the fingerprints recorded in SD 1.x files stay what they were."""
        signature = {
            "unet": [[t.channels, t.log2_scale] for t in self.unet],
            "vae": [[t.channels, t.log2_scale] for t in self.vae],
            "rgb": self.rgb.channels,
            "context_dim": self.context_dim,
            "latent_channels": self.latent_channels,
            "vae_scale_factor": self.vae_scale_factor,
        }
        if self.family != SD1:
            signature["family"] = self.family
        if self.pooled_dim:
            signature["pooled_dim"] = self.pooled_dim
        return signature

    def fingerprint(self) -> str:
        blob = json.dumps(self.signature(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def is_compatible(self, other: FeatureSpec) -> bool:
        return self.signature() == other.signature()

    # -- serialisation -------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        return cls(
            layout=d["layout"],
            unet=tuple(Tap(**t) for t in d["unet"]),
            vae=tuple(Tap(**t) for t in d["vae"]),
            rgb=Tap(**d["rgb"]),
            context_dim=int(d["context_dim"]),
            latent_channels=int(d.get("latent_channels", 4)),
            vae_scale_factor=int(d.get("vae_scale_factor", 8)),
            extra=dict(d.get("extra", {})),
            family=str(d.get("family", SD1)),  # written before families existed: SD 1.x
            pooled_dim=int(d.get("pooled_dim", 0)),
        )

    @classmethod
    def from_json(cls, s: str) -> FeatureSpec:
        return cls.from_dict(json.loads(s))


def _conv_out_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UnsupportedModelError(f"expected a convolution inside {type(module).__name__}")
    return convs[-1].out_channels


def _has_upsample(block: nn.Module) -> bool:
    return any(type(m).__name__ == "Upsample" for m in block.children())


# ---------------------------------------------------------------------------------------------
# ldm / ComfyUI layout
# ---------------------------------------------------------------------------------------------
def ldm_unet_taps(unet: nn.Module) -> tuple[Tap, ...]:
    """Taps of an ldm ``UNetModel``: ``output_blocks[i][0].out_layers`` for each decoder block."""
    blocks = getattr(unet, "output_blocks", None)
    if blocks is None or len(blocks) == 0:
        raise unsupported_model(
            f"{type(unet).__name__} has no ldm UNet decoder ('output_blocks'): it is not a Stable Diffusion UNet "
            "(Flux, SD3 and other DiT models have none)"
        )
    ups_after = [0] * (len(blocks) + 1)
    for i in range(len(blocks) - 1, -1, -1):
        ups_after[i] = ups_after[i + 1] + int(_has_upsample(blocks[i]))
    taps = []
    for i, block in enumerate(blocks):
        res = block[0]
        out_layers = getattr(res, "out_layers", None)
        if out_layers is None:
            raise unsupported_model(
                f"output_blocks[{i}][0] is {type(res).__name__}, not a ResBlock with 'out_layers': this UNet does not "
                "have the decoder layout DiffSketch taps"
            )
        taps.append(Tap(f"output_blocks.{i}.0.out_layers", _conv_out_channels(out_layers), -ups_after[i]))
    return tuple(taps)


def ldm_vae_taps(vae: nn.Module) -> tuple[tuple[Tap, ...], Tap]:
    """Taps of an ldm ``AutoencoderKL``: decoder mid block_1/2, every up-level ResNet block, conv_out."""
    dec = getattr(vae, "decoder", None)
    if dec is None or not hasattr(dec, "mid") or not hasattr(dec, "up"):
        raise unsupported_model(
            f"{type(vae).__name__} has no ldm decoder (decoder.mid / decoder.up): DiffSketch needs the KL-f8 VAE "
            "of SD 1.x, SD 2.x and SDXL. Connect the VAE of the same checkpoint"
        )
    taps = [
        Tap("decoder.mid.block_1", _conv_out_channels(dec.mid.block_1), 0),
        Tap("decoder.mid.block_2", _conv_out_channels(dec.mid.block_2), 0),
    ]
    n = len(dec.up)
    scale = 0
    for level in reversed(range(n)):  # ldm runs the up levels from the last index to 0
        up = dec.up[level]
        for b, blk in enumerate(up.block):
            taps.append(Tap(f"decoder.up.{level}.block.{b}", blk.conv2.out_channels, scale))
        if hasattr(up, "upsample"):
            scale += 1
    rgb = Tap("decoder.conv_out", dec.conv_out.out_channels, scale)
    return tuple(taps), rgb


def feature_spec_from_ldm(
    unet: nn.Module, vae: nn.Module, context_dim: int, family: str = SD1, pooled_dim: int = 0
) -> FeatureSpec:
    vae_taps, rgb = ldm_vae_taps(vae)
    return FeatureSpec(
        layout=LAYOUT_LDM,
        unet=ldm_unet_taps(unet),
        vae=vae_taps,
        rgb=rgb,
        context_dim=int(context_dim),
        latent_channels=int(getattr(unet, "in_channels", 4)),
        vae_scale_factor=1 << rgb.log2_scale,
        family=check_backbone_family(family),
        pooled_dim=int(pooled_dim),
    )


# ---------------------------------------------------------------------------------------------
# diffusers layout
# ---------------------------------------------------------------------------------------------
def diffusers_unet_taps(unet: nn.Module) -> tuple[Tap, ...]:
    """Taps of a diffusers ``UNet2DConditionModel``: ``up_blocks[b].resnets[j].conv2``."""
    blocks = getattr(unet, "up_blocks", None)
    if blocks is None or len(blocks) == 0:
        raise unsupported_model(
            f"{type(unet).__name__} has no 'up_blocks': it is not a diffusers UNet2DConditionModel"
        )
    ups_after = [0] * (len(blocks) + 1)
    for b in range(len(blocks) - 1, -1, -1):
        ups_after[b] = ups_after[b + 1] + int(getattr(blocks[b], "upsamplers", None) is not None)
    taps = []
    for b, block in enumerate(blocks):
        for j, res in enumerate(block.resnets):
            taps.append(Tap(f"up_blocks.{b}.resnets.{j}.conv2", res.conv2.out_channels, -ups_after[b]))
    return tuple(taps)


def diffusers_vae_taps(vae: nn.Module) -> tuple[tuple[Tap, ...], Tap]:
    dec = getattr(vae, "decoder", None)
    if dec is None or not hasattr(dec, "mid_block") or not hasattr(dec, "up_blocks"):
        raise UnsupportedModelError(f"{type(vae).__name__} is not a diffusers AutoencoderKL")
    taps = [
        Tap(f"decoder.mid_block.resnets.{j}", r.conv2.out_channels, 0)
        for j, r in enumerate(dec.mid_block.resnets)
    ]
    scale = 0
    for i, up in enumerate(dec.up_blocks):
        for j, r in enumerate(up.resnets):
            taps.append(Tap(f"decoder.up_blocks.{i}.resnets.{j}", r.conv2.out_channels, scale))
        if getattr(up, "upsamplers", None) is not None:
            scale += 1
    rgb = Tap("decoder.conv_out", dec.conv_out.out_channels, scale)
    return tuple(taps), rgb


def feature_spec_from_diffusers(
    unet: nn.Module, vae: nn.Module, family: str = SD1, pooled_dim: int = 0
) -> FeatureSpec:
    """The spec of a diffusers UNet and VAE; ``family`` and ``pooled_dim`` come from the caller,
    which knows the text encoders (:func:`diffsketch.backends.diffusers.diffusers_family`). A
    diffusion transformer goes to :func:`feature_spec_from_diffusers_dit` (its family comes from
    its class; one DiffSketch does not support is refused by name)."""
    if type(unet).__name__.endswith("Transformer2DModel"):
        spec = feature_spec_from_diffusers_dit(unet, vae)
        if family not in (SD1, spec.family):  # SD1: the default, i.e. not given
            check_family(family, spec.family, f"family={family!r}", "the transformer")
        return spec
    unet_taps = diffusers_unet_taps(unet)
    cfg = unet.config
    context_dim = cfg.get("cross_attention_dim")
    if isinstance(context_dim, (list, tuple)):
        context_dim = context_dim[0]
    vae_taps, rgb = diffusers_vae_taps(vae)
    return FeatureSpec(
        layout=LAYOUT_DIFFUSERS,
        unet=unet_taps,
        vae=vae_taps,
        rgb=rgb,
        context_dim=int(context_dim),
        latent_channels=int(cfg.get("in_channels", 4)),
        vae_scale_factor=1 << rgb.log2_scale,
        family=check_backbone_family(family),
        pooled_dim=int(pooled_dim),
    )


# ---------------------------------------------------------------------------------------------
# diffusion transformers (diffusers layout)
# ---------------------------------------------------------------------------------------------
def default_dit_blocks(n_layers: int) -> tuple[int, ...]:
    """The blocks of an ``n_layers``-deep DiT tapped by default: :data:`DIT_TAP_DEPTHS` of its
    depth (distinct, ascending). Z-Image (30): 7, 11, 15, 18, 22; SD 3.5 Medium (24): 6, 9, 12,
    15, 18; SD 3.5 Large (38): 9, 14, 19, 23, 28. Never the last block: SD 3.5's last one updates
    the image stream only for the output projection."""
    if n_layers < 2:
        raise UnsupportedModelError(f"a DiT with {n_layers} transformer block(s) has no block to tap")
    return tuple(sorted({min(n_layers - 2, int(f * n_layers)) for f in DIT_TAP_DEPTHS}))


def diffusers_dit_family(transformer: nn.Module | str) -> str:
    """The DiT family of a diffusers transformer, by its class or the class's name
    (:data:`DIFFUSERS_DIT_CLASSES`; a folder's ``_class_name``), or UnsupportedModelError naming
    what it is and what is supported."""
    name = transformer if isinstance(transformer, str) else type(transformer).__name__
    if name in DIFFUSERS_DIT_CLASSES:
        return DIFFUSERS_DIT_CLASSES[name]
    what = UNSUPPORTED_DIT_CLASSES.get(name, f"a {name}")
    raise unsupported_model(
        f"the diffusion model is {what}, a transformer family DiffSketch does not support yet"
    )


def _dit_blocks(transformer: nn.Module, family: str) -> tuple[tuple[tuple[str, int], ...], int, int]:
    """``(((module path, blocks), ...), hidden size, patch size)`` of a diffusers DiT of
    ``family``: its block stacks in execution order (one, or Flux.1's double then single ones)."""
    cfg = transformer.config
    if family == ZIMAGE:
        patches = tuple(cfg.get("all_patch_size") or (2,))
        return (("layers", len(transformer.layers)),), int(cfg["dim"]), int(patches[0])
    heads, head_dim = int(cfg["num_attention_heads"]), int(cfg["attention_head_dim"])
    if family == FLUX:
        double, single = FLUX_DIFFUSERS_STACKS
        stacks = (
            (double, len(transformer.transformer_blocks)),
            (single, len(transformer.single_transformer_blocks)),
        )
        # the packed latent's patch (config patch_size 1) times the pipeline's 2x2 packing
        return stacks, heads * head_dim, int(cfg["patch_size"]) * FLUX_PATCH
    return (
        (("transformer_blocks", len(transformer.transformer_blocks)),),
        heads * head_dim,
        int(cfg["patch_size"]),
    )


def dit_block_count(transformer: nn.Module) -> int:
    """How many transformer blocks a diffusers DiT of a supported family has (all stacks)."""
    return sum(n for _, n in _dit_blocks(transformer, diffusers_dit_family(transformer))[0])


def dit_block_taps(
    path: str, n_blocks: int, hidden: int, patch: int, blocks: tuple[int, ...] | None = None
) -> tuple[Tap, ...]:
    """Taps of the blocks ``blocks`` (default :func:`default_dit_blocks`) of a DiT whose
    ``n_blocks`` blocks are the modules ``{path}.{i}``: ``hidden`` channels at ``-log2(patch)``.
    Both layouts use it: diffusers' (:func:`diffusers_dit_taps`) and ComfyUI's module paths."""
    return dit_stack_taps(((path, n_blocks),), hidden, patch, blocks)


def dit_stack_taps(stacks, hidden: int, patch: int, blocks: tuple[int, ...] | None = None) -> tuple[Tap, ...]:
    """Taps of a DiT whose blocks run as consecutive stacks ``((path, n_blocks), ...)``, e.g.
    Flux.1's 19 double-stream blocks then its 38 single-stream ones: ``blocks`` (default
    :func:`default_dit_blocks` of the whole depth) index the concatenated depth, block ``b`` of
    the depth being ``{path}.{b - blocks before its stack}``; ``hidden`` channels at
    ``-log2(patch)``. A one-stack DiT is :func:`dit_block_taps`."""
    if patch < 1 or patch & (patch - 1):
        raise unsupported_model(f"the transformer's patch size is {patch}, not a power of two")
    modules = [f"{path}.{i}" for path, n in stacks for i in range(int(n))]
    n_blocks = len(modules)
    chosen = default_dit_blocks(n_blocks) if blocks is None else tuple(int(b) for b in blocks)
    bad = [b for b in chosen if not 0 <= b < n_blocks]
    if bad or not chosen or list(chosen) != sorted(set(chosen)):
        raise UnsupportedModelError(
            f"DiT blocks {list(chosen)} are not distinct ascending indices of the model's {n_blocks} blocks "
            f"(0..{n_blocks - 1})"
        )
    return tuple(Tap(modules[b], int(hidden), -(patch.bit_length() - 1)) for b in chosen)


def diffusers_dit_taps(transformer: nn.Module, blocks: tuple[int, ...] | None = None) -> tuple[Tap, ...]:
    """Taps of a diffusers DiT (:func:`dit_stack_taps` on its ``layers``, ``transformer_blocks``
    or Flux.1's :data:`FLUX_DIFFUSERS_STACKS`)."""
    stacks, hidden, patch = _dit_blocks(transformer, diffusers_dit_family(transformer))
    return dit_stack_taps(stacks, hidden, patch, blocks)


def dit_context_dims(transformer: nn.Module) -> tuple[int, int]:
    """``(context_dim, pooled_dim)`` a diffusers DiT takes: Z-Image its caption features (Qwen3-4B:
    2560) and no pooled one; SD 3.5 its joint attention width (4096) and pooled projection (2048);
    Flux.1 T5-XXL's 4096 and CLIP-L's pooled 768."""
    cfg = transformer.config
    if diffusers_dit_family(transformer) == ZIMAGE:
        return int(cfg["cap_feat_dim"]), 0
    return int(cfg["joint_attention_dim"]), int(cfg["pooled_projection_dim"])


def feature_spec_from_diffusers_dit(
    transformer: nn.Module, vae: nn.Module, blocks: tuple[int, ...] | None = None
) -> FeatureSpec:
    """The spec of a diffusers DiT (Z-Image or SD 3.5) and its 16-channel VAE: the blocks' taps
    (:func:`diffusers_dit_taps`), the VAE decoder's taps as SD's (:func:`diffusers_vae_taps`),
    the family from the transformer's class, the context widths from its config."""
    family = diffusers_dit_family(transformer)
    taps = diffusers_dit_taps(transformer, blocks)
    vae_taps, rgb = diffusers_vae_taps(vae)
    latent_channels = int(transformer.config.get("in_channels", DIT_LATENT_CHANNELS))
    if family == FLUX:  # its tokens pack 2x2 latent patches: 64 channels of a 16-channel latent
        packed = DIT_LATENT_CHANNELS * FLUX_PATCH * FLUX_PATCH
        if latent_channels != packed:
            raise unsupported_model(
                f"the Flux.1 transformer takes {latent_channels} input channels, not the {packed} of a plain "
                "latent: a Flux.1 Fill, Depth or Canny model, which takes an image besides the latent"
            )
        latent_channels = DIT_LATENT_CHANNELS
    vae_latents = int(getattr(vae, "config", {}).get("latent_channels", latent_channels))
    if vae_latents != latent_channels:
        raise unsupported_model(
            f"the VAE makes {vae_latents}-channel latents but the {family_name(family)} transformer takes "
            f"{latent_channels}: connect the VAE of the same model"
        )
    context_dim, pooled_dim = dit_context_dims(transformer)
    return FeatureSpec(
        layout=LAYOUT_DIFFUSERS,
        unet=taps,
        vae=vae_taps,
        rgb=rgb,
        context_dim=context_dim,
        latent_channels=latent_channels,
        vae_scale_factor=1 << rgb.log2_scale,
        family=family,
        pooled_dim=pooled_dim,
    )
