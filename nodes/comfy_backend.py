"""ComfyUI backend: the library's sampling protocol on ComfyUI's loaded MODEL / CLIP / VAE
(SD 1.x, SD 2.x and SDXL-family checkpoints; Z-Image, SD 3.5 and Flux.1, experimental).

How: clone the MODEL, add a wrapper that registers the capture hooks for one model call and
removes them in ``finally``, sample, and run the VAE decoder ourselves (not ``VAE.decode``, which
may split or tile) so its blocks can be hooked.

- UNets: a DIFFUSION_MODEL wrapper; ComfyUI's "ddim" sampler (Euler on the ddim_uniform sigma
  grid == DDIM eta=0) with the cfg=1 shortcut disabled so the unconditional branch is always
  evaluated.
- Flow-matching DiTs (Z-Image's NextDiT, SD 3.5's MM-DiT, Flux.1): an APPLY_MODEL wrapper, since
  ComfyUI's MM-DiT does not run DIFFUSION_MODEL wrappers; the hooks keep each tapped block's image
  tokens as a map (caption tokens come first in NextDiT's sequence, padded to a multiple of 32;
  MM-DiT keeps the image stream apart; Flux's double blocks return ``(img, txt)``, its single
  blocks the joint ``[txt, img]`` sequence). ComfyUI's "euler" sampler on the model's own flow
  sigmas (shift included, so a ModelSamplingAuraFlow/SD3/Flux node's shift is honoured), with the
  cfg=1 shortcut left on: at cfg 1 one branch (cond) is evaluated and captured.
"""

from __future__ import annotations

import hashlib
import logging
import math

import comfy.model_management
import comfy.model_sampling
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.text_encoders.flux
import comfy.text_encoders.sd3_clip
import comfy.text_encoders.z_image
import comfy.utils
import torch

from diffsketch.backends.base import SamplingBackend, diffusion_model_fingerprint, has_zero_terminal_snr
from diffsketch.backends.conditioning import Conditioning
from diffsketch.backends.flow import euler_invert
from diffsketch.backends.inversion import ddim_invert, x0_to_model_output
from diffsketch.capture.hooks import (
    COND,
    UNCOND,
    UNetRecorder,
    image_token_map,
    record_vae_decoder,
    reject_compiled,
)
from diffsketch.capture.identity import FLOW_PREDICTION
from diffsketch.capture.spec import (
    DIT_LATENT_CHANNELS,
    FLUX,
    FLUX_COMFY_STACKS,
    GUIDANCE_DISTILLED_FAMILIES,
    LAYOUT_LDM,
    SD1,
    SD2,
    SD35,
    SDXL,
    SDXL_TIME_EMBED_DIM,
    SDXL_TIME_IDS,
    ZIMAGE,
    FeatureSpec,
    check_embedded_guidance,
    check_family,
    dit_stack_taps,
    family_from_ldm_config,
    family_name,
    feature_spec_from_ldm,
    is_flow_family,
    ldm_vae_taps,
    unsupported_model,
)
from diffsketch.capture.timesteps import NUM_TRAIN_TIMESTEPS, flow_index, flow_table_index
from diffsketch.errors import CaptureError, InvalidInputError, UnsupportedModelError

WRAPPER_KEY = "diffsketch_capture"
# ComfyUI's cond_or_uncond uses 0 for the positive and 1 for the negative prompt.
_COMFY_TO_BRANCH = {0: COND, 1: UNCOND}


def describe_model(model) -> str:
    cfg = getattr(getattr(model, "model", None), "model_config", None)
    return type(cfg).__name__ if cfg is not None else type(getattr(model, "model", model)).__name__


#: ComfyUI's model configs of Flux.1 dev (guidance-embedded) and schnell; not their subclasses
#: (Flux Fill's FluxInpaint takes 96 input channels, Flux2 is another model).
FLUX_CONFIGS = (comfy.supported_models.Flux, comfy.supported_models.FluxSchnell)


def dit_family(model) -> str | None:
    """The DiT family of a MODEL by the model config ComfyUI detected from its weights
    (``supported_models.ZImage``: the Lumina2/NextDiT layout at dim 3840; ``supported_models.SD3``:
    MM-DiT with 16 input channels, SD 3 and 3.5; :data:`FLUX_CONFIGS`: Flux.1 dev and schnell),
    or None."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    if isinstance(config, comfy.supported_models.ZImage):
        return ZIMAGE
    if isinstance(config, comfy.supported_models.SD3):
        return SD35
    if type(config) in FLUX_CONFIGS:
        return FLUX
    return None


def model_family(model) -> tuple[str, str]:
    """``(family, prediction_type)`` of a connected MODEL, or a clear error naming what it is.

    A UNet's family comes from the UNet config ComfyUI detected (:func:`family_from_ldm_config`),
    a DiT's from its model config (:func:`dit_family`); the prediction type from the MODEL's
    sampling object, so a ModelSamplingDiscrete node's v-prediction / zero-terminal-SNR setting is
    honoured. UNets on continuous (EDM), flow and distilled (LCM) schedules are refused:
    DiffSketch samples them on the 1000-step DDIM grid. The DiTs must sample on ComfyUI's discrete
    flow schedule (any shift): :data:`FLOW_PREDICTION`."""
    base = getattr(model, "model", None)
    unet = getattr(base, "diffusion_model", None)
    kind = describe_model(model)
    family = dit_family(model)
    in_channels = int(base.model_config.unet_config.get("in_channels", 0)) if family == FLUX else 0
    if family == FLUX and in_channels != DIT_LATENT_CHANNELS:
        raise unsupported_model(
            f"the connected MODEL is a Flux.1 variant with {in_channels} input channels (Flux.1 Depth or Canny: "
            "a control picture's latent goes in beside the noise), which DiffSketch does not support yet; Flux.1 "
            "dev and schnell are taken"
        )
    if family is not None:
        return family, _flow_prediction(model, kind, family)
    if unet is None or not hasattr(unet, "output_blocks"):
        if kind == "Lumina2":
            kind = "Lumina2 (Lumina Image 2.0 or a model of its layout; Z-Image is that layout at dim 3840)"
        elif kind == "FluxInpaint":
            kind = "FluxInpaint (Flux.1 Fill, whose input carries the masked picture)"
        raise unsupported_model(
            f"the connected MODEL is {kind}, a kind of diffusion model DiffSketch does not support yet: it is "
            "neither a Stable Diffusion UNet nor Z-Image, SD 3.5 or Flux.1 dev/schnell (Flux.2, Flux.1 Fill, "
            "Qwen-Image and other diffusion transformers are not taken)"
        )
    unet_config = getattr(base.model_config, "unet_config", {}) or {}
    family = family_from_ldm_config(unet_config, f"the connected MODEL ({kind})")
    latent_channels = getattr(getattr(base, "latent_format", None), "latent_channels", 4)
    if latent_channels != 4:
        raise unsupported_model(f"the connected MODEL ({kind}) works on {latent_channels}-channel latents")
    sampling = model.get_model_object("model_sampling")
    ms = comfy.model_sampling
    if (
        not isinstance(sampling, ms.ModelSamplingDiscrete)
        or isinstance(sampling, (ms.EDM, ms.CONST, ms.X0))
        or not isinstance(sampling, ms.EPS)
        or len(sampling.sigmas) != NUM_TRAIN_TIMESTEPS
    ):
        raise unsupported_model(
            f"the connected MODEL ({kind}) samples with {type(sampling).__name__}, not the discrete 1000-step epsilon or "
            "v-prediction schedule DiffSketch's DDIM sampler and timesteps are defined on (EDM, flow and LCM "
            "schedules are not). Connect the MODEL without the model-sampling patch"
        )
    return family, "v_prediction" if isinstance(sampling, ms.V_PREDICTION) else "epsilon"


def _flow_prediction(model, kind: str, family: str) -> str:
    """:data:`FLOW_PREDICTION` when a DiT MODEL samples on ComfyUI's 1000-step discrete flow
    schedule (ModelSamplingDiscreteFlow with velocity prediction, any shift: the
    ModelSamplingAuraFlow / ModelSamplingSD3 nodes' too) or, Flux.1 dev, on ModelSamplingFlux (its
    curve is a flow shift, :func:`flow_shift`), else a clear error."""
    sampling = model.get_model_object("model_sampling")
    ms = comfy.model_sampling
    discrete = (
        isinstance(sampling, ms.ModelSamplingDiscreteFlow) and len(sampling.sigmas) == NUM_TRAIN_TIMESTEPS
    )
    flux = isinstance(sampling, ms.ModelSamplingFlux) and len(sampling.sigmas) % NUM_TRAIN_TIMESTEPS == 0
    if not (discrete or flux) or not isinstance(sampling, ms.CONST):
        raise unsupported_model(
            f"the connected MODEL ({kind}, {family_name(family)}) samples with {type(sampling).__name__}, not the "
            "discrete 1000-step flow-matching schedule DiffSketch samples this model on. Connect the MODEL without "
            "the model-sampling patch (a ModelSamplingAuraFlow, ModelSamplingSD3 or ModelSamplingFlux shift is fine)"
        )
    return FLOW_PREDICTION


def flow_shift(sampling) -> float:
    """The shift ``s`` of a flow MODEL's sigmas ``s*t / (1 + (s-1)*t)`` at ``t = (k+1)/1000``
    (:func:`~diffsketch.capture.timesteps.flow_sigma`): ModelSamplingDiscreteFlow's ``shift``;
    ModelSamplingFlux's (Flux.1 dev) is ``exp(mu)`` of its ``shift`` mu, since its
    ``flux_time_shift(mu, 1, t) = e^mu / (e^mu + 1/t - 1)`` is the same curve, and index k of
    DiffSketch's 1000-step table is its own 10000-step table's entry 10k+9."""
    if isinstance(sampling, comfy.model_sampling.ModelSamplingFlux):
        return math.exp(float(sampling.shift))
    return float(sampling.shift)


def sampling_has_zero_terminal_snr(model) -> bool:
    """Whether the MODEL's schedule is zero-terminal-SNR (a ModelSamplingDiscrete node with zsnr,
    or a checkpoint ComfyUI reads as ztsnr): read from its last sigma, so any patch that rescales
    the schedule counts, whatever it calls itself."""
    sigma_max = float(model.get_model_object("model_sampling").sigma_max)
    return has_zero_terminal_snr(1.0 / (1.0 + sigma_max * sigma_max))


def clip_family(clip) -> str:
    """The backbone family a connected CLIP encodes for, or a clear error naming what it is."""
    if clip is None:
        raise UnsupportedModelError(
            "no CLIP connected: the checkpoint has no text encoder; connect Load Checkpoint's CLIP."
        )
    encoder = getattr(clip, "cond_stage_model", None)
    kind = type(encoder).__name__
    if isinstance(encoder, comfy.sdxl_clip.SDXLRefinerClipModel):
        raise unsupported_model(
            "the connected CLIP is an SDXL refiner's (OpenCLIP bigG alone, no CLIP-L), and the refiner only learned "
            "the last denoising steps. Load an SDXL base model or a fine-tune of it"
        )
    if isinstance(encoder, comfy.sdxl_clip.SDXLClipModel):
        return SDXL
    # before SD1ClipModel: ComfyUI's Qwen3-4B encoder is one (named "qwen3_4b")
    if isinstance(encoder, comfy.text_encoders.z_image.ZImageTEModel):
        return ZIMAGE
    if isinstance(encoder, comfy.text_encoders.sd3_clip.SD3ClipModel):
        return SD35
    if isinstance(encoder, comfy.text_encoders.flux.FluxClipModel):
        return FLUX
    if isinstance(encoder, comfy.sd1_clip.SD1ClipModel):
        if getattr(encoder, "clip", None) == "clip_l":
            return SD1
        if getattr(encoder, "clip", None) == "clip_h" and hasattr(encoder, "clip_h"):
            return SD2
    raise unsupported_model(
        f"the connected CLIP is {kind}, the text encoder of another kind of model (SD 1.x uses CLIP-L, SD 2.x "
        "OpenCLIP-H, SDXL CLIP-L with OpenCLIP bigG, Z-Image Qwen3-4B (Load CLIP, type lumina2), SD 3.5 CLIP-L "
        "with CLIP-G and T5-XXL, Flux.1 CLIP-L and T5-XXL (DualCLIPLoader, type flux))"
    )


def check_model(model, vae) -> tuple[str, int, int, str]:
    """Raise a clear error unless MODEL and VAE are a supported model's; returns
    ``(family, context_dim, pooled_dim, prediction_type)``."""
    family, prediction = model_family(model)
    if vae is None or not hasattr(getattr(vae, "first_stage_model", None), "decoder"):
        raise UnsupportedModelError(
            "the connected VAE has no decoder; connect the VAE output of Load Checkpoint (or Load VAE)."
        )
    unet_config = model.model.model_config.unet_config
    if is_flow_family(family):
        context_dim, pooled_dim = dit_context_dims(model)
        latent_channels = getattr(vae, "latent_channels", None)
        if latent_channels != DIT_LATENT_CHANNELS:
            raise UnsupportedModelError(
                f"the connected VAE makes {latent_channels}-channel latents but the {family_name(family)} MODEL takes "
                f"{DIT_LATENT_CHANNELS}: connect its 16-channel VAE (Z-Image and Flux.1: Flux's ae.safetensors through "
                "Load VAE; SD 3.5: its checkpoint's)."
            )
    else:
        context_dim = int(unet_config["context_dim"])
        pooled_dim = int(unet_config.get("adm_in_channels") or 0) - SDXL_TIME_IDS * SDXL_TIME_EMBED_DIM
        pooled_dim = pooled_dim if family == SDXL else 0
    if (
        comfy.patcher_extension.WrappersMP.APPLY_MODEL in model.wrappers
        and any("compile" in k for k in model.wrappers[comfy.patcher_extension.WrappersMP.APPLY_MODEL])
        or any("torch_compile" in str(k) for k in model.model_options)
    ):
        raise UnsupportedModelError(
            "the MODEL goes through torch.compile (e.g. the TorchCompileModel node), so DiffSketch's feature "
            "hooks would not fire. Connect the MODEL before the compile node."
        )
    reject_compiled(
        model.model.diffusion_model, "diffusion transformer" if is_flow_family(family) else "UNet"
    )
    return family, context_dim, pooled_dim, prediction


def dit_context_dims(model) -> tuple[int, int]:
    """``(context_dim, pooled_dim)`` a ComfyUI DiT takes, from the config ComfyUI detected:
    Z-Image its caption features (Qwen3-4B: 2560), no pooled one; SD 3.5 its context embedder's
    input (4096) and pooled input (2048); Flux.1 its text input (T5-XXL: 4096) and vector input
    (CLIP-L's pooled: 768)."""
    unet_config = model.model.model_config.unet_config
    family = dit_family(model)
    if family == ZIMAGE:
        return int(unet_config["cap_feat_dim"]), 0
    if family == FLUX:
        return int(unet_config["context_in_dim"]), int(unet_config.get("vec_in_dim") or 0)
    context = unet_config["context_embedder_config"]["params"]["in_features"]
    return int(context), int(unet_config.get("adm_in_channels") or 0)


def _dit_blocks(diffusion_model, family: str) -> tuple[tuple[tuple[str, int], ...], int, int]:
    """``(((module path, blocks), ...), hidden size, patch size)`` of a ComfyUI DiT, its block
    stacks in execution order: NextDiT's ``layers``, MM-DiT's ``joint_blocks``, Flux's
    :data:`~diffsketch.capture.spec.FLUX_COMFY_STACKS` (double-stream, then single-stream)."""
    patch = int(diffusion_model.patch_size)
    if family == ZIMAGE:
        return (("layers", len(diffusion_model.layers)),), int(diffusion_model.dim), patch
    if family == FLUX:
        double, single = FLUX_COMFY_STACKS
        stacks = ((double, len(diffusion_model.double_blocks)), (single, len(diffusion_model.single_blocks)))
        return stacks, int(diffusion_model.hidden_size), patch
    hidden = int(diffusion_model.x_embedder.proj.out_channels)
    return (("joint_blocks", len(diffusion_model.joint_blocks)),), hidden, patch


def comfy_dit_spec(diffusion_model, vae_model, family: str, context_dim: int, pooled_dim: int) -> FeatureSpec:
    """The spec of a ComfyUI DiT (ComfyUI's module names): its blocks at
    :func:`~diffsketch.capture.spec.default_dit_blocks` of its whole depth, the hidden size at
    ``-log2(patch)``, and the 16-channel VAE's decoder taps read as SD's
    (:func:`~diffsketch.capture.spec.ldm_vae_taps`)."""
    stacks, hidden, patch = _dit_blocks(diffusion_model, family)
    vae_taps, rgb = ldm_vae_taps(vae_model)
    return FeatureSpec(
        layout=LAYOUT_LDM,
        unet=dit_stack_taps(stacks, hidden, patch),
        vae=vae_taps,
        rgb=rgb,
        context_dim=int(context_dim),
        latent_channels=DIT_LATENT_CHANNELS,
        vae_scale_factor=1 << rgb.log2_scale,
        family=family,
        pooled_dim=int(pooled_dim),
    )


def encode_text(clip, text: str, with_pooled: bool) -> Conditioning:
    """A prompt through ComfyUI's CLIP (its weights syntax, its CLIP-skip setting), as the
    CLIPTextEncode node encodes it; ``with_pooled`` keeps the pooled embedding (SDXL, SD 3.5)."""
    tokens = clip.tokenize(text)
    with torch.no_grad():
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return Conditioning(cond.float().cpu(), pooled.float().cpu() if with_pooled else None)


class ComfyBackend(SamplingBackend):
    def __init__(self, model, clip, vae, show_progress: bool = True, guidance: float | None = None):
        """``show_progress=False`` leaves the node's progress bar to the caller (training loops).
        ``guidance``: Flux.1 dev's embedded guidance (None: its default); ignored by models
        without that input, as a node's guidance widget always holds a value."""
        family, context_dim, pooled_dim, prediction = check_model(model, vae)
        check_family(
            clip_family(clip),
            family,
            "the connected CLIP",
            "the connected MODEL",
            "Connect the CLIP and the MODEL of the same checkpoint",
        )
        self.show_progress = show_progress
        self.model, self.clip, self.vae = model, clip, vae
        self.prediction_type = prediction
        self.flow = is_flow_family(family)
        if self.flow:
            self.zero_terminal_snr = False  # a flow schedule ends at pure noise by construction
            self.guidance_distilled = family in GUIDANCE_DISTILLED_FAMILIES
            # the guidance Flux.1 dev embeds; schnell has no guidance input
            dev = family == FLUX and bool(model.model.model_config.unet_config.get("guidance_embed"))
            self.guidance = check_embedded_guidance(guidance if dev else None, family, dev)
            self.spec = comfy_dit_spec(
                model.model.diffusion_model, vae.first_stage_model, family, context_dim, pooled_dim
            )
        else:
            self.zero_terminal_snr = sampling_has_zero_terminal_snr(model)
            self.guidance = None
            self.spec = feature_spec_from_ldm(
                model.model.diffusion_model, vae.first_stage_model, context_dim, family, pooled_dim
            )
        self.latent_scaling_factor = float(model.model.latent_format.scale_factor)
        self._uncond = None
        self._model_hash = None

    def model_hash(self) -> str:
        """The diffusion model's :func:`diffusion_model_fingerprint` (a DiT's reads ComfyUI's fused
        attention as diffusers' split one): equal to the diffusers backend's for the same weights,
        plus a digest of the MODEL's weight patches (LoRAs) when it has any."""
        if self._model_hash is None:
            value = diffusion_model_fingerprint(self.model.model.diffusion_model.parameters(), self.spec)
            patches = getattr(self.model, "patches", None) or {}
            if patches:
                # Which keys are patched and how strongly; the patch tensors themselves are not read.
                described = sorted((k, [(float(p[0]), float(p[2])) for p in v]) for k, v in patches.items())
                value += "+patches:" + hashlib.sha256(repr(described).encode()).hexdigest()[:8]
            self._model_hash = value
        return self._model_hash

    def encode_prompt(self, text: str) -> Conditioning:
        if text == "" and self._uncond is not None:
            return self._uncond
        cond = encode_text(self.clip, text, with_pooled=bool(self.spec.pooled_dim))
        if text == "":
            self._uncond = cond
        return cond

    def _step_reporter(self, n: int, progress):
        """``report(done, total)`` for a loop of ``n`` model steps: the node's progress bar (unless
        the caller shows its own), Cancel (ComfyUI's interrupt raises here), then ``progress``."""
        pbar = comfy.utils.ProgressBar(n) if self.show_progress else None

        def report(done: int, total: int) -> None:
            if pbar is not None:
                pbar.update_absolute(done, n)
            comfy.model_management.throw_exception_if_processing_interrupted()
            if progress is not None:
                progress(done, total)

        return report

    def _denoise(self, noise, cond, uncond, cfg, schedule, recorder: UNetRecorder | None, progress):
        patched = self.model.clone()
        ms = patched.get_model_object("model_sampling")
        entries = schedule
        if self.flow:  # Flux.1 dev's table has 10000 entries, the indices count 1000
            entries = [flow_table_index(k, len(ms.sigmas)) for k in schedule]
        sigmas = torch.cat([ms.sigmas[torch.tensor(entries)].float().cpu(), torch.zeros(1)])
        negative = uncond
        if self.flow:
            # Euler on the flow sigmas; the cfg1 shortcut stays on, so cfg 1 evaluates (and
            # captures) the cond branch alone, as the guidance-distilled Z-Image Turbo samples,
            # unless the recorder wants both (a picture's replay at cfg 1 for a cfg > 1 training).
            sampler = "euler"
            branches = recorder.branches if recorder is not None else self.captured_branches(cfg)
            if UNCOND in branches:
                if uncond is None:
                    raise InvalidInputError(f"cfg {cfg:g} needs a negative conditioning")
                patched.model_options["disable_cfg1_optimization"] = True
            elif uncond is None:
                negative = cond  # never evaluated: ComfyUI skips the negative at cfg 1
            if recorder is not None:
                patched.add_wrapper_with_key(
                    comfy.patcher_extension.WrappersMP.APPLY_MODEL,
                    WRAPPER_KEY,
                    _dit_capture_wrapper(recorder, self.spec.family, flow_shift(ms)),
                )
            # ComfyUI starts from sigma_0 * noise + (1 - sigma_0) * the latent in model space; a raw
            # latent equal to the format's shift is 0 there, so sampling starts at sigma_0 * noise.
            shift = float(getattr(self.model.model.latent_format, "shift_factor", None) or 0.0)
            latent = torch.full_like(noise, shift)
        else:
            sampler = "ddim"
            # keep the uncond branch at cfg == 1 so it can be captured (comfy/samplers.py cfg1 shortcut)
            patched.model_options["disable_cfg1_optimization"] = True
            if recorder is not None:
                patched.add_wrapper_with_key(
                    comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                    WRAPPER_KEY,
                    _capture_wrapper(recorder),
                )
            # ComfyUI scales noise by sigma_0 unless sigma_0 == sigma_max; ldm starts DDIM from x_T = noise,
            # i.e. noise * sqrt(1 + sigma_0^2) in k-diffusion space. Pre-scale so both agree exactly.
            s0 = float(sigmas[0])
            if not math.isclose(s0, float(ms.sigma_max), rel_tol=1e-5):
                noise = noise * (math.sqrt(1.0 + s0 * s0) / s0)
            latent = torch.zeros_like(noise)
        report = self._step_reporter(len(schedule), progress)

        def on_step(step, x0, x, total):
            report(step + 1, total)

        with torch.no_grad():  # also when a training loop calls this with grad enabled
            samples = comfy.sample.sample_custom(
                patched,
                noise,
                cfg,
                comfy.samplers.sampler_object(sampler),
                sigmas,
                [_comfy_conditioning(cond, self.guidance)],
                [_comfy_conditioning(negative, self.guidance)],
                latent,
                callback=on_step,
                disable_pbar=True,
                seed=0,
            )
        return samples.float().cpu()

    def _encode(self, image):
        with torch.no_grad():
            return self.vae.encode(image.movedim(1, -1)).float().cpu()

    def _invert(self, latent, cond, schedule, progress):
        """:func:`ddim_invert` inside ComfyUI's sampler machinery (a custom KSAMPLER through
        ``sample_custom``), so the MODEL's patches, memory management, conditioning (SDXL's size
        numbers) and Cancel apply as when sampling. The UNet is guided by ``cond`` alone (cfg 1, the
        unconditional branch skipped); ComfyUI's denoised prediction is turned back into the model
        output (:func:`x0_to_model_output`) so the steps are the shared ones."""
        if self.flow:
            return self._invert_flow(latent, cond, schedule, progress)
        patched = self.model.clone()
        ms = patched.get_model_object("model_sampling")
        alphas_cumprod = 1.0 / (1.0 + ms.sigmas.double().cpu() ** 2)  # ComfyUI keeps sigmas, not alphas
        ascending = sorted(schedule)
        sigmas = ms.sigmas[torch.tensor(ascending)].float().cpu()
        on_step = self._step_reporter(len(ascending), progress)
        inverted = {}

        def invert(model, x, sigmas, extra_args=None, callback=None, disable=None):
            # x: the clean model latent (sigma 0), where DDPM and k-diffusion spaces coincide
            ones = x.new_ones([x.shape[0]])

            def predict(x_t, t):
                sigma, alpha = float(ms.sigmas[t]), float(alphas_cumprod[t])
                denoised = model(x_t / math.sqrt(alpha), sigma * ones, **(extra_args or {}))
                return x0_to_model_output(denoised.float(), x_t, alpha, self.prediction_type)

            inverted["x"] = ddim_invert(
                predict, x.float(), ascending, alphas_cumprod, self.prediction_type, on_step
            )
            return inverted["x"]

        _run_inversion(patched, invert, sigmas, cond, latent / self.latent_scaling_factor)
        return inverted["x"].float().cpu()

    def _invert_flow(self, latent, cond, schedule, progress):
        """:func:`~diffsketch.backends.flow.euler_invert` of the clean model latent inside ComfyUI's
        sampler machinery (a custom KSAMPLER), guided by ``cond`` alone at cfg 1 (the cfg1 shortcut
        skips the negative). The velocity is the diffusion model's own output, read by a forward
        hook for each call: ComfyUI hands the sampler x0 = x - sigma * v, which holds no velocity
        at the clean end (sigma 0), where the inversion starts."""
        patched = self.model.clone()
        ms = patched.get_model_object("model_sampling")
        diffusion_model = patched.model.diffusion_model
        on_step = self._step_reporter(len(schedule), progress)
        inverted = {}

        def invert(model, x, sigmas, extra_args=None, callback=None, disable=None):
            ones = x.new_ones([x.shape[0]])

            def predict(x_sigma, sigma, index):
                out = {}
                handle = diffusion_model.register_forward_hook(lambda m, a, o: out.__setitem__("v", o))
                try:
                    model(x_sigma, sigma * ones, **(extra_args or {}))
                finally:
                    handle.remove()
                return out["v"].float()

            inverted["x"] = euler_invert(predict, x.float(), schedule, flow_shift(ms), on_step)
            return inverted["x"]

        # sigma 0 first and last: ComfyUI's flow noise scaling then passes the latent through
        # unchanged, and its inverse scaling of the result divides by 1 (the result is ours anyway)
        _run_inversion(
            patched,
            invert,
            torch.zeros(2),
            cond,
            self.model.model.latent_format.process_out(latent),
            self.guidance,
        )
        return inverted["x"].float().cpu()

    def model_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """The latent the MODEL works on, as ComfyUI makes it (its latent format's
        ``process_in``: SD's scaling, the 16-channel VAEs' shift and scaling)."""
        return self.model.model.latent_format.process_in(latent)

    def _decode(self, latent, capture, store_dtype, store_device):
        """Decode with ComfyUI's memory estimate for the VAE (``VAE.memory_used_decode``), so model
        management frees that much before the decode.

        Without capture, ComfyUI's ``VAE.decode`` does it all, falling back to a tiled decode when it
        runs out of memory; its output is clamped, so ``rgb`` is too. With capture the hooks need one
        whole decoder pass (tiles would record tile-sized features with seams), so there is no tiled
        fallback: out of memory, every model is unloaded and the decode retried once; a second
        failure is a :class:`CaptureError` naming the size and what to lower."""
        if not capture:
            image = self.vae.decode(latent).movedim(-1, 1).float().cpu()
            return image, image * 2 - 1, []
        try:
            return self._decode_with_features(latent, store_dtype, store_device)
        except comfy.model_management.OOM_EXCEPTION:
            pass  # retried below, once the handler has let go of the failed pass's tensors
        logging.warning(
            "[DiffSketch] out of memory decoding with the VAE hooks: unloading all models, retrying"
        )
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache(True)
        try:
            return self._decode_with_features(latent, store_dtype, store_device)
        except comfy.model_management.OOM_EXCEPTION:
            pass
        h, w = (side * self.spec.vae_scale_factor for side in latent.shape[-2:])
        raise CaptureError(
            f"out of GPU memory decoding a {w}x{h} image (batch of {latent.shape[0]}) with the VAE feature hooks, "
            "even with every other model unloaded. Lower width/height (or the batch), close other GPU programs, or "
            "start ComfyUI with --lowvram; training's low_memory option does not shrink this decode."
        )

    def _decode_with_features(self, latent, store_dtype, store_device):
        memory = self.vae.memory_used_decode(latent.shape, self.vae.vae_dtype)
        comfy.model_management.load_models_gpu(
            [self.vae.patcher], memory_required=memory, force_full_load=self.vae.disable_offload
        )
        z = latent.to(self.vae.vae_dtype).to(self.vae.device)
        with torch.no_grad():
            with record_vae_decoder(self.vae.first_stage_model, self.spec, store_dtype, store_device) as rec:
                self.vae.first_stage_model.decode(z)
        rgb = rec["rgb"].float().cpu()
        return ((rgb + 1) / 2).clamp(0, 1), rgb, rec["features"]


def _run_inversion(patched, invert, sigmas, cond: Conditioning, latent_image, guidance=None) -> None:
    """Run the inversion ``invert`` (a KSAMPLER function that keeps its own result) through
    ComfyUI's ``sample_custom`` on ``patched``: zero noise, ``cond`` as both prompts at cfg 1 (the
    cfg1 shortcut evaluates it once; Flux.1 dev given ``guidance``), so the MODEL's patches,
    memory management and Cancel apply."""
    with torch.no_grad():
        comfy.sample.sample_custom(
            patched,
            torch.zeros_like(latent_image),
            1.0,
            comfy.samplers.KSAMPLER(invert),
            sigmas,
            [_comfy_conditioning(cond, guidance)],
            [_comfy_conditioning(cond, guidance)],
            latent_image,
            disable_pbar=True,
            seed=0,
        )


def _comfy_conditioning(cond: Conditioning, guidance: float | None = None) -> list:
    """One CONDITIONING entry. SDXL's size conditioning is left to ComfyUI, which takes the image
    size from the latent for width/height and target size, with no crop (SDXL.encode_adm).
    ``guidance``: Flux.1 dev's embedded guidance (as the FluxGuidance node sets it)."""
    extra = {} if cond.pooled is None else {"pooled_output": cond.pooled}
    if guidance is not None:
        extra["guidance"] = float(guidance)
    return [cond.context, extra]


def _capture_wrapper(recorder: UNetRecorder):
    def wrapper(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        t = int(round(float(timesteps[0])))
        branches = [_COMFY_TO_BRANCH.get(int(c), -1) for c in transformer_options["cond_or_uncond"]]
        with recorder.tap(executor.class_obj, t, branches):
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

    return wrapper


def _dit_capture_wrapper(recorder: UNetRecorder, family: str, shift: float):
    """An APPLY_MODEL wrapper hooking the DiT blocks for one model call: ``t`` is the sigma, mapped
    back to its index in the MODEL's flow table of ``shift`` (:func:`flow_index`: the recorder's
    timestep); each hook keeps the image tokens as a ``[B, hidden, h, w]`` map
    (:func:`image_token_map`)."""

    def wrapper(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        timestep = flow_index(float(t.reshape(-1)[0]), shift)
        branches = [_COMFY_TO_BRANCH.get(int(c), -1) for c in transformer_options["cond_or_uncond"]]
        diffusion_model = executor.class_obj.diffusion_model
        patch = int(diffusion_model.patch_size)
        grid = tuple(-(-side // patch) for side in x.shape[-2:])
        first_token = 0
        if family == ZIMAGE:
            # NextDiT puts the caption first, padded with its pad token to a multiple of 32
            captions = int(c_crossattn.shape[1])
            multiple = getattr(diffusion_model, "pad_tokens_multiple", None)
            first_token = captions + (-captions % multiple if multiple else 0)
        elif family == FLUX:
            # Flux's single blocks run on [txt, img] (then any reference latents' tokens)
            first_token = int(c_crossattn.shape[1])

        def to_map(output):
            if family == FLUX and isinstance(output, tuple):
                return image_token_map(output[0], grid)  # a double block's (img, txt) pair
            return image_token_map(output, grid, first_token)

        with recorder.tap(diffusion_model, timestep, branches, to_map):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    return wrapper


def latent_to_comfy(latent: torch.Tensor) -> dict:
    return {"samples": latent.float().cpu()}


def image_to_comfy(image: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> ComfyUI IMAGE [B,H,W,3]."""
    return image.float().cpu().movedim(1, -1).contiguous()


def text_encoder_fingerprint(clip) -> str:
    """A short hash of the CLIP text encoder's weights (token embedding and final norm), so files
    fitted with one checkpoint's CLIP can tell when they are used with another."""
    sd = clip.cond_stage_model.state_dict()
    h = hashlib.sha256()
    for k in sorted(sd):
        if k.endswith(("token_embedding.weight", "final_layer_norm.weight")):
            h.update(k.encode())
            # ComfyUI keeps CLIP on the GPU once it has encoded a prompt: copy the head to the host.
            head = sd[k].detach().reshape(-1)[:4096].to(device="cpu", dtype=torch.float32)
            h.update(head.numpy().tobytes())
    return h.hexdigest()[:16]
