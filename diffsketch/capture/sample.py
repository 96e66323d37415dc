"""One generated image with the features DiffSketch captured while making it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .. import fileio
from .identity import ModelIdentity
from .spec import FeatureSpec
from .timesteps import TimestepPlan

FEATURES_KIND = "features"
FEATURES_VERSION = 1


@dataclass
class CapturedSample:
    """A sample and its captured features: a batch of one, or of B from ``sample_batch``.

    - ``image``: [B, 3, H, W] float32 in [0, 1].
    - ``latent``: [B, C, h, w] final latent in raw VAE space (ComfyUI's LATENT convention).
    - ``unet``: ``{timestep: [tensor[2B, C_l, h_l, w_l] per tap]}``, the B uncond branches
      first, then the B cond ones (for one sample: index 0 uncond, 1 cond); ``[B, ...]`` of the
      cond branch alone where the sampling evaluated only that one (a flow model at cfg 1:
      :attr:`branches` is 1).
    - ``vae``: one [B, C_k, H_k, W_k] tensor per VAE tap of ``spec.vae``.
    - ``rgb``: [B, 3, H, W] float32 raw decoder output (about [-1, 1], not clamped).
    """

    spec: FeatureSpec
    plan: TimestepPlan
    image: torch.Tensor
    latent: torch.Tensor
    unet: dict[int, list[torch.Tensor]]
    vae: list[torch.Tensor]
    rgb: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def timesteps(self) -> tuple[int, ...]:
        return tuple(sorted(self.unet))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[-1]), int(self.image.shape[-2])

    @property
    def batch_size(self) -> int:
        return int(self.latent.shape[0])

    @property
    def branches(self) -> int:
        """Branches captured per image: 2 (uncond and cond) or 1 (cond alone)."""
        first = next(iter(self.unet.values()), None)
        return int(first[0].shape[0]) // self.batch_size if first else 2

    def identity(self, where: str = "the captured sample") -> ModelIdentity:
        """The model the sample was captured with, as its meta records it (backends write it)."""
        return ModelIdentity.from_dict(self.meta, self.spec.family, where)

    def split(self) -> list[CapturedSample]:
        """The samples of a batch, each a batch of one."""
        b = self.batch_size
        if b == 1:
            return [self]
        out = []
        for k in range(b):
            meta = dict(self.meta)
            for key in ("seed", "prompt"):
                if isinstance(meta.get(key), list):
                    meta[key] = meta[key][k]
            out.append(
                replace(
                    self,
                    image=self.image[k : k + 1],
                    latent=self.latent[k : k + 1],
                    unet={t: [x[k::b].clone() for x in xs] for t, xs in self.unet.items()},
                    vae=[x[k : k + 1] for x in self.vae],
                    rgb=self.rgb[k : k + 1],
                    meta=meta,
                )
            )
        return out

    def crop_multiple(self) -> int:
        """Pixels per element of the coarsest tap: crop windows are multiples of this, so every
        tap is cut at whole elements (SD 1.x/2.x: 64, SDXL: 32)."""
        return self.spec.size_multiple

    def crop(self, left: int, top: int, width: int, height: int) -> CapturedSample:
        """The sample seen through the pixel window ``(left, top, width, height)``: every tap, the
        latent, the image and the RGB output cut to that window, as copies (so the full sample's
        memory can be freed). All four must be multiples of :meth:`crop_multiple` and the window
        inside the image."""
        m = self.crop_multiple()
        w, h = self.size
        if any(v % m for v in (left, top, width, height)) or min(width, height) < m:
            raise ValueError(f"crop window {(left, top, width, height)} is not made of {m}-px blocks")
        if left < 0 or top < 0 or left + width > w or top + height > h:
            raise ValueError(f"crop window {(left, top, width, height)} is outside the {w}x{h} image")
        pixels_per_latent = self.spec.vae_scale_factor

        def cut(x: torch.Tensor, log2_scale: int) -> torch.Tensor:
            # elements of this tensor per latent element: 2**log2_scale
            def at(v):
                latent = v // pixels_per_latent
                return latent << log2_scale if log2_scale >= 0 else latent >> -log2_scale

            return x[..., at(top) : at(top + height), at(left) : at(left + width)].clone()

        return replace(
            self,
            image=self.image[..., top : top + height, left : left + width].clone(),
            rgb=self.rgb[..., top : top + height, left : left + width].clone(),
            latent=cut(self.latent, 0),
            unet={
                t: [cut(x, tap.log2_scale) for x, tap in zip(xs, self.spec.unet)]
                for t, xs in self.unet.items()
            },
            vae=[cut(x, tap.log2_scale) for x, tap in zip(self.vae, self.spec.vae)],
        )

    def tensors(self):
        for t in self.timesteps:
            yield from self.unet[t]
        yield from self.vae
        yield from (self.rgb, self.image, self.latent)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def to(self, device=None, dtype=None) -> CapturedSample:
        """Move every feature tensor (image/latent/rgb keep float32)."""

        def mv(t, keep=False):
            return t.to(device=device, dtype=None if keep else dtype)

        return replace(
            self,
            unet={t: [mv(x) for x in xs] for t, xs in self.unet.items()},
            vae=[mv(x) for x in self.vae],
            rgb=mv(self.rgb, True),
            image=mv(self.image, True),
            latent=mv(self.latent, True),
        )

    def summary(self) -> str:
        w, h = self.size
        return (
            f"{w}x{h} sample, {len(self.unet)} timesteps x {len(self.spec.unet)} UNet taps "
            f"({'uncond+cond' if self.branches == 2 else 'cond only'}), "
            f"{len(self.vae)} VAE taps, {self.nbytes() / 2**20:.1f} MiB; {self.plan.describe()}"
        )

    # -- files ---------------------------------------------------------------------------------
    def save(self, path) -> None:
        tensors = {"image": self.image, "latent": self.latent, "rgb": self.rgb}
        for t, xs in self.unet.items():
            for i, x in enumerate(xs):
                tensors[f"unet.{t}.{i}"] = x
        for i, x in enumerate(self.vae):
            tensors[f"vae.{i}"] = x
        meta = {
            "spec": self.spec.to_json(),
            "plan": {
                "steps": self.plan.steps,
                "requested": list(self.plan.requested),
                "used": list(self.plan.used),
            },
            "meta": self.meta,
        }
        fileio.save_tensors(path, tensors, FEATURES_KIND, FEATURES_VERSION, meta)

    @classmethod
    def load(cls, path, device="cpu") -> CapturedSample:
        from .timesteps import plan_timesteps

        tensors, header = fileio.load_tensors(path, FEATURES_KIND, (FEATURES_VERSION,), device)
        spec = FeatureSpec.from_json(header["spec"])
        p = header["plan"]
        plan = plan_timesteps(p["steps"], p["requested"], spec.family)
        unet = {t: [tensors[f"unet.{t}.{i}"] for i in range(len(spec.unet))] for t in p["used"]}
        vae = [tensors[f"vae.{i}"] for i in range(len(spec.vae))]
        return cls(
            spec, plan, tensors["image"], tensors["latent"], unet, vae, tensors["rgb"], header.get("meta", {})
        )
