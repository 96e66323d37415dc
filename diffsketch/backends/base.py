"""The backend protocol: sample an image with a Stable Diffusion model while capturing DiffSketch features.

A backend supplies three primitives (``encode_prompt``, ``_denoise``, ``_decode``); the shared
:meth:`SamplingBackend.sample` does validation, timestep planning, noise, capture bookkeeping
and assembles a :class:`~diffsketch.capture.sample.CapturedSample`. The diffusers backend and the
ComfyUI backend (``nodes/comfy_backend.py``) differ only in the primitives, so both tap the same
points under the same conventions.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Sequence

import torch

from ..capture.hooks import UNCOND, UNetRecorder, captured_branches
from ..capture.identity import backend_identity
from ..capture.picture import PICTURE_FIT_KEY, fit_picture, large_picture_notice
from ..capture.sample import CapturedSample
from ..capture.sampling import SamplingSettings
from ..capture.spec import FLUX, SD35, ZIMAGE, FeatureSpec, family_name, family_native_side, is_flow_family
from ..capture.timesteps import default_steps, timestep_grid
from ..errors import InvalidInputError
from .conditioning import Conditioning
from .inversion import (
    INVERSION_CFG,
    PictureCapture,
    ProgressFn,
    psnr,
)


def make_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """Initial noise on the CPU, identical to ComfyUI's ``prepare_noise`` for a batch of one."""
    if not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32)


def weights_fingerprint(tensors: Iterable[torch.Tensor], sample_elements: int = 1024) -> str:
    """A short hash that identifies a model's weights whoever loaded them.

    It reads the first ``sample_elements`` values of every tensor (as fp16, with the tensor's
    element count) and hashes those digests in sorted order, so neither the parameter names (ldm
    vs diffusers layouts), nor their order, nor loading in fp16 vs fp32 changes it, and a 1 GB
    UNet is hashed in milliseconds. It is provenance metadata, not an integrity check."""
    digests = []
    for t in tensors:
        head = t.detach().reshape(-1)[:sample_elements].to(device="cpu", dtype=torch.float16)
        digests.append(hashlib.sha256(f"{t.numel()}|".encode() + head.numpy().tobytes()).digest())
    return hashlib.sha256(b"".join(sorted(digests))).hexdigest()[:16]


def dit_weights_fingerprint(tensors: Iterable[torch.Tensor], hidden: int) -> str:
    """:func:`weights_fingerprint` of a diffusion transformer, the same for ComfyUI's layout and
    diffusers' of the same weights: every tensor whose first dimension is a multiple of the model's
    ``hidden`` size is hashed as its blocks of ``hidden`` rows.

    The two layouts hold the same values cut differently along that dimension: ComfyUI keeps
    attention fused (one ``qkv`` weight [3d, d] where diffusers has ``to_q``/``to_k``/``to_v`` [d, d];
    Flux's single blocks' ``linear1`` is qkv and the MLP input [3d + 4d, d] in one) and diffusers'
    converters swap the shift and scale halves of the final modulation [2d, d]. Cut into d-row
    blocks, both are the same blocks in another order, which the sorted digests ignore. Everything
    else is one tensor in both (their position tables are buffers, not parameters, in both)."""
    hidden = int(hidden)

    def row_blocks():
        for t in tensors:
            if t.ndim and t.shape[0] > hidden and t.shape[0] % hidden == 0:
                yield from t.split(hidden)
            else:
                yield t

    return weights_fingerprint(row_blocks())


def diffusion_model_fingerprint(tensors: Iterable[torch.Tensor], spec: FeatureSpec) -> str:
    """The fingerprint both backends record for a diffusion model of ``spec``'s family: a DiT's
    :func:`dit_weights_fingerprint` at its hidden size (every DiT tap has it), a UNet's
    :func:`weights_fingerprint`."""
    if is_flow_family(spec.family):
        return dit_weights_fingerprint(tensors, spec.unet[0].channels)
    return weights_fingerprint(tensors)


def guidance_record(backend) -> dict:
    """``{"guidance": value}`` for a backend whose model embeds a guidance value besides cfg
    (Flux.1 dev: the backend's ``guidance``), so what it makes records it; ``{}`` for the others
    (and for a stand-in backend without the attribute)."""
    guidance = getattr(backend, "guidance", None)
    return {} if guidance is None else {"guidance": float(guidance)}


def scaled_linear_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000
) -> torch.Tensor:
    """SD 1.x's noise schedule (ldm "linear" == diffusers "scaled_linear"), float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


#: ComfyUI keeps the last alpha_cumprod of a zero-terminal-SNR schedule at this value, not 0.
ZERO_SNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The schedule rescaled to zero terminal SNR (Lin et al. 2023), as v-prediction "ztsnr"
    checkpoints (e.g. NoobAI-XL v-pred) were trained: sqrt(alpha_cumprod) shifted so the last
    step is pure noise and scaled so the first is unchanged. Same values as ComfyUI's ``zsnr``."""
    root = alphas_cumprod.double().sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    out = root**2
    out[-1] = ZERO_SNR_LAST_ALPHA_CUMPROD
    return out


def has_zero_terminal_snr(last_alpha_cumprod: float) -> bool:
    """Whether a schedule ending on ``last_alpha_cumprod`` is zero-terminal-SNR: SD's own ends at
    about 0.0047, a rescaled one at :data:`ZERO_SNR_LAST_ALPHA_CUMPROD` (4.9e-8)."""
    return float(last_alpha_cumprod) < 1e-5


def check_picture(image, what: str = "the picture") -> torch.Tensor:
    """``image`` as ``[1, 3, H, W]`` float32 in [0, 1], or a clear error naming ``what``: one
    picture, finite values in [0, 1] (or uint8/uint16). Its size is the fit's business
    (:func:`~diffsketch.capture.picture.fit_picture`)."""
    from ..images import as_rgb, image_batch

    x = image_batch(image, what, channels_first=True)
    if x.shape[0] != 1:
        raise InvalidInputError(
            f"{what} is a batch of {x.shape[0]} images; features are captured from ONE picture: pass one "
            "(e.g. pick one with an image-batch selector)."
        )
    return as_rgb(x).permute(0, 3, 1, 2).contiguous()


class SamplingBackend:
    """Shared sampling driver. Subclasses set ``spec`` and implement the primitives."""

    spec: FeatureSpec
    #: raw VAE latent = model latent / scaling_factor
    latent_scaling_factor: float = 0.18215
    #: what the UNet predicts: "epsilon" or "v_prediction"
    prediction_type: str = "epsilon"
    #: whether the noise schedule is rescaled to zero terminal SNR (:func:`has_zero_terminal_snr`)
    zero_terminal_snr: bool = False
    #: whether the model was distilled to sample without guidance (Z-Image Turbo): cfg > 1 then
    #: gets :meth:`guidance_notice`
    guidance_distilled: bool = False

    # -- primitives ----------------------------------------------------------------------------
    def encode_prompt(self, text: str) -> Conditioning:  # pragma: no cover - interface
        raise NotImplementedError

    def _denoise(
        self,
        noise: torch.Tensor,
        cond: Conditioning,
        uncond: Conditioning,
        cfg: float,
        schedule: list[int],
        recorder: UNetRecorder | None,
        progress: ProgressFn | None,
    ) -> torch.Tensor:  # pragma: no cover - interface
        """Deterministic DDIM (eta=0) from ``noise`` (x_T in DDPM space) over ``schedule``
        (descending timesteps), ending on the last step's predicted x0. Returns the raw VAE latent.
        SDXL backends add the pooled embeddings and the size conditioning of the image the noise
        decodes to (original = target = that size, no crop)."""
        raise NotImplementedError

    def _decode(self, latent: torch.Tensor, capture: bool, store_dtype, store_device):  # pragma: no cover
        """Decode a raw VAE latent. Returns (image [1,3,H,W] in [0,1], rgb, vae feature list)."""
        raise NotImplementedError

    def _encode(self, image: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """The raw VAE latent (the posterior mean) of ``image`` [1,3,H,W] in [0,1], on the CPU."""
        raise NotImplementedError

    def _invert(
        self, latent: torch.Tensor, cond: Conditioning, schedule: list[int], progress: ProgressFn | None
    ) -> torch.Tensor:  # pragma: no cover - interface
        """:func:`~diffsketch.backends.inversion.ddim_invert` of the clean model latent ``latent``
        (DDPM space) on ``schedule``, the UNet guided by ``cond`` alone (cfg 1). Returns x_T on the CPU."""
        raise NotImplementedError

    def model_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """The latent the diffusion model works on, from a raw VAE latent (times the scaling factor;
        the flow families' 16-channel VAEs also shift it first)."""
        return latent * self.latent_scaling_factor

    # -- shared --------------------------------------------------------------------------------
    @property
    def default_steps(self) -> int:
        """The steps to sample with when none are given
        (:func:`~diffsketch.capture.timesteps.default_steps`: 8 for Z-Image Turbo and Flux.1 schnell,
        the Flux.1 without dev's guidance input, else 50)."""
        schnell = getattr(self, "guidance", None) is None
        return default_steps(self.spec.family, self.guidance_distilled, schnell)

    def captured_branches(self, cfg: float) -> tuple[int, ...]:
        """The branches sampling at ``cfg`` evaluates and captures
        (:func:`~diffsketch.capture.hooks.captured_branches` of this model's family)."""
        return captured_branches(self.spec.family, cfg)

    def guidance_notice(self, cfg: float) -> str | None:
        """What the user should know about sampling this model at ``cfg``, or None: a
        guidance-distilled model (Z-Image Turbo) asked for cfg > 1."""
        if not self.guidance_distilled or float(cfg) <= 1.0:
            return None
        name = (
            "Z-Image Turbo" if self.spec.family == ZIMAGE else f"this {family_name(self.spec.family)} model"
        )
        notice = (
            f"{name} is guidance-distilled: it samples at cfg 1 with the conditional branch alone. cfg {cfg:g} "
            "also evaluates the unconditional branch (twice the cost, and both branches are captured) and "
            "oversaturates the image; set cfg to 1 unless that is what you want."
        )
        if self.spec.family == ZIMAGE:
            # Turbo and base share one architecture: nothing in the weights tells them apart
            notice += (
                f" (Z-Image base is not guidance-distilled: with a base model, cfg {cfg:g} is right and this "
                "notice does not apply.)"
            )
        return notice

    def check_conditioning(self, cond: Conditioning | torch.Tensor, name: str) -> Conditioning:
        """``cond`` as this model takes it (detached float32), or a clear error. The context is
        ``[1, T, context_dim]`` with T as the family's text encoders make it: 77*k for the UNet
        families (CLIP windows), any T >= 1 for Z-Image (its Qwen3 tokens, the padding dropped),
        T >= 77 for SD 3.5 (77 CLIP-L/G tokens, then T5's), any T >= 1 for Flux.1 (T5-XXL tokens);
        with a ``[1, pooled_dim]`` pooled embedding where the backbone takes one (SDXL, SD 3.5,
        Flux.1) and none where it does not."""
        cond = Conditioning.of(cond)
        d, p = self.spec.context_dim, self.spec.pooled_dim
        family = family_name(self.spec.family)
        context = cond.context
        tokens = int(context.shape[1])
        if self.spec.family == ZIMAGE:
            valid, rule = (
                tokens >= 1,
                f"[1, T, {d}] with T >= 1 tokens (Qwen3 hidden states, padding dropped)",
            )
        elif self.spec.family == SD35:
            valid, rule = (
                tokens >= 77,
                f"[1, 77 + T, {d}] (77 CLIP-L/G tokens padded to {d}, then T5-XXL tokens)",
            )
        elif self.spec.family == FLUX:
            valid, rule = tokens >= 1, f"[1, T, {d}] with T >= 1 tokens (T5-XXL hidden states)"
        else:
            valid, rule = tokens > 0 and tokens % 77 == 0, f"[1, 77*k, {d}]"
        if context.shape[0] != 1 or context.shape[-1] != d or not valid:
            raise InvalidInputError(
                f"{name} conditioning has shape {list(context.shape)}; this {family} model expects {rule} "
                "(one prompt's text embedding from this checkpoint's text encoder)."
            )
        if p and (cond.pooled is None or tuple(cond.pooled.shape) != (1, p)):
            got = "none" if cond.pooled is None else str(list(cond.pooled.shape))
            raise InvalidInputError(
                f"{name} conditioning has pooled embedding {got}; this {family} model also needs the pooled text "
                f"embedding [1, {p}] (encode the prompt with this checkpoint's CLIP, which returns both)."
            )
        if not p and cond.pooled is not None:
            raise InvalidInputError(
                f"{name} conditioning carries a pooled embedding {list(cond.pooled.shape)}, which this {family} model "
                "does not take: it was made for another backbone (SDXL, SD 3.5 or Flux.1). Encode the prompt with this "
                "checkpoint's text encoder."
            )
        return cond.map(lambda t: t.detach().float())

    def sample(
        self,
        cond: Conditioning | torch.Tensor | str,
        settings: SamplingSettings,
        *,
        uncond: Conditioning | torch.Tensor | None = None,
        capture: bool = True,
        unet_reduce=None,
        decode: bool = True,
        store_dtype: torch.dtype = torch.float16,
        store_device: torch.device | str = "cpu",
        progress: ProgressFn | None = None,
    ) -> CapturedSample:
        """Sample one image with classifier-free guidance ("" as the negative) and capture features.

        ``cond``: a prompt or its :class:`Conditioning` (a ``[1, 77*k, D]`` context tensor alone
        for SD 1.x/2.x). ``settings``: seed, steps, cfg,
        size, the timesteps to capture (mapped to the nearest steps of the DDIM grid; the result's
        ``plan`` says which) and the denoising schedule. ``unet_reduce(layer, tensor) -> vector``
        stores reduced vectors instead of full tensors. ``decode=False`` skips the VAE.
        """
        return self.sample_batch(
            [cond],
            settings,
            uncond=uncond,
            capture=capture,
            unet_reduce=unet_reduce,
            decode=decode,
            store_dtype=store_dtype,
            store_device=store_device,
            progress=progress,
        )

    def sample_batch(
        self,
        conds: Sequence[Conditioning | torch.Tensor | str],
        settings: SamplingSettings,
        *,
        seeds: Sequence[int] | None = None,
        uncond: Conditioning | torch.Tensor | None = None,
        capture: bool = True,
        unet_reduce=None,
        decode: bool = True,
        store_dtype: torch.dtype = torch.float16,
        store_device: torch.device | str = "cpu",
        progress: ProgressFn | None = None,
    ) -> CapturedSample:
        """:meth:`sample` for B conditions at once: image ``k`` is sampled with ``conds[k]``,
        ``settings`` and the noise of ``seeds[k]`` (None: ``settings.seed`` for a single
        condition), every UNet and VAE call running on the whole batch. Returns one
        :class:`CapturedSample` of batch B (``.split()`` gives the B samples); item ``k`` is the
        sample of ``(conds[k], settings.replace(seed=seeds[k]))`` up to float rounding, which can
        differ with B."""
        if not isinstance(settings, SamplingSettings):
            raise InvalidInputError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
        if seeds is None and len(conds) == 1:
            seeds = [settings.seed]
        if seeds is None or len(conds) < 1 or len(conds) != len(seeds):
            raise InvalidInputError(
                f"sample_batch needs one seed per condition, got {len(conds)} conditions and "
                f"{None if seeds is None else len(seeds)} seeds"
            )
        self.check_size(settings.width, settings.height)
        plan, sched = self._capture_plan(settings, capture)
        branches = self.captured_branches(settings.cfg)
        notice = self.guidance_notice(settings.cfg)
        if notice is not None:
            warnings.warn(notice, stacklevel=2)
        prompts = [c if isinstance(c, str) else None for c in conds]
        checked = [
            self.check_conditioning(self.encode_prompt(c) if isinstance(c, str) else c, "positive")
            for c in conds
        ]
        if len({c.context.shape[1] for c in checked}) != 1:
            raise InvalidInputError("the conditions of one batch must have the same number of tokens")
        cond = Conditioning.cat(checked)
        if UNCOND in branches:
            uncond = self.encode_prompt("") if uncond is None else uncond
            uncond = self.check_conditioning(uncond, "negative").map(
                lambda t: t.expand(len(conds), *t.shape[1:])
            )
        else:  # one branch: the negative is neither encoded nor evaluated
            uncond = None
        lh, lw = self.spec.latent_size(settings.width, settings.height)
        noise = torch.cat([make_noise(seed, (1, self.spec.latent_channels, lh, lw)) for seed in seeds])
        recorder = (
            UNetRecorder(
                self.spec, plan.used, store_dtype, store_device, reduce=unet_reduce, branches=branches
            )
            if capture
            else None
        )
        latent = self._denoise(noise, cond, uncond, settings.cfg, sched, recorder, progress)
        unet = recorder.result() if recorder is not None else {}
        if decode:
            image, rgb, vae = self._decode(latent, capture, store_dtype, store_device)
        else:
            image = rgb = torch.zeros(len(conds), 3, 0, 0)
            vae = []
        meta = {
            "seed": seeds[0] if len(seeds) == 1 else list(seeds),
            "steps": settings.steps,
            "cfg": settings.cfg,
            "width": settings.width,
            "height": settings.height,
            "schedule": sched,
            "unet_evaluations": len(sched),
            "branches": len(branches),
            # which model made the features (family, parameterisation, weights): checked wherever
            # they meet a model (capture.identity.check_same_model)
            **backend_identity(self).to_dict(),
        }
        if any(p is not None for p in prompts):
            meta["prompt"] = prompts[0] if len(prompts) == 1 else prompts
        meta.update(guidance_record(self))
        return CapturedSample(self.spec, plan, image, latent.float().cpu(), unet, vae, rgb, meta)

    @property
    def native_size(self) -> int:
        """The image side the checkpoint was trained at; by default the family's
        (:func:`~diffsketch.capture.spec.family_native_side`)."""
        return family_native_side(self.spec.family, self.prediction_type)

    def check_size(self, width: int, height: int) -> None:
        """Refuse an image size this backbone cannot take: sides must be multiples of its
        :attr:`~diffsketch.capture.spec.FeatureSpec.size_multiple` (SD 1.x/2.x: 64, SDXL: 32;
        :class:`SamplingSettings` only checks the finest multiple any backbone takes)."""
        m = self.spec.size_multiple
        halvings = (m // self.spec.vae_scale_factor).bit_length() - 1
        why = (
            f"the VAE's {self.spec.vae_scale_factor} px per latent element times the transformer's patch of "
            f"{1 << halvings}"
            if is_flow_family(self.spec.family)
            else f"its UNet halves the latent {halvings} times"
        )
        for name, v in (("width", width), ("height", height)):
            if v % m:
                lo = max(m, v // m * m)
                raise InvalidInputError(
                    f"{name}={v} is not supported by this {family_name(self.spec.family)} model: it must be a "
                    f"multiple of {m} ({why}), e.g. {lo} or {lo + m}."
                )

    def image_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` with 0 (or None) meaning :attr:`native_size`."""
        return int(width or self.native_size), int(height or self.native_size)

    def _capture_plan(self, settings: SamplingSettings, capture: bool = True):
        """``(plan, schedule)`` of ``settings`` on this model's grid, or a clear error when the
        schedule skips a capture timestep."""
        plan = settings.plan(self.spec.family)
        sched = settings.denoising_schedule(plan)
        if capture and not set(plan.used) <= set(sched):
            raise InvalidInputError(
                f"the schedule {sched} does not visit the capture timesteps {sorted(set(plan.used) - set(sched))}"
            )
        return plan, sched

    def capture_from_image(
        self,
        image,
        settings: SamplingSettings,
        *,
        caption: str | Conditioning | torch.Tensor = "",
        max_side: int = 0,
        what: str = "the picture",
        store_dtype: torch.dtype = torch.float16,
        store_device: torch.device | str = "cpu",
        progress: ProgressFn | None = None,
    ):
        """The features of the user's own picture: DDIM inversion (eta 0) of its VAE latent on the
        grid and schedule of ``settings``, then a replay of the inverted trajectory that captures the
        UNet taps (both branches, "" as the negative) and, decoding the replay, the VAE taps.

        ``image``: ONE picture (``[1,3,H,W]``, ComfyUI's ``[1,H,W,C]`` or ``[H,W,C]``; float in
        [0, 1], uint8 or uint16; grey and alpha are made RGB over white). It is used at its own size
        fitted to this backbone (:func:`~diffsketch.capture.picture.fit_picture`: resized so its
        longer side is at most ``max_side`` when that is not 0, then centre-cropped to multiples of
        the spec's ``size_multiple``); that sets the size (``settings.width``/``height`` are not
        used), and the features record the fit (``meta["picture_fit"]``) for the drawing. ``what``
        names the picture in error messages (e.g. the command-line option that gave it).
        ``caption``: what the picture shows (a prompt or its conditioning); inversion and replay are
        guided by it alone (:data:`~diffsketch.backends.inversion.INVERSION_CFG`). ``settings.cfg``
        is not used here: it is recorded as the guidance Train samples its own images with.
        Returns a :class:`~diffsketch.backends.inversion.PictureCapture` (features, the replay's
        PSNR against the fitted picture, the inverted x_T, the fitted picture, notices in words
        about the fit, and a warning when the PSNR is low).
        """
        if not isinstance(settings, SamplingSettings):
            raise InvalidInputError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
        family = self.spec.family
        picture, fit = fit_picture(
            check_picture(image, what), self.spec.size_multiple, family, max_side, what
        )
        notices = [n for n in (fit.notice(), large_picture_notice(fit.size, self.native_size, family)) if n]
        width, height = fit.size
        settings = settings.replace(width=width, height=height)
        self.check_size(width, height)
        plan, sched = self._capture_plan(settings)
        prompt = caption if isinstance(caption, str) else None
        cond = self.check_conditioning(
            self.encode_prompt(caption) if prompt is not None else caption, "caption"
        )
        branches = self.captured_branches(settings.cfg)
        uncond = self.check_conditioning(self.encode_prompt(""), "negative") if UNCOND in branches else None
        n = len(sched)

        def inverting(i, total):
            if progress is not None:
                progress(i, 2 * n)

        def replaying(i, total):
            if progress is not None:
                progress(n + i, 2 * n)

        latent = self._encode(picture)
        noise = self._invert(self.model_latent(latent), cond, sched, inverting)
        # the branches Train's own samples will have (settings.cfg), so picture and samples match
        recorder = UNetRecorder(self.spec, plan.used, store_dtype, store_device, branches=branches)
        replayed = self._denoise(noise, cond, uncond, INVERSION_CFG, sched, recorder, replaying)
        unet = recorder.result()
        decoded, rgb, vae = self._decode(replayed, True, store_dtype, store_device)
        replay_psnr = psnr(decoded, picture)
        meta = {
            "source": "picture",
            "steps": settings.steps,
            "cfg": settings.cfg,
            "replay_cfg": INVERSION_CFG,
            "replay_psnr": replay_psnr,
            "width": settings.width,
            "height": settings.height,
            "schedule": sched,
            "unet_evaluations": 2 * n,
            "branches": len(branches),
            PICTURE_FIT_KEY: fit.to_dict(),
            **backend_identity(self).to_dict(),
        }
        if prompt is not None:
            meta["prompt"] = prompt
        meta.update(guidance_record(self))
        sample = CapturedSample(self.spec, plan, decoded, replayed.float().cpu(), unet, vae, rgb, meta)
        return PictureCapture(sample, replay_psnr, noise.float().cpu(), picture, tuple(notices))

    def suggested_batch(self, width: int, height: int) -> int:
        """Images per :meth:`sample_batch` call for bulk sampling (pair generation): 1 unless a
        backend knows better."""
        return 1

    def grid(self, steps: int) -> list[int]:
        return timestep_grid(steps, self.spec.family)
