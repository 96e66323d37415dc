"""``diffsketch eval``: score a sketch extractor against an automatic style on a folder of photos.

For every readable photo (BSDS500 test images, COCO val, any folder):

1. ground truth = the chosen style (:mod:`diffsketch.styles`: XDoG, the paper's modified HED,
   Informative Drawings) applied to the photo -- the paper's protocol for its automatic styles
   (docs/method.md §10);
2. prediction = the extractor under test (a ``SketchExtractor`` file, run through
   :func:`diffsketch.distill.extract.extract`, or any callable ``[B,3,H,W] -> [B,1,H,W]``);
3. per-image SSIM and L1 (:mod:`diffsketch.eval.metrics`), LPIPS (:func:`diffsketch.train.losses.build_lpips`
   on :func:`~diffsketch.train.losses.perceptual_preprocess`, i.e. the paper code's 224 px ImageNet
   preprocessing, so the numbers match the DiffSketch code rather than standard LPIPS), CLIP image
   similarity (CLIP's own preprocessing), and FID between the sets of ground-truth and predicted
   sketches;
4. with BSDS500 human annotations (``.mat``), the boundary benchmark on the predicted line strength
   (``1 - sketch``): ODS / OIS F-measure and AP (:func:`diffsketch.eval.bsds.evaluate_boundaries`).

Output (written atomically into ``out_dir``): ``results.md`` (mean ± std per metric, FID,
boundary scores, skipped files and metrics, notes), ``results.csv`` (one row per image),
``grid.png`` (photo | ground truth | prediction for the first 8 images) and, for BSDS500,
``boundaries/`` (16-bit PNG line strength per photo; rewritten by each run).

Metrics needing weights (LPIPS' AlexNet, FID's Inception, CLIP) read local files only. When the
file is missing, the metric is skipped with a note naming the file -- unless it was asked for
explicitly (listed in ``metrics=`` or its weights given), which is an error. Nothing downloads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DiffSketchError, FileFormatError, InvalidInputError, WeightsNotFoundError
from ..fileio import atomic_write_bytes
from ..images import IMAGE_SUFFIXES, image_files_in, read_image, resize_image, rgb_batch
from .metrics.common import require_optional
from .report import GRID_CELL, PER_IMAGE_METRICS, EvalReport, png_bytes, write_results

__all__ = ["ALL_METRICS", "EvalReport", "evaluate"]

ALL_METRICS = ("lpips", "ssim", "l1", "fid", "clip")
_NEEDS_WEIGHTS = ("lpips", "fid", "clip")
GRID_IMAGES = 8
_SSIM_WINDOW = 11

ProgressFn = Callable[[str, int, int], None]


# ============================================================================================
# Loading what the evaluation needs
# ============================================================================================
class _EncodeImage:
    """Gives a CLIP image tower the ``encode_image`` method metrics.clip_image_similarity calls."""

    def __init__(self, module: nn.Module):
        self.module = module

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module(pixels)


def _parse_metrics(metrics) -> tuple[tuple[str, ...], set[str]]:
    """(metrics to compute, those the caller named explicitly)."""
    if metrics is None:
        return ALL_METRICS, set()
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(" ", "").split(",") if m]
    chosen = []
    for m in metrics:
        m = str(m).strip().lower()
        if m not in ALL_METRICS:
            raise InvalidInputError(f"unknown metric {m!r}; pick from {', '.join(ALL_METRICS)}.")
        if m not in chosen:
            chosen.append(m)
    if not chosen:
        raise InvalidInputError(f"no metric chosen; pick from {', '.join(ALL_METRICS)}.")
    return tuple(chosen), set(chosen)


def _load_metric_model(metric: str, weights, device):
    if metric == "lpips":
        if isinstance(weights, nn.Module):
            return weights.to(device).eval()
        from ..train.losses import build_lpips

        return build_lpips(weights, device=device)
    if metric == "fid":
        if isinstance(weights, nn.Module):
            return weights.to(device).eval()
        from .metrics import fid

        if weights is None:
            # fid keeps the full "where from / how to convert" text; reuse it so both stay in step
            raise WeightsNotFoundError(
                f"FID needs the Inception weights file '{fid.FID_WEIGHTS_FILE}' (pass fid_weights / --fid-weights: "
                f"the file or its folder). It is {fid.FID_WEIGHTS_SOURCE}"
            )
        return fid.load_fid_inception(weights, device=device)
    if metric == "clip":
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            if hasattr(weights, "encode_image"):
                return weights
            if isinstance(weights, nn.Module):
                return _EncodeImage(weights.to(device).eval())
            raise InvalidInputError(
                f"clip_weights must be a path or a CLIP model; got {type(weights).__name__}."
            )
        from ..train.losses import load_clip_image_encoder

        return _EncodeImage(load_clip_image_encoder(weights, device=device))
    raise InvalidInputError(f"metric {metric!r} needs no model")


def _load_extractor(extractor, device) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """(function photo [1,3,H,W] -> sketch [1,1,H,W] on the CPU, description)."""
    from ..distill.extract import extract
    from ..distill.extractor import SketchExtractor, load_extractor

    if extractor is None:
        raise InvalidInputError(
            "no extractor to evaluate: give extractor_path (an extractor .safetensors from distill, --extractor) "
            "or a callable."
        )
    if isinstance(extractor, (str, os.PathLike)):
        path = Path(extractor)
        if not path.is_file():
            raise InvalidInputError(f"extractor file not found: {path}")
        model = load_extractor(path, device=device)
        description = f"extractor `{path.name}`"
    elif isinstance(extractor, SketchExtractor):
        model = extractor.to(device).eval()
        description = "SketchExtractor (given as a module)"
    elif callable(extractor):
        name = getattr(extractor, "style_name", None) or getattr(
            extractor, "__name__", type(extractor).__name__
        )
        description = f"callable `{name}`"

        def run_callable(photo: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                out = extractor(photo.to(device))
            if not isinstance(out, torch.Tensor):
                raise InvalidInputError(
                    f"the extractor returned {type(out).__name__}; it must return a tensor [B, 1, H, W]."
                )
            if out.dim() == 3:
                out = out.unsqueeze(1)
            if out.dim() != 4 or out.shape[1] != 1 or out.shape[0] != photo.shape[0]:
                raise InvalidInputError(
                    f"the extractor returned shape {tuple(out.shape)}; it must return sketches [B, 1, H, W] "
                    f"(B = {photo.shape[0]}) in [0, 1]."
                )
            return out.detach().float().cpu().clamp(0.0, 1.0)

        return run_callable, description
    else:
        raise InvalidInputError(
            f"extractor must be a path, a SketchExtractor or a callable; got {type(extractor).__name__}."
        )

    def run_model(photo: torch.Tensor) -> torch.Tensor:
        sketch, _ = extract(model, photo.permute(0, 2, 3, 1))
        return sketch[..., 0].unsqueeze(1)

    return run_model, description


def _load_style(style, style_weights, device) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    from ..styles import load_style

    if isinstance(style, str):
        module = load_style(style, style_weights, device=device)
        return module, style
    if callable(style):
        return style, getattr(style, "style_name", None) or type(style).__name__
    raise InvalidInputError(f"style must be a style name or a callable; got {type(style).__name__}.")


# ============================================================================================
# Images
# ============================================================================================
def _list_photos(photos_dir: Path) -> tuple[list[Path], list[str]]:
    """(image files, names of the other files) of a folder that must hold at least one image."""
    images, ignored = image_files_in(photos_dir)
    if not images:
        raise InvalidInputError(
            f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {photos_dir}"
            + (f"; found only {', '.join(ignored[:5])}" if ignored else "")
        )
    return images, ignored


def _read_photo(path: Path) -> torch.Tensor:
    """[1, 3, H, W] float32 RGB in [0, 1] (grey repeated, alpha composited over white, 16-bit scaled)."""
    return rgb_batch(read_image(path), path.name).permute(0, 3, 1, 2).contiguous()


def _target_size(size, h: int, w: int) -> tuple[int, int]:
    if isinstance(size, int):
        scale = size / min(h, w)
        return max(1, round(h * scale)), max(1, round(w * scale))
    th, tw = size
    return int(th), int(tw)


def _check_size(size):
    if size is None:
        return None
    if isinstance(size, bool):
        raise InvalidInputError(f"size must be an integer or (height, width); got {size!r}.")
    if isinstance(size, int):
        if size < _SSIM_WINDOW:
            raise InvalidInputError(f"size must be at least {_SSIM_WINDOW} pixels; got {size}.")
        return size
    if (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= _SSIM_WINDOW for s in size)
    ):
        return (int(size[0]), int(size[1]))
    raise InvalidInputError(
        f"size must be an integer (shorter side) or (height, width), each >= {_SSIM_WINDOW}; got {size!r}."
    )


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(hw) else resize_image(x, (hw[1], hw[0]))


def _fit_cell(x: torch.Tensor, cell: int) -> torch.Tensor:
    """[1, C, H, W] -> [3, h, w] scaled to fit a cell x cell square."""
    h, w = x.shape[-2:]
    scale = cell / max(h, w)
    out = _resize(x.float(), (max(1, round(h * scale)), max(1, round(w * scale))))[0]
    return out.expand(3, -1, -1) if out.shape[0] == 1 else out


# ============================================================================================
# Evaluation
# ============================================================================================
def evaluate(
    photos_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    style: str | Callable = "xdog",
    style_weights: str | os.PathLike | None = None,
    extractor_path: str | os.PathLike | Callable | None = None,
    metrics: Sequence[str] | str | None = None,
    lpips_weights=None,
    fid_weights=None,
    clip_weights=None,
    bsds_gt_dir: str | os.PathLike | None = None,
    max_images: int | None = None,
    size: int | tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
) -> EvalReport:
    """Evaluate an extractor against a style on a folder of photos; see the module docstring.

    ``style``: a name in :data:`diffsketch.styles.STYLES` (``style_weights`` for learned styles) or
    a callable ``[B,3,H,W] -> [B,1,H,W]``. ``extractor_path``: an extractor ``.safetensors`` file,
    a ``SketchExtractor``, or a callable ``photos [B,3,H,W] in [0,1] (on device) -> sketches
    [B,1,H,W] in [0,1]`` (1 = paper). ``metrics``: None = all of :data:`ALL_METRICS`, skipping
    those whose weights are missing; an explicit list makes missing weights an error.
    ``lpips_weights`` (torchvision's AlexNet file or folder; default the torch hub cache),
    ``fid_weights`` (pytorch-fid Inception .safetensors), ``clip_weights`` (CLIP .safetensors):
    a path, or an already built model. ``bsds_gt_dir``: BSDS500 ``groundTruth`` ``.mat`` folder
    for the boundary benchmark. ``size``: resize photos first (int = shorter side, or (H, W));
    None = native size. ``progress(stage, done, total)`` with stage "images" or "boundaries".
    """
    photos_dir, out_dir = Path(photos_dir), Path(out_dir)
    chosen, explicit = _parse_metrics(metrics)
    size = _check_size(size)
    _check_max_images(max_images)
    gt_dir = _check_bsds_dir(bsds_gt_dir)
    files, ignored = _list_photos(photos_dir)
    device = str(device)

    # Everything that can fail for lack of a file fails before the (long) loop.
    style_fn, style_name = _load_style(style, style_weights, device)
    run_extractor, extractor_desc = _load_extractor(extractor_path, device)
    given = {"lpips": lpips_weights, "fid": fid_weights, "clip": clip_weights}
    models, skipped_metrics = _load_metric_models(chosen, explicit, given, device)
    report = EvalReport(
        out_dir=out_dir,
        photos_dir=photos_dir,
        style=style_name,
        extractor=extractor_desc,
        device=device,
        metrics=tuple(m for m in chosen if m not in skipped_metrics),
        ignored_files=list(ignored),
        skipped_metrics=skipped_metrics,
    )
    boundary_dir = _fresh_boundary_dir(out_dir) if gt_dir is not None else None

    run = _Accumulated()
    total = min(len(files), max_images) if max_images else len(files)
    for path in files:
        if max_images is not None and len(report.rows) >= max_images:
            report.limited = True
            break
        photo = _photo_to_evaluate(path, size, report, run)
        if photo is None:
            continue
        gt = _ground_truth(style_fn, style_name, photo, device)
        pred = run_extractor(photo)
        if pred.shape[-2:] != gt.shape[-2:]:
            h, w = gt.shape[-2:]
            run.resized_predictions.append(f"{path.name} {pred.shape[-2]}x{pred.shape[-1]} -> {h}x{w}")
            pred = _resize(pred, (h, w))
        report.rows.append(_score_image(path, pred, gt, report.metrics, models, device, run))
        if len(run.cells) < GRID_IMAGES:
            run.cells.append(
                (path.stem, _fit_cell(photo, GRID_CELL), _fit_cell(gt, GRID_CELL), _fit_cell(pred, GRID_CELL))
            )
        if boundary_dir is not None:
            strength = ((1.0 - pred[0, 0]).clamp(0, 1).numpy() * 65535.0 + 0.5).astype(np.uint16)
            atomic_write_bytes(boundary_dir / f"{path.stem}.png", png_bytes(strength))
        if progress is not None:
            progress("images", len(report.rows), total)

    if not report.rows:
        listed = "; ".join(f"{p}: {why}" for p, why in report.skipped_files) or "none"
        raise InvalidInputError(f"no photo in {photos_dir} could be evaluated (skipped: {listed}).")
    _summarise(report, run)
    _add_notes(report, run, size, len(files))
    if gt_dir is not None:
        _boundary_benchmark(report, boundary_dir, gt_dir, progress)
    write_results(report, out_dir, run.cells, boundary_dir)
    return report


@dataclass
class _Accumulated:
    """What the image loop collects besides the report's rows."""

    sizes: dict[tuple[int, int], int] = field(default_factory=dict)
    resized_photos: list[str] = field(default_factory=list)
    resized_predictions: list[str] = field(default_factory=list)
    fid_gt: list[np.ndarray] = field(default_factory=list)
    fid_pred: list[np.ndarray] = field(default_factory=list)
    cells: list = field(default_factory=list)


def _check_max_images(max_images) -> None:
    if max_images is not None and (
        isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1
    ):
        raise InvalidInputError(f"max_images must be a positive integer or None; got {max_images!r}.")


def _check_bsds_dir(bsds_gt_dir) -> Path | None:
    if bsds_gt_dir is None:
        return None
    gt_dir = Path(bsds_gt_dir)
    if not gt_dir.is_dir():
        raise InvalidInputError(f"BSDS500 ground-truth folder not found: {gt_dir}")
    if not any(p.suffix.lower() == ".mat" for p in gt_dir.iterdir()):
        raise InvalidInputError(
            f"{gt_dir} holds no .mat files; point bsds_gt_dir at BSDS500's groundTruth/test folder."
        )
    require_optional("scipy.io", "The BSDS500 boundary benchmark")
    return gt_dir


def _load_metric_models(chosen, explicit, given: dict, device) -> tuple[dict[str, object], dict[str, str]]:
    """(models of the metrics that need weights, skipped metric -> why). A metric named explicitly,
    or whose weights were given, fails loudly instead of being skipped."""
    models: dict[str, object] = {}
    skipped: dict[str, str] = {}
    for m in chosen:
        if m not in _NEEDS_WEIGHTS:
            continue
        try:
            models[m] = _load_metric_model(m, given[m], device)
        except (WeightsNotFoundError, FileFormatError, ImportError) as e:
            if m in explicit or given[m] is not None:
                raise
            skipped[m] = f"needs weights: {e}"
    return models, skipped


def _fresh_boundary_dir(out_dir: Path) -> Path:
    boundary_dir = out_dir / "boundaries"
    boundary_dir.mkdir(parents=True, exist_ok=True)
    # The benchmark pairs every file in this folder: stale ones from an earlier run must go.
    for stale in boundary_dir.glob("*.png"):
        stale.unlink()
    return boundary_dir


def _photo_to_evaluate(path: Path, size, report: EvalReport, run: _Accumulated) -> torch.Tensor | None:
    """The photo at the evaluation size, or None (listed in ``report.skipped_files``)."""
    try:
        photo = _read_photo(path)
    except Exception as e:  # unreadable files are listed, never silently dropped
        report.skipped_files.append((str(path), f"unreadable ({type(e).__name__}: {e})"))
        return None
    h0, w0 = photo.shape[-2:]
    if size is not None:
        target = _target_size(size, h0, w0)
        if target != (h0, w0):
            photo = _resize(photo, target)
            run.resized_photos.append(f"{path.name} {h0}x{w0} -> {target[0]}x{target[1]}")
    h, w = photo.shape[-2:]
    if min(h, w) < _SSIM_WINDOW:
        why = f"too small ({h}x{w}); metrics need at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels"
        report.skipped_files.append((str(path), why))
        return None
    run.sizes[(h, w)] = run.sizes.get((h, w), 0) + 1
    return photo


def _ground_truth(style_fn, style_name: str, photo: torch.Tensor, device) -> torch.Tensor:
    h, w = photo.shape[-2:]
    with torch.no_grad():
        gt = style_fn(photo.to(device))
    gt = gt.detach().float().cpu().clamp(0.0, 1.0)
    if gt.shape != (1, 1, h, w):
        raise InvalidInputError(
            f"style '{style_name}' returned shape {tuple(gt.shape)} for a {h}x{w} photo; expected (1, 1, {h}, {w})."
        )
    return gt


def _score_image(path: Path, pred, gt, computed, models, device, run: _Accumulated) -> dict:
    """One CSV row: the per-image metrics; FID's features are collected in ``run``."""
    from ..train.losses import perceptual_preprocess
    from .metrics import fid, perceptual
    from .metrics.ssim import l1_distance, ssim

    h, w = gt.shape[-2:]
    row: dict = {"image": path.stem, "file": path.name, "height": h, "width": w}
    with torch.no_grad():
        if "ssim" in computed:
            row["ssim"] = float(ssim(pred, gt)[0])
        if "l1" in computed:
            row["l1"] = float(l1_distance(pred, gt)[0])
        if "lpips" in computed:
            lp = models["lpips"]
            dev = next(lp.parameters()).device
            row["lpips"] = float(
                lp(perceptual_preprocess(pred).to(dev), perceptual_preprocess(gt).to(dev)).flatten()[0]
            )
        if "clip" in computed:
            row["clip"] = float(
                perceptual.clip_image_similarity(models["clip"], pred.to(device), gt.to(device))[0]
            )
        if "fid" in computed:
            run.fid_gt.append(fid.inception_features(models["fid"], gt.expand(-1, 3, -1, -1)))
            run.fid_pred.append(fid.inception_features(models["fid"], pred.expand(-1, 3, -1, -1)))
    return row


def _summarise(report: EvalReport, run: _Accumulated) -> None:
    from .metrics import fid

    for m in PER_IMAGE_METRICS:
        if m in report.metrics:
            values = np.array([r[m] for r in report.rows], np.float64)
            report.summary[m] = (float(values.mean()), float(values.std()), int(values.size))
    if "fid" in report.metrics:
        if len(run.fid_gt) >= 2:
            report.fid = fid.fid_from_features(np.concatenate(run.fid_gt), np.concatenate(run.fid_pred))
            report.fid_images = len(run.fid_gt)
        else:
            report.skipped_metrics["fid"] = (
                "needs at least 2 images (covariances of one sample are undefined)"
            )
            report.metrics = tuple(m for m in report.metrics if m != "fid")


def _add_notes(report: EvalReport, run: _Accumulated, size, n_files: int) -> None:
    if report.limited:
        report.notes.append(
            f"limited to the first {len(report.rows)} readable photo(s) of {n_files} (max_images)."
        )
    if size is not None:
        report.notes.append(
            f"photos resized to {'shorter side ' + str(size) if isinstance(size, int) else f'{size[0]}x{size[1]}'} "
            f"before evaluation ({len(run.resized_photos)} changed): "
            + ", ".join(run.resized_photos[:10])
            + (" ..." if len(run.resized_photos) > 10 else "")
        )
    if len(run.sizes) > 1:
        listed = ", ".join(
            f"{h}x{w} ({n})" for (h, w), n in sorted(run.sizes.items(), key=lambda kv: -kv[1])[:6]
        )
        report.notes.append(
            f"photos come in {len(run.sizes)} sizes (H x W: {listed}); each is evaluated at its own size, "
            "LPIPS/CLIP/FID resize internally and the grid scales every cell to fit."
        )
    if run.resized_predictions:
        report.notes.append(
            f"{len(run.resized_predictions)} prediction(s) did not match the ground truth's size and were resized "
            "to it: " + ", ".join(run.resized_predictions[:10])
        )


def _boundary_benchmark(report: EvalReport, boundary_dir: Path, gt_dir: Path, progress) -> None:
    from . import bsds

    def boundary_progress(i, n, _name):
        if progress is not None:
            progress("boundaries", i + 1, n)

    try:
        report.boundary, report.pairing = bsds.evaluate_boundaries(
            boundary_dir, gt_dir, lines_are_dark=False, progress=boundary_progress
        )
    except InvalidInputError as e:
        report.boundary_error = str(e)
        try:
            report.pairing = bsds.pair_files(boundary_dir, gt_dir)[1]
        except DiffSketchError:
            pass
    if report.limited and report.pairing is not None and report.pairing.missing_prediction:
        report.notes.append(
            "ground truths without predictions are expected with max_images: the boundary scores cover "
            "only the evaluated photos."
        )
