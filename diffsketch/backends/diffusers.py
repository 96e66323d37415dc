"""Diffusers backend: UNet2DConditionModel + AutoencoderKL + CLIP text encoder(s), DDIM eta=0 with CFG.

The DDIM loop is written out here (not DDIMScheduler) because DiffSketch needs the exact ldm
conventions that ComfyUI also follows: the uniform grid ``t = 1 + k*(1000//steps)``, x_T = noise,
CFG with the batch ordered [uncond, cond], and the final step returning the predicted x0.

Text conditioning is built as ComfyUI builds it, so both backends agree (weights, 75-token
windows and CLIP skip: :mod:`~diffsketch.backends.prompt`):

- SD 1.x: CLIP-L's last hidden state (end-token padding).
- SD 2.x: OpenCLIP-H's penultimate layer (of 24) with the final layer norm, zero padding.
  Diffusers folders store this text encoder with its last layer removed (23 of 24 layers), so
  their depth counts one layer more than they store; single files have 24 or 23 layers.
- SDXL: CLIP-L's and OpenCLIP bigG's penultimate hidden states (no final norm) side by side
  (768 + 1280 = 2048), bigG's projected pooled embedding, and the size conditioning
  ``(height, width, 0, 0, height, width)`` of the image being sampled, as ComfyUI's SDXL
  ``encode_adm`` and diffusers' ``_get_add_time_ids`` both make it by default.

The negative prompt is always ``""`` encoded by the text encoders. That is ComfyUI's behaviour;
diffusers' SDXL pipeline instead uses zeros when no negative prompt is given
(``force_zeros_for_empty_prompt``), and matches this backend when it is given ``negative_prompt=""``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..capture.hooks import COND, UNCOND, UNetRecorder, reject_compiled
from ..capture.identity import PREDICTION_TYPES
from ..capture.spec import (
    SD1,
    SD2,
    SDXL,
    SDXL_TIME_IDS,
    check_embedded_guidance,
    family_name,
    feature_spec_from_diffusers,
    unsupported_model,
)
from ..errors import InvalidInputError, WeightsNotFoundError
from .base import (
    SamplingBackend,
    has_zero_terminal_snr,
    rescale_zero_terminal_snr,
    scaled_linear_alphas_cumprod,
    weights_fingerprint,
)
from .conditioning import Conditioning
from .diffusers_vae import DiffusersVAE, _bf16_supported
from .inversion import ProgressFn, check_prediction_type, ddim_denoise, ddim_invert
from .prompt import TEXT_LAYOUTS, TextEncoderReader, prompt_windows, stored_layers, window_notice
from .text import ClipBPETokenizer, HFTokenizerAdapter

#: Working memory of one 512x512 image in a sampling batch (UNet at CFG batch 2, VAE decode) on
#: a GPU in fp16: an estimate with room to spare, not yet measured on a GPU;
#: benchmarks/style_cost.py --device cuda prints the peak per B to check it against.
GPU_BYTES_PER_IMAGE = 2 * 2**30
MAX_GPU_BATCH = 16

#: OpenCLIP's tokenizers (SD 2.x's ViT-H, SDXL's bigG) pad with token 0, OpenAI CLIP-L's with the end token.
OPEN_CLIP_PAD_TOKEN = 0


def diffusers_family(
    unet, text_encoder=None, text_encoder_2=None, family: str | None = None
) -> tuple[str, int]:
    """``(family, pooled_dim)`` of a diffusers UNet and its text encoders, or a clear error.

    SDXL is recognised by its added text/time embedding, which must be sized for six size numbers
    and the second text encoder's pooled projection (the refiner's holds five: it also takes an
    aesthetic score, and it has no CLIP-L). Otherwise the text encoder tells SD 2.x (OpenCLIP
    ViT-H, 1024 wide, GELU) from SD 1.x (OpenAI CLIP-L, 768 wide, quick-GELU); ``family``
    ("sd1" or "sd2") overrides that.
    """
    cfg = unet.config
    in_channels = cfg.get("in_channels", 4)
    if in_channels != 4:
        raise unsupported_model(
            f"the UNet takes {in_channels}-channel input (an inpainting or instruct-pix2pix model), not plain latents"
        )
    addition = cfg.get("addition_embed_type")
    if cfg.get("class_embed_type") is not None or addition not in (None, "text_time"):
        raise unsupported_model(
            f"the UNet has a {cfg.get('class_embed_type') or addition} embedding (an unCLIP or other image-conditioned "
            "variant)"
        )
    if addition == "text_time":
        if text_encoder is None:
            raise unsupported_model(
                "this is an SDXL refiner (it has no CLIP-L text encoder, and only learned the last denoising steps)"
            )
        if text_encoder_2 is None:
            raise unsupported_model(
                "this SDXL-style UNet comes without its second (OpenCLIP bigG) text encoder"
            )
        pooled = int(text_encoder_2.config.projection_dim)
        time_dim = int(cfg.get("addition_time_embed_dim") or 0)
        adm = int(cfg.get("projection_class_embeddings_input_dim") or 0)
        if adm != pooled + SDXL_TIME_IDS * time_dim:
            raise unsupported_model(
                f"the UNet's added embedding takes {adm} values, not the pooled text ({pooled}) and six size numbers "
                f"({SDXL_TIME_IDS} x {time_dim}) of SDXL; an SDXL refiner (aesthetic score) or another variant"
            )
        context = int(text_encoder.config.hidden_size) + int(text_encoder_2.config.hidden_size)
        if context != _context_dim(unet):
            raise unsupported_model(
                f"the text encoders give {context}-dim embeddings but the UNet attends to {_context_dim(unet)}"
            )
        if family not in (None, SDXL):
            raise InvalidInputError(f"family={family!r} was given, but the UNet is SDXL-shaped")
        return SDXL, pooled
    if family == SDXL:
        raise InvalidInputError("family='sdxl' was given, but the UNet has no SDXL text/time embedding")
    if family is not None and family not in (SD1, SD2):
        raise InvalidInputError(f"family must be 'sd1', 'sd2' or 'sdxl', got {family!r}")
    if family is not None:
        return family, 0
    activation = getattr(getattr(text_encoder, "config", None), "hidden_act", None)
    return (SD2 if _context_dim(unet) == 1024 or activation == "gelu" else SD1), 0


def _context_dim(unet) -> int:
    dim = unet.config.get("cross_attention_dim")
    return int(dim[0] if isinstance(dim, (list, tuple)) else dim)


def native_image_size(unet_config, vae_config) -> int:
    """The image side a checkpoint was trained at, as diffusers' pipelines default to it: the UNet's
    latent ``sample_size`` times the VAE's downscale (SD 1.x and SD 2.x-base 512, SD 2.x 768-v 768,
    SDXL 1024)."""
    downscale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    return int(unet_config["sample_size"]) * downscale


class DiffusersBackend(DiffusersVAE, SamplingBackend):
    """Sampling with diffusers modules.

    ``text_encoder`` is CLIP-L (SD 1.x, SDXL) or OpenCLIP-H (SD 2.x), ``text_encoder_2`` SDXL's
    OpenCLIP bigG (a ``CLIPTextModelWithProjection``). ``prediction_type`` is "epsilon" or
    "v_prediction"; ``alphas_cumprod`` the training schedule (default: SD's scaled-linear one).
    ``vae_dtype`` defaults to ``dtype``, except that SDXL's VAE, which overflows in float16, runs
    in bfloat16 (float32 where bfloat16 is not supported), as ComfyUI runs it.

    ``clip_skip`` picks the text encoders' layer as ComfyUI's CLIPSetLastLayer does (1 = last,
    2 = penultimate; None: the family's own, :data:`~diffsketch.backends.prompt.TEXT_LAYOUTS`).
    ``text_encoder_depth`` is the full depth of ``text_encoder`` the layers are counted on; by
    default the layers it stores, one more for SD 2.x (diffusers folders leave out its last
    layer).
    """

    def __init__(
        self,
        unet,
        vae,
        text_encoder,
        tokenizer=None,
        device="cpu",
        dtype=torch.float32,
        alphas_cumprod: torch.Tensor | None = None,
        *,
        text_encoder_2=None,
        tokenizer_2=None,
        prediction_type: str = "epsilon",
        family: str | None = None,
        vae_dtype: torch.dtype | None = None,
        clip_skip: int | None = None,
        text_encoder_depth: int | None = None,
    ):
        reject_compiled(unet, "UNet")
        reject_compiled(vae, "VAE")
        check_prediction_type(prediction_type)
        family, pooled_dim = diffusers_family(unet, text_encoder, text_encoder_2, family)
        self.device = torch.device(device)
        self.dtype = dtype
        if vae_dtype is None:
            vae_dtype = dtype
            if family == SDXL and dtype == torch.float16:
                vae_dtype = torch.bfloat16 if _bf16_supported(self.device) else torch.float32
        self.vae_dtype = vae_dtype
        self.prediction_type = prediction_type
        self.unet = unet.to(self.device, dtype).eval().requires_grad_(False)
        self.vae = vae.to(self.device, vae_dtype).eval().requires_grad_(False)
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.text_encoder_2 = (
            text_encoder_2.to(self.device).eval().requires_grad_(False)
            if text_encoder_2 is not None
            else None
        )
        open_clip_pad = OPEN_CLIP_PAD_TOKEN if family == SD2 else None
        self.tokenizer = tokenizer if tokenizer is not None else ClipBPETokenizer(pad_token=open_clip_pad)
        self.tokenizer_2 = None
        if family == SDXL:
            self.tokenizer_2 = (
                tokenizer_2 if tokenizer_2 is not None else ClipBPETokenizer(pad_token=OPEN_CLIP_PAD_TOKEN)
            )
        self.spec = feature_spec_from_diffusers(self.unet, self.vae, family, pooled_dim)
        layout = TEXT_LAYOUTS[family]
        if text_encoder_depth is None:
            text_encoder_depth = stored_layers(self.text_encoder) + int(family == SD2)
        self.text_encoder_depth = text_encoder_depth
        name = "CLIP-L text encoder" if family != SD2 else "OpenCLIP ViT-H text encoder"
        self._readers = [
            TextEncoderReader(self.text_encoder, self.tokenizer, layout, text_encoder_depth, clip_skip, name)
        ]
        if family == SDXL:
            self._readers.append(
                TextEncoderReader(
                    self.text_encoder_2,
                    self.tokenizer_2,
                    layout,
                    stored_layers(self.text_encoder_2),
                    clip_skip,
                    "OpenCLIP bigG text encoder",
                )
            )
        self.clip_skip = self._readers[0].clip_skip
        self.latent_scaling_factor = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.alphas_cumprod = (
            alphas_cumprod if alphas_cumprod is not None else scaled_linear_alphas_cumprod()
        ).double()
        self._uncond_cache: Conditioning | None = None
        self._model_hash: str | None = None

    def model_hash(self) -> str:
        """:func:`~diffsketch.backends.base.weights_fingerprint` of the UNet (recorded in trained files)."""
        if self._model_hash is None:
            self._model_hash = weights_fingerprint(self.unet.parameters())
        return self._model_hash

    @property
    def zero_terminal_snr(self) -> bool:
        """Read from the schedule itself, so a schedule set after loading is described truly."""
        return has_zero_terminal_snr(self.alphas_cumprod[-1])

    @property
    def native_size(self) -> int:
        """The image side the checkpoint was trained at (:func:`native_image_size`)."""
        return native_image_size(self.unet.config, self.vae.config)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path,
        device="cpu",
        dtype=torch.float32,
        prediction_type: str | None = None,
        clip_skip: int | None = None,
    ) -> DiffusersBackend:
        """A local diffusers folder (unet/, vae/, text_encoder/ [, text_encoder_2/ for SDXL],
        tokenizer(s), scheduler/). ``prediction_type`` overrides the scheduler config's;
        ``clip_skip`` as in the constructor."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        root = Path(path)
        if not (root / "text_encoder").is_dir() and (root / "text_encoder_2").is_dir():
            raise unsupported_model(
                f"{root} is an SDXL refiner (text_encoder_2/ without text_encoder/: it has no CLIP-L, and only learned "
                "the last denoising steps)"
            )
        for sub in ("unet", "vae", "text_encoder"):
            if not (root / sub).is_dir():
                raise WeightsNotFoundError(
                    f"{root} is not a diffusers Stable Diffusion folder: '{sub}/' is missing. Point to a folder saved "
                    "with a Stable Diffusion (XL) pipeline's save_pretrained, or to a single .safetensors checkpoint."
                )
        # the scheduler first: a model DiffSketch cannot sample is refused before any weights load
        acp, scheduled_prediction = None, "epsilon"
        sched_cfg = root / "scheduler" / "scheduler_config.json"
        if sched_cfg.is_file():
            acp, scheduled_prediction = schedule_from_config(json.loads(sched_cfg.read_text()), sched_cfg)
        kw = {"local_files_only": True}
        vae = AutoencoderKL.from_pretrained(root / "vae", **kw)
        check_vae_latents(vae, root / "vae")
        unet = UNet2DConditionModel.from_pretrained(root / "unet", **kw)
        te = CLIPTextModel.from_pretrained(root / "text_encoder", **kw)
        te2 = tok2 = tok = None
        if (root / "text_encoder_2").is_dir():
            te2 = CLIPTextModelWithProjection.from_pretrained(root / "text_encoder_2", **kw)
        if (root / "tokenizer").is_dir():
            tok = HFTokenizerAdapter(CLIPTokenizer.from_pretrained(root / "tokenizer", **kw))
        if te2 is not None and (root / "tokenizer_2").is_dir():
            tok2 = HFTokenizerAdapter(CLIPTokenizer.from_pretrained(root / "tokenizer_2", **kw))
        return cls(
            unet,
            vae,
            te,
            tok,
            device=device,
            dtype=dtype,
            alphas_cumprod=acp,
            text_encoder_2=te2,
            tokenizer_2=tok2,
            prediction_type=prediction_type or scheduled_prediction,
            clip_skip=clip_skip,
        )

    @classmethod
    def from_single_file(
        cls,
        path,
        device="cpu",
        dtype=torch.float32,
        prediction_type: str | None = None,
        clip_skip: int | None = None,
    ) -> DiffusersBackend:
        """An SD 1.x, SD 2.x or SDXL single-file checkpoint (.safetensors), converted in memory,
        nothing downloaded. ``prediction_type`` overrides what the checkpoint says or suggests;
        ``clip_skip`` as in the constructor."""
        from .checkpoint import load_single_file

        loaded = load_single_file(path)
        return cls(
            loaded.unet,
            loaded.vae,
            loaded.text_encoder,
            None,
            device=device,
            dtype=dtype,
            alphas_cumprod=loaded.alphas_cumprod,
            text_encoder_2=loaded.text_encoder_2,
            prediction_type=prediction_type or loaded.prediction_type,
            family=loaded.family,
            clip_skip=clip_skip,
            text_encoder_depth=loaded.text_encoder_depth,
        )

    @classmethod
    def load(
        cls,
        path,
        device="cpu",
        dtype=torch.float32,
        prediction_type: str | None = None,
        clip_skip: int | None = None,
        guidance: float | None = None,
    ) -> SamplingBackend:
        """A diffusers folder or a single-file checkpoint: a :class:`DiffusersBackend`, or for a
        folder of a diffusion transformer (transformer/) a
        :class:`~diffsketch.backends.dit.DiffusersFlowBackend` (``guidance``: Flux.1 dev's embedded
        guidance, refused for the other models)."""
        p = Path(path)
        if p.is_dir() and (p / "transformer").is_dir():
            # a diffusion transformer's folder (Z-Image, SD 3.5, Flux.1; others refused by name)
            from .dit import DiffusersFlowBackend

            if prediction_type not in (None, "flow") or clip_skip is not None:
                raise InvalidInputError(
                    f"{p} is a flow-matching transformer: prediction_type and clip_skip apply to the UNet models only"
                )
            return DiffusersFlowBackend.from_pretrained(p, device, dtype, guidance)
        check_embedded_guidance(guidance, None, False)  # a UNet has no guidance input
        if p.is_dir():
            return cls.from_pretrained(p, device, dtype, prediction_type, clip_skip)
        if not p.exists():
            raise WeightsNotFoundError(
                f"model not found: {p} (give a diffusers folder or a single .safetensors checkpoint of SD 1.x, SD 2.x "
                "or SDXL)"
            )
        return cls.from_single_file(p, device, dtype, prediction_type, clip_skip)

    def suggested_batch(self, width: int, height: int) -> int:
        """1 on the CPU, where an SD-sized UNet keeps the cores busy at any batch and host memory
        grows with B (``benchmarks/style_cost.py --arch sd15`` measures B there before one raises
        ``--pairs-batch``); on a GPU, what its free memory holds at ``GPU_BYTES_PER_IMAGE`` per
        512x512 image (scaled by area), at most ``MAX_GPU_BATCH``."""
        if self.device.type != "cuda":
            return 1
        free, _ = torch.cuda.mem_get_info(self.device)
        per_image = GPU_BYTES_PER_IMAGE * (width * height) / (512 * 512)
        return max(1, min(MAX_GPU_BATCH, int(0.8 * free // per_image)))

    # -- primitives ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, text: str) -> Conditioning:
        """``text`` as ComfyUI's CLIPTextEncode encodes it (:mod:`~diffsketch.backends.prompt`):
        ``[1, 77*k, D]`` for a prompt of k windows, SDXL's two encoders side by side with bigG's
        pooled embedding of the first window."""
        if text == "" and self._uncond_cache is not None:
            return self._uncond_cache
        encoded = [reader.encode(prompt_windows(text, reader.tokenizer)) for reader in self._readers]
        tokens = min(context.shape[1] for context, _ in encoded)
        context = torch.cat([c[:, :tokens] for c, _ in encoded], dim=-1).cpu()
        pooled = encoded[-1][1].cpu() if self.spec.family == SDXL else None
        out = Conditioning(context, pooled)
        if text == "":
            self._uncond_cache = out
        return out

    def prompt_notice(self, text: str) -> str | None:
        """What the user should know about how ``text`` is encoded (split into windows), or None."""
        return window_notice(prompt_windows(text, self.tokenizer))

    def size_conditioning(self, latent_hw: tuple[int, int]) -> torch.Tensor:
        """SDXL's six size numbers for an image decoding from a latent of ``latent_hw``: original
        size = target size = the image's ``(height, width)``, crop ``(0, 0)``."""
        h, w = (int(s) * self.spec.vae_scale_factor for s in latent_hw)
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32)

    def _unet_kwargs(self, cond: Conditioning, latent_hw) -> dict:
        """The UNet's conditioning arguments for a batch of ``cond`` (SDXL: with the pooled text
        and the size conditioning of the image a latent of ``latent_hw`` decodes to)."""
        cond = cond.to(self.device, self.dtype)
        kwargs = {"encoder_hidden_states": cond.context}
        if self.spec.family == SDXL:
            time_ids = self.size_conditioning(tuple(latent_hw)).repeat(cond.context.shape[0], 1)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": cond.pooled,
                "time_ids": time_ids.to(self.device, self.dtype),
            }
        return kwargs

    @torch.no_grad()
    def _denoise(
        self, noise, cond, uncond, cfg, schedule, recorder: UNetRecorder | None, progress: ProgressFn | None
    ) -> torch.Tensor:
        kwargs = self._unet_kwargs(Conditioning.cat_for_attention([uncond, cond]), noise.shape[-2:])

        def predict(x, t):
            x_in = torch.cat([x, x]).to(self.dtype)
            t_in = torch.full((x_in.shape[0],), t, device=self.device, dtype=torch.long)
            if recorder is not None:
                with recorder.tap(self.unet, t, (UNCOND, COND)):
                    out = self.unet(x_in, t_in, **kwargs).sample
            else:
                out = self.unet(x_in, t_in, **kwargs).sample
            out_u, out_c = out.float().chunk(2)
            return out_u + cfg * (out_c - out_u)

        x = noise.to(self.device, torch.float32)
        x = ddim_denoise(predict, x, schedule, self.alphas_cumprod, self.prediction_type, progress)
        return (x / self.latent_scaling_factor).cpu()

    @torch.no_grad()
    def _invert(self, latent, cond, schedule, progress: ProgressFn | None) -> torch.Tensor:
        kwargs = self._unet_kwargs(cond, latent.shape[-2:])

        def predict(x, t):
            t_in = torch.full((x.shape[0],), t, device=self.device, dtype=torch.long)
            return self.unet(x.to(self.dtype), t_in, **kwargs).sample.float()

        x = latent.to(self.device, torch.float32)
        return ddim_invert(predict, x, schedule, self.alphas_cumprod, self.prediction_type, progress).cpu()

    def describe(self) -> str:
        return (
            f"{family_name(self.spec.family)} ({self.prediction_type}), {len(self.spec.unet)} UNet taps, "
            f"{self.dtype} on {self.device}"
        )


#: diffusers schedulers that sample the discrete 1000-step DDPM schedule their betas define (the
#: schedule DiffSketch's DDIM sampler runs on, whichever of these a folder was saved with).
DISCRETE_SCHEDULERS = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "LCMScheduler",
    "TCDScheduler",
)
#: The values diffusers knows; none changes the DDIM grid DiffSketch samples on (the nodes' one).
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
_SUPPORTED_SCHEDULES = (
    "a scheduler of the discrete 1000-step schedule (DDIM, PNDM, Euler, DPM-Solver, UniPC and the like) with "
    "beta_schedule 'scaled_linear', predicting epsilon or v_prediction"
)


def schedule_from_config(config: dict, where) -> tuple[torch.Tensor, str]:
    """``(alphas_cumprod, prediction_type)`` from a diffusers scheduler config: SD's scaled-linear
    betas, optionally rescaled to zero terminal SNR; anything else is refused by name (continuous
    EDM and flow-matching schedules, which the single-file path and ComfyUI refuse too, a missing
    ``beta_schedule``, which diffusers would read as its ``linear`` default)."""
    name = config.get("_class_name")
    if name is None:
        raise InvalidInputError(
            f"{where} has no _class_name: it is not a diffusers scheduler config. DiffSketch needs {_SUPPORTED_SCHEDULES}."
        )
    if str(name).startswith("EDM"):
        raise unsupported_model(
            f"{where}: the scheduler {name} samples a continuous EDM noise schedule (Playground v2.5 or an EDM "
            "v-prediction model), not the 1000-step schedule DiffSketch's DDIM sampler and timesteps are defined on"
        )
    if "FlowMatch" in str(name) or config.get("use_flow_sigmas"):
        raise unsupported_model(
            f"{where}: the scheduler {name} samples a flow-matching schedule (SD3, Flux and the like), not the "
            "1000-step DDPM schedule of Stable Diffusion"
        )
    if name not in DISCRETE_SCHEDULERS:
        raise unsupported_model(
            f"{where}: the scheduler {name} is not one DiffSketch samples; it needs {_SUPPORTED_SCHEDULES}"
        )
    schedule = config.get("beta_schedule")
    if schedule is None:
        raise InvalidInputError(
            f"{where}: the {name} config has no beta_schedule, so diffusers would use its 'linear' default, not Stable "
            'Diffusion\'s \'scaled_linear\'. Add "beta_schedule": "scaled_linear" (with beta_start 0.00085 and '
            "beta_end 0.012) if the model is an SD 1.x, SD 2.x or SDXL model."
        )
    if schedule != "scaled_linear":
        raise InvalidInputError(
            f"{where}: beta_schedule {schedule!r} is not Stable Diffusion's scaled_linear; DiffSketch samples on that "
            "1000-step schedule."
        )
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in TIMESTEP_SPACINGS:
        raise InvalidInputError(
            f"{where}: timestep_spacing {spacing!r} is none of diffusers' {', '.join(TIMESTEP_SPACINGS)}"
        )
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise unsupported_model(
            f"{where}: prediction_type {prediction!r} is neither epsilon nor v_prediction"
        )
    acp = scaled_linear_alphas_cumprod(
        config.get("beta_start", 0.00085),
        config.get("beta_end", 0.012),
        config.get("num_train_timesteps", 1000),
    )
    if config.get("rescale_betas_zero_snr"):
        acp = rescale_zero_terminal_snr(acp)
    return acp, prediction


def check_vae_latents(vae, where) -> None:
    """Refuse a VAE whose latents are normalised per channel (``latents_mean``/``latents_std`` in its
    config, as Playground v2.5's): DiffSketch scales latents by ``scaling_factor`` alone."""
    config = getattr(vae, "config", {})
    if config.get("latents_mean") is not None or config.get("latents_std") is not None:
        raise unsupported_model(
            f"{where}: the VAE normalises latents with a per-channel latents_mean/latents_std (Playground v2.5 "
            "and other EDM models), which Stable Diffusion's VAEs do not"
        )
