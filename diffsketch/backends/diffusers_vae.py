"""The VAE side shared by the diffusers backends (UNet and diffusion transformer): raw latents in
and out of a diffusers ``AutoencoderKL``, its decoder taps captured."""

from __future__ import annotations

import torch

from ..capture.hooks import record_vae_decoder


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


class DiffusersVAE:
    """The VAE primitives of the diffusers backends (``self.vae``, ``self.device``,
    ``self.vae_dtype``, ``self.spec``): raw latents in and out, decoder taps captured."""

    @torch.no_grad()
    def _encode(self, image: torch.Tensor) -> torch.Tensor:
        pixels = (image * 2 - 1).to(self.device, self.vae_dtype)
        return self.vae.encode(pixels).latent_dist.mean.float().cpu()

    @torch.no_grad()
    def _decode(self, latent, capture, store_dtype, store_device):
        z = latent.to(self.device, self.vae_dtype)
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
