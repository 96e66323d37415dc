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

import logging
import math
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from .. import __version__
from ..backends.base import guidance_record
from ..backends.conditioning import Conditioning
from ..capture.identity import ModelIdentity, backend_identity, check_same_model
from ..capture.sample import CapturedSample
from ..capture.sampling import SamplingSettings
from ..capture.spec import check_family, family_name
from ..capture.timesteps import plan_timesteps, timestep_grid
from ..errors import FileFormatError, InvalidInputError
from ..fileio import read_header
from ..seeds import cpu_generator, iteration_seed, seeded
from .conditions import ConditionSampler, blend_weight
from .config import TRAJECTORY_SETTINGS, TrainConfig, iteration_timesteps
from .example import OVERFLOW_ADVICE, check_example_sketch, non_finite_feature, prepare_sketch, tensor_digest
from .generator import GeneratorConfig, SketchGenerator, feature_branches, save_generator
from .inference import check_sampling_branches
from .loop import CheckpointCallback, StepCallback, StopCallback, StopRequested, TrainingLoop
from .losses import DiffSketchLoss
from .previews import loss_curve_image, preview_image
from .state import load_training_state, save_training_state

logger = logging.getLogger(__name__)

CHECKPOINT_KIND = "training_checkpoint"
CHECKPOINT_VERSION = 1


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
        example_guidance = example.meta.get("guidance")
        model_guidance = guidance_record(backend).get("guidance")  # Flux.1 dev's embedded guidance
        if None not in (example_guidance, model_guidance) and float(example_guidance) != model_guidance:
            self.notices.append(
                f"the example was captured at Flux.1 guidance {float(example_guidance):g}, but the model you "
                f"train on samples at {model_guidance:g}, so its new samples' features differ from the "
                "example's; capture the example at the guidance you train at (on the command line, train "
                "follows the example's guidance)"
            )
        if example.image.numel() == 0 or not example.vae:
            raise InvalidInputError("the example must be a decoded sample with VAE features (decode=True)")
        check_example_sketch(example_sketch, example)
        self.timesteps = tuple(example.timesteps)
        self._check_timesteps()
        # every new sample must have the example's branches, or the first iteration fails after sampling
        check_sampling_branches(
            backend, feature_branches(example), config.cfg, "the example", "capture the example"
        )
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
        family = self.backend.spec.family  # the grid is the model's own: DDIM's, or the flow one
        if c.timestep_policy == "fixed":
            plan = plan_timesteps(c.steps, self.timesteps, family)  # raises when steps is too coarse
            if len(plan.used) != len(self.timesteps):
                raise InvalidInputError(
                    f"the example's timesteps {list(self.timesteps)} do not map to distinct steps of a {c.steps}-step "
                    "grid; use the example's step count."
                )
        elif len(timestep_grid(c.steps, family)) < len(self.timesteps):
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
            gconfig = GeneratorConfig.from_spec(
                spec, len(self.timesteps), branches=feature_branches(self.example)
            )
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
            "sketch_sha256": tensor_digest(self.example_sketch),
            # "sampled" (Sample & Capture) or "picture" (the user's own, inverted); with a picture,
            # how it was cropped/resized, so the drawing's alignment can be checked later
            "source": m.get("source", "sampled"),
            # Flux.1 dev's embedded guidance, which the generator's features depend on (none elsewhere)
            **({"guidance": m["guidance"]} if "guidance" in m else {}),
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
            for k in TRAJECTORY_SETTINGS
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
            timesteps=iteration_timesteps(c, i, self.timesteps, self.backend.spec.family),
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
