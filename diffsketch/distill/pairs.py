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

from ..backends.base import guidance_record
from ..capture.sampling import SamplingSettings
from ..distributed import Group, shard
from ..errors import Cancelled, DiffSketchError, FileFormatError, InvalidInputError
from ..fileio import atomic_write_bytes, remove_stale_temp_files, tensors_checksum
from ..seeds import cpu_generator, derive_seed
from ..train.inference import check_generator_fits, check_sampling_branches, generator_sampling
from ..train.loop import StopCallback
from .photos import (
    Photo,
    check_photo_share,
    check_photos,
    is_photo_pair,
    photo_pair_picture,
    photo_set_fingerprint,
)

PAIRS_FORMAT = "diffsketch-pairs"
PAIRS_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: Progress logs of the processes of a launch (see ``_PairWriter``).
PART_LOG = "manifest.part-{rank}.log"
PART_LOG_GLOB = "manifest.part-*.log"
IMAGES_DIR = "images"
SKETCHES_DIR = "sketches"
#: Upper bound on pair indices: six-digit file names.
MAX_PAIRS = 1_000_000

ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------


def tensors_fingerprint(tensors: dict[str, torch.Tensor], extra: str = "") -> str:
    """The first 16 hex digits of :func:`~diffsketch.fileio.tensors_checksum`: tells two sets of
    weights apart so a pair folder cannot silently mix two teachers."""
    return tensors_checksum(tensors, extra)[:16]


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


def settings_difference(saved: dict, wanted: dict) -> str:
    """``key: folder has X, asked Y`` for every setting that differs (for error messages)."""
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


def _part_logs(root: Path) -> list[Path]:
    return sorted(root.glob(PART_LOG_GLOB))


def _read_part_log(path: Path) -> tuple[list[int], dict[int, dict]]:
    """The indices a process of a launch finished and the source records of its photo pairs
    (``index {json}`` lines); a line cut off by a crash is ignored."""
    done, sources = [], {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        index, _, record = line.strip().partition(" ")
        if not (index.isdigit() and int(index) < MAX_PAIRS):
            continue
        if record:
            try:
                parsed = json.loads(record)
            except json.JSONDecodeError:
                continue
            if not isinstance(parsed, dict):
                continue
            sources[int(index)] = parsed
        done.append(int(index))
    return done, sources


class _PairWriter:
    """Keeps a folder's manifest in memory and records each finished pair.

    A single process rewrites ``manifest.json`` atomically after every pair. In a launch of
    several processes each one appends its finished indices to its own log
    (``manifest.part-<rank>.log``, one line each, fsynced) and only rank 0 writes the manifest:
    at the start (settings) and at the end, when it folds every log in and deletes them. Logs
    left by a launch that died are folded in by whatever runs on the folder next.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        settings: dict,
        requested: int | None = None,
        *,
        part: int | None = None,
        photo_set: list[dict] | None = None,
    ):
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
                    f"{self.root} already holds pairs made with other settings ({settings_difference(manifest['settings'], settings)}). "
                    "Use a new folder, or the folder's settings to continue it."
                )
            self.manifest = manifest
        self.done = set(self.manifest["done"])
        # Photo pairs' sources (see .photos); only folders with photo pairs have these keys.
        self.photo_pairs = _read_photo_pairs(self.manifest)
        if photo_set is not None:
            self.manifest["photo_set"] = photo_set
        self._folded = _part_logs(self.root)
        for log in self._folded:
            done, sources = _read_part_log(log)
            self.done.update(done)
            self.photo_pairs.update(sources)
        if requested is not None:
            self.manifest["requested"] = max(int(self.manifest.get("requested", 0)), int(requested))
        self._log = None if part is None else self.root / PART_LOG.format(rank=part)

    def has(self, index: int, photo: bool = False) -> bool:
        """Whether pair ``index`` is complete (a photo pair also needs its source record)."""
        image_path, sketch_path = pair_paths(self.root, index)
        if photo and index not in self.photo_pairs:
            return False
        return index in self.done and image_path.is_file() and sketch_path.is_file()

    def write(
        self, index: int, image: torch.Tensor, sketch: torch.Tensor, source: dict | None = None
    ) -> None:
        """Write a pair; ``source`` is a photo pair's record (photo, variant, replay PSNR)."""
        image_png, sketch_png = _encode_pair(image, sketch)
        image_path, sketch_path = pair_paths(self.root, index)
        # The index is recorded last: it is listed only once both files are complete.
        atomic_write_bytes(image_path, image_png)
        atomic_write_bytes(sketch_path, sketch_png)
        self.done.add(index)
        if source is not None:
            self.photo_pairs[index] = _json_settings(source)
        if self._log is None:
            self.save()
        else:
            line = (
                f"{index}"
                if source is None
                else f"{index} {json.dumps(self.photo_pairs[index], sort_keys=True)}"
            )
            with open(self._log, "a", encoding="utf-8") as f:
                f.write(f"{line}\n")
                f.flush()
                os.fsync(f.fileno())

    def save(self) -> None:
        """Write the manifest with every finished pair, then drop the logs it now contains."""
        self.manifest["done"] = _to_ranges(sorted(self.done))
        if self.photo_pairs:
            self.manifest["photo_pairs"] = {str(i): self.photo_pairs[i] for i in sorted(self.photo_pairs)}
        text = json.dumps(self.manifest, indent=1, sort_keys=True)
        atomic_write_bytes(self.root / MANIFEST_NAME, text.encode("utf-8"))
        for log in self._folded:
            log.unlink(missing_ok=True)
        self._folded = []


def _read_photo_pairs(manifest: dict) -> dict[int, dict]:
    """``{index: record}`` of a manifest's photo pairs (empty for folders without photo pairs)."""
    records = manifest.get("photo_pairs", {})
    if not isinstance(records, dict) or not all(
        k.isdigit() and isinstance(v, dict) for k, v in records.items()
    ):
        raise FileFormatError(
            "a pair manifest's photo_pairs must map pair indices to records; delete the manifest and re-run."
        )
    return {int(k): v for k, v in records.items()}


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

    ``pairs.photo_pairs`` maps the file index of each photo pair (see :mod:`.photos`) to its
    record (photo name and hash, variant, crop, flip, replay PSNR); :meth:`sources` counts both kinds.
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
        self.photo_set: list[dict] = manifest.get("photo_set", [])
        photo_pairs = _read_photo_pairs(manifest)
        if count is not None:
            absent = sorted(set(range(count)) - set(self.indices))
            if absent:
                raise InvalidInputError(
                    f"{self.root} lacks {len(absent)} of pairs 0..{count - 1} (e.g. {absent[:3]}); generate them first."
                )
            self.indices = list(range(count))
        kept = set(self.indices)
        self.photo_pairs: dict[int, dict] = {i: r for i, r in photo_pairs.items() if i in kept}
        missing = [str(p) for i in self.indices for p in pair_paths(self.root, i) if not p.is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileFormatError(
                f"{self.root}: the manifest lists {len(missing)} file(s) that are missing: {shown}. Re-run "
                "generation with the same settings to write them again."
            )

    def __len__(self) -> int:
        return len(self.indices)

    def sources(self) -> dict:
        """What these pairs were made from: ``{"generated": n, "photos": m}``, and for a folder
        with photo pairs also its ``photo_set`` fingerprint and ``photo_share``."""
        out = {"generated": len(self) - len(self.photo_pairs), "photos": len(self.photo_pairs)}
        if "photo_set" in self.settings:
            out.update(photo_set=self.settings["photo_set"], photo_share=self.settings["photo_share"])
        return out

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


def pair_settings(
    backend,
    generator: nn.Module,
    conditions,
    sampling: SamplingSettings,
    photos: Sequence | None = None,
    photo_share: float | None = None,
) -> dict:
    """Everything that decides which pairs :func:`generate_pairs` writes (the generator's and the
    conditions' fingerprints included), checked: what a pair folder's manifest records.
    ``sampling.seed`` is the seed pair ``i``'s condition and noise are derived from; its
    timesteps and schedule, where None, are the ones the generator was trained with.

    With ``photos`` (see :func:`generate_pairs`) and a share above 0 the settings also hold
    ``photo_set`` (:func:`~.photos.photo_set_fingerprint`), ``photo_count`` and ``photo_share``,
    so another photo set or share is another folder; without photos, or with share 0 (no photo
    pair is made), they are exactly the settings of a folder made without photos."""
    check_generator_fits(backend, generator)
    if hasattr(conditions, "check_family"):
        conditions.check_family(backend.spec.family)
    sampling = generator_sampling(generator, sampling)
    if hasattr(generator, "branches"):  # a teacher module of another kind checks its own input
        check_sampling_branches(backend, generator.branches, sampling.cfg, "the generator")
    plan = sampling.plan(backend.spec.family)
    n_needed = getattr(generator, "n_timesteps", len(plan.used))
    if len(plan.used) != n_needed:
        raise InvalidInputError(
            f"the generator was trained on {n_needed} timesteps but {len(plan.used)} were asked for "
            f"({list(plan.used)}); give the timesteps it was trained with."
        )
    schedule = sampling.schedule if isinstance(sampling.schedule, str) else list(sampling.schedule)
    # The keys and value types are those of every manifest written so far: an existing folder must
    # compare equal to the settings that made it.
    settings = {
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
        **guidance_record(backend),  # Flux.1 dev's embedded guidance; no key for the other models
    }
    share = check_photo_share(photo_share, photos)
    if photos is not None and share > 0:
        photos = check_photos(photos)
        settings.update(photo_set=photo_set_fingerprint(photos), photo_count=len(photos), photo_share=share)
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
    sampling: SamplingSettings | None = None,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopCallback | None = None,
    group: Group | None = None,
    batch_size: int | None = None,
    photos: Sequence | None = None,
    photo_share: float | None = None,
    notice: Callable[[str], None] | None = None,
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
    ``progress(done, count)`` after each batch; ``should_stop()`` before each batch -- True
    raises :class:`~diffsketch.errors.Cancelled` with every finished pair kept.

    ``batch_size``: images sampled (and sketched) per call, B; None picks what fits
    (``backend.suggested_batch``: 1 on the CPU). Pairs are made in blocks of B consecutive
    indices, whole even past ``count``, so the folder's bytes depend on B but not on how the
    work is shared, stopped or resumed. Pair ``i`` has the same condition and noise whatever B
    is; batched float arithmetic is not bitwise batch-invariant, so a few pixels of its PNGs may
    differ by one 8-bit step from B=1 (a test bounds this).

    ``group``: the processes of a torchrun / accelerate launch
    (:class:`~diffsketch.distributed.Group`); each makes every ``world_size``-th of the missing
    pairs into the one folder, ``progress`` counts its own share, and the folder ends up byte
    for byte what one process writes. A launch that dies is continued by running it again,
    with any number of processes. One run (launch) per folder at a time.

    ``photos``: the user's own photos (:func:`~.photos.check_photos`: images, ``(name, image)``
    pairs or :class:`~.photos.Photo` objects, e.g. from :func:`~.photos.read_photo_folder`).
    ``photo_share`` r in [0, 1] (default 0.5 with photos): ``count * r`` (rounded half up) of
    the pairs are photo pairs, interleaved with the generated ones by index (:mod:`.photos` says
    which, and which photo and variant each uses); the rest are generated as above, each exactly
    the pair a folder without photos has at that index. A photo pair's picture (the photo fitted
    to ``sampling``'s width x height: resized to cover and centre-cropped, or a crop of a later
    variant) is inverted and replayed with capture
    (:meth:`~diffsketch.backends.base.SamplingBackend.capture_from_image`, empty caption,
    ``sampling``'s steps, schedule and timesteps: ``2 x`` the schedule's UNet evaluations), the
    generator draws the sketch from the replay's features, and the pair's image is the fitted
    photo itself. The manifest's ``photo_pairs`` records each photo pair's source and replay
    PSNR; ``notice(text)`` says, at the end, how many photo pairs and photos replayed below
    :data:`~diffsketch.backends.inversion.MIN_REPLAY_PSNR`. Photo pairs resume and share out
    across a launch like the generated ones.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PAIRS:
        raise InvalidInputError(f"pair count must be an integer in 1..{MAX_PAIRS}, got {count!r}.")
    sampling = generator_sampling(generator, sampling or SamplingSettings())
    share = check_photo_share(photo_share, photos)
    photo_set = check_photos(photos) if photos is not None and share > 0 else None
    settings = pair_settings(
        backend, generator, conditions, sampling, photo_set, share if photo_set else None
    )
    sampling = sampling.replace(timesteps=tuple(settings["timesteps"]))
    if photos is not None and photo_set is None and notice is not None:
        notice("photo_share is 0: the photos are not used, every pair is generated")
    if batch_size is None:
        suggest = getattr(backend, "suggested_batch", None)
        batch_size = suggest(sampling.width, sampling.height) if suggest is not None else 1
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    batch = batch_size
    listed = None if photo_set is None else [{"name": p.name, "sha256": p.sha256} for p in photo_set]
    writer = _open_writer(out_dir, settings, count, group, listed)

    def from_photo(i: int) -> bool:
        return photo_set is not None and is_photo_pair(i, share)

    # the same list on every process: all read the folder before any of them writes to it
    todo = {i for i in range(count) if not writer.has(i, from_photo(i))}
    # Pairs are made in fixed blocks of `batch` indices (block k: k*batch ... k*batch+batch-1),
    # always whole, so pair i is computed in the same batch however the blocks are shared out,
    # resumed or cut by `count`; only the block's missing pairs below `count` are written.
    blocks = sorted({i // batch for i in todo})
    mine = shard(blocks, group)
    rounds = len(mine) if group is None else -(-len(blocks) // group.world_size)
    done = count - len(todo) if group is None else 0
    total = (
        count
        if group is None
        else sum(1 for k in mine for i in range(k * batch, k * batch + batch) if i in todo)
    )
    if progress is not None:
        progress(done, total)
    was_training = generator.training
    generator.eval()
    try:
        for r in range(rounds):
            stop = should_stop is not None and should_stop()
            if group is not None:
                stop = group.any(stop)  # every process takes the same number of steps
            if stop:
                _close_writer(writer, settings, group)
                where = f"{done} of {total} pairs" if group is None else f"this process's {done} of {total}"
                raise Cancelled(
                    f"pair generation was cancelled with {where} in {writer.root}; run it again with "
                    "the same settings to continue."
                )
            if r >= len(mine):
                continue
            block = range(mine[r] * batch, mine[r] * batch + batch)
            # the block's generated pairs, always all of them (see above), sampled as one batch
            indices = [i for i in block if not from_photo(i)]
            if indices:
                conds = [
                    conditions.sample(cpu_generator(derive_seed("condition", sampling.seed, i)), 1)
                    for i in indices
                ]
                seeds = [derive_seed("noise", sampling.seed, i) for i in indices]
                sample = backend.sample_batch(conds, sampling, seeds=seeds, capture=True)
                with torch.no_grad():
                    sketches = generator.forward_sample(sample).float().clamp(0.0, 1.0).cpu()
                for k, i in enumerate(indices):
                    if i in todo:
                        writer.write(i, sample.image[k], sketches[k])
                        done += 1
            for i in block:
                if from_photo(i) and i in todo:
                    writer.write(i, *_photo_pair(backend, generator, photo_set, i, share, sampling))
                    done += 1
            if progress is not None:
                progress(done, total)
    finally:
        generator.train(was_training)
    _close_writer(writer, settings, group)
    pairs = PairSet(writer.root, count=count)
    if photo_set is not None and notice is not None:
        notice(replay_report(pairs))
    return pairs


def _photo_pair(
    backend, generator: nn.Module, photos: list[Photo], index: int, share: float, sampling: SamplingSettings
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(image, sketch, source record)`` of photo pair ``index`` (see :func:`generate_pairs`)."""
    picture, record = photo_pair_picture(photos, index, share, sampling.seed, sampling.width, sampling.height)
    capture = backend.capture_from_image(picture, sampling, caption="")
    with torch.no_grad():
        sketch = generator.forward_sample(capture.sample).float().clamp(0.0, 1.0).cpu()
    record["replay_psnr"] = round(float(capture.replay_psnr), 3)
    return picture[0], sketch[0], record


def replay_report(pairs: PairSet) -> str:
    """In words: how many of ``pairs``' photo pairs, and from how many photos, replayed below
    :data:`~diffsketch.backends.inversion.MIN_REPLAY_PSNR`."""
    from ..backends.inversion import MIN_REPLAY_PSNR

    records = pairs.photo_pairs.values()
    low = [r for r in records if float(r.get("replay_psnr", 0.0)) < MIN_REPLAY_PSNR]
    photos = sorted({r.get("photo") for r in records})
    low_photos = sorted({r.get("photo") for r in low})
    text = (
        f"{len(pairs.photo_pairs)} of {len(pairs)} pairs come from {len(photos)} photo(s); "
        f"{len(low_photos)} photo(s) replayed below {MIN_REPLAY_PSNR:.0f} dB PSNR in {len(low)} pair(s)"
    )
    if low_photos:
        shown = ", ".join(str(p) for p in low_photos[:5]) + (" ..." if len(low_photos) > 5 else "")
        text += (
            f" ({shown}): the features describe a picture that differs visibly from the photo, so those "
            "sketches fit their photos less well; more steps or photos of the kind this model makes help"
        )
    return text


def _clean_folder(root: Path) -> None:
    """Temporary files of writes cut short by a killed process: nothing else writes here now."""
    for folder in (root, root / IMAGES_DIR, root / SKETCHES_DIR):
        remove_stale_temp_files(folder, min_age=0)


def _open_writer(
    out_dir, settings: dict, count: int, group: Group | None, photo_set: list[dict] | None = None
) -> _PairWriter:
    if group is None:
        writer = _PairWriter(out_dir, settings, requested=count, photo_set=photo_set)
        _clean_folder(writer.root)
        return writer
    failure = None
    if group.is_main:
        # rank 0 checks the folder and records the settings before any process writes a pair
        try:
            main = _PairWriter(out_dir, settings, requested=count, photo_set=photo_set)
            _clean_folder(main.root)
            main.save()
        except DiffSketchError as e:
            failure = e
    shared = group.share(None if failure is None else (type(failure).__name__, str(failure)))
    if failure is not None:
        raise failure
    if shared is not None:
        kind, message = shared
        raise {"FileFormatError": FileFormatError}.get(kind, InvalidInputError)(message)
    return _PairWriter(out_dir, settings, part=group.rank)


def _close_writer(writer: _PairWriter, settings: dict, group: Group | None) -> None:
    """Bring the manifest up to date: in a launch, rank 0 folds in every process's log once all
    have finished."""
    if group is None:
        if writer._folded:
            writer.save()
        return
    group.barrier()
    if group.is_main:
        _PairWriter(writer.root, settings).save()
    group.barrier()
