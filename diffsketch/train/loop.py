"""The training loop both trainers run: the generator's (:mod:`.trainer`) and the student
extractor's (:mod:`diffsketch.distill.student`).

What it guarantees, whoever trains what:

- a resumable checkpoint every ``checkpoint_every`` steps and at the end;
- Cancel (``should_stop()`` returning True before a step, or :class:`StopRequested` raised inside
  one) writes a checkpoint of the last finished step and raises
  :class:`~diffsketch.errors.TrainingInterrupted`;
- any other exception -- Ctrl-C, out of memory, or the host's own interrupt raised from a progress
  callback (ComfyUI's Cancel arrives that way) -- also writes a checkpoint first, when the model is
  in a consistent state, and is then re-raised unchanged (with a note naming the checkpoint);
- divergence (a NaN or infinite loss, gradient or weight) raises
  :class:`~diffsketch.errors.TrainingDiverged` *without* writing, so the last good checkpoint stays;
- in a launch of several processes (``group``), all stop at the same step when any one is asked
  to, and only rank 0 writes the checkpoints.

A step is split in three so the loop knows when the model is consistent: ``compute(i)`` (forward,
backward, checks; the model is unchanged), ``apply(i, result)`` (the optimiser step: the only
moment the state is in between) and ``report(step, result)`` (history and callbacks, after the
step count has moved on).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import TrainingDiverged, TrainingInterrupted

if TYPE_CHECKING:
    from ..distributed import Group

StepCallback = Callable[[int, dict, "torch.Tensor | None"], None]
StopCallback = Callable[[], bool]
CheckpointCallback = Callable[[Path, int], None]


class StopRequested(Exception):
    """Raised inside a step when ``should_stop()`` returned True there (e.g. during sampling)."""


def first_non_finite_parameter(module: nn.Module) -> str | None:
    """Name of the first parameter holding NaN or infinity, or None."""
    for name, p in module.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return name
    return None


class TrainingLoop:
    """Runs steps ``step .. iterations - 1`` of one training run (see the module docstring).

    - ``what``: "training" / "distillation", for messages.
    - ``model``: checked for finite weights before every checkpoint.
    - ``save``: writes a resumable checkpoint of the current state and returns its path; None when
      the run has no checkpoint path.
    - ``checkpoint_every``: steps between checkpoints (0: only at the end, on Cancel and on crashes).
    - ``resume_hint``: how to continue from a checkpoint (ends the Cancel message; ``{path}`` is
      replaced by the checkpoint's path).
    - ``unsaved_hint``: what to do when Cancel found no checkpoint path.
    - ``divergence_advice``: ends the divergence message (e.g. "lower the learning rate").
    - ``group``: the processes of a torchrun / accelerate launch
      (:class:`~diffsketch.distributed.Group`), which run the same steps in lockstep:
      ``should_stop`` is asked on each and any True stops them all at the same step; rank 0
      writes the checkpoints, the others only count them (their model is the same after every
      step). Each process's ``compute`` does its own share of the step.
    """

    def __init__(
        self,
        *,
        what: str,
        model: nn.Module,
        iterations: int,
        save: Callable[[], Path] | None,
        checkpoint_every: int = 0,
        step: int = 0,
        resume_hint: str = "resume from it",
        unsaved_hint: str = "nothing was saved",
        divergence_advice: str = "",
        on_checkpoint: CheckpointCallback | None = None,
        group: Group | None = None,
    ):
        self.what = what
        self.model = model
        self.iterations = int(iterations)
        self.save = save
        self.checkpoint_every = int(checkpoint_every)
        self.step = int(step)
        self.resume_hint = resume_hint
        self.unsaved_hint = unsaved_hint
        self.divergence_advice = divergence_advice
        self.on_checkpoint = on_checkpoint
        self.group = group
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_step: int | None = None

    # -- checkpoints ---------------------------------------------------------------------------
    def mark_saved(self, path: Path, step: int) -> None:
        """Record a checkpoint written (or resumed from) outside the loop."""
        self.last_checkpoint, self.last_checkpoint_step = Path(path), int(step)

    def checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (not over a good one when the weights diverged)."""
        bad = first_non_finite_parameter(self.model)
        if bad is not None:
            raise self.diverged(self.step, f"the weight {bad} holds NaN or infinity; it was not saved")
        if self.save is None:
            return None
        if self.group is not None and not self.group.is_main:
            # rank 0 writes the launch's checkpoint; this process only keeps count of its step
            self.last_checkpoint, self.last_checkpoint_step = None, self.step
            return None
        path = Path(self.save())
        self.mark_saved(path, self.step)
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, self.step)
        return path

    def _kept(self) -> str:
        if self.last_checkpoint is None and self.last_checkpoint_step is not None:
            return f"Rank 0 of the launch kept the last good checkpoint (step {self.last_checkpoint_step})."
        if self.last_checkpoint is not None:
            return f"The last good checkpoint is {self.last_checkpoint} (step {self.last_checkpoint_step})."
        if self.save is None:
            return "No checkpoint path was given, so nothing was saved."
        return "No checkpoint had been written yet."

    def diverged(self, step: int, reason: str) -> TrainingDiverged:
        """The error for a NaN or infinity found at ``step`` (1-based): ``reason`` says what and what
        became of the step. Nothing is written."""
        advice = f" {self.divergence_advice}" if self.divergence_advice else ""
        return TrainingDiverged(f"{self.what} diverged at step {step}: {reason}. {self._kept()}{advice}")

    # -- the loop ------------------------------------------------------------------------------
    def run(
        self,
        compute: Callable[[int], Any],
        apply: Callable[[int, Any], None],
        report: Callable[[int, Any], None],
        should_stop: StopCallback | None = None,
    ) -> None:
        consistent = True
        try:
            while self.step < self.iterations:
                stop = should_stop is not None and should_stop()
                if self.group is not None:
                    stop = self.group.any(stop)  # every process stops at the same step
                if stop:
                    raise StopRequested
                i = self.step
                result = compute(i)
                consistent = False
                apply(i, result)
                self.step = i + 1
                consistent = True
                report(self.step, result)
                every = self.checkpoint_every
                if every and self.step % every == 0 and self.step < self.iterations:
                    self.checkpoint()
            if self.last_checkpoint_step != self.step:
                self.checkpoint()
        except StopRequested:
            if self.last_checkpoint_step != self.step:
                self.checkpoint()
            raise TrainingInterrupted(self._cancel_message()) from None
        except TrainingDiverged:
            raise
        except BaseException as e:
            # Foreign interruptions (the host's Cancel, Ctrl-C, out of memory): keep the progress.
            if consistent and self.save is not None and self.last_checkpoint_step != self.step:
                try:
                    path = self.checkpoint()
                    if path is not None and hasattr(e, "add_note"):
                        e.add_note(f"DiffSketch saved a resumable checkpoint at step {self.step}: {path}")
                except Exception:  # the original error matters more than a failed save
                    pass
            raise

    def _cancel_message(self) -> str:
        done = f"{self.what.capitalize()} was cancelled at step {self.step} of {self.iterations}."
        if self.save is None:
            return f"{done} No checkpoint path was given, so {self.unsaved_hint}."
        if self.group is not None and not self.group.is_main:
            hint = self.resume_hint.replace("{path}", "rank 0's checkpoint")
            return f"{done} Rank 0 of the launch wrote a resumable checkpoint; {hint}."
        hint = self.resume_hint.replace("{path}", str(self.last_checkpoint))
        return f"{done} A resumable checkpoint is at {self.last_checkpoint}; {hint}."
