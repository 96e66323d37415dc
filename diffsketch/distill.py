"""Distillation: turn a trained DiffSketch generator into a fast image-to-sketch network (method.md §9).

The paper distils DiffSketch into a feed-forward network trained on 30k (image, sketch) pairs
that DiffSketch itself generated from purely random CDST conditions. This module does both halves:

- :func:`generate_pairs` samples images with a backend, runs the generator on their captured
  features and writes ``images/{i:06d}.png`` + ``sketches/{i:06d}.png`` (8-bit) and a
  ``manifest.json`` into a folder. Pair ``i`` depends only on ``(seed, i)`` and the settings, so
  generation can stop at any point (Cancel, crash, power cut) and continue in a later sitting;
  asking for more pairs later just adds the missing ones. :func:`write_pair` stores pairs from
  any other teacher in the same layout, and :class:`PairSet` reads either back.
- :func:`train_student` fits a student network (a :class:`~diffsketch.extractor.SketchExtractor`
  by default, or any ``[B,3,H,W] -> [B,1,H,W]`` module) to the pairs with L1 + LPIPS on random
  crops with horizontal flips. Batch ``k`` is drawn from an RNG seeded by ``(seed, k)``, so a
  run resumed from a checkpoint after N steps ends bit-for-bit where an uninterrupted run ends.

:func:`distill` chains the two for the node and the command line. Saving the student is the
caller's: ``save_extractor(path, student, student.meta)``.

Not implemented: the optional adversarial term (Pix2PixHD's GAN + feature matching).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpointing import load_training_state, save_training_state
from .errors import Cancelled, FileFormatError, InvalidInputError, TrainingDiverged, TrainingInterrupted
from .extractor import ExtractorConfig, SketchExtractor
from .fileio import atomic_write_bytes
from .losses import perceptual_preprocess
from .timesteps import plan_timesteps

PAIRS_FORMAT = "diffsketch-pairs"
PAIRS_VERSION = 1
MANIFEST_NAME = "manifest.json"
IMAGES_DIR = "images"
SKETCHES_DIR = "sketches"
DISTILL_CHECKPOINT_KIND = "distill_checkpoint"
DISTILL_CHECKPOINT_VERSION = 1
#: Upper bound on pair indices: six-digit file names.
MAX_PAIRS = 1_000_000

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]
StepFn = Callable[[int, dict, "torch.Tensor | None"], None]


# --------------------------------------------------------------------------------------------
# Seeds and fingerprints
# --------------------------------------------------------------------------------------------


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings: independent streams per (seed, index, purpose)
    without the correlations of ``seed + index``."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _generator(*parts) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))


def tensors_fingerprint(tensors: dict[str, torch.Tensor], extra: str = "") -> str:
    """Short SHA-256 over names, dtypes, shapes and bytes (plus ``extra``): tells two sets of
    weights apart so a pair folder cannot silently mix two teachers."""
    digest = hashlib.sha256(extra.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def generator_fingerprint(generator: nn.Module) -> str:
    config = getattr(generator, "config", None)
    extra = json.dumps(config.to_dict(), sort_keys=True) if hasattr(config, "to_dict") else ""
    spec = getattr(generator, "spec", None)
    if spec is not None and hasattr(spec, "fingerprint"):
        extra += spec.fingerprint()
    return tensors_fingerprint(generator.state_dict(), extra)


def conditions_fingerprint(conditions) -> str:
    tensors = {
        "mean": conditions.mean,
        "components": conditions.components,
        "score_mean": conditions.score_mean,
        "variance": conditions.variance,
    }
    return tensors_fingerprint(tensors)


# --------------------------------------------------------------------------------------------
# Pair folders
# --------------------------------------------------------------------------------------------


def _to_ranges(indices: Sequence[int]) -> list[list[int]]:
    """Sorted indices as inclusive ``[first, last]`` runs: 30k done pairs stay a few bytes."""
    ranges: list[list[int]] = []
    for i in sorted(set(indices)):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return ranges


def _from_ranges(ranges, where: str) -> list[int]:
    out: list[int] = []
    try:
        for first, last in ranges:
            if not (isinstance(first, int) and isinstance(last, int) and 0 <= first <= last < MAX_PAIRS):
                raise ValueError(f"bad range {[first, last]}")
            out.extend(range(first, last + 1))
    except (TypeError, ValueError) as e:
        raise FileFormatError(
            f"{where}: the list of done pairs is invalid ({e}); delete the manifest and re-run."
        ) from e
    return sorted(set(out))


def pair_paths(out_dir: str | os.PathLike, index: int) -> tuple[Path, Path]:
    """``(image path, sketch path)`` of pair ``index`` in a pair folder."""
    root = Path(out_dir)
    return root / IMAGES_DIR / f"{index:06d}.png", root / SKETCHES_DIR / f"{index:06d}.png"


def _check_index(index) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_PAIRS:
        raise InvalidInputError(f"pair index must be an integer in 0..{MAX_PAIRS - 1}, got {index!r}.")
    return index


def _read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(
            f"{path} is unreadable or not valid JSON ({e}); delete it (and the pairs, or keep them and "
            "re-run generation with the same settings to re-list them)."
        ) from e
    if not isinstance(data, dict) or data.get("format") != PAIRS_FORMAT:
        raise FileFormatError(
            f"{path} is not a DiffSketch pair manifest; pick a pair folder or an empty folder."
        )
    if data.get("version") != PAIRS_VERSION:
        raise FileFormatError(
            f"{path} is pair-folder format version {data.get('version')}; this DiffSketch reads version "
            f"{PAIRS_VERSION}. Generate the pairs again into a new folder."
        )
    if not isinstance(data.get("settings"), dict):
        raise FileFormatError(f"{path} has no settings object; delete the manifest and re-run generation.")
    data["done"] = _from_ranges(data.get("done", []), str(path))
    return data


def _settings_difference(saved: dict, wanted: dict) -> str:
    keys = sorted(set(saved) | set(wanted))
    diffs = [
        f"{k}: folder has {saved.get(k)!r}, asked {wanted.get(k)!r}"
        for k in keys
        if saved.get(k) != wanted.get(k)
    ]
    return "; ".join(diffs)


def _json_settings(settings: dict) -> dict:
    try:
        return json.loads(json.dumps(settings, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"pair settings must be JSON-serialisable: {e}") from e


class _PairWriter:
    """Keeps a folder's manifest in memory and rewrites it atomically after every pair."""

    def __init__(self, out_dir: str | os.PathLike, settings: dict, requested: int | None = None):
        self.root = Path(out_dir)
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInputError(
                f"{self.root} is a file; pairs need a folder (give a new or existing folder)."
            )
        settings = _json_settings(settings)
        manifest = _read_manifest(self.root)
        if manifest is None:
            self.manifest = {
                "format": PAIRS_FORMAT,
                "version": PAIRS_VERSION,
                "settings": settings,
                "done": [],
            }
        else:
            if manifest["settings"] != settings:
                raise InvalidInputError(
                    f"{self.root} already holds pairs made with other settings ({_settings_difference(manifest['settings'], settings)}). "
                    "Use a new folder, or the folder's settings to continue it."
                )
            self.manifest = manifest
        self.done = set(self.manifest["done"])
        if requested is not None:
            self.manifest["requested"] = max(int(self.manifest.get("requested", 0)), int(requested))

    def has(self, index: int) -> bool:
        image_path, sketch_path = pair_paths(self.root, index)
        return index in self.done and image_path.is_file() and sketch_path.is_file()

    def write(self, index: int, image: torch.Tensor, sketch: torch.Tensor) -> None:
        image_png, sketch_png = _encode_pair(image, sketch)
        image_path, sketch_path = pair_paths(self.root, index)
        # The manifest is written last: an index is listed only once both files are complete.
        atomic_write_bytes(image_path, image_png)
        atomic_write_bytes(sketch_path, sketch_png)
        self.done.add(index)
        self.save()

    def save(self) -> None:
        self.manifest["done"] = _to_ranges(sorted(self.done))
        text = json.dumps(self.manifest, indent=1, sort_keys=True)
        atomic_write_bytes(self.root / MANIFEST_NAME, text.encode("utf-8"))


def _as_chw(x, channels: tuple[int, ...], what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{what} must be a torch tensor, got {type(x).__name__}.")
    x = x.detach()
    while x.dim() > 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 2 and 1 in channels:
        x = x[None]
    if x.dim() != 3 or x.shape[0] not in channels or min(x.shape[-2:]) < 1:
        raise InvalidInputError(
            f"{what} must be [C,H,W] (or [1,C,H,W]) with C in {list(channels)}; got shape {tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise InvalidInputError(f"{what} must be a float tensor in [0, 1], got {x.dtype}.")
    if not torch.isfinite(x).all():
        raise InvalidInputError(f"{what} contains NaN or infinite values.")
    return x.float().cpu().clamp(0.0, 1.0)


def _to_u8(x: torch.Tensor) -> np.ndarray:
    return (x * 255.0).round().to(torch.uint8).numpy()


def _encode_pair(image: torch.Tensor, sketch: torch.Tensor) -> tuple[bytes, bytes]:
    from PIL import Image

    image = _as_chw(image, (3,), "pair image")
    sketch = _as_chw(sketch, (1,), "pair sketch")
    if image.shape[-2:] != sketch.shape[-2:]:
        raise InvalidInputError(
            f"pair image and sketch differ in size: {tuple(image.shape[-2:])} vs {tuple(sketch.shape[-2:])}."
        )
    out = []
    for array, mode in ((_to_u8(image.permute(1, 2, 0)), "RGB"), (_to_u8(sketch[0]), "L")):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array), mode=mode).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out[0], out[1]


def write_pair(
    out_dir: str | os.PathLike,
    index: int,
    image: torch.Tensor,
    sketch: torch.Tensor,
    *,
    settings: dict | None = None,
) -> None:
    """Store one (image, sketch) pair from any teacher in a pair folder and list it in the manifest.

    ``image`` ``[3,H,W]`` and ``sketch`` ``[1,H,W]`` (or with a leading batch of one) are float in
    [0, 1] (1 = paper); they are written as 8-bit PNGs, atomically. ``settings`` (JSON) describe
    the teacher; a folder only takes pairs made with the settings it was started with. Writing an
    index twice replaces the pair. For many pairs, :func:`generate_pairs` avoids re-reading the
    manifest each time.
    """
    _PairWriter(out_dir, {"teacher": "custom"} if settings is None else dict(settings)).write(
        _check_index(index), image, sketch
    )


class PairSet:
    """The pairs of a folder written by :func:`generate_pairs` or :func:`write_pair`.

    ``len(pairs)`` is the number of complete pairs; ``pairs[k]`` is the k-th (in index order) as
    ``(image [3,H,W], sketch [1,H,W])`` float32 tensors in [0, 1]. ``pairs.indices`` maps k to the
    file index, ``pairs.settings`` is the manifest's settings. Every listed file is checked to
    exist when the set is opened, so a damaged folder fails at once rather than mid-training.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.root = Path(out_dir)
        manifest = _read_manifest(self.root) if self.root.is_dir() else None
        if manifest is None:
            raise InvalidInputError(
                f"{self.root} is not a pair folder (no {MANIFEST_NAME}); generate pairs into it first."
            )
        self.settings: dict = manifest["settings"]
        self.requested: int | None = manifest.get("requested")
        self.indices: list[int] = manifest["done"]
        missing = [str(p) for i in self.indices for p in pair_paths(self.root, i) if not p.is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileFormatError(
                f"{self.root}: the manifest lists {len(missing)} file(s) that are missing: {shown}. Re-run "
                "generation with the same settings to write them again."
            )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= k < len(self):
            raise IndexError(f"pair {k} is out of range for {len(self)} pairs")
        index = self.indices[k]
        image_path, sketch_path = pair_paths(self.root, index)
        image = _read_png(image_path, "RGB")
        sketch = _read_png(sketch_path, "L")
        if image.shape[-2:] != sketch.shape[-2:]:
            raise FileFormatError(
                f"pair {index} in {self.root}: image {image_path.name} is {tuple(image.shape[-2:])} but its sketch is "
                f"{tuple(sketch.shape[-2:])}; delete both files and re-run generation."
            )
        return image, sketch

    def __repr__(self) -> str:
        return f"PairSet({str(self.root)!r}, {len(self)} pairs)"


def _read_png(path: Path, mode: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert(mode), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise FileFormatError(
            f"{path} cannot be read as an image ({e}); delete it and re-run generation to write it again."
        ) from e
    t = torch.from_numpy(array.copy()).float() / 255.0
    return t.permute(2, 0, 1).contiguous() if t.dim() == 3 else t[None]


def pair_settings(
    backend,
    generator: nn.Module,
    conditions,
    *,
    seed: int = 0,
    steps: int = 50,
    cfg: float = 5.0,
    width: int = 512,
    height: int = 512,
    timesteps: Sequence[int] | None = None,
    schedule: str | Sequence[int] = "full",
) -> dict:
    """Everything that decides which pairs :func:`generate_pairs` writes (the generator's and the
    conditions' fingerprints included), checked: what a pair folder's manifest records."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}.")
    meta = getattr(generator, "meta", None)
    if timesteps is None and isinstance(meta, dict) and meta.get("timesteps"):
        timesteps = meta["timesteps"]
    plan = plan_timesteps(steps, timesteps)
    n_needed = getattr(generator, "n_timesteps", len(plan.used))
    if len(plan.used) != n_needed:
        raise InvalidInputError(
            f"the generator was trained on {n_needed} timesteps but {len(plan.used)} were asked for "
            f"({list(plan.used)}); give the timesteps it was trained with."
        )
    if not isinstance(schedule, str):
        schedule = [int(t) for t in schedule]
    settings = {
        "teacher": "diffsketch",
        "seed": seed,
        "steps": int(steps),
        "cfg": float(cfg),
        "width": int(width),
        "height": int(height),
        "timesteps": list(plan.used),
        "schedule": schedule,
        "model_layout": backend.spec.fingerprint(),
        "generator": generator_fingerprint(generator),
        "conditions": conditions_fingerprint(conditions),
    }
    return settings


def pair_settings_digest(settings: dict) -> str:
    """A short hash of :func:`pair_settings`: a folder name per teacher and settings, so a new
    generator saved under an old name gets new pairs instead of a clash."""
    return hashlib.sha256(json.dumps(_json_settings(settings), sort_keys=True).encode()).hexdigest()[:12]


def generate_pairs(
    backend,
    generator: nn.Module,
    conditions,
    out_dir: str | os.PathLike,
    count: int,
    *,
    seed: int = 0,
    steps: int = 50,
    cfg: float = 5.0,
    width: int = 512,
    height: int = 512,
    timesteps: Sequence[int] | None = None,
    schedule: str | Sequence[int] = "full",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PairSet:
    """Write pairs ``0 .. count-1`` of DiffSketch (image, sketch) into ``out_dir``; returns the set.

    Pair ``i``: a pure random CDST condition ``conditions.sample(g)`` with ``g`` seeded from
    ``(seed, i)``, an image sampled with that condition and noise seed ``derive_seed(seed, i)``
    with features captured, and ``generator.forward_sample(sample)`` clamped to [0, 1] as its
    sketch. ``timesteps=None`` takes the generator's (``generator.meta["timesteps"]``) if it
    records them, else the paper's 13.

    Resumable: pairs already in the folder are skipped, so re-running (after a Cancel, a crash,
    or with a larger ``count``) only adds the missing ones. The folder remembers the settings,
    the generator's and the conditions' fingerprints; other settings raise InvalidInputError.
    ``progress(done, count)`` after each pair; ``should_stop()`` before each pair -- True
    raises :class:`~diffsketch.errors.Cancelled` with every finished pair kept.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PAIRS:
        raise InvalidInputError(f"pair count must be an integer in 1..{MAX_PAIRS}, got {count!r}.")
    settings = pair_settings(
        backend,
        generator,
        conditions,
        seed=seed,
        steps=steps,
        cfg=cfg,
        width=width,
        height=height,
        timesteps=timesteps,
        schedule=schedule,
    )
    plan = plan_timesteps(settings["steps"], settings["timesteps"])
    writer = _PairWriter(out_dir, settings, requested=count)
    todo = [i for i in range(count) if not writer.has(i)]
    done = count - len(todo)
    if progress is not None:
        progress(done, count)
    was_training = generator.training
    generator.eval()
    try:
        for i in todo:
            if should_stop is not None and should_stop():
                writer.save()
                raise Cancelled(
                    f"pair generation was cancelled with {done} of {count} pairs in {writer.root}; run it again with "
                    "the same settings to continue."
                )
            condition = conditions.sample(_generator("condition", seed, i), 1)
            sample = backend.sample(
                condition,
                seed=derive_seed("noise", seed, i),
                steps=steps,
                cfg=cfg,
                width=width,
                height=height,
                timesteps=list(plan.used),
                schedule=schedule,
                capture=True,
            )
            with torch.no_grad():
                sketch = generator.forward_sample(sample).float().clamp(0.0, 1.0).cpu()
            writer.write(i, sample.image[0], sketch[0])
            done += 1
            if progress is not None:
                progress(done, count)
    finally:
        generator.train(was_training)
    return PairSet(writer.root)


# --------------------------------------------------------------------------------------------
# Student training
# --------------------------------------------------------------------------------------------

_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :func:`train_student`; stored as JSON in checkpoints and the student's meta.

    Optimiser: Adam (betas 0.9, 0.999) at ``lr``, with a linear warm-up over
    ``warmup_iterations`` and then, with ``lr_schedule="cosine"``, a cosine decay to
    ``lr * min_lr_ratio`` at ``iterations``. The first SketchExtractor (format 1) had no
    normalisation layer and blew up at lr 1e-3 (activations x10^2..10^6 within ten steps, the
    sigmoid stuck at 0); the GroupNorm residual blocks of formats 2 and 3 train stably at 1e-3
    and 2e-3 with the warm-up (the distill_fidelity benchmark's runs). Each step draws ``batch_size`` pairs at random (with replacement), a random
    ``crop_size`` crop of each (pairs smaller than that are reflection-padded) and, with
    ``flip``, a random horizontal flip. Loss = ``l1_weight * L1 + lpips_weight * LPIPS``;
    gradients are clipped to ``grad_clip_norm`` (0 = off).
    """

    iterations: int = 3000
    batch_size: int = 8
    crop_size: int = 256
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_iterations: int = 200
    min_lr_ratio: float = 0.02
    l1_weight: float = 1.0
    lpips_weight: float = 1.0
    flip: bool = True
    grad_clip_norm: float = 1.0
    checkpoint_every: int = 500
    preview_every: int = 100
    seed: int = 0
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)

    def __post_init__(self):
        if isinstance(self.extractor, dict):
            object.__setattr__(self, "extractor", ExtractorConfig.from_dict(self.extractor))
        if not isinstance(self.extractor, ExtractorConfig):
            raise InvalidInputError("DistillConfig.extractor must be an ExtractorConfig or its dict.")

        def positive_int(name, low=1):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InvalidInputError(f"DistillConfig.{name} must be an integer >= {low}, got {v!r}.")

        def number(name, low, high, low_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidInputError(f"DistillConfig.{name} must be a finite number, got {v!r}.")
            if v < low or v > high or (low_open and v == low):
                bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
                raise InvalidInputError(f"DistillConfig.{name} must be in {bound}, got {v!r}.")
            object.__setattr__(self, name, float(v))

        for name in ("iterations", "batch_size", "crop_size", "checkpoint_every", "preview_every"):
            positive_int(name)
        positive_int("warmup_iterations", 0)
        positive_int("seed", 0)
        number("lr", 0.0, 1.0, low_open=True)
        number("min_lr_ratio", 0.0, 1.0)
        number("l1_weight", 0.0, 1e6)
        number("lpips_weight", 0.0, 1e6)
        number("grad_clip_norm", 0.0, 1e6)
        if self.l1_weight == 0 and self.lpips_weight == 0:
            raise InvalidInputError("DistillConfig: l1_weight and lpips_weight cannot both be 0.")
        if self.lr_schedule not in _SCHEDULES:
            raise InvalidInputError(
                f"DistillConfig.lr_schedule must be one of {_SCHEDULES}, got {self.lr_schedule!r}."
            )
        if not isinstance(self.flip, bool):
            raise InvalidInputError(f"DistillConfig.flip must be true or false, got {self.flip!r}.")

    def lr_at(self, iteration: int) -> float:
        """Learning rate of step ``iteration`` (0-based): warm-up, then constant or cosine decay."""
        scale = 1.0
        if self.warmup_iterations and iteration < self.warmup_iterations:
            scale = (iteration + 1) / self.warmup_iterations
        if self.lr_schedule == "cosine":
            progress = min(iteration / max(self.iterations - 1, 1), 1.0)
            floor = self.min_lr_ratio
            scale *= floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * scale

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["extractor"] = self.extractor.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DistillConfig:
        if not isinstance(data, dict):
            raise InvalidInputError(f"a distill config must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"unknown distill config keys {unknown}; known keys are {sorted(known)}.")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> DistillConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"distill config is not valid JSON: {e}") from e
        return cls.from_dict(data)


# Settings that may change when a run is resumed; every other one must match the checkpoint's,
# or the resumed run would not be the run that was started.
_RESUMABLE_CHANGES = ("iterations", "checkpoint_every", "preview_every")


def build_student(config: DistillConfig) -> SketchExtractor:
    """The default student, initialised from ``config.seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("student-init", config.seed))
        return SketchExtractor(config.extractor)


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad [C,H,W] at the bottom/right to at least (height, width): reflection, or edge replication
    where the image is too small to reflect."""
    ph, pw = max(height - x.shape[-2], 0), max(width - x.shape[-1], 0)
    x = x[None]
    if pw:
        x = F.pad(x, (0, pw, 0, 0), mode="reflect" if pw < x.shape[-1] else "replicate")
    if ph:
        x = F.pad(x, (0, 0, 0, ph), mode="reflect" if ph < x.shape[-2] else "replicate")
    return x[0]


def _load_pair(pairs, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    item = pairs[k]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise InvalidInputError(f"pair {k} is not an (image, sketch) pair but {type(item).__name__}.")
    image, sketch = item
    ok = (
        isinstance(image, torch.Tensor)
        and isinstance(sketch, torch.Tensor)
        and image.dim() == 3
        and image.shape[0] == 3
        and sketch.dim() == 3
        and sketch.shape[0] == 1
        and image.shape[-2:] == sketch.shape[-2:]
    )
    if not ok:
        shapes = [
            tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (image, sketch)
        ]
        raise InvalidInputError(
            f"pair {k} must be (image [3,H,W], sketch [1,H,W]) of one size; got {shapes[0]} and {shapes[1]}."
        )
    if not (torch.isfinite(image).all() and torch.isfinite(sketch).all()):
        raise InvalidInputError(f"pair {k} contains NaN or infinite values; fix or remove it.")
    return image.float(), sketch.float()


def make_batch(pairs, config: DistillConfig, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch of step ``iteration``: a pure function of (config.seed, iteration)."""
    g = _generator("batch", config.seed, iteration)
    crop = config.crop_size
    n = len(pairs)
    choices = torch.randint(n, (config.batch_size,), generator=g).tolist()
    images, sketches = [], []
    for k in choices:
        image, sketch = _load_pair(pairs, k)
        image, sketch = _pad_to(image, crop, crop), _pad_to(sketch, crop, crop)
        h, w = image.shape[-2:]
        top = int(torch.randint(h - crop + 1, (1,), generator=g))
        left = int(torch.randint(w - crop + 1, (1,), generator=g))
        flip = bool(torch.rand((), generator=g) < 0.5)
        image = image[:, top : top + crop, left : left + crop]
        sketch = sketch[:, top : top + crop, left : left + crop]
        if config.flip and flip:
            image, sketch = image.flip(-1), sketch.flip(-1)
        images.append(image.clamp(0.0, 1.0))
        sketches.append(sketch.clamp(0.0, 1.0))
    return torch.stack(images), torch.stack(sketches)


def _preview(images: torch.Tensor, sketches: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """input | teacher | student of the batch's first crop, as a ComfyUI IMAGE [1, H, 3W, 3]."""
    parts = [
        images[0],
        sketches[0].expand(3, -1, -1),
        output[0].detach().float().clamp(0, 1).expand(3, -1, -1),
    ]
    return torch.cat([p.cpu() for p in parts], dim=-1).permute(1, 2, 0)[None].contiguous()


def _parameters_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def _check_resume(meta: dict, config: DistillConfig, student: nn.Module, path) -> None:
    saved = meta.get("config")
    if not isinstance(saved, dict):
        raise FileFormatError(
            f"{Path(path).name}: the checkpoint has no distill config; it cannot be resumed."
        )
    wanted = config.to_dict()
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, now {wanted.get(k)!r}"
        for k in sorted(set(saved) | set(wanted))
        if k not in _RESUMABLE_CHANGES and saved.get(k) != wanted.get(k)
    ]
    if diffs:
        raise InvalidInputError(
            f"{Path(path).name} was made with other distill settings ({'; '.join(diffs)}). Resume with the "
            f"checkpoint's settings (only {', '.join(_RESUMABLE_CHANGES)} may change) or start a new run."
        )
    if meta.get("student") not in (None, type(student).__name__):
        raise InvalidInputError(
            f"{Path(path).name} trained a {meta.get('student')}, not a {type(student).__name__}; resume with the "
            "same student network."
        )


def train_student(
    pairs,
    config: DistillConfig | None = None,
    *,
    lpips_model: nn.Module | None = None,
    student: nn.Module | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
    on_step: StepFn | None = None,
    should_stop: StopFn | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Train ``student`` (default: a new :class:`SketchExtractor` of ``config.extractor``) on ``pairs``.

    ``pairs``: a :class:`PairSet` or anything with ``len()`` and ``[k] -> (image [3,H,W], sketch
    [1,H,W])`` in [0, 1]. ``student``: any module mapping ``[B,3,H,W]`` in [0, 1] to ``[B,1,H,W]``
    in [0, 1] (1 = paper); ``config.crop_size`` must be a multiple of its ``multiple``.
    ``lpips_model``: from :func:`~diffsketch.losses.build_lpips`; None (or ``lpips_weight=0``)
    trains on L1 alone.

    ``checkpoint_path``: written every ``checkpoint_every`` steps, at the end, and on Cancel.
    ``resume_from``: a checkpoint of this run (same settings but ``iterations`` and the
    checkpoint/preview frequencies): training continues from its step and ends exactly where an
    uninterrupted run would. ``on_step(step, losses, preview)`` after every step; ``preview`` is
    None except every ``preview_every`` steps and at the last one, when it is a ComfyUI IMAGE
    ``[1, H, 3W, 3]`` (input | teacher | student). ``should_stop()`` before every step: True
    writes a checkpoint (with ``checkpoint_path``) and raises
    :class:`~diffsketch.errors.TrainingInterrupted`. A non-finite loss, gradient or weight stops
    training without overwriting the last good checkpoint and raises ``TrainingDiverged``
    saying so.

    Returns the student in eval mode with ``student.meta`` (JSON) describing the run, ready for
    ``save_extractor(path, student, student.meta)``.
    """
    config = config or DistillConfig()
    if not isinstance(config, DistillConfig):
        raise InvalidInputError(f"config must be a DistillConfig, got {type(config).__name__}.")
    n_pairs = len(pairs)
    if n_pairs < 1:
        raise InvalidInputError("the pair set is empty; generate some pairs first.")
    device = torch.device(device)
    if student is None:
        student = build_student(config)
    multiple = int(getattr(student, "multiple", 1))
    if config.crop_size % multiple:
        raise InvalidInputError(
            f"crop_size {config.crop_size} must be a multiple of {multiple} for a {type(student).__name__}; "
            f"use {max(multiple, config.crop_size // multiple * multiple)}."
        )
    use_lpips = lpips_model is not None and config.lpips_weight > 0
    if use_lpips:
        lpips_model = lpips_model.to(device).eval().requires_grad_(False)
    student = student.to(device).train()
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise InvalidInputError(f"the student {type(student).__name__} has no trainable parameters.")
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999))

    start = 0
    if resume_from is not None:
        start, _, meta = load_training_state(
            resume_from,
            kind=DISTILL_CHECKPOINT_KIND,
            model=student,
            optimizer=optimizer,
            device=device,
            versions=(DISTILL_CHECKPOINT_VERSION,),
        )
        _check_resume(meta, config, student, resume_from)

    last_saved: int | None = start if resume_from is not None else None
    losses: dict = {}

    def checkpoint_meta() -> dict:
        meta = {
            "config": config.to_dict(),
            "student": type(student).__name__,
            "pairs": n_pairs,
            "losses": losses,
        }
        if isinstance(student, SketchExtractor):
            meta["student_config"] = student.config.to_dict()
        return meta

    def save(step: int) -> None:
        nonlocal last_saved
        if checkpoint_path is None:
            return
        save_training_state(
            checkpoint_path,
            kind=DISTILL_CHECKPOINT_KIND,
            model=student,
            optimizer=optimizer,
            step=step,
            meta=checkpoint_meta(),
            version=DISTILL_CHECKPOINT_VERSION,
        )
        last_saved = step

    def diverged(step: int, what: str) -> TrainingDiverged:
        kept = (
            f"the last good checkpoint ({Path(checkpoint_path).name}, step {last_saved}) was kept"
            if checkpoint_path is not None and last_saved is not None
            else "no checkpoint was written"
        )
        return TrainingDiverged(
            f"distillation diverged at step {step} ({what}); {kept}. Lower lr (now {config.lr:g}) or raise "
            "warmup_iterations, then resume from the checkpoint or start again."
        )

    for iteration in range(start, config.iterations):
        if should_stop is not None and should_stop():
            save(iteration)
            where = (
                f"a checkpoint at step {iteration} was written to {checkpoint_path}; resume from it"
                if checkpoint_path is not None
                else "no checkpoint path was given, so nothing was saved"
            )
            raise TrainingInterrupted(f"distillation was cancelled at step {iteration}; {where}.")
        images, sketches = make_batch(pairs, config, iteration)
        images, sketches = images.to(device), sketches.to(device)
        lr = config.lr_at(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr

        output = student(images)
        if output.shape != sketches.shape:
            raise InvalidInputError(
                f"the student {type(student).__name__} returned {tuple(output.shape)} for input "
                f"{tuple(images.shape)}; it must return [B,1,H,W]."
            )
        output = output.float()
        l1 = (output - sketches).abs().mean()
        loss = config.l1_weight * l1
        step_losses = {"l1": float(l1.detach())}
        if use_lpips:
            size = config.crop_size  # no resampling: thin lines stay as they are
            lp = lpips_model(
                perceptual_preprocess(output, size), perceptual_preprocess(sketches, size)
            ).mean()
            loss = loss + config.lpips_weight * lp
            step_losses["lpips"] = float(lp.detach())
        if not torch.isfinite(loss):
            raise diverged(iteration + 1, "the loss is not finite")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip_norm)
        else:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])
            )
        if not torch.isfinite(norm):
            raise diverged(iteration + 1, "the gradients are not finite")
        optimizer.step()
        step = iteration + 1
        last = step == config.iterations
        if (step % config.checkpoint_every == 0 or last) and not _parameters_finite(student):
            raise diverged(step, "the weights are not finite")
        losses = {"loss": float(loss.detach()), **step_losses, "lr": lr}
        if on_step is not None:
            preview = _preview(images, sketches, output) if step % config.preview_every == 0 or last else None
            on_step(step, losses, preview)
        if step % config.checkpoint_every == 0 or last:
            save(step)

    student.eval()
    steps_done = max(start, config.iterations)
    student.meta = {
        "distill": config.to_dict(),
        "iterations_done": steps_done,
        "pairs": n_pairs,
        "pair_settings": getattr(pairs, "settings", None),
        "final_losses": losses,
        "lpips": bool(use_lpips),
    }
    return student


def distill(
    backend,
    generator: nn.Module,
    conditions,
    out_dir: str | os.PathLike,
    pair_count: int,
    config: DistillConfig | None = None,
    *,
    seed: int = 0,
    steps: int = 50,
    cfg: float = 5.0,
    width: int = 512,
    height: int = 512,
    timesteps: Sequence[int] | None = None,
    schedule: str | Sequence[int] = "full",
    lpips_model: nn.Module | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = True,
    progress: ProgressFn | None = None,
    on_step: StepFn | None = None,
    should_stop: StopFn | None = None,
    device: str | torch.device = "cpu",
) -> SketchExtractor:
    """Generate ``pair_count`` pairs into ``out_dir`` (resuming any already there), then train a
    student on them (see :func:`generate_pairs` and :func:`train_student`).

    The training checkpoint defaults to ``out_dir/student_checkpoint.safetensors``; with
    ``resume`` an existing one is continued. ``progress(done, total)`` reports pair generation,
    ``on_step`` training. Save the result with ``save_extractor(path, student, student.meta)``.
    """
    config = config or DistillConfig()
    pairs = generate_pairs(
        backend,
        generator,
        conditions,
        out_dir,
        pair_count,
        seed=seed,
        steps=steps,
        cfg=cfg,
        width=width,
        height=height,
        timesteps=timesteps,
        schedule=schedule,
        progress=progress,
        should_stop=should_stop,
    )
    checkpoint = (
        Path(checkpoint_path)
        if checkpoint_path is not None
        else Path(out_dir) / "student_checkpoint.safetensors"
    )
    resume_from = checkpoint if resume and checkpoint.is_file() else None
    student = train_student(
        pairs,
        config,
        lpips_model=lpips_model,
        checkpoint_path=checkpoint,
        resume_from=resume_from,
        on_step=on_step,
        should_stop=should_stop,
        device=device,
    )
    student.meta["generator"] = pairs.settings.get("generator")
    return student


__all__ = [
    "DISTILL_CHECKPOINT_KIND",
    "DistillConfig",
    "PairSet",
    "build_student",
    "derive_seed",
    "distill",
    "generate_pairs",
    "make_batch",
    "pair_paths",
    "pair_settings",
    "pair_settings_digest",
    "train_student",
    "write_pair",
]
