"""ComfyUI backend: the library's sampling protocol on ComfyUI's loaded MODEL / CLIP / VAE.

How: clone the MODEL, add a DIFFUSION_MODEL wrapper that registers the
capture hooks for one UNet call and removes them in ``finally``, sample with ComfyUI's "ddim"
sampler (Euler on the ddim_uniform sigma grid == DDIM eta=0) with the cfg=1 shortcut disabled so
the unconditional branch is always evaluated, and run the VAE decoder ourselves (not
``VAE.decode``, which may split or tile) so its blocks can be hooked.
"""

from __future__ import annotations

import hashlib
import math

import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils
import torch

from diffsketch.backends.base import SamplingBackend, weights_fingerprint
from diffsketch.capture.hooks import COND, UNCOND, UNetRecorder, record_vae_decoder, reject_compiled
from diffsketch.capture.spec import feature_spec_from_ldm
from diffsketch.errors import UnsupportedModelError

WRAPPER_KEY = "diffsketch_capture"
# ComfyUI's cond_or_uncond uses 0 for the positive and 1 for the negative prompt.
_COMFY_TO_BRANCH = {0: COND, 1: UNCOND}


def describe_model(model) -> str:
    cfg = getattr(getattr(model, "model", None), "model_config", None)
    return type(cfg).__name__ if cfg is not None else type(getattr(model, "model", model)).__name__


def check_sd1(model, vae) -> int:
    """Raise a clear error unless MODEL and VAE are SD 1.x-shaped; returns the context dim."""
    base = getattr(model, "model", None)
    unet = getattr(base, "diffusion_model", None)
    kind = describe_model(model)
    if unet is None or not hasattr(unet, "output_blocks"):
        raise UnsupportedModelError(
            f"the connected MODEL is {kind}, which has no SD 1.x UNet decoder (output_blocks). DiffSketch works "
            "with SD 1.x checkpoints (SD 1.4/1.5 and their fine-tunes/merges): load one with Load Checkpoint."
        )
    unet_config = getattr(base.model_config, "unet_config", {}) or {}
    context_dim = unet_config.get("context_dim")
    latent_channels = getattr(getattr(base, "latent_format", None), "latent_channels", 4)
    if (
        context_dim != 768
        or unet_config.get("adm_in_channels")
        or latent_channels != 4
        or unet_config.get("use_temporal_attention")
        or unet_config.get("in_channels", 4) != 4
    ):
        raise UnsupportedModelError(
            f"the connected MODEL is {kind} (context dim {context_dim}, {latent_channels}-channel latents); DiffSketch "
            "needs an SD 1.x text-to-image model (768-dim CLIP-L text, 4-channel latents). SDXL, SD 2.x, inpainting "
            "and video models are not supported yet: load an SD 1.x checkpoint."
        )
    if vae is None or not hasattr(getattr(vae, "first_stage_model", None), "decoder"):
        raise UnsupportedModelError(
            "the connected VAE has no decoder; connect the VAE output of Load Checkpoint."
        )
    if (
        comfy.patcher_extension.WrappersMP.APPLY_MODEL in model.wrappers
        and any("compile" in k for k in model.wrappers[comfy.patcher_extension.WrappersMP.APPLY_MODEL])
        or any("torch_compile" in str(k) for k in model.model_options)
    ):
        raise UnsupportedModelError(
            "the MODEL goes through torch.compile (e.g. the TorchCompileModel node), so DiffSketch's feature "
            "hooks would not fire. Connect the MODEL before the compile node."
        )
    reject_compiled(unet, "UNet")
    return int(context_dim)


class ComfyBackend(SamplingBackend):
    def __init__(self, model, clip, vae, show_progress: bool = True):
        """``show_progress=False`` leaves the node's progress bar to the caller (training loops)."""
        context_dim = check_sd1(model, vae)
        self.show_progress = show_progress
        if clip is None:
            raise UnsupportedModelError(
                "no CLIP connected: the checkpoint has no text encoder; connect Load Checkpoint's CLIP."
            )
        self.model, self.clip, self.vae = model, clip, vae
        self.spec = feature_spec_from_ldm(model.model.diffusion_model, vae.first_stage_model, context_dim)
        self.latent_scaling_factor = float(model.model.latent_format.scale_factor)
        self._uncond = None
        self._model_hash = None

    def model_hash(self) -> str:
        """The UNet's :func:`weights_fingerprint` (equal to the diffusers backend's for the same
        checkpoint), plus a digest of the MODEL's weight patches (LoRAs) when it has any."""
        if self._model_hash is None:
            value = weights_fingerprint(self.model.model.diffusion_model.parameters())
            patches = getattr(self.model, "patches", None) or {}
            if patches:
                # Which keys are patched and how strongly; the patch tensors themselves are not read.
                described = sorted((k, [(float(p[0]), float(p[2])) for p in v]) for k, v in patches.items())
                value += "+patches:" + hashlib.sha256(repr(described).encode()).hexdigest()[:8]
            self._model_hash = value
        return self._model_hash

    def encode_prompt(self, text: str) -> torch.Tensor:
        if text == "" and self._uncond is not None:
            return self._uncond
        tokens = self.clip.tokenize(text)
        with torch.no_grad():
            cond = self.clip.encode_from_tokens(tokens).float().cpu()
        if text == "":
            self._uncond = cond
        return cond

    def _denoise(self, noise, cond, uncond, cfg, schedule, recorder: UNetRecorder | None, progress):
        patched = self.model.clone()
        # keep the uncond branch at cfg == 1 so it can be captured (comfy/samplers.py cfg1 shortcut)
        patched.model_options["disable_cfg1_optimization"] = True
        if recorder is not None:
            patched.add_wrapper_with_key(
                comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, _capture_wrapper(recorder)
            )
        ms = patched.get_model_object("model_sampling")
        sigmas = torch.cat([ms.sigmas[torch.tensor(schedule)].float().cpu(), torch.zeros(1)])
        # ComfyUI scales noise by sigma_0 unless sigma_0 == sigma_max; ldm starts DDIM from x_T = noise,
        # i.e. noise * sqrt(1 + sigma_0^2) in k-diffusion space. Pre-scale so both agree exactly.
        s0 = float(sigmas[0])
        if not math.isclose(s0, float(ms.sigma_max), rel_tol=1e-5):
            noise = noise * (math.sqrt(1.0 + s0 * s0) / s0)
        n = len(schedule)
        pbar = comfy.utils.ProgressBar(n) if self.show_progress else None

        def on_step(step, x0, x, total):
            if pbar is not None:
                pbar.update_absolute(step + 1, n)
            comfy.model_management.throw_exception_if_processing_interrupted()
            if progress is not None:
                progress(step + 1, n)

        latent = torch.zeros_like(noise)
        with torch.no_grad():  # also when a training loop calls this with grad enabled
            samples = comfy.sample.sample_custom(
                patched,
                noise,
                cfg,
                comfy.samplers.sampler_object("ddim"),
                sigmas,
                [[cond, {}]],
                [[uncond, {}]],
                latent,
                callback=on_step,
                disable_pbar=True,
                seed=0,
            )
        return samples.float().cpu()

    def _decode(self, latent, capture, store_dtype, store_device):
        comfy.model_management.load_models_gpu([self.vae.patcher])
        fsm = self.vae.first_stage_model
        z = latent.to(self.vae.vae_dtype).to(self.vae.device)
        with torch.no_grad():
            if capture:
                with record_vae_decoder(fsm, self.spec, store_dtype, store_device) as rec:
                    fsm.decode(z)
                rgb, feats = rec["rgb"], rec["features"]
            else:
                rgb, feats = fsm.decode(z).float().cpu(), []
        image = ((rgb.float() + 1) / 2).clamp(0, 1).cpu()
        return image, rgb.float().cpu(), feats


def _capture_wrapper(recorder: UNetRecorder):
    def wrapper(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        t = int(round(float(timesteps[0])))
        branches = [_COMFY_TO_BRANCH.get(int(c), -1) for c in transformer_options["cond_or_uncond"]]
        with recorder.tap(executor.class_obj, t, branches):
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

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
            h.update(sd[k].float().flatten()[:4096].numpy().tobytes())
    return h.hexdigest()[:16]
