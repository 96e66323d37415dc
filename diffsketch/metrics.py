"""Evaluation metrics: SSIM, L1, CLIP image similarity, FID, and the BSDS500 boundary benchmark.

LPIPS lives elsewhere. Nothing here downloads anything: the FID Inception network reads a local
``.safetensors`` file and CLIP similarity takes a model the caller already loaded.

Optional dependencies, imported only when used (each raises ImportError naming the package):
scipy for the BSDS500 benchmark (``.mat`` ground truth and bipartite matching). SSIM, L1, CLIP
similarity, the Frechet distance and the FID network need only torch, torchvision and numpy.

BSDS500 benchmark and how it differs from the reference MATLAB/C++ code (``boundaryBench``):

* Same: thresholds ``linspace(1/(K+1), 1 - 1/(K+1), K)`` (K = 99), ``pb >= t``, thinning of each
  thresholded map to one-pixel lines, matching tolerance ``0.0075 * image diagonal`` (pixels at
  Euclidean distance <= tolerance may match), one-to-one matching against each annotator separately,
  recall counts summed over annotators, a predicted pixel counted correct if it matches any annotator,
  ODS from the dataset-summed counts with the reference's linear interpolation between thresholds,
  OIS from each image's best threshold (last of ties), and AP computed exactly as the reference's
  ``collect_eval_bdry.m`` (see :func:`boundary_scores`).
* Different: the reference matches pixels with a min-cost assignment (CSA) whose outlier cost is 100x
  the tolerance, so it first maximises the number of matched pairs and then minimises their total
  distance. Here a maximum-cardinality bipartite matching (Hopcroft-Karp, scipy) is used: the number
  of matches per annotator is the same, but when several maximum matchings exist the *which* pixels
  may differ, which can change the any-annotator precision count slightly. Thinning is our own
  Guo-Hall implementation (the algorithm of MATLAB's ``bwmorph(..., 'thin', inf)``; tested against
  scikit-image's ``thin`` when that is installed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import FileFormatError, InvalidInputError, WeightsNotFoundError

__all__ = [
    "gaussian_kernel_1d",
    "ssim",
    "l1_distance",
    "CLIP_MEAN",
    "CLIP_STD",
    "clip_preprocess",
    "clip_image_similarity",
    "activation_statistics",
    "frechet_distance",
    "fid_from_features",
    "FID_WEIGHTS_FILE",
    "FIDInceptionV3",
    "load_fid_inception",
    "inception_features",
    "boundary_thresholds",
    "thin_boundaries",
    "match_boundaries",
    "BoundaryCounts",
    "BoundaryScores",
    "evaluate_boundary_image",
    "boundary_scores",
    "read_bsds_ground_truth",
    "read_grey_image",
    "FilePair",
    "PairingReport",
    "pair_files",
    "load_pair",
    "evaluate_boundaries",
]


def _require(module: str, purpose: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        package = module.split(".")[0]
        raise ImportError(f"{purpose} needs the optional package '{package}': pip install {package}") from e


def _check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InvalidInputError(f"{what} expects two torch tensors [B, C, H, W].")
    if x.dim() != 4 or x.shape != y.shape:
        raise InvalidInputError(
            f"{what} expects two tensors of the same shape [B, C, H, W]; got {tuple(x.shape)} and {tuple(y.shape)}."
        )


# ============================================================================ SSIM and L1
def gaussian_kernel_1d(size: int, sigma: float, dtype, device) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps centred on the middle one."""
    d = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(d**2) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean SSIM per image (Wang et al. 2004) -> ``[B]``.

    ``x``, ``y``: ``[B, C, H, W]`` with values in ``[0, data_range]``. Gaussian window 11, sigma 1.5,
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, population (not sample) variances, statistics only where the
    window fits inside the image ("valid", as the reference MATLAB ``ssim_index`` and scikit-image,
    which crops the border), averaged over channels and positions. Computed in float64.
    """
    _check_pair(x, y, "ssim")
    if x.shape[-1] < window_size or x.shape[-2] < window_size:
        raise InvalidInputError(
            f"ssim needs images of at least {window_size}x{window_size} pixels; got {tuple(x.shape[-2:])}."
        )
    b, c, h, w = x.shape
    xd = x.detach().to(torch.float64).reshape(b * c, 1, h, w)
    yd = y.detach().to(torch.float64).reshape(b * c, 1, h, w)
    g = gaussian_kernel_1d(window_size, sigma, torch.float64, x.device)

    def blur(t):
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    mu_x, mu_y = blur(xd), blur(yd)
    var_x = blur(xd * xd) - mu_x**2
    var_y = blur(yd * yd) - mu_y**2
    cov = blur(xd * yd) - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.reshape(b, -1).mean(dim=1)


def l1_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per image -> ``[B]`` (inputs ``[B, C, H, W]``)."""
    _check_pair(x, y, "l1_distance")
    return (x.detach().to(torch.float64) - y.detach().to(torch.float64)).abs().flatten(1).mean(dim=1)


# ============================================================================ CLIP similarity
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: torch.Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """CLIP's image preprocessing on tensors: shorter side to ``size`` (bicubic, antialiased), centre
    crop, normalise. ``images``: ``[B, 3 or 1, H, W]`` in [0, 1]; grey images are repeated to RGB."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InvalidInputError(
            f"CLIP preprocessing expects [B, 3, H, W] (or [B, 1, H, W]) images; got {shape}."
        )
    x = images.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def clip_image_similarity(
    model, images_a: torch.Tensor, images_b: torch.Tensor, size: int = 224
) -> torch.Tensor:
    """Cosine similarity of CLIP image embeddings, pair by pair -> ``[B]``.

    ``model`` is any object with ``encode_image(pixels)`` (an open_clip or OpenAI CLIP model the caller
    loaded from local weights); ``images_a``/``images_b`` are ``[B, 3, H, W]`` in [0, 1].
    """
    _check_pair(images_a, images_b, "clip_image_similarity")
    if not hasattr(model, "encode_image"):
        raise InvalidInputError(
            f"clip_image_similarity needs a CLIP model with encode_image(); got {type(model).__name__}."
        )
    fa = model.encode_image(clip_preprocess(images_a, size)).float()
    fb = model.encode_image(clip_preprocess(images_b, size)).float()
    return F.cosine_similarity(fa, fb, dim=-1)


# ============================================================================ FID
def activation_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov``, rows are samples) of ``[N, D]`` features, N >= 2."""
    f = (
        features.detach().cpu().double().numpy()
        if isinstance(features, torch.Tensor)
        else np.asarray(features, np.float64)
    )
    if f.ndim != 2 or f.shape[0] < 2:
        raise InvalidInputError(
            f"FID statistics need features shaped [N, D] with N >= 2 samples; got shape {f.shape}."
        )
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _clean_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues that are round-off (negative, or below ``D * eps * largest``): their square
    roots (~1e-8) would otherwise add up to a visible error for singular covariances."""
    tol = w.size * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.sqrt(_clean_eigenvalues(w))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``.

    ``tr((sigma1 sigma2)^(1/2))`` is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix ``sigma1^(1/2) sigma2 sigma1^(1/2)`` (same eigenvalues as ``sigma1 sigma2``),
    with round-off eigenvalues (negative or relatively tiny) set to 0. This equals pytorch-fid's ``scipy.linalg.sqrtm``
    formula, needs no scipy, and stays real and finite for singular covariances (fewer samples than
    dimensions), where sqrtm needs an epsilon fix.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise InvalidInputError(
            f"frechet_distance: mean/covariance shapes do not agree: mu1 {mu1.shape}, sigma1 {s1.shape}, "
            f"mu2 {mu2.shape}, sigma2 {s2.shape}; expected (D,) and (D, D)."
        )
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.all(np.isfinite(a)):
            raise InvalidInputError(f"frechet_distance: {name} contains NaN or infinite values.")
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(_clean_eigenvalues(eig)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(features_a, features_b) -> float:
    """FID between two sets of ``[N, D]`` Inception features."""
    return frechet_distance(*activation_statistics(features_a), *activation_statistics(features_b))


FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.safetensors"
_FID_WEIGHTS_SOURCE = (
    "pytorch-fid's FID Inception weights 'pt_inception-2015-12-05-6726825d.pth' "
    "(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth). "
    "DiffSketch never unpickles files, so convert it once to safetensors yourself, e.g. "
    'python -c "import torch; from safetensors.torch import save_file; '
    "save_file(torch.load('pt_inception-2015-12-05-6726825d.pth', weights_only=True), "
    f"'{FID_WEIGHTS_FILE}')\""
)


def _tv_inception():
    from torchvision.models import inception as tv_inception

    return tv_inception


def _fid_blocks():
    """FID's Inception blocks: the TF graph pools differently from torchvision in three places."""
    tv = _tv_inception()

    def avg_pool_no_pad(x):
        # TF's 'SAME' average pooling divides by the number of real pixels at the border.
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class FIDInceptionA(tv.InceptionA):
        def _forward(self, x):
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(avg_pool_no_pad(x))
            return [b1, b5, b3, bp]

    class FIDInceptionC(tv.InceptionC):
        def _forward(self, x):
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = self.branch7x7dbl_1(x)
            for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                bd = conv(bd)
            bp = self.branch_pool(avg_pool_no_pad(x))
            return [b1, b7, bd, bp]

    class FIDInceptionE(tv.InceptionE):
        def __init__(self, in_channels: int, max_pool: bool):
            super().__init__(in_channels)
            self.use_max_pool = max_pool

        def _forward(self, x):
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            # The last block of the TF graph max-pools here (a known quirk of the FID network).
            pooled = (
                F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
                if self.use_max_pool
                else avg_pool_no_pad(x)
            )
            bp = self.branch_pool(pooled)
            return [b1, b3, bd, bp]

    return tv, FIDInceptionA, FIDInceptionC, FIDInceptionE


class FIDInceptionV3(nn.Module):
    """The Inception-v3 variant FID uses (pool3 features, 2048-D), with parameter names matching
    pytorch-fid's weights (torchvision layout; ``fc.*`` in the file is ignored).

    ``forward(images)``: ``[B, 3, H, W]`` RGB in [0, 1] -> ``[B, 2048]``. Images are resized to 299x299
    (bilinear) and scaled to [-1, 1], as pytorch-fid does. Build it empty, then load weights with
    :func:`load_fid_inception`; with random weights it is only good for tests.
    """

    def __init__(self, resize_to: int | None = 299):
        super().__init__()
        tv, block_a, block_c, block_e = _fid_blocks()
        conv = tv.BasicConv2d
        self.resize_to = resize_to
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.Mixed_5b = block_a(192, pool_features=32)
        self.Mixed_5c = block_a(256, pool_features=64)
        self.Mixed_5d = block_a(288, pool_features=64)
        self.Mixed_6a = tv.InceptionB(288)
        self.Mixed_6b = block_c(768, channels_7x7=128)
        self.Mixed_6c = block_c(768, channels_7x7=160)
        self.Mixed_6d = block_c(768, channels_7x7=160)
        self.Mixed_6e = block_c(768, channels_7x7=192)
        self.Mixed_7a = tv.InceptionD(768)
        self.Mixed_7b = block_e(1280, max_pool=False)
        self.Mixed_7c = block_e(2048, max_pool=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise InvalidInputError(
                f"FID Inception expects RGB images [B, 3, H, W] in [0, 1]; got {tuple(images.shape)}."
            )
        x = images
        if self.resize_to is not None:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def load_fid_inception(path: str | os.PathLike, device="cpu") -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load pytorch-fid's weights from a local ``.safetensors`` file.

    ``path`` is the file or the folder holding ``FID_WEIGHTS_FILE``. Raises WeightsNotFoundError when
    it is missing (the message says where to get it and how to convert it) and FileFormatError when the
    file is not those weights. Never downloads, never unpickles.
    """
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        p = p / FID_WEIGHTS_FILE
    if p.suffix in (".pth", ".pt", ".ckpt", ".bin"):
        raise FileFormatError(
            f"{p.name}: DiffSketch only reads .safetensors weights (never pickles). Get {_FID_WEIGHTS_SOURCE}."
        )
    if not p.is_file():
        raise WeightsNotFoundError(
            f"FID Inception weights not found: {p}. Put '{FID_WEIGHTS_FILE}' in {p.parent}. It is {_FID_WEIGHTS_SOURCE}."
        )
    try:
        state = load_file(str(p))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise FileFormatError(
            f"{p.name} is not a readable safetensors file ({e}). Re-create it: {_FID_WEIGHTS_SOURCE}."
        ) from e
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
    model = FIDInceptionV3()
    expected = model.state_dict()
    # Files written by old torch versions lack BatchNorm's num_batches_tracked counters; they are unused.
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in expected)
    wrong_shape = sorted(
        k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong_shape:
        raise FileFormatError(
            f"{p.name} does not hold the FID Inception weights (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shapes {wrong_shape[:3]}). Use {_FID_WEIGHTS_SOURCE}."
        )
    model.load_state_dict(state, strict=False)
    return model.eval().to(device)


@torch.no_grad()
def inception_features(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Run ``model`` over ``images`` ``[N, 3, H, W]`` in [0, 1] in batches -> float64 ``[N, D]``."""
    device = next(model.parameters()).device
    out = [
        model(images[i : i + batch_size].to(device).float()).double().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy()


# ============================================================================ BSDS500 boundaries
def boundary_thresholds(thresholds: int | Sequence[float] = 99) -> np.ndarray:
    """``K`` thresholds as the BSDS benchmark spaces them, ``linspace(1/(K+1), 1 - 1/(K+1), K)``, or the
    given sequence sorted ascending."""
    if isinstance(thresholds, (int, np.integer)):
        if thresholds < 1:
            raise InvalidInputError(f"number of thresholds must be >= 1; got {thresholds}.")
        k = int(thresholds)
        return np.linspace(1.0 / (k + 1), 1.0 - 1.0 / (k + 1), k)
    t = np.sort(np.asarray(thresholds, np.float64).ravel())
    if t.size == 0 or not np.all(np.isfinite(t)):
        raise InvalidInputError("thresholds must be a positive count or a non-empty list of finite numbers.")
    return t


def _thin_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of Guo & Hall (1989), indexed by the 8-neighbour code.

    Bit i of the code is neighbour x(i+1), counter-clockwise from east: x1=E, x2=NE, x3=N, x4=NW,
    x5=W, x6=SW, x7=S, x8=SE.
    """
    first = np.zeros(256, bool)
    second = np.zeros(256, bool)
    for code in range(256):
        x = [bool((code >> i) & 1) for i in range(8)]
        x1, x2, x3, x4, x5, x6, x7, x8 = x
        ring = x + [x1]  # ring[i] is x(i+1); ring[8] wraps to x1
        crossings = sum((not ring[2 * i]) and (ring[2 * i + 1] or ring[2 * i + 2]) for i in range(4))
        n1 = sum(ring[2 * k] or ring[2 * k + 1] for k in range(4))
        n2 = sum(ring[2 * k + 1] or ring[2 * k + 2] for k in range(4))
        keeps_shape = crossings == 1 and 2 <= min(n1, n2) <= 3
        first[code] = keeps_shape and not ((x2 or x3 or not x8) and x1)
        second[code] = keeps_shape and not ((x6 or x7 or not x4) and x5)
    return first, second


_THIN_LUTS: tuple[np.ndarray, np.ndarray] | None = None


def thin_boundaries(mask) -> np.ndarray:
    """Thin a binary map to one-pixel-wide lines (Guo-Hall two-subiteration thinning, repeated until
    nothing changes; pixels outside the image count as background). This is the algorithm of MATLAB's
    ``bwmorph(bw, 'thin', inf)``, which the BSDS benchmark applies to each thresholded prediction."""
    global _THIN_LUTS
    if _THIN_LUTS is None:
        _THIN_LUTS = _thin_luts()
    img = np.asarray(mask).astype(bool)
    if img.ndim != 2:
        raise InvalidInputError(f"thinning expects a 2-D map; got shape {img.shape}.")
    img = np.pad(img, 1)
    h, w = img.shape
    # (dy, dx) of neighbours x1..x8
    offsets = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]
    changed = True
    while changed:
        changed = False
        for lut in _THIN_LUTS:
            code = np.zeros((h - 2, w - 2), np.uint8)
            for bit, (dy, dx) in enumerate(offsets):
                code |= img[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx].astype(np.uint8) << bit
            inner = img[1:-1, 1:-1]
            delete = inner & lut[code]
            if delete.any():
                inner &= ~delete
                changed = True
    return img[1:-1, 1:-1].copy()


def _candidate_pairs(
    gt: np.ndarray, max_dist_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a ground-truth map: every (image position, ground-truth pixel) pair within the tolerance.

    Returns (flat positions, ground-truth pixel index per pair, gt rows, gt cols). Computed once per
    annotator, so each threshold only has to look up which of these positions are predicted.
    """
    h, w = gt.shape
    gy, gx = np.nonzero(gt)
    radius = int(math.floor(max_dist_px))
    positions, owners = [], []
    index = np.arange(gy.size)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx > max_dist_px * max_dist_px:
                continue
            py, px = gy + dy, gx + dx
            inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
            positions.append(py[inside] * w + px[inside])
            owners.append(index[inside])
    return np.concatenate(positions), np.concatenate(owners), gy, gx


def _match_candidates(pred: np.ndarray, candidates) -> tuple[np.ndarray, np.ndarray]:
    csgraph = _require("scipy.sparse.csgraph", "BSDS boundary matching")
    sparse = _require("scipy.sparse", "BSDS boundary matching")
    positions, owners, gy, gx = candidates
    matched_pred = np.zeros(pred.shape, bool)
    matched_gt = np.zeros(pred.shape, bool)
    flat = pred.ravel()
    hit = flat[positions]
    if not hit.any():
        return matched_pred, matched_gt
    pred_flat = np.flatnonzero(flat)
    pred_label = np.full(flat.size, -1, np.int64)
    pred_label[pred_flat] = np.arange(pred_flat.size)
    rows, cols = pred_label[positions[hit]], owners[hit]
    graph = sparse.csr_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(pred_flat.size, gy.size))
    partner = csgraph.maximum_bipartite_matching(graph, perm_type="column")
    hit_rows = np.nonzero(partner >= 0)[0]
    matched_pred.ravel()[pred_flat[hit_rows]] = True
    matched_gt[gy[partner[hit_rows]], gx[partner[hit_rows]]] = True
    return matched_pred, matched_gt


def match_boundaries(pred, gt, max_dist_px: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to ground-truth boundary pixels within ``max_dist_px``.

    Returns boolean maps (matched predicted pixels, matched ground-truth pixels). A maximum-cardinality
    matching (Hopcroft-Karp) over all pairs at Euclidean distance <= ``max_dist_px``; see the module
    docstring for how this relates to the benchmark's CSA assignment.
    """
    _require("scipy.sparse.csgraph", "BSDS boundary matching")
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise InvalidInputError(
            f"boundary maps must be 2-D and the same size; got {pred.shape} and {gt.shape}."
        )
    return _match_candidates(pred, _candidate_pairs(gt, max_dist_px))


@dataclass
class BoundaryCounts:
    """Per-threshold counts for one image (the columns of the benchmark's ``_ev1.txt``)."""

    thresholds: np.ndarray
    cnt_r: np.ndarray  # matched ground-truth pixels, summed over annotators
    sum_r: np.ndarray  # ground-truth pixels, summed over annotators
    cnt_p: np.ndarray  # predicted pixels matched to at least one annotator
    sum_p: np.ndarray  # predicted pixels (after thinning)
    name: str = ""


def evaluate_boundary_image(
    prediction,
    ground_truths: Sequence,
    thresholds: int | Sequence[float] = 99,
    max_dist: float = 0.0075,
    thin: bool = True,
    name: str = "",
) -> BoundaryCounts:
    """Counts for one image. ``prediction``: 2-D edge strength in [0, 1] (higher = more boundary);
    ``ground_truths``: one boolean boundary map per annotator, same size; ``max_dist``: tolerance as
    a fraction of the image diagonal."""
    pb = np.asarray(prediction, np.float64)
    gts = [np.asarray(g).astype(bool) for g in ground_truths]
    if pb.ndim != 2:
        raise InvalidInputError(f"prediction {name!r} must be a 2-D map; got shape {pb.shape}.")
    if not gts:
        raise InvalidInputError(f"ground truth for {name!r} has no annotator maps.")
    for g in gts:
        if g.shape != pb.shape:
            raise InvalidInputError(
                f"{name!r}: prediction is {pb.shape} but a ground-truth map is {g.shape}; resize first."
            )
    t = boundary_thresholds(thresholds)
    h, w = pb.shape
    max_dist_px = max_dist * math.sqrt(h * h + w * w)
    sum_r_total = float(sum(int(g.sum()) for g in gts))
    candidates = [_candidate_pairs(g, max_dist_px) for g in gts]
    cnt_r, sum_r, cnt_p, sum_p = (np.zeros(t.size) for _ in range(4))
    previous_map, previous = None, None
    for i, threshold in enumerate(t):
        raw = pb >= threshold
        if previous_map is not None and np.array_equal(raw, previous_map):
            cnt_r[i], cnt_p[i], sum_p[i] = previous  # same map, same counts (e.g. binary predictions)
        else:
            bmap = thin_boundaries(raw) if thin else raw
            any_match = np.zeros_like(bmap)
            matched_gt = 0
            for cand in candidates:
                mp, mg = _match_candidates(bmap, cand)
                any_match |= mp
                matched_gt += int(mg.sum())
            cnt_r[i], cnt_p[i], sum_p[i] = matched_gt, int(any_match.sum()), int(bmap.sum())
            previous_map, previous = raw, (cnt_r[i], cnt_p[i], sum_p[i])
        sum_r[i] = sum_r_total
    return BoundaryCounts(t, cnt_r, sum_r, cnt_p, sum_p, name)


def _ratio(num, den):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return num / (den + (den == 0))


def _fmeasure(r, p):
    r, p = np.asarray(r, np.float64), np.asarray(p, np.float64)
    return 2 * p * r / (p + r + ((p + r) == 0))


def _max_f(t, r, p) -> tuple[float, float, float, float]:
    """The benchmark's ``maxF``: best F over the PR curve, interpolating linearly between neighbouring
    thresholds at 100 points (which include both ends)."""
    best = (float(t[0]), float(r[0]), float(p[0]), float(_fmeasure(r[0], p[0])))
    d = np.linspace(0, 1, 100)
    for i in range(1, len(t)):
        tt = t[i] * d + t[i - 1] * (1 - d)
        rr = r[i] * d + r[i - 1] * (1 - d)
        pp = p[i] * d + p[i - 1] * (1 - d)
        ff = _fmeasure(rr, pp)
        j = int(np.argmax(ff))  # first of ties, like the strict '>' scan of the reference
        if ff[j] > best[3]:
            best = (float(tt[j]), float(rr[j]), float(pp[j]), float(ff[j]))
    return best


@dataclass
class BoundaryScores:
    """ODS / OIS / AP and the dataset PR curve (one point per threshold)."""

    ods_f: float
    ods_p: float
    ods_r: float
    ods_threshold: float
    ois_f: float
    ois_p: float
    ois_r: float
    ap: float
    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    per_image: list = field(default_factory=list)  # (name, best threshold, R, P, F) per image

    def summary(self) -> str:
        return (
            f"ODS F={self.ods_f:.4f} (P={self.ods_p:.4f}, R={self.ods_r:.4f}, t={self.ods_threshold:.3f})  "
            f"OIS F={self.ois_f:.4f} (P={self.ois_p:.4f}, R={self.ois_r:.4f})  AP={self.ap:.4f}  "
            f"images={len(self.per_image)}"
        )


def boundary_scores(per_image: Sequence[BoundaryCounts]) -> BoundaryScores:
    """ODS, OIS and AP as the benchmark's ``collect_eval_bdry.m`` computes them.

    ODS: best (interpolated) F of the counts summed over images. OIS: counts of each image at its own
    best threshold (the highest of ties), summed, then F. AP: the reference's area under the PR curve:
    recall values made unique (first occurrence), precision interpolated linearly at recall
    0, 0.01, ..., 1 (0 outside the measured recall range), summed and multiplied by 0.01. Two quirks of
    that definition are kept for comparability with published numbers: the 101-point sum can slightly
    exceed the true area, and a curve with a single recall value (e.g. a binary prediction) has AP 0.
    """
    if not per_image:
        raise InvalidInputError("no images to score; check that predictions and ground truths were paired.")
    t = per_image[0].thresholds
    for c in per_image:
        if not np.array_equal(c.thresholds, t):
            raise InvalidInputError("all images must be evaluated with the same thresholds.")
    total = [np.zeros(t.size) for _ in range(4)]
    best_counts = np.zeros(4)
    rows = []
    for c in per_image:
        counts = (c.cnt_r, c.sum_r, c.cnt_p, c.sum_p)
        for acc, v in zip(total, counts, strict=True):
            acc += v
        r, p = _ratio(c.cnt_r, c.sum_r), _ratio(c.cnt_p, c.sum_p)
        f = _fmeasure(r, p)
        last_best = len(f) - 1 - int(np.argmax(f[::-1]))
        best_counts += [v[last_best] for v in counts]
        rows.append((c.name, *_max_f(t, r, p)))
    recall, precision = _ratio(total[0], total[1]), _ratio(total[2], total[3])
    ods_t, ods_r, ods_p, ods_f = _max_f(t, recall, precision)
    ois_r = float(_ratio(best_counts[0], best_counts[1]))
    ois_p = float(_ratio(best_counts[2], best_counts[3]))
    ois_f = float(_fmeasure(ois_r, ois_p))
    unique_r, first = np.unique(recall, return_index=True)
    if unique_r.size > 1:
        grid = np.linspace(0, 1, 101)
        ap = float(np.interp(grid, unique_r, precision[first], left=0.0, right=0.0).sum() * 0.01)
    else:
        ap = 0.0
    return BoundaryScores(ods_f, ods_p, ods_r, ods_t, ois_f, ois_p, ois_r, ap, t, precision, recall, rows)


# ---------------------------------------------------------------------------- files
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_bsds_ground_truth(path: str | os.PathLike) -> list[np.ndarray]:
    """Boundary maps (bool, one per annotator) from a BSDS500 ``groundTruth`` ``.mat`` file.

    The file holds a cell array ``groundTruth`` of structs with fields ``Segmentation`` and
    ``Boundaries``. Read with ``scipy.io.loadmat`` (MATLAB v5 format; nothing is unpickled).
    """
    sio = _require("scipy.io", "Reading BSDS500 .mat ground truth")
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
