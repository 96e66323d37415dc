"""Real photos, (photo, teacher sketch) pairs, the HED teachers and held-out scoring, shared by the
distillation benchmark and the default extractor's training (``benchmarks/distill_fidelity.py``,
``tools/train_default_extractor.py``).

The photos are the ones scikit-image ships in its wheel (no download; CC0 or public domain, the
coins "no known copyright restrictions", the motorcycle from the Middlebury 2014 stereo set), so
``pip install scikit-image`` is all either script needs besides DiffSketch:

- :data:`TRAIN_PHOTOS`: every usable sample photo except the held-out ones; each becomes several
  variants (random rescale, brightness, contrast, gamma, colour balance) BEFORE the teacher runs,
  and the teacher runs on the whole variant (a crop's sketch may depend on pixels outside it);
- :data:`HELD_OUT_PHOTOS`: never seen in training, not even as variants.

Other photos on PyPI were considered and left out: matplotlib's ``grace_hopper.jpg`` (public
domain) would make matplotlib a requirement of the training half, which runs on machines without
it; scikit-learn's ``china.jpg`` / ``flower.jpg`` are CC BY 2.0 (attribution) and would add
scikit-learn for two photos.

A teacher's maps of a given pool are a pure function of (teacher, photos, variants, seed, size),
so :class:`PhotoPairs` can keep them in a ``.safetensors`` cache and reuse them next time.
:func:`score` measures a student's held-out sketches against the teacher's: SSIM, L1 and the
boundary F-measure at the best common threshold (ODS-style; the teacher's lines, ``1 - sketch
>= 0.5`` thinned to one pixel, are the ground truth).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffsketch.distill.extract import extract  # noqa: E402
from diffsketch.eval.metrics.boundaries import boundary_scores, evaluate_boundary_image, thin_boundaries  # noqa: E402
from diffsketch.eval.metrics.ssim import l1_distance, ssim  # noqa: E402
from diffsketch.fileio import load_tensors, save_tensors  # noqa: E402
from diffsketch.seeds import derive_seed  # noqa: E402

TRAIN_PHOTOS = (
    "astronaut",
    "rocket",
    "coins",
    "moon",
    "page",
    "text",
    "immunohistochemistry",
    "hubble_deep_field",
    "brick",
    "grass",
    "gravel",
    "clock",
    "cell",
    "stereo_motorcycle",
    "retina",
)
HELD_OUT_PHOTOS = ("chelsea", "coffee", "camera")
PAIRS_CACHE_KIND = "benchmark_photo_pairs"

Teacher = Callable[[torch.Tensor], torch.Tensor]  # [1, 3, H, W] in [0, 1] -> [1, 1, H, W] in [0, 1]


def load_photo(name: str, max_side: int) -> torch.Tensor:
    """A scikit-image sample photo as float RGB [3, H, W] in [0, 1] (grey repeated, alpha dropped),
    its longest side at most ``max_side`` (antialiased)."""
    try:
        from skimage import data
    except ImportError:
        sys.exit(
            "the sample photos come with scikit-image (not a DiffSketch dependency): pip install scikit-image"
        )
    array = getattr(data, name)()
    if isinstance(array, tuple):  # stereo pairs: the left view
        array = array[0]
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    x = torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float()
    x = x / 255.0 if array.dtype == np.uint8 else x.clamp(0, 1)
    scale = max_side / max(x.shape[-2:])
    if scale < 1:
        x = F.interpolate(x[None], scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)[
            0
        ]
    return x.clamp(0, 1)


def augment(photo: torch.Tensor, g: torch.Generator, min_side: int) -> torch.Tensor:
    """A photometric + scale variant of ``photo`` (the teacher then runs on it)."""

    def uniform(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    h, w = photo.shape[-2:]
    scale = uniform(max(0.45, min_side / min(h, w)), 1.0)
    x = photo
    if scale < 0.999:
        x = F.interpolate(x[None], scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)[
            0
        ]
    balance = torch.tensor([uniform(0.85, 1.15) for _ in range(3)]).view(3, 1, 1)
    x = (x * balance).clamp(0, 1) ** uniform(0.7, 1.4)
    x = (x - 0.5) * uniform(0.7, 1.3) + 0.5 + uniform(-0.1, 0.1)
    return x.clamp(0, 1)


def to_u8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


class PhotoPairs:
    """(variant, teacher sketch) pairs kept as uint8 -- the dataset protocol ``train_student`` reads.

    ``teacher_id`` names the teacher in the cache key (e.g. the weights' checksum and wiring);
    with ``cache_dir`` the pairs are read from / written to ``<cache_dir>/pairs-<key>.safetensors``.
    ``device``: where the teacher runs.
    """

    def __init__(
        self,
        names: Sequence[str],
        teacher: Teacher,
        teacher_id: str,
        *,
        variants: int,
        seed: int,
        min_side: int,
        max_side: int,
        cache_dir: Path | None = None,
        device: torch.device | str = "cpu",
    ):
        settings = {
            "photos": list(names),
            "teacher": teacher_id,
            "variants": variants,
            "seed": seed,
            "min_side": min_side,
            "max_side": max_side,
        }
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.cache_file = Path(cache_dir) / f"pairs-{key}.safetensors" if cache_dir is not None else None
        self.cached = self.cache_file is not None and self.cache_file.is_file()
        self.items: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.cached:
            tensors, _ = load_tensors(self.cache_file, PAIRS_CACHE_KIND, versions=(1,))
            count = len(tensors) // 2
            self.items = [(tensors[f"{k:05d}.image"], tensors[f"{k:05d}.sketch"]) for k in range(count)]
            return
        for name in names:
            photo = load_photo(name, max_side)
            for v in range(variants):
                g = torch.Generator().manual_seed(derive_seed("augment", seed, name, v))
                image = photo if v == 0 else augment(photo, g, min_side)
                with torch.no_grad():
                    sketch = teacher(image[None].to(device))[0].float().cpu()
                self.items.append((to_u8(image), to_u8(sketch)))
        if self.cache_file is not None:
            tensors = {}
            for k, (image, sketch) in enumerate(self.items):
                tensors[f"{k:05d}.image"], tensors[f"{k:05d}.sketch"] = image, sketch
            save_tensors(self.cache_file, tensors, kind=PAIRS_CACHE_KIND, version=1, meta=settings)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        image, sketch = self.items[k]
        return image.float() / 255.0, sketch.float() / 255.0


def hed_teachers(weights: Path, device) -> dict[str, tuple[nn.Module, str]]:
    """{"hed-modified": ..., "hed-plain": ...}: the network and a cache id naming the weights."""
    from diffsketch.styles import STANDARD_HED_SIDES, load_style
    from diffsketch.styles.hed import ModifiedHED, is_keras_weights_file, read_keras_hed

    digest = f"{weights.stat().st_size}-{int(weights.stat().st_mtime)}"
    wirings = {"hed-modified": {}, "hed-plain": {"side_order": STANDARD_HED_SIDES, "input_mode": "caffe_bgr"}}
    teachers = {}
    state = read_keras_hed(weights) if is_keras_weights_file(weights) else None
    for name, options in wirings.items():
        if state is not None:  # a Keras file: Keras pools in ceil mode
            net = ModifiedHED(ceil_pooling=True, **options)
            net.load_state_dict(state, strict=True)
            net = net.to(device).eval().requires_grad_(False)
        else:
            net = load_style("hed", weights, device=device, **options)
        teachers[name] = (net, f"{name}:{weights.name}:{digest}:ceil={net.ceil_pooling}")
    return teachers


def predict(model: nn.Module, photo: torch.Tensor) -> torch.Tensor:
    """[3, H, W] -> [1, 1, H, W] sketch, full resolution, float32 on the model's device; computed
    in float32 (not the bfloat16 CPU default), so recorded held-out scores reproduce on any CPU."""
    sketch, _ = extract(model, photo.permute(1, 2, 0)[None], tile=2048, dtype=torch.float32)
    return sketch[..., :1].permute(0, 3, 1, 2)


def score(predictions: dict, held_out: dict, thresholds: int) -> dict:
    """SSIM and L1 per held-out photo and on average, and the boundary F-measure (ODS-style,
    ``thresholds`` levels from 0.1 to 0.9: below 0.1 a student's paper grey would count as line)."""
    per_photo = {}
    for name, (_, teacher) in held_out.items():
        pred = predictions[name]
        per_photo[name] = {
            "ssim": float(ssim(pred, teacher[None])[0]),
            "l1": float(l1_distance(pred, teacher[None])[0]),
        }
    return {
        "photos": per_photo,
        "ssim": float(np.mean([v["ssim"] for v in per_photo.values()])),
        "l1": float(np.mean([v["l1"] for v in per_photo.values()])),
        "boundary_f": boundary_f(predictions, held_out, thresholds),
    }


def boundary_f(predictions: dict, held_out: dict, thresholds: int) -> float:
    """ODS F of the predictions against the teacher's lines (``1 - sketch >= 0.5``, thinned)."""
    counts = []
    for name, (_, teacher) in held_out.items():
        lines = thin_boundaries((1.0 - teacher[0]).numpy() >= 0.5)
        levels = np.linspace(0.1, 0.9, thresholds)
        counts.append(
            evaluate_boundary_image((1.0 - predictions[name][0, 0]).numpy(), [lines], levels, name=name)
        )
    return float(boundary_scores(counts).ods_f)
