"""Pair folders: the (image, sketch) pairs a student extractor is distilled from.

:func:`generate_pairs` samples images with a backend, runs the generator on their captured
features and writes ``images/{i:06d}.png`` + ``sketches/{i:06d}.png`` (8-bit) and a
``manifest.json`` into a folder. Pair ``i`` depends only on ``(seed, i)`` and the settings, so
generation can stop at any point (Cancel, crash, power cut) and continue in a later sitting;
asking for more pairs later just adds the missing ones. :func:`write_pair` stores pairs from
any other teacher in the same layout, and :class:`PairSet` reads either back.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..capture.sampling import SamplingSettings
from ..errors import Cancelled, FileFormatError, InvalidInputError
from ..fileio import atomic_write_bytes, tensors_checksum
from ..seeds import cpu_generator, derive_seed
from ..train.inference import check_generator_fits, generator_sampling
from ..train.loop import StopCallback

PAIRS_FORMAT = "diffsketch-pairs"
PAIRS_VERSION = 1
MANIFEST_NAME = "manifest.json"
IMAGES_DIR = "images"
SKETCHES_DIR = "sketches"
#: Upper bound on pair indices: six-digit file names.
MAX_PAIRS = 1_000_000

ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------


def _fingerprint(tensors: dict[str, torch.Tensor], extra: str = "") -> str:
    """The first 16 hex digits of :func:`~diffsketch.fileio.tensors_checksum`: tells two sets of
    weights apart so a pair folder cannot silently mix two teachers."""
    return tensors_checksum(tensors, extra)[:16]


def generator_fingerprint(generator: nn.Module) -> str:
    config = getattr(generator, "config", None)
    extra = json.dumps(config.to_dict(), sort_keys=True) if hasattr(config, "to_dict") else ""
    spec = getattr(generator, "spec", None)
    if spec is not None and hasattr(spec, "fingerprint"):
        extra += spec.fingerprint()
    return _fingerprint(generator.state_dict(), extra)


def conditions_fingerprint(conditions) -> str:
    tensors = {
        "mean": conditions.mean,
        "components": conditions.components,
        "score_mean": conditions.score_mean,
        "variance": conditions.variance,
    }
    return _fingerprint(tensors)


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

    ``count`` takes pairs ``0 .. count-1`` only (all must be complete), so a folder that holds
    more pairs than a run asked for gives that run exactly the pairs it asked for.
    """

    def __init__(self, out_dir: str | os.PathLike, count: int | None = None):
        self.root = Path(out_dir)
        manifest = _read_manifest(self.root) if self.root.is_dir() else None
        if manifest is None:
            raise InvalidInputError(
                f"{self.root} is not a pair folder (no {MANIFEST_NAME}); generate pairs into it first."
            )
        self.settings: dict = manifest["settings"]
        self.requested: int | None = manifest.get("requested")
        self.indices: list[int] = manifest["done"]
        if count is not None:
            absent = sorted(set(range(count)) - set(self.indices))
            if absent:
                raise InvalidInputError(
                    f"{self.root} lacks {len(absent)} of pairs 0..{count - 1} (e.g. {absent[:3]}); generate them first."
                )
            self.indices = list(range(count))
        missing = [str(p) for i in self.indices for p in pair_paths(self.root, i) if not p.is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileFormatError(
                f"{self.root}: the manifest lists {len(missing)} file(s) that are missing: {shown}. Re-run "
                "generation with the same settings to write them again."
            )

    def __len__(self) -> int:
        return len(self.indices)

    def fingerprint(self) -> str:
        """A short hash of which pairs these are: the folder's settings (teacher included) and the
        pair indices. Two sets with one fingerprint hold the same pairs."""
        blob = json.dumps({"settings": self.settings, "indices": _to_ranges(self.indices)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

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


def pair_settings(backend, generator: nn.Module, conditions, sampling: SamplingSettings) -> dict:
    """Everything that decides which pairs :func:`generate_pairs` writes (the generator's and the
    conditions' fingerprints included), checked: what a pair folder's manifest records.
    ``sampling.seed`` is the seed pair ``i``'s condition and noise are derived from; its
    timesteps and schedule, where None, are the ones the generator was trained with."""
    check_generator_fits(backend, generator)
    sampling = generator_sampling(generator, sampling)
    plan = sampling.plan()
    n_needed = getattr(generator, "n_timesteps", len(plan.used))
    if len(plan.used) != n_needed:
        raise InvalidInputError(
            f"the generator was trained on {n_needed} timesteps but {len(plan.used)} were asked for "
            f"({list(plan.used)}); give the timesteps it was trained with."
        )
    schedule = sampling.schedule if isinstance(sampling.schedule, str) else list(sampling.schedule)
    # The keys and value types are those of every manifest written so far: an existing folder must
    # compare equal to the settings that made it.
    return {
        "teacher": "diffsketch",
        "seed": sampling.seed,
        "steps": sampling.steps,
        "cfg": sampling.cfg,
        "width": sampling.width,
        "height": sampling.height,
        "timesteps": list(plan.used),
        "schedule": schedule,
        "model_layout": backend.spec.fingerprint(),
        "generator": generator_fingerprint(generator),
        "conditions": conditions_fingerprint(conditions),
    }


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
    sampling: SamplingSettings | None = None,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopCallback | None = None,
) -> PairSet:
    """Write pairs ``0 .. count-1`` of DiffSketch (image, sketch) into ``out_dir``; returns them
    (``PairSet(out_dir, count)``: pairs made earlier beyond ``count`` are kept but not included).

    Pair ``i``: a pure random CDST condition ``conditions.sample(g)`` with ``g`` seeded from
    ``(sampling.seed, i)``, an image sampled with that condition, ``sampling`` and the noise seed
    ``derive_seed("noise", sampling.seed, i)`` with features captured, and
    ``generator.forward_sample(sample)`` clamped to [0, 1] as its sketch. ``sampling``'s
    timesteps and schedule, where None, are the generator's (see
    :func:`~diffsketch.train.inference.generator_sampling`); ``sampling`` None:
    :class:`~diffsketch.capture.sampling.SamplingSettings` defaults.

    Resumable: pairs already in the folder are skipped, so re-running (after a Cancel, a crash,
    or with a larger ``count``) only adds the missing ones. The folder remembers the settings,
    the generator's and the conditions' fingerprints; other settings raise InvalidInputError.
    ``progress(done, count)`` after each pair; ``should_stop()`` before each pair -- True
    raises :class:`~diffsketch.errors.Cancelled` with every finished pair kept.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PAIRS:
        raise InvalidInputError(f"pair count must be an integer in 1..{MAX_PAIRS}, got {count!r}.")
    sampling = generator_sampling(generator, sampling or SamplingSettings())
    settings = pair_settings(backend, generator, conditions, sampling)
    sampling = sampling.replace(timesteps=tuple(settings["timesteps"]))
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
            condition = conditions.sample(cpu_generator(derive_seed("condition", sampling.seed, i)), 1)
            noise_seed = derive_seed("noise", sampling.seed, i)
            sample = backend.sample(condition, sampling.replace(seed=noise_seed), capture=True)
            with torch.no_grad():
                sketch = generator.forward_sample(sample).float().clamp(0.0, 1.0).cpu()
            writer.write(i, sample.image[0], sketch[0])
            done += 1
            if progress is not None:
                progress(done, count)
    finally:
        generator.train(was_training)
    return PairSet(writer.root, count=count)
