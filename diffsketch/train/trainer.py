"""Training a DiffSketch generator from one (image, sketch) example (docs/method.md §5, §6, §8).

Each iteration draws a CDST text condition, samples a new Stable Diffusion image while capturing
its features, runs the :class:`~diffsketch.train.generator.SketchGenerator` on the cached example
features and on the new sample, and takes one Adam step on :class:`~diffsketch.train.losses.DiffSketchLoss`
(reconstruction on the example + directional CLIP terms on the new sample).

Every random choice of iteration ``i`` (the CDST draw, the sampling seed, the random timesteps)
is derived from ``(config.seed, i)`` alone, so resuming from a checkpoint after N iterations and
training M more gives the same weights as training N + M in one go.

The loop is :class:`~diffsketch.train.loop.TrainingLoop` (checkpoint cadence, Cancel, NaN/inf,
crashes), driven by callbacks (``on_step``, ``should_stop``, ``on_checkpoint``), so the ComfyUI
node, the command line and the tests run the same code. It runs inside
``torch.inference_mode(False)`` + ``torch.enable_grad()`` and clones inference tensors it is
given, so a ComfyUI node (whose whole execution runs under ``torch.inference_mode()``) can call
:meth:`Trainer.run` directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import __version__
from ..backends.conditioning import Conditioning
from ..capture.identity import ModelIdentity, backend_identity, check_same_model
from ..capture.picture import PictureFit, fit_drawing
from ..capture.sample import CapturedSample
from ..capture.sampling import SCHEDULES, SamplingSettings
from ..capture.spec import check_family, family_name
from ..capture.timesteps import ddim_grid, plan_timesteps
from ..errors import FileFormatError, InvalidInputError
from ..fileio import read_header
from ..images import as_grey, image_batch, resize_image
from ..seeds import cpu_generator, iteration_seed, seeded
from .conditions import ConditionSampler, blend_weight
from .generator import GeneratorConfig, SketchGenerator, save_generator
from .loop import CheckpointCallback, StepCallback, StopCallback, StopRequested, TrainingLoop
from .losses import DiffSketchLoss, LossWeights
from .state import load_training_state, save_training_state

logger = logging.getLogger(__name__)

CHECKPOINT_KIND = "training_checkpoint"
CHECKPOINT_VERSION = 1

TIMESTEP_POLICIES = ("fixed", "random13")


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (released-code defaults, docs/method.md §8); JSON via :meth:`to_dict`.

    - ``iterations``: Adam steps in all (a resumed run continues up to this count).
    - ``lr``: Adam learning rate (default betas, no scheduler).
    - ``h_iter``: CDST warm-up; conditions are fully random from this iteration on.
    - ``loss_weights``: the :class:`LossWeights` the trainer gives its loss.
    - ``seed``: every per-iteration random choice derives from ``(seed, iteration)``.
    - ``steps``, ``cfg``: DDIM steps and guidance of each new sample.
    - ``timestep_policy``: ``"fixed"`` samples features at the example's timesteps (the paper);
      ``"random13"`` draws as many random timesteps of the ``steps``-step grid as the example has
      (13 for the paper's set) at every iteration, as the released code does.
    - ``schedule``: ``"full"`` runs the whole DDIM grid; ``"fast"`` only the captured timesteps
      plus the final step (13 instead of 50 UNet evaluations for the paper's set), with coarser
      images.
    - ``checkpoint_every``: iterations between checkpoints (0: only at the end and on cancel).
    - ``preview_every``: iterations between previews passed to ``on_step`` (0: none).
    - ``low_memory``: gradient checkpointing (``SketchGenerator.gradient_checkpointing``): the generator keeps
      almost no activations and recomputes them during the backward pass, one (tap, timestep) at
      a time. Same result; about one more generator forward per step. An SD 1.5-sized step at
      512x512 (13 timesteps, fp32, CPU) then peaks at 3.9 GB resident, provided glibc's malloc
      runs with a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_=1048576``); with glibc's
      defaults, heap fragmentation takes it to about 8 GB (benchmarks/train_step.py).
    - ``sample_crop``: 0 trains on each new sample whole; N > 0 on a random N x N pixel window of
      it (every tap cut to the window; a multiple of 64, or of 32 for SDXL), drawn anew each
      iteration. The example is always whole, so the L1, LPIPS and CLIP terms against the drawing
      are unchanged; only the directional CLIP terms see the window. This bounds the step's memory
      at large sizes: SDXL at 1024x1024 with ``sample_crop=512`` and ``low_memory``
      (benchmarks/train_step.py --arch sdxl).
    - ``device``: where the generator and the losses run.
    """

    iterations: int = 1200
    lr: float = 1e-4
    h_iter: int = 1000
    loss_weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    steps: int = 50
    cfg: float = 5.0
    timestep_policy: str = "fixed"
    schedule: str = "full"
    checkpoint_every: int = 100
    preview_every: int = 25
    low_memory: bool = False
    device: str = "cpu"
    sample_crop: int = 0

    def __post_init__(self):
        if isinstance(self.loss_weights, Mapping):
            object.__setattr__(self, "loss_weights", LossWeights.from_dict(self.loss_weights))
        self.validate()

    def validate(self) -> None:
        def whole(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InvalidInputError(f"{name} must be an integer >= {lo}, got {v!r}")

        whole("iterations", 1)
        whole("h_iter", 0)
        whole("seed", 0)
        whole("steps", 1)
        whole("checkpoint_every", 0)
        whole("preview_every", 0)
        whole("sample_crop", 0)
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise InvalidInputError(f"lr must be a finite number > 0 (the paper uses 1e-4), got {self.lr!r}")
        if not isinstance(self.cfg, (int, float)) or not math.isfinite(self.cfg) or self.cfg < 0:
            raise InvalidInputError(
                f"cfg must be a finite number >= 0 (the paper uses 5.0), got {self.cfg!r}"
            )
        if self.timestep_policy not in TIMESTEP_POLICIES:
            raise InvalidInputError(
                f"timestep_policy must be one of {list(TIMESTEP_POLICIES)}, got {self.timestep_policy!r}"
            )
        if self.schedule not in SCHEDULES:
            raise InvalidInputError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not isinstance(self.loss_weights, LossWeights):
            raise InvalidInputError("loss_weights must be a LossWeights (or a dict of its fields)")
        for name, value in self.loss_weights.to_dict().items():
            if not math.isfinite(value) or value < 0:
                raise InvalidInputError(f"loss weight {name} must be a finite number >= 0, got {value}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise InvalidInputError(
                f"device {self.device!r} is not a torch device (e.g. 'cpu', 'cuda:0')"
            ) from e

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loss_weights"] = self.loss_weights.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidInputError(f"unknown training setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"training settings are not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise InvalidInputError("training settings must be a JSON object")
        return cls.from_dict(d)


# Settings that change what a resumed run computes; the others (length, checkpoint/preview
# cadence, device) may change freely between a checkpoint and its resumption.
_TRAJECTORY_SETTINGS = (
    "lr",
    "h_iter",
    "loss_weights",
    "seed",
    "steps",
    "cfg",
    "timestep_policy",
    "schedule",
    "sample_crop",
)


def iteration_timesteps(config: TrainConfig, iteration: int, example_timesteps: Sequence[int]) -> list[int]:
    """The UNet timesteps the new sample of ``iteration`` is captured at (ascending)."""
    if config.timestep_policy == "fixed":
        return sorted(int(t) for t in example_timesteps)
    grid = ddim_grid(config.steps)
    n = len(example_timesteps)
    order = torch.randperm(
        len(grid), generator=cpu_generator(iteration_seed(config.seed, iteration, "timesteps"))
    )
    return sorted(grid[int(j)] for j in order[:n])


# ---------------------------------------------------------------------------------------------
# inference tensors (ComfyUI)
# ---------------------------------------------------------------------------------------------
def _owned(t: torch.Tensor, device=None, always: bool = False) -> torch.Tensor:
    """A tensor autograd may use: inference tensors (made under ``torch.inference_mode()``, as
    everything ComfyUI produces) cannot be saved for backward, so they are cloned. Call inside
    ``torch.inference_mode(False)``."""
    t = t.detach()
    if device is not None:
        t = t.to(device)
    if always or t.is_inference():
        t = t.clone()
    return t


def _owned_sample(sample: CapturedSample, device=None) -> CapturedSample:
    return replace(
        sample,
        unet={t: [_owned(x, device) for x in xs] for t, xs in sample.unet.items()},
        vae=[_owned(x, device) for x in sample.vae],
        rgb=_owned(sample.rgb, device),
        image=_owned(sample.image, device),
        latent=_owned(sample.latent),
    )


def _escape_inference_mode(module: nn.Module) -> nn.Module:
    """Replace parameters and buffers created under ``torch.inference_mode()`` by normal copies
    (same values), so the module can be part of a graph that is back-propagated."""
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None and p.is_inference():
                    sub._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
            for name, b in list(sub._buffers.items()):
                if b is not None and b.is_inference():
                    sub._buffers[name] = b.clone()
    return module


# ---------------------------------------------------------------------------------------------
# the example sketch
# ---------------------------------------------------------------------------------------------
def prepare_sketch(
    image, size: tuple[int, int], picture_fit: PictureFit | dict | None = None
) -> tuple[torch.Tensor, list[str]]:
    """The example sketch as the trainer wants it: ``[1, 1, H, W]`` float32 in [0, 1] (white = 1).

    ``image``: one image as :func:`~diffsketch.images.image_batch` reads it (a ComfyUI IMAGE
    ``[1, H, W, C]``, a torch image ``[1, C, H, W]``, ``[H, W, C]``, ``[H, W]``; float in [0, 1],
    uint8, uint16). RGB becomes grey by luminance; alpha is composited over white; ``size`` is
    the example's ``(width, height)``: another size is resized (bilinear, antialiased), with a
    notice. ``picture_fit``: for features captured from the user's picture, how that picture was
    fitted (the features' ``meta["picture_fit"]``); the drawing over it is then fitted the same way
    (:func:`~diffsketch.capture.picture.fit_drawing`), and a drawing of another shape is refused.
    Returns ``(sketch, notices)``.
    """
    width, height = (int(s) for s in size)
    notices: list[str] = []
    with torch.inference_mode(False):
        x = image_batch(image, "the sketch", channels_first=True)
        if x.shape[0] != 1:
            raise InvalidInputError(
                f"the sketch input holds a batch of {x.shape[0]} images; DiffSketch learns from ONE example: "
                "connect a single sketch (e.g. pick one with an image-batch selector)."
            )
        if x.shape[-1] in (2, 4):
            notices.append("the sketch's transparency was composited over white")
        x = as_grey(x).permute(0, 3, 1, 2).contiguous()  # [1, 1, H, W]
        if picture_fit is not None:
            fit = picture_fit if isinstance(picture_fit, PictureFit) else PictureFit.from_dict(picture_fit)
            x, fitted = fit_drawing(x, fit)
            notices += fitted
        h, w = x.shape[-2:]
        if (w, h) != (width, height):
            aspect = "" if w * height == h * width else " (the aspect ratio changes: the sketch is stretched)"
            notices.append(
                f"the sketch is {w}x{h} but the example image is {width}x{height}: resized to {width}x{height}{aspect}"
            )
            x = resize_image(x, (width, height))
        return x.clone(), notices


def _check_example_sketch(sketch: torch.Tensor, example: CapturedSample) -> None:
    width, height = example.size
    if not isinstance(sketch, torch.Tensor) or sketch.dim() != 4 or tuple(sketch.shape[:2]) != (1, 1):
        shape = list(sketch.shape) if isinstance(sketch, torch.Tensor) else type(sketch).__name__
        raise InvalidInputError(
            f"the example sketch must be [1, 1, {height}, {width}]; got {shape}. Convert it with prepare_sketch()."
        )
    if tuple(sketch.shape[-2:]) != (height, width):
        raise InvalidInputError(
            f"the example sketch is {sketch.shape[-1]}x{sketch.shape[-2]} but the example image is {width}x{height}; "
            "convert it with prepare_sketch(), which resizes it."
        )
    if not torch.isfinite(sketch).all() or float(sketch.min()) < -1e-3 or float(sketch.max()) > 1 + 1e-3:
        raise InvalidInputError("the example sketch must hold finite values in [0, 1] (white = 1)")


#: What to do when captured features hold NaN or infinity.
OVERFLOW_ADVICE = (
    "the base model overflowed in float16 while sampling. Run it in higher precision: start ComfyUI with "
    "--fp32-vae (VAE features) or --fp32-unet (UNet features); from the command line, use a GPU with bfloat16 "
    "support or --device cpu (float32)."
)


def non_finite_feature(sample: CapturedSample) -> str | None:
    """Which of ``sample``'s tensors first holds NaN or infinity, in words; None if all are finite."""
    for t in sample.timesteps:
        for k, x in enumerate(sample.unet[t]):
            if not torch.isfinite(x).all():
                return f"UNet feature {k} ({sample.spec.unet[k].name}) at timestep {t}"
    for k, x in enumerate(sample.vae):
        if not torch.isfinite(x).all():
            return f"VAE decoder feature {k} ({sample.spec.vae[k].name})"
    for name in ("rgb", "image", "latent"):
        if not torch.isfinite(getattr(sample, name)).all():
            return name
    return None


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# previews and plots
# ---------------------------------------------------------------------------------------------
def _rgb(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[1, 1|3, h, w] -> [1, 3, H, W] in [0, 1] on the CPU."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


def preview_image(
    sample_image: torch.Tensor,
    sample_sketch: torch.Tensor,
    example_reconstruction: torch.Tensor,
    example_sketch: torch.Tensor,
) -> torch.Tensor:
    """One ``[1, H, 4W, 3]`` image in [0, 1] (ComfyUI IMAGE layout): the new sample, its predicted
    sketch, the predicted example sketch and the example sketch it should match, each at the
    example's size (a cropped sample is scaled to it)."""
    size = tuple(example_sketch.shape[-2:])
    panels = [_rgb(x, size) for x in (sample_image, sample_sketch, example_reconstruction, example_sketch)]
    return torch.cat(panels, dim=-1).permute(0, 2, 3, 1).contiguous()


def loss_curve_image(history: Sequence[Mapping], size: tuple[int, int] = (640, 400)):
    """A PIL image of the total loss and each weighted term against the step (log y axis)."""
    from ..plotting import line_plot

    steps = [float(h["step"]) for h in history]
    series = {"total": (steps, [float(h.get("total", float("nan"))) for h in history])}
    names: list[str] = []
    for h in history:
        for key in h:
            name = key[: -len("_weighted")]
            if key.endswith("_weighted") and name not in names:
                names.append(name)
    for name in names:
        series[name] = (steps, [float(h.get(f"{name}_weighted", float("nan"))) for h in history])
    return line_plot(
        series, title="DiffSketch training loss", xlabel="step", ylabel="weighted loss", size=size, logy=True
    )


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Trains a :class:`SketchGenerator` on one example (see the module docstring).

    - ``backend``: a :class:`~diffsketch.backends.base.SamplingBackend` of the base model.
    - ``example``: the example's :class:`CapturedSample` (decoded, with VAE features).
    - ``example_sketch``: ``[1, 1, H, W]`` in [0, 1] at the example's size (:func:`prepare_sketch`).
    - ``conditions``: the CDST :class:`ConditionSampler`.
    - ``loss``: a :class:`DiffSketchLoss`; its weights are set to ``config.loss_weights``.
    - ``pivot``: the example prompt's :class:`~diffsketch.backends.conditioning.Conditioning` (a
      ``[1, 77, D]`` tensor where there is no pooled part); None encodes ``example.meta["prompt"]``.
    - ``generator``: the generator to train; None builds the default one for the example's spec
      and timestep count (or the one described by ``resume_from``'s checkpoint).
    - ``checkpoint_path``: where resumable checkpoints go (None: none are written).
    - ``resume_from``: a checkpoint to continue from (see :meth:`resume`).

    ``notices`` collects human-readable remarks (e.g. settings changed since a checkpoint).
    """

    def __init__(
        self,
        backend,
        example: CapturedSample,
        example_sketch: torch.Tensor,
        conditions: ConditionSampler,
        loss: DiffSketchLoss,
        config: TrainConfig | None = None,
        pivot: Conditioning | torch.Tensor | None = None,
        generator: SketchGenerator | None = None,
        *,
        checkpoint_path: str | Path | None = None,
        resume_from: str | Path | None = None,
    ):
        self.config = config = config if config is not None else TrainConfig()
        self.backend = backend
        self.conditions = conditions
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.device = torch.device(config.device)
        self.notices: list[str] = []
        self.history: list[dict] = []

        if not isinstance(example, CapturedSample):
            raise InvalidInputError(f"example must be a CapturedSample, got {type(example).__name__}")
        family = backend.spec.family
        check_family(
            example.spec.family,
            family,
            "the example",
            "the model you train on",
            f"Capture the example with the {family_name(family)} model you train on",
        )
        conditions.check_family(family, "the model you train on")
        if not backend.spec.is_compatible(example.spec):
            raise InvalidInputError(
                f"the example was captured from a model with layout {example.spec.fingerprint()}, but the backend's "
                f"model is {backend.spec.fingerprint()}; capture the example with the model you train on."
            )
        self.model_identity = backend_identity(backend)
        self.notices += check_same_model(
            example.identity(),
            self.model_identity,
            "the example",
            "the model you train on",
            "Capture the example with the model you train on, sampled the same way (in ComfyUI: the same "
            "ModelSamplingDiscrete node, or none, in front of both; on the command line: the same "
            "--prediction-type), or re-capture it",
        )
        if example.image.numel() == 0 or not example.vae:
            raise InvalidInputError("the example must be a decoded sample with VAE features (decode=True)")
        _check_example_sketch(example_sketch, example)
        self.timesteps = tuple(example.timesteps)
        self._check_timesteps()
        multiple = example.crop_multiple()
        if config.sample_crop % multiple:
            raise InvalidInputError(
                f"sample_crop={config.sample_crop} is not a multiple of {multiple} px (this model's coarsest feature "
                f"is 1/{multiple} of the image); use {max(multiple, config.sample_crop // multiple * multiple)}, or 0 for "
                "whole samples."
            )
        if config.sample_crop and config.sample_crop >= max(example.size):
            w, h = example.size
            raise InvalidInputError(
                f"sample_crop={config.sample_crop} is not smaller than the {w}x{h} samples, so it would crop nothing "
                f"and save no memory; use a window below {max(w, h)} px (e.g. {max(w, h) // 2 // multiple * multiple or multiple}), "
                "or 0 for whole samples."
            )

        with torch.inference_mode(False), torch.enable_grad():
            # ComfyUI hands out inference tensors, which autograd cannot save: those are cloned. Other
            # feature tensors are used as they are (the SD 1.5 example is ~370 MB; it is only read).
            self.example = _owned_sample(example, self.device)
            where = non_finite_feature(self.example)
            if where is not None:
                raise InvalidInputError(
                    f"the example's {where} holds NaN or infinity: {OVERFLOW_ADVICE} Capture the example again "
                    "that way, then train with the new features."
                )
            self.example_sketch = _owned(example_sketch.float().clamp(0, 1), self.device, always=True)
            if pivot is None:
                prompt = example.meta.get("prompt")
                if prompt is None:
                    raise InvalidInputError(
                        "pivot (the example prompt's text embedding) is required: the example carries no prompt "
                        "to encode. Pass the conditioning the example was sampled with."
                    )
                pivot = backend.encode_prompt(prompt)
            conditions.check_pivot(pivot)
            self.pivot = backend.check_conditioning(pivot, "pivot").map(
                lambda t: _owned(t, "cpu", always=True)
            )

            if generator is None:
                generator = self._new_generator(resume_from)
            elif not generator.spec.is_compatible(example.spec) or generator.n_timesteps != len(
                self.timesteps
            ):
                raise InvalidInputError(
                    f"the generator was built for {generator.n_timesteps} timesteps of model layout "
                    f"{generator.spec.fingerprint()}; the example has {len(self.timesteps)} timesteps of layout "
                    f"{example.spec.fingerprint()}."
                )
            self.generator = _escape_inference_mode(generator).to(self.device).train()
            # identified from the start, so it is checked against models before it is saved too
            self.generator.meta = {**self.generator.meta, "base_model": self.base_model()}
            # What the generator is trained on travels with it, so whoever runs it samples alike.
            self.generator.timesteps = self.timesteps
            self.generator.schedule = config.schedule

            if loss.weights != config.loss_weights:
                if config.loss_weights.lpips and loss.lpips is None:
                    raise InvalidInputError(
                        "the LPIPS weight is non-zero but the loss has no LPIPS model (see build_lpips)"
                    )
                loss.weights = config.loss_weights
            self.loss = _escape_inference_mode(loss).to(self.device)
            self.loss.set_example(self.example.image, self.example_sketch)
            self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=config.lr)

        # The loop runs on its own copy of torch's global RNG (the caller's is left untouched), saved
        # in checkpoints; nothing in the loop draws from it today, so it only guards future code.
        self._cpu_rng = cpu_generator(iteration_seed(config.seed, 0, "global")).get_state()
        self._cuda_rng: torch.Tensor | None = None
        self.loop = TrainingLoop(
            what="training",
            model=self.generator,
            iterations=config.iterations,
            save=(lambda: self.save_checkpoint(self.checkpoint_path))
            if self.checkpoint_path is not None
            else None,
            checkpoint_every=config.checkpoint_every,
            resume_hint=(
                "to continue, resume from it (Trainer(..., resume_from='{path}') or the Train node's resume "
                "option) with the same example"
            ),
            unsaved_hint="this Trainer still holds the state: call run() again to continue",
            divergence_advice=f"Resume from the last good checkpoint with a lower learning rate (now {config.lr:g}).",
        )
        if resume_from is not None:
            self.resume(resume_from)

    # The step count and the last checkpoint are the loop's.
    @property
    def step(self) -> int:
        return self.loop.step

    @property
    def last_checkpoint(self) -> Path | None:
        return self.loop.last_checkpoint

    @property
    def last_checkpoint_step(self) -> int | None:
        return self.loop.last_checkpoint_step

    # -- construction helpers --------------------------------------------------------------------
    def _check_timesteps(self) -> None:
        c = self.config
        if c.timestep_policy == "fixed":
            plan = plan_timesteps(c.steps, self.timesteps)  # raises when steps is too coarse for them
            if len(plan.used) != len(self.timesteps):
                raise InvalidInputError(
                    f"the example's timesteps {list(self.timesteps)} do not map to distinct steps of a {c.steps}-step "
                    "grid; use the example's step count."
                )
        elif len(ddim_grid(c.steps)) < len(self.timesteps):
            raise InvalidInputError(
                f"timestep_policy 'random13' draws {len(self.timesteps)} timesteps per sample but a {c.steps}-step "
                "grid has fewer; use more steps."
            )

    def _new_generator(self, resume_from) -> SketchGenerator:
        spec = self.example.spec
        if resume_from is not None:
            header = read_header(resume_from, CHECKPOINT_KIND, (CHECKPOINT_VERSION,))
            try:
                gconfig = GeneratorConfig.from_dict(header["meta"]["generator_config"])
            except (KeyError, TypeError) as e:
                raise FileFormatError(
                    f"{Path(resume_from).name}: no generator settings in the checkpoint"
                ) from e
        else:
            gconfig = GeneratorConfig.from_spec(spec, len(self.timesteps))
        # Initial weights depend on the seed only, not on the caller's global RNG.
        return seeded(iteration_seed(self.config.seed, 0, "init"), lambda: SketchGenerator(spec, gconfig))

    # -- public API ------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return self.example.size[0]

    @property
    def height(self) -> int:
        return self.example.size[1]

    def example_info(self) -> dict:
        m = self.example.meta
        return {
            "prompt": m.get("prompt"),
            "seed": m.get("seed"),
            "steps": m.get("steps"),
            "cfg": m.get("cfg"),
            "width": self.width,
            "height": self.height,
            "timesteps": list(self.timesteps),
            "sketch_sha256": _tensor_digest(self.example_sketch),
            # "sampled" (Sample & Capture) or "picture" (the user's own, inverted); with a picture,
            # how it was cropped/resized, so the drawing's alignment can be checked later
            "source": m.get("source", "sampled"),
            **({"picture_fit": m["picture_fit"]} if "picture_fit" in m else {}),
        }

    def run(
        self,
        on_step: StepCallback | None = None,
        should_stop: StopCallback | None = None,
        on_checkpoint: CheckpointCallback | None = None,
    ) -> SketchGenerator:
        """Train up to ``config.iterations`` steps and return the generator.

        ``on_step(step, losses, preview)`` after every step (``preview``: a ``[1, H, 4W, 3]`` image
        every ``preview_every`` steps and at the last one, else None); ``should_stop()`` before every
        step and during sampling: when it returns True a checkpoint is written and
        :class:`TrainingInterrupted` raised; ``on_checkpoint(path, step)`` after each checkpoint.
        Any other exception also writes a checkpoint first (when the state is consistent);
        :class:`TrainingDiverged` does not, so the last good checkpoint is kept.
        """
        every = self.config.preview_every
        iterations = self.config.iterations

        def report(step: int, result) -> None:
            log, extras, preview_parts = result
            self.history.append({"step": step, **log, **extras})
            preview = None
            if every and (step % every == 0 or step == iterations):
                preview = preview_image(*preview_parts)
            if on_step is not None:
                on_step(step, dict(log), preview)

        self.loop.on_checkpoint = on_checkpoint
        with torch.inference_mode(False), torch.enable_grad(), self._own_rng():
            self.generator.train()
            self.loop.run(
                compute=lambda i: self._forward_backward(i, should_stop),
                apply=lambda i, result: self.optimizer.step(),
                report=report,
                should_stop=should_stop,
            )
        return self.generator

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint: generator weights, Adam state, step, RNG state and loss history.

        The checkpoint must come from a generator of the same shape trained on an example of the
        same size and timesteps. Settings that differ from the checkpoint's (learning rate, seed,
        ...) are taken from this trainer's config and listed in ``notices``.
        """
        path = Path(path)
        header = read_header(path, CHECKPOINT_KIND, (CHECKPOINT_VERSION,))
        meta = header.get("meta", {})
        saved_gconfig = meta.get("generator_config")
        if saved_gconfig is not None and saved_gconfig != self.generator.config.to_dict():
            raise FileFormatError(
                f"{path.name} was trained with another generator architecture ({saved_gconfig}); resume it with "
                "the generator settings it was made with (or leave the generator to the trainer)."
            )
        saved_example = meta.get("example", {})
        mine = self.example_info()
        for key in ("width", "height", "timesteps"):
            if key in saved_example and saved_example[key] != mine[key]:
                raise InvalidInputError(
                    f"{path.name} was trained on an example with {key} {saved_example[key]}, this example has "
                    f"{mine[key]}; resume with the same example."
                )
        for key in ("prompt", "seed", "sketch_sha256"):
            if key in saved_example and saved_example[key] != mine[key]:
                what = (
                    "sketch" if key == "sketch_sha256" else f"{key} ({saved_example[key]!r} -> {mine[key]!r})"
                )
                self.notices.append(f"the example {what} differs from the one {path.name} was trained on")
        self.notices += check_same_model(
            ModelIdentity.from_dict(meta.get("base_model"), self.generator.family, path.name),
            self.model_identity,
            path.name,
            "the model you train on",
            "Resume with the model the run was started on, sampled the same way, or start over (--restart, or no "
            "resume_from)",
        )
        with torch.inference_mode(False):
            step, rng, meta = load_training_state(
                path, kind=CHECKPOINT_KIND, model=self.generator, optimizer=self.optimizer, device="cpu"
            )
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr
        saved_config = meta.get("config", {})
        mine_config = self.config.to_dict()
        changed = [
            f"{k} {saved_config[k]} -> {mine_config[k]}"
            for k in _TRAJECTORY_SETTINGS
            if k in saved_config and saved_config[k] != mine_config[k]
        ]
        if changed:
            self.notices.append(
                f"settings changed since {path.name}: {', '.join(changed)} (the run will differ from an "
                "uninterrupted one)"
            )
        if step >= self.config.iterations:
            self.notices.append(
                f"{path.name} is already at step {step} of the {self.config.iterations} asked; raise iterations to "
                "train further"
            )
        self.loop.step = step
        self.history = [dict(h) for h in meta.get("history", [])][:step]
        if "torch_cpu" in rng:
            self._cpu_rng = rng["torch_cpu"]
        self._cuda_rng = rng.get("torch_cuda")
        self.loop.mark_saved(path, step)
        logger.info("DiffSketch: resuming training from %s at step %d", path, step)

    def checkpoint_meta(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "history": self.history,
            "generator_config": self.generator.config.to_dict(),
            "spec": self.generator.spec.to_json(),
            "example": self.example_info(),
            "base_model": self.base_model(),
            "library_version": __version__,
        }

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write a resumable checkpoint of the current state to ``path`` (NaN or infinite weights are
        refused, so a diverged state never overwrites a good checkpoint)."""
        rng = {"torch_cpu": self._current_cpu_rng()}
        cuda = self._current_cuda_rng()
        if cuda is not None:
            rng["torch_cuda"] = cuda
        return save_training_state(
            path,
            kind=CHECKPOINT_KIND,
            model=self.generator,
            optimizer=self.optimizer,
            step=self.step,
            rng=rng,
            meta=self.checkpoint_meta(),
            version=CHECKPOINT_VERSION,
        )

    def base_model(self) -> dict:
        """The model the generator is trained on: its :class:`ModelIdentity` and layout fingerprint."""
        return {**self.model_identity.to_dict(), "spec_fingerprint": self.generator.spec.fingerprint()}

    def generator_meta(self) -> dict:
        """What :meth:`save_generator` records with the weights."""
        return {
            "training": self.config.to_dict(),
            "steps_done": self.step,
            "base_model": self.base_model(),
            "example": self.example_info(),
            "timesteps": list(self.timesteps),
            "final_losses": {k: v for k, v in (self.history[-1] if self.history else {}).items()},
            "library_version": __version__,
        }

    def save_generator(self, path: str | Path) -> Path:
        """Write the trained generator (``load_generator`` reads it back, meta included); the
        generator in memory gets the same meta."""
        self.generator.meta = self.generator_meta()
        return save_generator(path, self.generator, self.generator.meta)

    def loss_curve_image(self, size: tuple[int, int] = (640, 400)):
        return loss_curve_image(self.history, size)

    # -- one iteration ---------------------------------------------------------------------------
    def _sample(self, i: int, should_stop: StopCallback | None) -> tuple[CapturedSample, dict]:
        c = self.config
        condition = self.conditions.condition_for_iteration(
            self.pivot, i, c.h_iter, generator=cpu_generator(iteration_seed(c.seed, i, "condition"))
        )

        def progress(done, total):
            if should_stop is not None and should_stop():
                raise StopRequested

        seed = iteration_seed(c.seed, i, "sample")
        sampling = SamplingSettings(
            seed=seed,
            steps=c.steps,
            cfg=c.cfg,
            width=self.width,
            height=self.height,
            timesteps=iteration_timesteps(c, i, self.timesteps),
            schedule=c.schedule,
        )
        sample = self.backend.sample(condition, sampling, progress=progress)
        if c.sample_crop and c.sample_crop < max(sample.size):
            sample = self._crop(sample, i)
        extras = {
            "cdst_weight": blend_weight(i, c.h_iter),
            "sample_seed": seed,
            "unet_evaluations": int(sample.meta.get("unet_evaluations", 0)),
        }
        return _owned_sample(sample, self.device), extras

    def _crop(self, sample: CapturedSample, i: int) -> CapturedSample:
        """Iteration ``i``'s random window of ``sample`` (:attr:`TrainConfig.sample_crop`)."""
        w, h = sample.size
        cw, ch = min(self.config.sample_crop, w), min(self.config.sample_crop, h)
        m = sample.crop_multiple()
        g = cpu_generator(iteration_seed(self.config.seed, i, "crop"))
        left = m * int(torch.randint(0, (w - cw) // m + 1, (1,), generator=g))
        top = m * int(torch.randint(0, (h - ch) // m + 1, (1,), generator=g))
        return sample.crop(left, top, cw, ch)

    def _forward_backward(self, i: int, should_stop: StopCallback | None):
        t0 = time.perf_counter()
        sample, extras = self._sample(i, should_stop)
        t1 = time.perf_counter()
        ex = self.example
        self.generator.gradient_checkpointing = self.config.low_memory
        example_sketch = self.generator(ex.unet, ex.vae, ex.rgb)
        sample_sketch = self.generator(sample.unet, sample.vae, sample.rgb)
        t2 = time.perf_counter()
        total, log = self.loss(example_sketch, sample_sketch, sample.image)
        self._check_finite(i, log, sample)
        # Back-propagate in two stages (through the losses to the two predictions, then through
        # the generator): the same gradient as total.backward(), with the time of each recorded.
        predictions = [example_sketch, sample_sketch]
        grads = torch.autograd.grad(total, predictions)
        t3 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(predictions, grads)
        self._check_gradients(i)
        t4 = time.perf_counter()
        extras.update(
            sample_s=t1 - t0, generator_forward_s=t2 - t1, losses_s=t3 - t2, generator_backward_s=t4 - t3
        )
        parts = (sample.image, sample_sketch.detach(), example_sketch.detach(), self.example_sketch)
        return log, extras, parts

    def _check_finite(self, i: int, log: Mapping[str, float], sample: CapturedSample) -> None:
        bad = {k: v for k, v in log.items() if k != "total" and not math.isfinite(v)}
        if not bad and math.isfinite(log.get("total", 0.0)):
            return
        terms = sorted({k[: -len("_weighted")] if k.endswith("_weighted") else k for k in bad}) or ["total"]
        values = ", ".join(f"{k}={v}" for k, v in bad.items()) or f"total={log.get('total')}"
        where = non_finite_feature(sample)
        if where is not None:  # not the training's fault: a cause the user can act on
            raise self.loop.diverged(
                i + 1,
                f"the loss term(s) {', '.join(terms)} became non-finite because the step's sample has NaN or "
                f"infinity in its {where}: {OVERFLOW_ADVICE[:-1]}; the step was not applied",
            )
        raise self.loop.diverged(
            i + 1,
            f"the loss term(s) {', '.join(terms)} became non-finite ({values}); the step was not applied",
        )

    def _check_gradients(self, i: int) -> None:
        for name, p in self.generator.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                raise self.loop.diverged(
                    i + 1,
                    f"the gradient of {name} became non-finite although the loss is finite; the step was not applied",
                )

    # -- RNG ---------------------------------------------------------------------------------------
    def _cuda_index(self) -> int | None:
        if self.device.type != "cuda":
            return None
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def _current_cpu_rng(self) -> torch.Tensor:
        return torch.get_rng_state() if self._inside_rng else self._cpu_rng

    def _current_cuda_rng(self) -> torch.Tensor | None:
        index = self._cuda_index()
        if index is None:
            return None
        return torch.cuda.get_rng_state(index) if self._inside_rng else self._cuda_rng

    _inside_rng = False

    @contextmanager
    def _own_rng(self):
        index = self._cuda_index()
        with torch.random.fork_rng(devices=[] if index is None else [index]):
            torch.set_rng_state(self._cpu_rng)
            if index is not None:
                if self._cuda_rng is not None:
                    torch.cuda.set_rng_state(self._cuda_rng, index)
                else:
                    torch.cuda.default_generators[index].manual_seed(
                        iteration_seed(self.config.seed, 0, "global-cuda")
                    )
            self._inside_rng = True
            try:
                yield
            finally:
                self._cpu_rng = torch.get_rng_state()
                if index is not None:
                    self._cuda_rng = torch.cuda.get_rng_state(index)
                self._inside_rng = False


__all__ = [
    "CHECKPOINT_KIND",
    "CHECKPOINT_VERSION",
    "TrainConfig",
    "Trainer",
    "iteration_timesteps",
    "loss_curve_image",
    "prepare_sketch",
    "preview_image",
]
