"""BSDS500 files: ground truth from ``.mat`` files, prediction/ground-truth pairing by file name,
and the boundary benchmark over two folders."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FileFormatError, InvalidInputError
from .metrics.boundaries import BoundaryScores, boundary_scores, evaluate_boundary_image
from .metrics.common import require_optional

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_bsds_ground_truth(path: str | os.PathLike) -> list[np.ndarray]:
    """Boundary maps (bool, one per annotator) from a BSDS500 ``groundTruth`` ``.mat`` file.

    The file holds a cell array ``groundTruth`` of structs with fields ``Segmentation`` and
    ``Boundaries``. Read with ``scipy.io.loadmat`` (MATLAB v5 format; nothing is unpickled).
    """
    sio = require_optional("scipy.io", "Reading BSDS500 .mat ground truth")
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"ground-truth file not found: {p}")
    try:
        mat = sio.loadmat(str(p))
    except NotImplementedError as e:  # MATLAB v7.3 files are HDF5
        raise FileFormatError(
            f"{p.name} is a MATLAB v7.3 (HDF5) file; re-save it with save(..., '-v7')."
        ) from e
    except Exception as e:
        raise FileFormatError(f"{p.name} is not a readable .mat file ({e}).") from e
    if "groundTruth" not in mat:
        raise FileFormatError(
            f"{p.name} has no 'groundTruth' variable (found {sorted(k for k in mat if not k.startswith('__'))})."
        )
    maps = []
    for entry in np.asarray(mat["groundTruth"], dtype=object).ravel():
        names = getattr(getattr(entry, "dtype", None), "names", None) or ()
        if "Boundaries" not in names:
            raise FileFormatError(
                f"{p.name}: a groundTruth entry has no 'Boundaries' field (fields: {list(names)})."
            )
        b = np.asarray(entry["Boundaries"].ravel()[0])
        if b.ndim != 2:
            raise FileFormatError(f"{p.name}: a Boundaries map is not 2-D (shape {b.shape}).")
        maps.append(b != 0)
    if not maps:
        raise FileFormatError(f"{p.name}: groundTruth holds no annotations.")
    if any(m.shape != maps[0].shape for m in maps):
        raise FileFormatError(f"{p.name}: annotator maps differ in size ({[m.shape for m in maps]}).")
    return maps


def read_grey_image(path: str | os.PathLike) -> np.ndarray:
    """A 2-D float map in [0, 1] from an image file (8/16-bit, grey or colour -> luma) or a ``.npy``
    array (read with ``allow_pickle=False``)."""
    p = Path(path)
    if p.suffix.lower() == ".npy":
        arr = np.load(p, allow_pickle=False)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise FileFormatError(f"{p.name}: expected a 2-D array, got shape {arr.shape}.")
        if arr.dtype == np.uint8:
            return arr.astype(np.float64) / 255.0
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise FileFormatError(f"{p.name} contains NaN or infinite values.")
        return arr
    from PIL import Image

    with Image.open(p) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(im, dtype=np.float64) / 65535.0
        if im.mode == "F":
            return np.asarray(im, dtype=np.float64)
        return np.asarray(im.convert("L"), dtype=np.float64) / 255.0


def _read_ground_truth(path: Path) -> list[np.ndarray]:
    if path.suffix.lower() == ".mat":
        return read_bsds_ground_truth(path)
    # an image file is one annotator; bright pixels are boundaries (as in edge-map datasets)
    return [read_grey_image(path) > 0.5]


@dataclass
class FilePair:
    name: str
    prediction: Path
    ground_truth: Path
    prediction_size: tuple[int, int]
    ground_truth_size: tuple[int, int]

    @property
    def needs_resize(self) -> bool:
        return self.prediction_size != self.ground_truth_size


@dataclass
class PairingReport:
    """What :func:`pair_files` could not pair or had to adapt. Nothing here is silent."""

    missing_prediction: list[str] = field(default_factory=list)  # ground truth without prediction
    missing_ground_truth: list[str] = field(default_factory=list)  # prediction without ground truth
    ambiguous: list[str] = field(default_factory=list)  # one name with several files; skipped
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason); skipped
    resized: list[tuple[str, tuple[int, int], tuple[int, int]]] = field(
        default_factory=list
    )  # name, pred, gt

    @property
    def clean(self) -> bool:
        return not (
            self.missing_prediction
            or self.missing_ground_truth
            or self.ambiguous
            or self.unreadable
            or self.resized
        )

    def summary(self) -> str:
        lines = []
        if self.missing_prediction:
            lines.append(
                f"{len(self.missing_prediction)} ground truth(s) without prediction: {', '.join(self.missing_prediction)}"
            )
        if self.missing_ground_truth:
            lines.append(
                f"{len(self.missing_ground_truth)} prediction(s) without ground truth: {', '.join(self.missing_ground_truth)}"
            )
        if self.ambiguous:
            lines.append(f"skipped, several files share the name: {', '.join(self.ambiguous)}")
        for path, reason in self.unreadable:
            lines.append(f"skipped unreadable {path}: {reason}")
        for name, ps, gs in self.resized:
            lines.append(
                f"{name}: prediction {ps[0]}x{ps[1]} resized to the ground truth's {gs[0]}x{gs[1]} (H x W)"
            )
        return "\n".join(lines) if lines else "all files paired, none resized"

    __str__ = summary


def _index_folder(
    folder: Path, exts: Sequence[str], what: str
) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Files of ``folder`` with one of ``exts``, by stem: (stems with one file, stems with several)."""
    if not folder.is_dir():
        raise InvalidInputError(f"{what} folder not found: {folder}")
    exts = tuple(e.lower() for e in exts)
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts:
            by_stem.setdefault(p.stem, []).append(p)
    unique = {s: ps[0] for s, ps in by_stem.items() if len(ps) == 1}
    several = {s: ps for s, ps in by_stem.items() if len(ps) > 1}
    return unique, several


def pair_files(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    pred_exts: Sequence[str] = IMAGE_EXTS + (".npy",),
    gt_exts: Sequence[str] = (".mat",),
) -> tuple[list[FilePair], PairingReport]:
    """Pair predictions with ground truths by file name (without extension) and check each pair.

    Names present on one side only are listed in the report; a name with several files on one side
    is skipped as ambiguous; every pair is read once, and files that cannot be read are skipped and
    listed with the reason; pairs whose sizes differ are kept and listed (the prediction is resized
    to the ground truth's size by :func:`load_pair`). Ground truth: BSDS ``.mat`` files, or images
    whose bright pixels are boundaries when ``gt_exts`` includes image extensions.
    """
    preds, several_p = _index_folder(Path(pred_dir), pred_exts, "prediction")
    gts, several_g = _index_folder(Path(gt_dir), gt_exts, "ground truth")
    report = PairingReport()
    for what, several in (("prediction", several_p), ("ground truth", several_g)):
        for stem, paths in several.items():
            report.ambiguous.append(f"{what} '{stem}' ({', '.join(p.name for p in paths)})")
    skipped = set(several_p) | set(several_g)
    report.missing_prediction = sorted(s for s in gts if s not in preds and s not in skipped)
    report.missing_ground_truth = sorted(s for s in preds if s not in gts and s not in skipped)
    pairs = []
    for stem in sorted((set(preds) & set(gts)) - skipped):
        try:
            pred_shape = read_grey_image(preds[stem]).shape
        except Exception as e:
            report.unreadable.append((str(preds[stem]), f"{type(e).__name__}: {e}"))
            continue
        try:
            gt_shape = _read_ground_truth(gts[stem])[0].shape
        except ImportError:
            raise
        except Exception as e:
            report.unreadable.append((str(gts[stem]), f"{type(e).__name__}: {e}"))
            continue
        pair = FilePair(stem, preds[stem], gts[stem], tuple(pred_shape), tuple(gt_shape))
        if pair.needs_resize:
            report.resized.append((stem, pair.prediction_size, pair.ground_truth_size))
        pairs.append(pair)
    return pairs, report


def load_pair(pair: FilePair, lines_are_dark: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """(edge strength in [0, 1] at the ground truth's size, boolean annotator maps) for one pair.

    ``lines_are_dark``: set for sketches drawn as dark lines on white (DiffSketch's output, XDoG);
    the map is inverted so that higher means more boundary, as the benchmark expects.
    """
    pred = read_grey_image(pair.prediction)
    gts = _read_ground_truth(pair.ground_truth)
    if pred.shape != gts[0].shape:
        t = torch.from_numpy(pred).view(1, 1, *pred.shape)
        pred = F.interpolate(t, size=gts[0].shape, mode="bilinear", align_corners=False, antialias=True)[
            0, 0
        ].numpy()
    pred = np.clip(pred, 0.0, 1.0)
    return (1.0 - pred if lines_are_dark else pred), gts


def evaluate_boundaries(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    thresholds: int | Sequence[float] = 99,
    max_dist: float = 0.0075,
    thin: bool = True,
    lines_are_dark: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[BoundaryScores, PairingReport]:
    """BSDS500 boundary benchmark over two folders (predictions, ``.mat`` ground truth).

    Returns the scores and the pairing report (print ``report.summary()``: it lists unpaired,
    ambiguous, unreadable and resized files). Raises InvalidInputError when no pair is usable.
    """
    pairs, report = pair_files(pred_dir, gt_dir)
    if not pairs:
        raise InvalidInputError(
            f"no prediction/ground-truth pairs to evaluate in {pred_dir} and {gt_dir}.\n{report.summary()}"
        )
    counts = []
    for i, pair in enumerate(pairs):
        if progress is not None:
            progress(i, len(pairs), pair.name)
        pred, gts = load_pair(pair, lines_are_dark=lines_are_dark)
        counts.append(evaluate_boundary_image(pred, gts, thresholds, max_dist, thin, name=pair.name))
    return boundary_scores(counts), report
