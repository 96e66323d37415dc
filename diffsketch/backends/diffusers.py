"""Diffusers backend: UNet2DConditionModel + AutoencoderKL + CLIPTextModel, DDIM eta=0 with CFG.

The DDIM loop is written out here (not DDIMScheduler) because DiffSketch needs the exact ldm
conventions that ComfyUI also follows: the uniform grid ``t = 1 + k*(1000//steps)``, x_T = noise,
CFG with the batch ordered [uncond, cond], and the final step returning the predicted x0.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..capture.hooks import COND, UNCOND, UNetRecorder, record_vae_decoder, reject_compiled
from ..capture.spec import feature_spec_from_diffusers
from ..errors import InvalidInputError, WeightsNotFoundError
from .base import ProgressFn, SamplingBackend, scaled_linear_alphas_cumprod, weights_fingerprint
from .text import ClipBPETokenizer, HFTokenizerAdapter

#: Working memory of one 512x512 image in a sampling batch (UNet at CFG batch 2, VAE decode) on
#: a GPU in fp16: an estimate with room to spare, not yet measured on a GPU;
#: benchmarks/style_cost.py --device cuda prints the peak per B to check it against.
GPU_BYTES_PER_IMAGE = 2 * 2**30
MAX_GPU_BATCH = 16


class DiffusersBackend(SamplingBackend):
    def __init__(
        self,
        unet,
        vae,
        text_encoder,
        tokenizer=None,
        device="cpu",
        dtype=torch.float32,
        alphas_cumprod: torch.Tensor | None = None,
    ):
        reject_compiled(unet, "UNet")
        reject_compiled(vae, "VAE")
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet = unet.to(self.device, dtype).eval().requires_grad_(False)
        self.vae = vae.to(self.device, dtype).eval().requires_grad_(False)
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer if tokenizer is not None else ClipBPETokenizer()
        self.spec = feature_spec_from_diffusers(self.unet, self.vae)
        self.latent_scaling_factor = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.alphas_cumprod = (
            alphas_cumprod if alphas_cumprod is not None else scaled_linear_alphas_cumprod()
        ).double()
        self._uncond_cache: torch.Tensor | None = None
        self._model_hash: str | None = None

    def model_hash(self) -> str:
        """:func:`~diffsketch.backends.base.weights_fingerprint` of the UNet (recorded in trained files)."""
        if self._model_hash is None:
            self._model_hash = weights_fingerprint(self.unet.parameters())
        return self._model_hash

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=torch.float32) -> DiffusersBackend:
        """A local diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        root = Path(path)
        for sub in ("unet", "vae", "text_encoder"):
            if not (root / sub).is_dir():
                raise WeightsNotFoundError(
                    f"{root} is not a diffusers Stable Diffusion folder: '{sub}/' is missing. Point to a folder "
                    "saved with StableDiffusionPipeline.save_pretrained, or to a single .safetensors checkpoint."
                )
        kw = {"local_files_only": True}
        unet = UNet2DConditionModel.from_pretrained(root / "unet", **kw)
        vae = AutoencoderKL.from_pretrained(root / "vae", **kw)
        te = CLIPTextModel.from_pretrained(root / "text_encoder", **kw)
        tok = None
        if (root / "tokenizer").is_dir():
            tok = HFTokenizerAdapter(CLIPTokenizer.from_pretrained(root / "tokenizer", **kw))
        acp = None
        sched_cfg = root / "scheduler" / "scheduler_config.json"
        if sched_cfg.is_file():
            import json

            c = json.loads(sched_cfg.read_text())
            if c.get("beta_schedule", "scaled_linear") != "scaled_linear":
                raise InvalidInputError(
                    f"{sched_cfg}: beta_schedule {c.get('beta_schedule')} is not SD 1.x's scaled_linear"
                )
            acp = scaled_linear_alphas_cumprod(
                c.get("beta_start", 0.00085), c.get("beta_end", 0.012), c.get("num_train_timesteps", 1000)
            )
        return cls(unet, vae, te, tok, device=device, dtype=dtype, alphas_cumprod=acp)

    @classmethod
    def from_single_file(cls, path, device="cpu", dtype=torch.float32) -> DiffusersBackend:
        """An SD 1.x single-file checkpoint (.safetensors), converted in memory, nothing downloaded."""
        from .checkpoint import load_sd1_single_file

        unet, vae, te = load_sd1_single_file(path)
        return cls(unet, vae, te, None, device=device, dtype=dtype)

    @classmethod
    def load(cls, path, device="cpu", dtype=torch.float32) -> DiffusersBackend:
        p = Path(path)
        if p.is_dir():
            return cls.from_pretrained(p, device, dtype)
        if not p.exists():
            raise WeightsNotFoundError(
                f"model not found: {p} (give a diffusers folder or an SD 1.x .safetensors file)"
            )
        return cls.from_single_file(p, device, dtype)

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
    def encode_prompt(self, text: str) -> torch.Tensor:
        if text == "" and self._uncond_cache is not None:
            return self._uncond_cache
        ids = self.tokenizer(text).to(self.device)
        out = self.text_encoder(input_ids=ids).last_hidden_state.float().cpu()
        if text == "":
            self._uncond_cache = out
        return out

    @torch.no_grad()
    def _denoise(
        self, noise, cond, uncond, cfg, schedule, recorder: UNetRecorder | None, progress: ProgressFn | None
    ) -> torch.Tensor:
        acp = self.alphas_cumprod
        x = noise.to(self.device, torch.float32)
        ctx = torch.cat([uncond, cond]).to(self.device, self.dtype)
        n = len(schedule)
        for i, t in enumerate(schedule):
            a_t = float(acp[t])
            a_prev = float(acp[schedule[i + 1]]) if i + 1 < n else 1.0  # last step -> predicted x0
            x_in = torch.cat([x, x]).to(self.dtype)
            t_in = torch.full((x_in.shape[0],), t, device=self.device, dtype=torch.long)
            if recorder is not None:
                with recorder.tap(self.unet, t, (UNCOND, COND)):
                    eps = self.unet(x_in, t_in, encoder_hidden_states=ctx).sample
            else:
                eps = self.unet(x_in, t_in, encoder_hidden_states=ctx).sample
            eps_u, eps_c = eps.float().chunk(2)
            eps = eps_u + cfg * (eps_c - eps_u)
            x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
            if progress is not None:
                progress(i + 1, n)
        return (x / self.latent_scaling_factor).cpu()

    @torch.no_grad()
    def _decode(self, latent, capture, store_dtype, store_device):
        z = latent.to(self.device, self.dtype)
        if capture:
            with record_vae_decoder(self.vae, self.spec, store_dtype, store_device) as rec:
                self.vae.decode(z)
            rgb, feats = rec["rgb"], rec["features"]
        else:
            rgb, feats = self.vae.decode(z).sample.float().cpu(), []
        image = ((rgb.float() + 1) / 2).clamp(0, 1).cpu()
        return image, rgb.float().cpu(), feats

    def decode_with_features(self, latent, store_dtype=torch.float16, store_device="cpu"):
        return self._decode(latent, True, store_dtype, store_device)
