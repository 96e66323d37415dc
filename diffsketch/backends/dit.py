"""Diffusers backend for the flow-matching diffusion transformers (experimental): Z-Image (Turbo and
base, ``ZImageTransformer2DModel``), SD 3.5 (Medium and Large, ``SD3Transformer2DModel``) and
Flux.1 (dev and schnell, ``FluxTransformer2DModel``).

Sampling is deterministic Euler (:mod:`~diffsketch.backends.flow`) on ComfyUI's "simple" grid of
the shifted flow sigmas (:func:`~diffsketch.capture.timesteps.flow_grid`), the noise drawn as for
the UNet families. Guidance is CFG with the batch ordered [uncond, cond]; at cfg 1 only the
conditional branch is evaluated and captured (:meth:`SamplingBackend.captured_branches`), which is
how the guidance-distilled Z-Image Turbo and Flux.1 sample. The captured taps are the chosen
transformer blocks' image tokens, unpatchified into ``[B, hidden, H/16, W/16]`` maps
(:func:`~diffsketch.capture.hooks.image_token_map`): in diffusers' Z-Image the unified sequence is
[image tokens padded to a multiple of 32, caption tokens], in SD 3.5 the image stream is the
second output of every joint block, in Flux.1 both its double-stream and its single-stream
blocks return ``(text tokens, image tokens)``; all put the image tokens in row-major patch order.

Each model is called as diffusers' own pipeline calls it, so that ``ZImagePipeline``,
``StableDiffusion3Pipeline`` and ``FluxPipeline`` given the same sigmas and noise make the same
image (tests/test_dit_sampling.py):

- Z-Image: the transformer takes lists (one ``[C, 1, h, w]`` latent and one ``[T_i, 2560]``
  caption per item), the timestep ``1 - sigma``, and predicts minus the velocity. Its pipeline's
  ``guidance_scale`` g is ``cfg - 1`` here (``pos + g (pos - neg)``); Turbo samples at g 0, cfg 1.
- SD 3.5: the timestep ``1000 sigma``, the context and the pooled embedding; it predicts the
  velocity. The pipeline's guidance scale is the cfg.
- Flux.1: the latent packed into 2x2-patch tokens of 64 channels with their (0, row, column) ids,
  zero text ids, the timestep ``sigma``, the T5 context, CLIP-L's pooled embedding and, for dev,
  the guidance it was distilled with (:data:`~diffsketch.capture.spec.FLUX_DEFAULT_GUIDANCE`; the
  pipeline's ``guidance_scale``, not the cfg); it predicts the packed velocity. The pipeline's
  ``true_cfg_scale`` (with a negative prompt) is the cfg.

Text conditioning is built as ComfyUI's CLIP Text Encode builds it, on the pipelines' text
encoders (:meth:`DiffusersFlowBackend.encode_prompt`, :mod:`~diffsketch.backends.prompt`).
The latent passed around is the raw VAE latent: ``raw = model / scaling_factor + shift_factor``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..capture.hooks import COND, UNCOND, UNetRecorder, image_token_map, reject_compiled
from ..capture.identity import FLOW_PREDICTION
from ..capture.spec import (
    FLUX,
    GUIDANCE_DISTILLED_FAMILIES,
    SD35,
    ZIMAGE,
    check_embedded_guidance,
    diffusers_dit_family,
    family_name,
    feature_spec_from_diffusers_dit,
    unsupported_model,
)
from ..capture.timesteps import FLOW_SHIFTS, FLUX_SCHNELL_SHIFT
from ..errors import InvalidInputError, WeightsNotFoundError
from .base import SamplingBackend, diffusion_model_fingerprint
from .conditioning import Conditioning
from .diffusers_vae import DiffusersVAE, _bf16_supported
from .flow import euler_denoise, euler_invert
from .inversion import ProgressFn
from .prompt import (
    CONTEXT_LENGTH,
    T5_MIN_TOKENS,
    TEXT_LAYOUTS,
    WINDOW_TOKENS,
    TextEncoderReader,
    empty_window,
    has_weights,
    literal_prompt,
    prompt_windows,
    stored_layers,
    weighted_embedding,
)
from .text import ClipBPETokenizer, T5TokenizerAdapter

#: ZImagePipeline reads at most this many Qwen3 tokens of the chat template; ComfyUI's Z-Image
#: encoder reads them all, and so does this backend (with a notice past it).
ZIMAGE_PIPELINE_TOKENS = 512
#: SD 3.5's T5-XXL tokens: ComfyUI's SD3 T5 tokenizer pads to at least 77 (``min_length``) and
#: grows past it with the prompt (StableDiffusion3Pipeline pads to and cuts at its
#: ``max_sequence_length``, 256 by default: another conditioning, since T5 attends to its padding).
SD35_T5_MIN_TOKENS = T5_MIN_TOKENS[SD35]
#: Flux.1's T5-XXL tokens: ComfyUI's Flux T5 tokenizer pads to at least 256 and grows past it;
#: FluxPipeline pads to and cuts at its ``max_sequence_length`` (at 256: the same up to 255 prompt tokens).
FLUX_T5_TOKENS = T5_MIN_TOKENS[FLUX]
#: OpenCLIP bigG's tokenizer in SD 3.x folders pads with "!" (token 0), CLIP-L with its end token.
CLIP_G_PAD_TOKEN = 0
#: What a diffusers folder of a flow family must hold (besides the text encoders).
_DIT_FOLDERS = ("transformer", "vae")


class DiffusersFlowBackend(DiffusersVAE, SamplingBackend):
    """Sampling a Z-Image, SD 3.5 or Flux.1 diffusers transformer with feature capture.

    Z-Image: ``text_encoder`` is the Qwen3 model (Qwen3-4B; a ``Qwen3Model``), ``tokenizer`` its
    tokenizer (with its chat template). SD 3.5: ``text_encoder`` and ``text_encoder_2`` are CLIP-L
    and OpenCLIP bigG (``CLIPTextModelWithProjection``), ``text_encoder_3`` T5-XXL
    (``T5EncoderModel``; None: the CLIP tokens alone, as ComfyUI without a T5 file), with their tokenizers
    (the CLIP ones default to the CLIP BPE vocabulary DiffSketch ships with open_clip). Flux.1:
    ``text_encoder`` is CLIP-L (``CLIPTextModel``: its pooled output), ``text_encoder_2`` T5-XXL
    with ``tokenizer_2`` (as FluxPipeline names them; None: conditionings only, since Flux's context
    is T5's alone).

    ``shift``: the sigma shift (default: the family's, 3.0 for Z-Image and SD 3.5, e^1.15 for
    Flux.1 dev, 1 for schnell; a folder's scheduler config gives its own). ``blocks``: the
    transformer blocks to tap (default :func:`~diffsketch.capture.spec.default_dit_blocks`; Flux's
    double- then single-stream blocks count as one depth). ``guidance_distilled``: whether the
    model samples without guidance (default: True for Z-Image, whose published diffusers model is
    Turbo, and Flux.1; False for SD 3.5); cfg > 1 then gets a notice. ``guidance``: the guidance
    Flux.1 dev embeds (default :data:`~diffsketch.capture.spec.FLUX_DEFAULT_GUIDANCE`; schnell has
    no guidance input: a value given for it is refused). ``vae_dtype`` defaults to ``dtype``,
    bfloat16 (or float32) instead of float16, as for SDXL: the 16-channel VAEs overflow float16.
    """

    prediction_type = FLOW_PREDICTION

    def __init__(
        self,
        transformer,
        vae,
        text_encoder=None,
        tokenizer=None,
        device="cpu",
        dtype=torch.float32,
        *,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
        shift: float | None = None,
        blocks: tuple[int, ...] | None = None,
        guidance_distilled: bool | None = None,
        vae_dtype: torch.dtype | None = None,
        guidance: float | None = None,
    ):
        reject_compiled(transformer, "diffusion transformer")
        reject_compiled(vae, "VAE")
        family = diffusers_dit_family(transformer)
        self.device = torch.device(device)
        self.dtype = dtype
        if vae_dtype is None:
            vae_dtype = dtype
            if dtype == torch.float16:
                vae_dtype = torch.bfloat16 if _bf16_supported(self.device) else torch.float32
        self.vae_dtype = vae_dtype
        self.transformer = transformer.to(self.device, dtype).eval().requires_grad_(False)
        self.vae = vae.to(self.device, vae_dtype).eval().requires_grad_(False)
        self.spec = feature_spec_from_diffusers_dit(self.transformer, self.vae, blocks)
        #: the guidance value Flux.1 dev embeds (None: the model has no guidance input)
        self.guidance = check_embedded_guidance(
            guidance, family, self.transformer.config.get("guidance_embeds")
        )
        if shift is None:
            shift = FLUX_SCHNELL_SHIFT if family == FLUX and self.guidance is None else FLOW_SHIFTS[family]
        self.shift = float(shift)
        if not self.shift > 0:
            raise InvalidInputError(f"shift must be a positive number, got {shift!r}")
        self.guidance_distilled = (
            family in GUIDANCE_DISTILLED_FAMILIES if guidance_distilled is None else bool(guidance_distilled)
        )
        vae_config = self.vae.config
        self.latent_scaling_factor = float(vae_config.get("scaling_factor", 1.0))
        self.latent_shift_factor = float(vae_config.get("shift_factor") or 0.0)
        self.patch_size = 1 << -self.spec.unet[0].log2_scale

        def prepare(encoder):
            return None if encoder is None else encoder.to(self.device).eval().requires_grad_(False)

        self.text_encoder = prepare(text_encoder)
        self.text_encoder_2 = prepare(text_encoder_2)
        self.text_encoder_3 = prepare(text_encoder_3)
        self.tokenizer, self.tokenizer_2, self.tokenizer_3 = tokenizer, tokenizer_2, tokenizer_3
        if family == FLUX:
            if self.text_encoder is None:
                raise unsupported_model(
                    "this Flux.1 model comes without its CLIP-L text encoder (text_encoder), which makes its pooled "
                    "embedding"
                )
            self.tokenizer = tokenizer if tokenizer is not None else ClipBPETokenizer()
            if self.text_encoder_2 is not None and tokenizer_2 is None:
                raise InvalidInputError(
                    "text_encoder_2 (T5-XXL) was given without its tokenizer (tokenizer_2)"
                )
        if family == SD35:
            if self.text_encoder is None or self.text_encoder_2 is None:
                raise unsupported_model(
                    "this SD 3.5 model comes without its CLIP-L and OpenCLIP bigG text encoders (text_encoder, "
                    "text_encoder_2), which make its pooled embedding"
                )
            self.tokenizer = tokenizer if tokenizer is not None else ClipBPETokenizer()
            self.tokenizer_2 = (
                tokenizer_2 if tokenizer_2 is not None else ClipBPETokenizer(pad_token=CLIP_G_PAD_TOKEN)
            )
            if self.text_encoder_3 is not None and tokenizer_3 is None:
                raise InvalidInputError(
                    "text_encoder_3 (T5-XXL) was given without its tokenizer (tokenizer_3)"
                )
        # ComfyUI's tokenizers on diffusers' text encoders (prompt weights, CLIP windows, T5's length)
        self._t5 = None
        t5_encoder, t5_tokenizer = (
            (self.text_encoder_3, tokenizer_3) if family == SD35 else (self.text_encoder_2, tokenizer_2)
        )
        if family in (SD35, FLUX) and t5_encoder is not None:
            self._t5 = (t5_encoder, T5TokenizerAdapter(t5_tokenizer))
        self._clip_readers = []
        if family == SD35:
            self._clip_readers = [
                TextEncoderReader(encoder, tokens, TEXT_LAYOUTS[SD35], stored_layers(encoder), None, what)
                for encoder, tokens, what in (
                    (self.text_encoder, self.tokenizer, "CLIP-L"),
                    (self.text_encoder_2, self.tokenizer_2, "OpenCLIP bigG"),
                )
            ]
        self._uncond_cache: Conditioning | None = None
        self._model_hash: str | None = None

    # -- identity ------------------------------------------------------------------------------
    def model_hash(self) -> str:
        """:func:`~diffsketch.backends.base.diffusion_model_fingerprint` of the transformer (equal to
        the ComfyUI backend's for the same weights)."""
        if self._model_hash is None:
            self._model_hash = diffusion_model_fingerprint(self.transformer.parameters(), self.spec)
        return self._model_hash

    def describe(self) -> str:
        guidance = "" if self.guidance is None else f", guidance {self.guidance:g}"
        return (
            f"{family_name(self.spec.family)} (flow matching, shift {self.shift:g}{guidance}; experimental), "
            f"{len(self.spec.unet)} transformer block taps, {self.dtype} on {self.device}"
        )

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, path, device="cpu", dtype=torch.float32, guidance: float | None = None
    ) -> DiffusersFlowBackend:
        """A local diffusers folder of Z-Image (transformer/, vae/, text_encoder/, tokenizer/,
        scheduler/), SD 3.5 (the same with text_encoder_2/3 and tokenizer_2/3) or Flux.1 (CLIP-L in
        text_encoder/, T5-XXL in text_encoder_2/). A transformer of another family (Flux.2,
        Qwen-Image, ...) is refused by its config, before any weights load, as is a ``guidance``
        for a model without a guidance input (only Flux.1 dev has one). The shift is the
        scheduler's, or with dynamic shifting (Flux.1 dev's) e^max_shift, the shift diffusers
        uses at 1024x1024 and ComfyUI's ModelSamplingFlux at its default."""
        import diffusers

        root = Path(path)
        for sub in _DIT_FOLDERS:
            if not (root / sub).is_dir():
                raise WeightsNotFoundError(
                    f"{root} is not a diffusers folder of a diffusion transformer: '{sub}/' is missing"
                )
        config = json.loads((root / "transformer" / "config.json").read_text())
        class_name = str(config.get("_class_name"))
        # another family, or a guidance the model cannot take, is refused before any weights load
        check_embedded_guidance(guidance, diffusers_dit_family(class_name), config.get("guidance_embeds"))
        transformer_cls = getattr(diffusers, class_name)
        shift = None
        sched = root / "scheduler" / "scheduler_config.json"
        if sched.is_file():
            sched_config = json.loads(sched.read_text())
            shift = sched_config.get("shift")
            if sched_config.get("use_dynamic_shifting"):
                shift = math.exp(float(sched_config.get("max_shift", 1.15)))
        kw = {"local_files_only": True}
        transformer = transformer_cls.from_pretrained(root / "transformer", **kw)
        vae = diffusers.AutoencoderKL.from_pretrained(root / "vae", **kw)
        family = diffusers_dit_family(transformer)
        encoders = {}
        if family == ZIMAGE:
            from transformers import AutoModel, AutoTokenizer

            encoders["text_encoder"] = AutoModel.from_pretrained(root / "text_encoder", **kw)
            encoders["tokenizer"] = AutoTokenizer.from_pretrained(root / "tokenizer", **kw)
        elif family == FLUX:
            from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

            from .text import HFTokenizerAdapter

            encoders["text_encoder"] = CLIPTextModel.from_pretrained(root / "text_encoder", **kw)
            if (root / "tokenizer").is_dir():
                encoders["tokenizer"] = HFTokenizerAdapter(
                    AutoTokenizer.from_pretrained(root / "tokenizer", **kw)
                )
            if (root / "text_encoder_2").is_dir():
                encoders["text_encoder_2"] = T5EncoderModel.from_pretrained(root / "text_encoder_2", **kw)
                encoders["tokenizer_2"] = AutoTokenizer.from_pretrained(root / "tokenizer_2", **kw)
        else:
            from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

            from .text import HFTokenizerAdapter

            for name in ("", "_2"):
                encoders[f"text_encoder{name}"] = CLIPTextModelWithProjection.from_pretrained(
                    root / f"text_encoder{name}", **kw
                )
                if (root / f"tokenizer{name}").is_dir():
                    encoders[f"tokenizer{name}"] = HFTokenizerAdapter(
                        AutoTokenizer.from_pretrained(root / f"tokenizer{name}", **kw)
                    )
            if (root / "text_encoder_3").is_dir():
                encoders["text_encoder_3"] = T5EncoderModel.from_pretrained(root / "text_encoder_3", **kw)
                encoders["tokenizer_3"] = AutoTokenizer.from_pretrained(root / "tokenizer_3", **kw)
        return cls(transformer, vae, device=device, dtype=dtype, shift=shift, guidance=guidance, **encoders)

    # -- text ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, text: str) -> Conditioning:
        """``text`` as ComfyUI's CLIPTextEncode encodes it with the family's text encoders
        (:mod:`~diffsketch.backends.prompt`: the same tokens, weights and lengths), on diffusers'
        models as the family's pipeline runs them.

        Z-Image: the Qwen3 chat template of the prompt, the second-to-last hidden states of all its
        tokens (``[1, T, 2560]``, T the prompt's own count; no pooled embedding). ComfyUI takes no
        prompt weights for Qwen3: ``(word:1.2)`` is read as written, only ``\\(`` ``\\)`` become
        plain parentheses; nothing is cut (ZImagePipeline cuts at :data:`ZIMAGE_PIPELINE_TOKENS`).

        SD 3.5: CLIP-L's and bigG's penultimate hidden states side by side (768 + 1280), in
        77-token windows (``77 k`` tokens for a prompt of k windows of up to 75 tokens), zero-padded
        to T5's 4096, then T5-XXL's last hidden states of the prompt's tokens and its end token,
        padded to at least :data:`SD35_T5_MIN_TOKENS` and growing past it with the prompt:
        ``[1, 77 + 77, 4096]`` for a prompt of up to 75 CLIP and 76 T5 tokens. Without T5 the CLIP
        tokens alone, as ComfyUI gives them without a T5 file (the pipeline would append 256 zero
        tokens, which the model does not ignore). The pooled embedding is both projected CLIP
        embeddings of the first window (768 + 1280 = 2048).

        Flux.1: T5-XXL's last hidden states of the prompt padded to at least
        :data:`FLUX_T5_TOKENS` tokens (``[1, 256, 4096]`` up to 255 prompt tokens, longer past
        them), and CLIP-L's pooled output of the prompt's first 77-token window (768).

        Weights (CLIP and T5): ``(word)`` multiplies by 1.1 per level, ``(word:1.3)`` sets 1.3,
        ``\\(`` ``\\)`` are literal parentheses; a weighted token's state is moved from the empty
        prompt's at its position, ``empty + w (token - empty)`` (T5's empty prompt is its end token
        padded to the same length). They change the context only, never the pooled embedding."""
        if text == "" and self._uncond_cache is not None:
            return self._uncond_cache
        if not isinstance(text, str):
            raise InvalidInputError(f"a prompt must be a string, got {type(text).__name__}")
        encode = {ZIMAGE: self._encode_zimage, SD35: self._encode_sd35, FLUX: self._encode_flux}
        out = encode[self.spec.family](text)
        if text == "":
            self._uncond_cache = out
        return out

    def prompt_notice(self, text: str) -> str | None:
        """What the user should know about how ``text`` is encoded, or None: where it is longer
        than one CLIP window or T5's minimum length (encoded in full, as ComfyUI encodes it, where
        the family's pipeline would cut it), or where Z-Image's Qwen3 reads weights as text."""
        notes = []
        if self.spec.family == ZIMAGE:
            if has_weights(text):
                notes.append(
                    "Z-Image's Qwen3 text encoder takes no prompt weights (ComfyUI disables them for it): "
                    "'(word:1.2)' and '(word)' are read as written, parentheses and numbers included"
                )
            if self.tokenizer is not None:
                n = len(self._zimage_ids(text)[0])
                if n > ZIMAGE_PIPELINE_TOKENS:
                    notes.append(
                        f"the prompt is {n} Qwen3 tokens with its chat template: all are encoded, as ComfyUI "
                        f"encodes them (ZImagePipeline would read the first {ZIMAGE_PIPELINE_TOKENS})"
                    )
        else:
            windows = prompt_windows(text, self.tokenizer)
            if windows.count > 1:
                if self.spec.family == SD35:
                    notes.append(
                        f"the prompt is {windows.tokens} CLIP tokens, more than {WINDOW_TOKENS}: CLIP-L and bigG "
                        f"encode it in {windows.count} windows ({windows.count * CONTEXT_LENGTH} context tokens) "
                        "and the pooled embedding is the first window's, as ComfyUI encodes it; nothing is cut off"
                    )
                else:
                    notes.append(
                        f"the prompt is {windows.tokens} CLIP tokens, more than {WINDOW_TOKENS}: CLIP-L's pooled "
                        "embedding is its first window's, as ComfyUI's (T5-XXL reads the whole prompt)"
                    )
            if self._t5 is not None:
                minimum = T5_MIN_TOKENS[self.spec.family]
                t5 = prompt_windows(text, self._t5[1], window=None, min_length=minimum)
                if t5.tokens + 1 > minimum:
                    notes.append(
                        f"T5-XXL reads all {t5.tokens} tokens of the prompt and its end token: the context grows "
                        f"past {minimum} T5 tokens, as ComfyUI's does (the diffusers pipeline would cut it)"
                    )
        return "; ".join(notes) if notes else None

    def _zimage_ids(self, text: str) -> torch.Tensor:
        """``[1, T]``: the chat template of ``text`` as ComfyUI gives it to Qwen3, all its tokens."""
        formatted = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": literal_prompt(text)}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=True,
        )
        return self.tokenizer([formatted], return_tensors="pt").input_ids

    def _encode_zimage(self, text: str) -> Conditioning:
        if self.text_encoder is None or self.tokenizer is None:
            raise InvalidInputError(
                "this Z-Image backend has no Qwen3 text encoder and tokenizer: pass conditionings, not prompts, "
                "or load the model with its text_encoder/ and tokenizer/"
            )
        ids = self._zimage_ids(text).to(self.device)
        hidden = self.text_encoder(
            input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True
        ).hidden_states[-2]
        return Conditioning(hidden.float().cpu())

    def _encode_sd35(self, text: str) -> Conditioning:
        encoded = [reader.encode(prompt_windows(text, reader.tokenizer)) for reader in self._clip_readers]
        tokens = min(hidden.shape[1] for hidden, _ in encoded)  # as ComfyUI's SD3 encoder cuts them
        clip = torch.cat([hidden[:, :tokens] for hidden, _ in encoded], dim=-1)
        context = torch.nn.functional.pad(clip, (0, self.spec.context_dim - clip.shape[-1]))
        if self._t5 is not None:
            context = torch.cat([context, self._t5_context(text)], dim=-2)
        return Conditioning(context.cpu(), torch.cat([pooled for _, pooled in encoded], dim=-1).cpu())

    def _t5_context(self, text: str) -> torch.Tensor:
        """T5-XXL's last hidden states of ``text`` (weights applied) and its end token, padded to at
        least the family's :data:`~diffsketch.backends.prompt.T5_MIN_TOKENS`."""
        encoder, tokenizer = self._t5
        windows = prompt_windows(text, tokenizer, window=None, min_length=T5_MIN_TOKENS[self.spec.family])

        def run(ids):
            return encoder(ids.to(self.device))[0].float(), None

        context, _ = weighted_embedding(windows, empty_window(tokenizer, windows.length), run)
        return context

    def _encode_flux(self, text: str) -> Conditioning:
        if self._t5 is None:
            raise InvalidInputError(
                "this Flux.1 backend has no T5-XXL text encoder (text_encoder_2 and tokenizer_2), whose hidden "
                "states are Flux's whole text context: pass conditionings, not prompts, or load the model with "
                "its text_encoder_2/ and tokenizer_2/"
            )
        # the pooled embedding is the first window's, which weights do not change (as in ComfyUI)
        first_window = prompt_windows(text, self.tokenizer).ids[:1]
        pooled = self.text_encoder(first_window.to(self.device)).pooler_output
        return Conditioning(self._t5_context(text).cpu(), pooled.float().cpu())

    # -- latents -------------------------------------------------------------------------------
    def model_latent(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.latent_shift_factor) * self.latent_scaling_factor

    def raw_latent(self, model_latent: torch.Tensor) -> torch.Tensor:
        """The raw VAE latent of a latent the transformer works on."""
        return model_latent / self.latent_scaling_factor + self.latent_shift_factor

    # -- the model -----------------------------------------------------------------------------
    def _velocity(self, x: torch.Tensor, sigma: float, conds: list[Conditioning]) -> torch.Tensor:
        """The velocity at ``sigma`` of ``x`` ([B, C, h, w]) for each of ``conds`` (each a batch of
        B): ``[len(conds) * B, C, h, w]``, the batch repeated per conditioning in that order."""
        k = len(conds)
        x_in = x.repeat(k, 1, 1, 1).to(self.device, self.dtype)
        n = x_in.shape[0]
        if self.spec.family == ZIMAGE:
            captions = [
                c.context[i].to(self.device, self.dtype) for c in conds for i in range(c.context.shape[0])
            ]
            # timesteps in float32 whatever the model's dtype, as the pipelines pass them (bfloat16
            # would keep 3 significant digits of 1 - sigma)
            t = torch.full((n,), 1.0 - sigma, device=self.device, dtype=torch.float32)
            out = self.transformer(list(x_in.unsqueeze(2).unbind(0)), t, captions, return_dict=False)[0]
            return -torch.stack([o.float() for o in out]).squeeze(2)
        cond = Conditioning.cat(conds).to(self.device, self.dtype)
        if self.spec.family == FLUX:
            return self._flux_velocity(x_in, sigma, cond)
        t = torch.full((n,), sigma * 1000.0, device=self.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=x_in,
            timestep=t,
            encoder_hidden_states=cond.context,
            pooled_projections=cond.pooled,
            return_dict=False,
        )[0]
        return out.float()

    def _flux_velocity(self, x: torch.Tensor, sigma: float, cond: Conditioning) -> torch.Tensor:
        """Flux.1's velocity of ``x`` ([n, 16, h, w] in the model's dtype) as FluxPipeline calls the
        transformer: packed 2x2 patches with their ids, the timestep sigma, dev's guidance."""
        from diffusers import FluxPipeline

        n, c, h, w = x.shape
        packed = FluxPipeline._pack_latents(x, n, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, self.device, self.dtype)
        txt_ids = torch.zeros(cond.context.shape[1], 3, device=self.device, dtype=self.dtype)
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((n,), self.guidance, device=self.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=packed,
            timestep=torch.full((n,), sigma, device=self.device, dtype=torch.float32),
            guidance=guidance,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.context,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        scale = self.spec.vae_scale_factor
        return FluxPipeline._unpack_latents(out, h * scale, w * scale, scale).float()

    def _guided_velocity(self, x, sigma, index, cond, uncond, cfg, branches, recorder) -> torch.Tensor:
        """CFG-combined velocity, with the chosen branches evaluated in one call where their
        contexts batch (SD 3.5's and Flux's of different token counts run one call each:
        zero-padding would change their joint attention, which has no mask), and the recorder
        hooked on each call."""
        by_branch = {UNCOND: uncond, COND: cond}
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)

        def to_map(output):
            return image_token_map(output, grid)

        groups = [list(branches)]
        if self.spec.family in (SD35, FLUX) and len({by_branch[b].context.shape[1] for b in branches}) > 1:
            groups = [[b] for b in branches]
        velocity = {}
        for group in groups:
            conds = [by_branch[b] for b in group]
            if recorder is not None and index is not None:
                with recorder.tap(self.transformer, index, group, to_map=to_map):
                    out = self._velocity(x, sigma, conds)
            else:
                out = self._velocity(x, sigma, conds)
            for b, v in zip(group, out.chunk(len(group))):
                velocity[b] = v
        if UNCOND not in velocity:
            return velocity[COND]
        return velocity[UNCOND] + cfg * (velocity[COND] - velocity[UNCOND])

    @torch.no_grad()
    def _denoise(
        self, noise, cond, uncond, cfg, schedule, recorder: UNetRecorder | None, progress: ProgressFn | None
    ) -> torch.Tensor:
        """Euler on the flow sigmas of ``schedule`` from ``noise``; the branches are the
        recorder's, or :meth:`captured_branches` of ``cfg``. Returns the raw VAE latent."""
        branches = recorder.branches if recorder is not None else self.captured_branches(cfg)
        if UNCOND in branches and uncond is None:
            raise InvalidInputError(f"cfg {cfg:g} needs a negative conditioning")

        def predict(x, sigma, index):
            return self._guided_velocity(x, sigma, index, cond, uncond, float(cfg), branches, recorder)

        latent = euler_denoise(predict, noise.to(self.device, torch.float32), schedule, self.shift, progress)
        return self.raw_latent(latent).cpu()

    @torch.no_grad()
    def _invert(self, latent, cond, schedule, progress: ProgressFn | None) -> torch.Tensor:
        """Euler inversion (:func:`~diffsketch.backends.flow.euler_invert`) of the clean model
        latent on ``schedule``, the transformer guided by ``cond`` alone (cfg 1)."""

        def predict(x, sigma, index):
            return self._velocity(x, sigma, [cond])

        return euler_invert(
            predict, latent.to(self.device, torch.float32), schedule, self.shift, progress
        ).cpu()
