"""Forward hooks that record the features a :class:`~diffsketch.capture.spec.FeatureSpec` names.

Both backends use these: the diffusers backend around its own sampling loop, the ComfyUI backend
inside a DIFFUSION_MODEL wrapper for one model call at a time. Hooks are registered for the
duration of a ``with`` block and removed in ``finally`` on every exit path.

A UNet tap's output is already a spatial map. A DiT block's output is a token sequence (or, for
an MM-DiT block, the pair ``(context stream, image stream)``): :func:`image_token_map` keeps the
image tokens and unpatchifies them into ``[B, hidden, h, w]``, and the recorder applies it as the
hook fires (``to_map``), so only the maps are stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

from ..errors import CaptureError, UnsupportedModelError
from .spec import FeatureSpec, Tap, is_flow_family

#: Branch indices used everywhere in the library: ldm's [uncond, cond] batch order.
UNCOND, COND = 0, 1


def captured_branches(family: str, cfg: float) -> tuple[int, ...]:
    """The branches sampling a model of ``family`` at ``cfg`` evaluates and captures: both
    (uncond, cond) for the UNet families at any cfg (the paper's features) and for the flow
    families at cfg != 1, the conditional one alone for a flow family at cfg 1 (the unconditional
    one would not change the image: Z-Image Turbo's guidance-distilled sampling)."""
    return (COND,) if is_flow_family(family) and float(cfg) == 1.0 else (UNCOND, COND)


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


def block_image_tokens(output) -> torch.Tensor:
    """The token sequence of a DiT block's output that holds the image tokens: the output itself
    (a single-stream block: Z-Image's), or the image stream of an MM-DiT block's ``(context,
    image)`` pair (SD 3.5's, in diffusers' and in ComfyUI's implementation alike)."""
    if isinstance(output, (tuple, list)):
        output = output[1]
    if not isinstance(output, torch.Tensor) or output.dim() != 3:
        raise CaptureError(
            f"a DiT block returned {type(output).__name__}, not the [batch, tokens, hidden] sequence DiffSketch "
            "taps: the model does not have the layout its FeatureSpec describes"
        )
    return output


def image_token_map(output, grid_hw: tuple[int, int], first_token: int = 0) -> torch.Tensor:
    """``[B, hidden, h, w]`` from a DiT block's output (:func:`block_image_tokens`): the ``h*w``
    image tokens starting at ``first_token`` (0 where the image comes first, as in diffusers'
    Z-Image; the padded caption length where the caption comes first, as in ComfyUI's), in
    row-major patch order; caption, text and padding tokens are dropped."""
    tokens = block_image_tokens(output)
    h, w = (int(v) for v in grid_hw)
    if tokens.shape[1] < first_token + h * w:
        raise CaptureError(
            f"a DiT block returned {tokens.shape[1]} tokens, fewer than the {h}x{w} image tokens from token "
            f"{first_token} that a {h * 2}x{w * 2} latent makes"
        )
    return tokens[:, first_token : first_token + h * w].unflatten(1, (h, w)).permute(0, 3, 1, 2)


def reject_compiled(module: nn.Module, what: str) -> None:
    """torch.compile replaces the module's forward; submodule hooks may then never fire."""
    if type(module).__name__ == "OptimizedModule" or hasattr(module, "_orig_mod"):
        raise UnsupportedModelError(
            f"the {what} is wrapped by torch.compile, so DiffSketch's feature hooks would not fire. "
            "Remove the compile wrapper (e.g. the TorchCompileModel node) for DiffSketch sampling."
        )


class UNetRecorder:
    """Records the model's taps (UNet decoder ResBlocks or DiT blocks) at chosen timesteps,
    unconditional and conditional branches apart."""

    def __init__(
        self,
        spec: FeatureSpec,
        timesteps: Iterable[int],
        store_dtype: torch.dtype = torch.float16,
        store_device: torch.device | str = "cpu",
        reduce=None,
        branches: Sequence[int] = (UNCOND, COND),
    ):
        """``reduce(layer, tensor[B, C, h, w]) -> tensor[B, d]``, when given, is applied as each hook
        fires, so only the reduced vectors are stored (timestep analysis over every step).
        ``branches``: the branches the sampling evaluates and :meth:`result` returns, in that order:
        both (CFG), or ``(COND,)`` alone (a flow model sampled at cfg 1)."""
        self.spec = spec
        self.branches = tuple(sorted({int(b) for b in branches}))  # uncond first, as ldm batches them
        if not self.branches or not set(self.branches) <= {UNCOND, COND}:
            raise ValueError(f"branches must be UNCOND and COND or one of them, got {branches!r}")
        self.reduce = reduce
        self.timesteps = tuple(sorted(int(t) for t in timesteps))
        self.store_dtype = store_dtype
        self.store_device = torch.device(store_device)
        self._data: dict[tuple[int, int, int], torch.Tensor] = {}
        self.calls = 0

    def wants(self, timestep: int) -> bool:
        return int(timestep) in self.timesteps

    @contextmanager
    def tap(self, unet: nn.Module, timestep: int, branches: Sequence[int], to_map=None):
        """Hook ``unet`` for one forward call whose batch is ``len(branches)`` equal chunks;
        ``branches[k]`` is :data:`UNCOND` or :data:`COND` for chunk ``k`` (anything else is ignored).
        ``to_map(output) -> [batch, C, h, w]`` turns a tapped module's output into the map stored
        (a DiT block's: :func:`image_token_map`); None: the output is the map (a UNet's)."""
        timestep = int(timestep)
        if not self.wants(timestep):
            yield
            return
        handles = []
        try:
            for layer, tap in enumerate(self.spec.unet):
                module = _resolve(unet, tap)
                handles.append(
                    module.register_forward_hook(self._make_hook(timestep, layer, tuple(branches), to_map))
                )
            self.calls += 1
            yield
        finally:
            for h in handles:
                h.remove()

    def _make_hook(self, timestep: int, layer: int, branches: tuple[int, ...], to_map=None):
        def hook(module, inputs, output):
            if to_map is not None:
                output = to_map(output)
            n = output.shape[0] // len(branches)
            for k, branch in enumerate(branches):
                key = (timestep, layer, branch)
                if branch in self.branches and key not in self._data:
                    chunk = output[k * n : (k + 1) * n].detach()
                    if self.reduce is not None:
                        self._data[key] = self.reduce(layer, chunk.float()).to(
                            self.store_device, torch.float32
                        )
                    else:
                        self._data[key] = chunk.to(
                            self.store_device,
                            self.store_dtype,
                            copy=True,
                            memory_format=torch.contiguous_format,
                        )
            return None  # returning anything else would replace the module's output

        return hook

    def missing(self) -> list[tuple[int, int, int]]:
        return [
            (t, layer, b)
            for t in self.timesteps
            for layer in range(len(self.spec.unet))
            for b in self.branches
            if (t, layer, b) not in self._data
        ]

    def result(self) -> dict[int, list[torch.Tensor]]:
        """``{timestep: [tensor[2B, C, h, w] per tap]}``, the uncond branch first and then the cond
        one; ``[B, C, h, w]`` of the cond branch where only that one was recorded."""
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
                torch.cat([self._data[(t, layer, b)] for b in self.branches], dim=0)
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
