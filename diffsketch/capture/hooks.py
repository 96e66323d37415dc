"""Forward hooks that record the features a :class:`~diffsketch.capture.spec.FeatureSpec` names.

Both backends use these: the diffusers backend around its own DDIM loop, the ComfyUI backend
inside a DIFFUSION_MODEL wrapper for one UNet call at a time. Hooks are registered for the
duration of a ``with`` block and removed in ``finally`` on every exit path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

from ..errors import CaptureError, UnsupportedModelError
from .spec import FeatureSpec, Tap

#: Branch indices used everywhere in the library: ldm's [uncond, cond] batch order.
UNCOND, COND = 0, 1

FLOAT16_MAX = torch.finfo(torch.float16).max


def vae_store_dtype(output: torch.Tensor, store_dtype: torch.dtype) -> torch.dtype:
    """The dtype a VAE decoder tap is stored in when ``store_dtype`` is asked for.

    float16 holds nothing beyond 65504, and the SDXL VAE's activations exceed it: that is why
    ComfyUI and the diffusers backend run it in bfloat16 (or float32). A float16 copy of such a tap
    would hold infinities, so float16 storage becomes bfloat16 (float32's range) where the decoder
    runs in bfloat16 (its own precision: nothing is lost) or where a float32 tap exceeds 65504."""
    if store_dtype != torch.float16 or output.dtype == torch.float16 or not output.is_floating_point():
        return store_dtype
    if output.dtype == torch.bfloat16 or float(output.detach().abs().amax()) > FLOAT16_MAX:
        return torch.bfloat16
    return store_dtype


def _resolve(root: nn.Module, tap: Tap) -> nn.Module:
    try:
        return root.get_submodule(tap.name)
    except AttributeError as e:
        raise UnsupportedModelError(
            f"the model has no module '{tap.name}' to tap: it does not have the layout its FeatureSpec "
            f"describes ({type(root).__name__}). Re-read the spec from this model."
        ) from e


def reject_compiled(module: nn.Module, what: str) -> None:
    """torch.compile replaces the module's forward; submodule hooks may then never fire."""
    if type(module).__name__ == "OptimizedModule" or hasattr(module, "_orig_mod"):
        raise UnsupportedModelError(
            f"the {what} is wrapped by torch.compile, so DiffSketch's feature hooks would not fire. "
            "Remove the compile wrapper (e.g. the TorchCompileModel node) for DiffSketch sampling."
        )


class UNetRecorder:
    """Records the UNet taps at chosen timesteps, unconditional and conditional branches apart."""

    def __init__(
        self,
        spec: FeatureSpec,
        timesteps: Iterable[int],
        store_dtype: torch.dtype = torch.float16,
        store_device: torch.device | str = "cpu",
        reduce=None,
    ):
        """``reduce(layer, tensor[B, C, h, w]) -> tensor[B, d]``, when given, is applied as each hook
        fires, so only the reduced vectors are stored (timestep analysis over every step)."""
        self.spec = spec
        self.reduce = reduce
        self.timesteps = tuple(sorted(int(t) for t in timesteps))
        self.store_dtype = store_dtype
        self.store_device = torch.device(store_device)
        self._data: dict[tuple[int, int, int], torch.Tensor] = {}
        self.calls = 0

    def wants(self, timestep: int) -> bool:
        return int(timestep) in self.timesteps

    @contextmanager
    def tap(self, unet: nn.Module, timestep: int, branches: Sequence[int]):
        """Hook ``unet`` for one forward call whose batch is ``len(branches)`` equal chunks;
        ``branches[k]`` is :data:`UNCOND` or :data:`COND` for chunk ``k`` (anything else is ignored)."""
        timestep = int(timestep)
        if not self.wants(timestep):
            yield
            return
        handles = []
        try:
            for layer, tap in enumerate(self.spec.unet):
                module = _resolve(unet, tap)
                handles.append(
                    module.register_forward_hook(self._make_hook(timestep, layer, tuple(branches)))
                )
            self.calls += 1
            yield
        finally:
            for h in handles:
                h.remove()

    def _make_hook(self, timestep: int, layer: int, branches: tuple[int, ...]):
        def hook(module, inputs, output):
            n = output.shape[0] // len(branches)
            for k, branch in enumerate(branches):
                key = (timestep, layer, branch)
                if branch in (UNCOND, COND) and key not in self._data:
                    chunk = output[k * n : (k + 1) * n].detach()
                    if self.reduce is not None:
                        self._data[key] = self.reduce(layer, chunk.float()).to(
                            self.store_device, torch.float32
                        )
                    else:
                        self._data[key] = chunk.to(self.store_device, self.store_dtype, copy=True)
            return None  # returning anything else would replace the module's output

        return hook

    def missing(self) -> list[tuple[int, int, int]]:
        return [
            (t, layer, b)
            for t in self.timesteps
            for layer in range(len(self.spec.unet))
            for b in (UNCOND, COND)
            if (t, layer, b) not in self._data
        ]

    def result(self) -> dict[int, list[torch.Tensor]]:
        """``{timestep: [tensor[2, C, h, w] per tap]}`` with index 0 uncond and 1 cond."""
        missing = self.missing()
        if missing:
            ts = sorted({m[0] for m in missing})
            branches = sorted({("uncond", "cond")[m[2]] for m in missing})
            raise CaptureError(
                f"feature capture is incomplete: nothing recorded for timesteps {ts} ({', '.join(branches)} "
                "branch). The UNet hooks did not fire (a torch.compile wrapper or a patch that replaces the "
                "UNet forward), the sampler skipped a branch, or the schedule does not visit those timesteps."
            )
        out = {}
        for t in self.timesteps:
            out[t] = [
                torch.cat([self._data[(t, layer, UNCOND)], self._data[(t, layer, COND)]], dim=0)
                for layer in range(len(self.spec.unet))
            ]
        return out


@contextmanager
def record_vae_decoder(vae: nn.Module, spec: FeatureSpec, store_dtype=torch.float16, store_device="cpu"):
    """Hook the VAE decoder taps and RGB output for one decode; yields a dict filled on exit
    with ``features`` (list of [B, C, H, W], in ``store_dtype`` or :func:`vae_store_dtype`'s
    bfloat16) and ``rgb`` ([B, 3, H, W], float32, unclamped)."""
    taps = list(spec.vae)
    store: dict[int, torch.Tensor] = {}
    handles = []

    def make(idx: int, dtype):
        def hook(module, inputs, output):
            store[idx] = output.detach().to(store_device, vae_store_dtype(output, dtype), copy=True)
            return None

        return hook

    result: dict = {}
    try:
        for i, tap in enumerate(taps):
            handles.append(_resolve(vae, tap).register_forward_hook(make(i, store_dtype)))
        handles.append(_resolve(vae, spec.rgb).register_forward_hook(make(len(taps), torch.float32)))
        yield result
    finally:
        for h in handles:
            h.remove()
    if len(store) != len(taps) + 1:
        raise CaptureError(
            f"VAE decoder capture recorded {len(store)} of {len(taps) + 1} taps; the decoder's hooks did not fire."
        )
    result["features"] = [store[i] for i in range(len(taps))]
    result["rgb"] = store[len(taps)]
