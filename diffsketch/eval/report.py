"""What ``diffsketch eval`` reports and writes: :class:`EvalReport` (every measurement, skip and
adaptation of one evaluation) and its files -- ``results.md``, ``results.csv`` and ``grid.png``
(photo | ground truth | prediction).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_write_bytes

PER_IMAGE_METRICS = ("ssim", "l1", "lpips", "clip")  # CSV column order
_LABELS = {"ssim": "SSIM", "l1": "L1", "lpips": "LPIPS", "clip": "CLIP similarity", "fid": "FID"}
_HIGHER_IS_BETTER = {"ssim": True, "clip": True, "l1": False, "lpips": False, "fid": False}
GRID_CELL = 256
# Published BSDS500 ODS F-measures the boundary scores can be read against (Xie & Tu 2015, HED;
# Su et al. 2021, PiDiNet).
_REFERENCE_ODS = "HED about 0.79, PiDiNet 0.807 (full BSDS500 test set, 200 images)"


@dataclass
class EvalReport:
    """Everything one evaluation measured, skipped or had to adapt. Nothing here is silent."""

    out_dir: Path
    photos_dir: Path
    style: str
    extractor: str
    device: str
    metrics: tuple[str, ...]  # metrics actually computed
    rows: list[dict] = field(default_factory=list)  # per image: image, file, height, width, metrics
    summary: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # mean, std, n
    fid: float | None = None
    fid_images: int = 0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored_files: list[str] = field(default_factory=list)  # not image files
    skipped_metrics: dict[str, str] = field(default_factory=dict)  # metric -> why
    notes: list[str] = field(default_factory=list)
    boundary: object | None = None  # metrics.boundaries.BoundaryScores
    pairing: object | None = None  # bsds.PairingReport
    boundary_error: str | None = None
    limited: bool = False  # max_images cut the photo list
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return len(self.rows)

    @property
    def has_problems(self) -> bool:
        """Files were skipped or the boundary benchmark could not pair everything (exit code 1)."""
        if self.skipped_files or self.boundary_error:
            return True
        p = self.pairing
        if p is None:
            return False
        return bool(
            p.missing_ground_truth
            or p.ambiguous
            or p.unreadable
            or (p.missing_prediction and not self.limited)
        )

    def summary_text(self) -> str:
        lines = [f"{self.n_images} image(s) evaluated: style '{self.style}' vs {self.extractor}"]
        for m in PER_IMAGE_METRICS:
            if m in self.summary:
                mean, std, n = self.summary[m]
                lines.append(f"  {_LABELS[m]:<16} {mean:.4f} ± {std:.4f}  (n={n})")
        if self.fid is not None:
            lines.append(f"  {'FID':<16} {self.fid:.3f}  ({self.fid_images} images per set)")
        if self.boundary is not None:
            b = self.boundary
            lines.append(f"  BSDS boundaries  ODS {b.ods_f:.4f}  OIS {b.ois_f:.4f}  AP {b.ap:.4f}")
        for m, why in self.skipped_metrics.items():
            lines.append(f"  skipped {m}: {why}")
        if self.boundary_error:
            lines.append(f"  boundary benchmark not run: {self.boundary_error}")
        if self.skipped_files:
            lines.append(f"  {len(self.skipped_files)} file(s) skipped (listed in results.md)")
        if self.files:
            lines.append("written: " + ", ".join(str(p) for p in self.files.values()))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        md = ["# DiffSketch evaluation", ""]
        md.append(f"- photos: `{self.photos_dir}` -- {self.n_images} evaluated")
        md.append(f"- ground truth: style `{self.style}`")
        md.append(f"- extractor under test: {self.extractor}")
        md.append(f"- device: {self.device}")
        md += ["", "## Sketch metrics (prediction vs ground-truth sketch)", ""]
        md.append("| metric | mean ± std | images | better |")
        md.append("|---|---|---|---|")
        for m in PER_IMAGE_METRICS:
            if m in self.summary:
                mean, std, n = self.summary[m]
                better = "higher" if _HIGHER_IS_BETTER[m] else "lower"
                md.append(f"| {_LABELS[m]} | {mean:.4f} ± {std:.4f} | {n} | {better} |")
        if self.fid is not None:
            md.append(f"| FID | {self.fid:.3f} | {self.fid_images} per set | lower |")
        md.append("")
        explain = ["std is over images (ddof 0)."]
        if "lpips" in self.metrics:
            explain.append(
                "LPIPS is AlexNet on the DiffSketch code's preprocessing (224x224, ImageNet normalisation), "
                "so it matches the paper's code, not standard LPIPS."
            )
        if "clip" in self.metrics:
            explain.append("CLIP similarity is the cosine of CLIP image embeddings (CLIP preprocessing).")
        if self.fid is not None:
            explain.append(
                "FID compares the set of ground-truth sketches with the set of predictions; it is biased "
                "upwards for small sets, so compare FIDs only at equal image counts."
            )
        md.append(" ".join(explain))
        if self.boundary is not None or self.boundary_error:
            md += ["", "## BSDS500 boundary benchmark (predicted line strength vs human annotations)", ""]
            if self.boundary is not None:
                b = self.boundary
                md.append("| ODS F | ODS P | ODS R | ODS threshold | OIS F | AP | images |")
                md.append("|---|---|---|---|---|---|---|")
                md.append(
                    f"| {b.ods_f:.4f} | {b.ods_p:.4f} | {b.ods_r:.4f} | {b.ods_threshold:.3f} | "
                    f"{b.ois_f:.4f} | {b.ap:.4f} | {len(b.per_image)} |"
                )
                md.append("")
                md.append(f"Published ODS for comparison: {_REFERENCE_ODS}.")
            if self.boundary_error:
                md.append(f"Not run: {self.boundary_error}")
            if self.pairing is not None:
                md += ["", "Pairing of predictions with ground truth:", ""]
                md += [f"- {line}" for line in self.pairing.summary().splitlines()]
        if self.skipped_metrics:
            md += ["", "## Skipped metrics", ""]
            md += [f"- {m}: {why}" for m, why in self.skipped_metrics.items()]
        if self.skipped_files or self.ignored_files:
            md += ["", "## Skipped files", ""]
            md += [f"- `{path}`: {reason}" for path, reason in self.skipped_files]
            if self.ignored_files:
                md.append(
                    f"- ignored {len(self.ignored_files)} file(s) without an image extension: "
                    + ", ".join(f"`{n}`" for n in self.ignored_files)
                )
        if self.notes:
            md += ["", "## Notes", ""]
            md += [f"- {n}" for n in self.notes]
        return "\n".join(md) + "\n"

    def to_csv(self) -> str:
        computed = [m for m in PER_IMAGE_METRICS if m in self.metrics]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", "file", "height", "width", *computed])
        for row in self.rows:
            writer.writerow(
                [row["image"], row["file"], row["height"], row["width"]]
                + [f"{row[m]:.6f}" if m in row else "" for m in computed]
            )
        return buf.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def grid_png(cells: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]], style: str) -> bytes:
    """Rows of photo | ground truth | prediction, each centred in a white cell, with a header."""
    from PIL import Image, ImageDraw

    gap, header = 4, 18
    width = 3 * GRID_CELL + 4 * gap
    height = header + len(cells) * (GRID_CELL + gap) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(("photo", f"ground truth ({style})", "prediction")):
        draw.text((gap + col * (GRID_CELL + gap) + 2, 3), title, fill=(0, 0, 0))
    for row, (_, *images) in enumerate(cells):
        top = header + row * (GRID_CELL + gap)
        for col, img in enumerate(images):
            arr = (img.permute(1, 2, 0).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
            h, w = arr.shape[:2]
            left = gap + col * (GRID_CELL + gap) + (GRID_CELL - w) // 2
            canvas.paste(Image.fromarray(arr), (left, top + (GRID_CELL - h) // 2))
            # a frame, so white sketches stand apart from the white page
            draw.rectangle(
                (left - 1, top + (GRID_CELL - h) // 2 - 1, left + w, top + (GRID_CELL - h) // 2 + h),
                outline=(190, 190, 190),
            )
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def write_results(report: EvalReport, out_dir: Path, cells, boundary_dir: Path | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    report.files = {
        "markdown": out_dir / "results.md",
        "csv": out_dir / "results.csv",
        "grid": out_dir / "grid.png",
    }
    if boundary_dir is not None:
        report.files["boundaries"] = boundary_dir
    atomic_write_bytes(report.files["grid"], grid_png(cells, report.style))
    atomic_write_bytes(report.files["csv"], report.to_csv().encode("utf-8"))
    atomic_write_bytes(report.files["markdown"], report.to_markdown().encode("utf-8"))
