"""Errors the library raises. Each message names the bad input and what to do about it."""


class DiffSketchError(Exception):
    """Base class for every error the library raises on purpose."""


class UnsupportedModelError(DiffSketchError, ValueError):
    """The model is not an SD 1.x, SD 2.x or SDXL-shaped diffusion model, or cannot be tapped."""


class CaptureError(DiffSketchError, RuntimeError):
    """Feature capture did not see what it was asked to capture (hooks did not fire)."""


class InvalidInputError(DiffSketchError, ValueError):
    """A user-supplied value (size, steps, timesteps, name, image) is out of range."""


class WeightsNotFoundError(DiffSketchError, FileNotFoundError):
    """A weights file the user must place locally is missing or not the expected file."""


class FileFormatError(DiffSketchError, ValueError):
    """A DiffSketch file is corrupt, truncated, of another kind or of another format version."""


class Cancelled(DiffSketchError):
    """A long-running operation was cancelled by the user (``should_stop()`` returned True)."""


class TrainingInterrupted(Cancelled):
    """Training or distillation was cancelled; a resumable checkpoint was written first."""


class TrainingDiverged(DiffSketchError, FloatingPointError):
    """A loss term, gradient or weight became NaN or infinite (training or distillation); the
    step was not applied and the last good checkpoint was kept."""
