"""Sketches for many image files: input listing, an output folder with a manifest, skipping what is done.

:func:`list_inputs` turns folders (walked recursively), globs, list files (``.txt``/``.lst``, one
path per line) and single files into ``(path, key)`` items; the sketch of an item is written to
``out/<key>.png`` (8-bit grey), so a folder tree is mirrored in the output folder. The output
folder's :class:`SketchFolder` manifest (``manifest.jsonl``) records the settings and, one line
per image, what was written or why an input could not be read; a rerun with the same settings
skips every image already done, so a run stopped at any point (Cancel, crash, a dead worker)
is continued by running it again.

:func:`extract_files` runs one process: a ``DataLoader`` with worker processes decodes the
files while the main process runs the network and writes PNGs. :mod:`.extract_ray` spreads the
same work over a Ray cluster. Both write identical folders and manifests.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..errors import FileFormatError, InvalidInputError
from ..fileio import atomic_write_bytes
from ..images import IMAGE_SUFFIXES, read_image_pixels
from .extract import extract, resolve_dtype
from .pairs import settings_difference, tensors_fingerprint

SKETCHES_FORMAT = "diffsketch-sketches"
SKETCHES_VERSION = 1
#: The precision of a folder whose settings record none (every one made before they were recorded).
LEGACY_PRECISION = "float32"
MANIFEST_NAME = "manifest.jsonl"
#: Input files with these suffixes are lists of image paths, one per line.
LIST_SUFFIXES = (".txt", ".lst")

ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


class InputImage(NamedTuple):
    """An image file and its key: the output is ``out/<key>.png``."""

    path: Path
    key: str


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _walk(root: Path, exclude: Path | None) -> Iterable[Path]:
    """Image files under ``root`` in sorted order, hidden folders and ``exclude`` left out."""
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (exclude is None or (here / d).resolve() != exclude)
        )
        for name in sorted(files):
            path = here / name
            if _is_image(path):
                yield path


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: keys are relative to it."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _read_list(list_file: Path) -> list[InputImage]:
    items = []
    base = list_file.parent
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        given = Path(line)
        path = given if given.is_absolute() else base / given
        # a relative path keeps its folders in the output; anything else is keyed by its name
        relative = not given.is_absolute() and ".." not in given.parts
        items.append(InputImage(path, given.with_suffix("").as_posix() if relative else path.stem))
    return items


def output_names(files: list[Path]) -> list[str]:
    """One distinct output file name per input: ``<stem>.png``; inputs that share a stem
    (``a/horse.png``, ``b/horse.jpg``) keep their extension (``horse_png.png``, ``horse_jpg.png``),
    then as many parent folders as it takes (``a_horse_png.png``), so no sketch overwrites another."""

    def name(path: Path, level: int) -> str:
        if level == 0:
            return path.stem
        parts = [*path.resolve().parent.parts[1:], path.stem, path.suffix.lstrip(".") or "noext"]
        return "_".join(parts[-(level + 1) :]) if level > 1 else f"{path.stem}_{parts[-1]}"

    levels = [0] * len(files)
    depth = max((len(f.resolve().parts) for f in files), default=0) + 1
    for _ in range(depth):
        names = [name(f, lv).lower() for f, lv in zip(files, levels, strict=True)]
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            break
        levels = [lv + 1 if n in clashes else lv for n, lv in zip(names, levels, strict=True)]
    names = [name(f, lv) for f, lv in zip(files, levels, strict=True)]
    seen: dict[str, int] = {}
    unique = []
    for n in names:  # the same path words for two files (rare): number them
        count = seen[n.lower()] = seen.get(n.lower(), 0) + 1
        unique.append(n if count == 1 else f"{n}_{count}")
    return [f"{n}.png" for n in unique]


def _distinct_keys(items: list[InputImage]) -> list[InputImage]:
    """Inputs whose keys clash (``horse.png`` and ``horse.jpg`` in one folder, or two folders
    given that both hold a ``horse``; compared ignoring case, as some file systems do) get
    distinct ones in the same folder, named by :func:`output_names`."""
    groups: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        groups.setdefault(item.key.lower(), []).append(k)
    out = list(items)
    for members in groups.values():
        if len(members) < 2:
            continue
        names = output_names([items[k].path for k in members])
        for k, name in zip(members, names, strict=True):
            folder = items[k].key.rpartition("/")[0]
            stem = name[: -len(".png")]
            out[k] = InputImage(items[k].path, f"{folder}/{stem}" if folder else stem)
    return out


def list_inputs(
    inputs: Sequence[str], exclude: str | os.PathLike | None = None
) -> tuple[list[InputImage], list[str]]:
    """Image files named by ``inputs`` and the entries that matched nothing.

    A folder gives every image under it (recursively, hidden folders skipped) keyed by its path
    relative to the folder; a glob gives its matches keyed relative to the glob's fixed folder
    part; a ``.txt``/``.lst`` file gives the paths it lists (relative ones relative to the list's
    folder, keyed by the path as written; files listed but absent are reported when read); an
    image file is keyed by its name. ``exclude`` (the output folder) is never read as input.
    Inputs whose keys clash get distinct ones (:func:`output_names`: the extension, then parent
    folders); should a renamed key still meet another input's, InvalidInputError names them.
    """
    excluded = Path(exclude).resolve() if exclude is not None else None
    found: list[InputImage] = []
    missing: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(InputImage(f, _key(f, p)) for f in _walk(p, excluded))
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            found.extend(_read_list(p))
        elif p.is_file():
            found.append(InputImage(p, p.stem))
        else:
            root = _glob_root(item)
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            matches = [m for m in matches if m.is_file() and _is_image(m)]
            if excluded is not None:
                matches = [m for m in matches if excluded not in m.resolve().parents]
            if matches:
                found.extend(InputImage(m, _key(m, root)) for m in matches)
            else:
                missing.append(item)
    distinct: list[InputImage] = []
    seen_paths: set[Path] = set()
    for entry in found:
        resolved = entry.path.resolve()
        if resolved not in seen_paths:
            seen_paths.add(resolved)
            distinct.append(entry)
    unique: list[InputImage] = []
    by_key: dict[str, Path] = {}
    clashes: list[str] = []
    for entry in _distinct_keys(distinct):
        if entry.key.lower() in by_key:
            clashes.append(f"{by_key[entry.key.lower()]} and {entry.path} -> {entry.key}.png")
            continue
        by_key[entry.key.lower()] = entry.path
        unique.append(entry)
    if clashes:
        shown = "; ".join(clashes[:5]) + (f"; and {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise InvalidInputError(
            f"{len(clashes)} input(s) would write the same sketch as another: {shown}. Rename one of each, or "
            "extract them in separate runs into different output folders."
        )
    return unique, missing


# --------------------------------------------------------------------------------------------
# The network on decoded pixels
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SketchOptions:
    """How each image is extracted (see :func:`~diffsketch.distill.extract.extract`)."""

    invert: bool = False
    contrast: float = 1.0
    tile: int = 1024
    overlap: int = 64
    batch_size: int = 4
    #: The network's precision: "auto" (the device's default), "fp32", "bf16" or "fp16"
    #: (see :func:`~diffsketch.distill.extract.resolve_dtype`).
    dtype: str = "auto"


def extraction_settings(model: nn.Module, options: SketchOptions, device: str | None = None) -> dict:
    """What decides an output folder's sketches: the network's weights and config, the options
    that change pixels (``batch_size`` does not) and the precision ``options.dtype`` resolves to on
    ``device`` (None: the model's)."""
    config = getattr(model, "config", None)
    extra = json.dumps(config.to_dict(), sort_keys=True) if hasattr(config, "to_dict") else ""
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    settings = asdict(options)
    del settings["batch_size"], settings["dtype"]
    settings["contrast"] = float(settings["contrast"])
    settings["precision"] = precision_name(resolve_dtype(device, options.dtype))
    return {"extractor": tensors_fingerprint(model.state_dict(), extra), **settings}


def precision_name(dtype: torch.dtype) -> str:
    """ "float32", "bfloat16" or "float16": how a folder's settings record a precision."""
    return str(dtype).removeprefix("torch.")


def sketch_pixels(model: nn.Module, images: Sequence[np.ndarray], options: SketchOptions) -> list[np.ndarray]:
    """8-bit grey sketches ``[H,W]`` for decoded images (see :func:`read_image_pixels`); images
    of one size and type run through the network together, ``options.batch_size`` at a time."""
    groups: dict[tuple, list[int]] = {}
    for k, image in enumerate(images):
        groups.setdefault((image.shape, image.dtype.str), []).append(k)
    out: list[np.ndarray | None] = [None] * len(images)
    for members in groups.values():
        sketch, _ = extract(
            model,
            np.stack([images[k] for k in members]),
            invert=options.invert,
            contrast=options.contrast,
            tile=options.tile,
            overlap=options.overlap,
            batch_size=options.batch_size,
            dtype=options.dtype,
        )
        grey = (sketch[..., 0].clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
        for k, g in zip(members, grey, strict=True):
            out[k] = g
    return out  # type: ignore[return-value]


def encode_png(grey: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grey), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def sketch_path(root: str | os.PathLike, key: str) -> Path:
    return Path(root) / f"{key}.png"


def write_sketch(root: str | os.PathLike, key: str, grey: np.ndarray) -> None:
    """Write one 8-bit grey sketch as ``root/<key>.png``, atomically: a worker killed mid-write
    leaves no half-written PNG, and writing it again gives the same file."""
    atomic_write_bytes(sketch_path(root, key), encode_png(grey))


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------------------------
# Output folder
# --------------------------------------------------------------------------------------------


class Outcome(NamedTuple):
    """What became of one input: ``error`` is None when its sketch was written."""

    key: str
    input: str
    error: str | None


class SketchFolder:
    """An output folder of sketches and its append-only manifest.

    The first line of ``manifest.jsonl`` holds the format and the settings; each later line is
    one finished input, ``{"key", "input"}`` plus ``"error"`` when it could not be read. Lines
    are appended (and fsynced) only after the sketches they name are on disk, so a crash loses
    at most the unrecorded tail: those images are made again on the next run. A line cut off by
    a crash is dropped when the folder is opened again.
    """

    def __init__(self, root: str | os.PathLike, settings: dict):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInputError(f"{self.root} is a file; sketches need an output folder.")
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / MANIFEST_NAME
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        self._ok: dict[str, bool] = {}
        if self.path.exists():
            self._read()
        else:
            header = {"format": SKETCHES_FORMAT, "version": SKETCHES_VERSION, "settings": self.settings}
            atomic_write_bytes(self.path, (json.dumps(header, sort_keys=True) + "\n").encode())

    def _read(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with open(self.path, "r+b") as f:  # the tail of a write cut off by a crash
                f.truncate(len(complete))
        lines = complete.decode("utf-8", errors="replace").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("format") != SKETCHES_FORMAT:
            raise FileFormatError(
                f"{self.path} is not a DiffSketch sketch manifest; give another output folder or delete it."
            )
        if header.get("version") != SKETCHES_VERSION:
            raise FileFormatError(
                f"{self.path} is sketch-folder format version {header.get('version')}; this DiffSketch writes "
                f"version {SKETCHES_VERSION}. Use a new output folder."
            )
        recorded = dict(header.get("settings") or {})
        # Folders begun before the precision was recorded were all made in float32.
        legacy = "precision" not in recorded
        recorded.setdefault("precision", LEGACY_PRECISION)
        if recorded != self.settings:
            diffs = settings_difference(recorded, self.settings)
            note = f" (it records no precision: made before precisions were recorded, in {LEGACY_PRECISION})"
            raise InvalidInputError(
                f"{self.root} already holds sketches made with other settings ({diffs}){note if legacy else ''}. "
                "Use another output folder, or the folder's settings to continue it"
                + (" (the precision: --dtype / dtype=)." if "precision:" in diffs else ".")
            )
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
                self._ok[str(record["key"])] = "error" not in record
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise FileFormatError(
                    f"{self.path}, line {number} is damaged ({e}); delete that line (its image is made again)."
                ) from e

    def is_done(self, key: str) -> bool:
        return self._ok.get(key, False) and sketch_path(self.root, key).is_file()

    def record(self, outcomes: Iterable[Outcome]) -> None:
        lines = []
        for o in outcomes:
            entry = {"key": o.key, "input": o.input}
            if o.error is not None:
                entry["error"] = o.error
            lines.append(json.dumps(entry, sort_keys=True) + "\n")
            self._ok[o.key] = o.error is None
        if lines:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())


@dataclass
class ExtractReport:
    """What a run did: sketches ``written`` now, ``already_done`` skipped, ``failed`` inputs
    (``(input, reason)``, also in the manifest) and inputs that matched nothing (``missing``)."""

    out: Path
    written: int = 0
    already_done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def open_folder(
    out: str | os.PathLike, settings: dict, items: Sequence[InputImage]
) -> tuple[SketchFolder, list[InputImage], ExtractReport]:
    """The output folder, the items still to do and a report counting those already done."""
    folder = SketchFolder(out, settings)
    todo = [item for item in items if not folder.is_done(item.key)]
    return folder, todo, ExtractReport(folder.root, already_done=len(items) - len(todo))


# --------------------------------------------------------------------------------------------
# One process: DataLoader workers decode, the main process extracts and writes
# --------------------------------------------------------------------------------------------


class _DecodedFiles(torch.utils.data.Dataset):
    """Item k: ``(k, pixels or None, error or None)``; a file that cannot be read is an error
    to report, not a crash of the worker."""

    def __init__(self, items: Sequence[InputImage]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        try:
            return k, read_image_pixels(self.items[k].path), None
        except Exception as e:  # noqa: BLE001 - any decoding failure is reported per file
            return k, None, describe_error(e)


def _as_list(batch):
    return batch


def default_workers() -> int:
    """Decoding processes beside the main one: one core is left to the network."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def extract_files(
    model: nn.Module,
    items: Sequence[InputImage],
    out: str | os.PathLike,
    options: SketchOptions | None = None,
    *,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> ExtractReport:
    """Extract a sketch for every item into ``out`` (see :class:`SketchFolder`), skipping items
    already done with the same settings; ``workers`` decoding processes (None: one per core but
    one, at most 8; 0: decode in this process). ``progress(done, total)`` counts the items left
    to do at the start."""
    options = options or SketchOptions()
    folder, todo, report = open_folder(out, extraction_settings(model, options), items)
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InvalidInputError(f"workers must be a non-negative integer, got {workers!r}.")
    if progress is not None:
        progress(0, len(todo))
    if not todo:
        return report
    loader = torch.utils.data.DataLoader(
        _DecodedFiles(todo),
        batch_size=max(options.batch_size, 8),
        collate_fn=_as_list,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    done = 0
    for batch in loader:
        decoded = [(k, pixels) for k, pixels, error in batch if error is None]
        sketches = sketch_pixels(model, [pixels for _, pixels in decoded], options)
        for (k, _), grey in zip(decoded, sketches, strict=True):
            write_sketch(folder.root, todo[k].key, grey)
        outcomes = [Outcome(todo[k].key, str(todo[k].path), error) for k, _, error in batch]
        folder.record(outcomes)
        report.written += len(decoded)
        report.failed += [(o.input, o.error) for o in outcomes if o.error is not None]
        done += len(batch)
        if progress is not None:
            progress(done, len(todo))
    return report
