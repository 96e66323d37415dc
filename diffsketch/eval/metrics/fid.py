"""FID: Frechet distance between Inception feature statistics, and the FID Inception network
loaded from a local ``.safetensors`` file (nothing is downloaded or unpickled)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import FileFormatError, InvalidInputError, WeightsNotFoundError
from ...fileio import load_state_strict


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
FID_WEIGHTS_SOURCE = (
    "pytorch-fid's FID Inception weights 'pt_inception-2015-12-05-6726825d.pth' "
    "(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth). "
    "DiffSketch never unpickles files, so convert it once to safetensors yourself, e.g. "
    'python -c "import torch; from safetensors.torch import save_file; '
    "save_file(torch.load('pt_inception-2015-12-05-6726825d.pth', weights_only=True), "
    f"'{FID_WEIGHTS_FILE}')\""
)


def _fid_blocks():
    """pytorch-fid's Inception blocks: the TF graph FID was defined on pools differently from
    torchvision's Inception in three places, which those blocks reproduce."""
    try:
        from pytorch_fid import inception
    except ImportError as e:
        raise ImportError(
            "FID needs the optional package 'pytorch-fid' (its Inception blocks; the weights stay a local "
            'file): pip install pytorch-fid, or the eval extra: pip install "diffsketch[eval]"'
        ) from e
    return inception


class FIDInceptionV3(nn.Module):
    """The Inception-v3 variant FID uses (pool3 features, 2048-D): torchvision's stem and grid
    reductions with pytorch-fid's blocks, so the parameter names match pytorch-fid's weights file
    (its ``fc.*`` is not used). pytorch-fid's own model class is not used because building it
    downloads the weights; here they are read from the user's file by :func:`load_fid_inception`.

    ``forward(images)``: ``[B, 3, H, W]`` RGB in [0, 1] -> ``[B, 2048]``. Images are resized to 299x299
    (bilinear) and scaled to [-1, 1], as pytorch-fid does. With random weights it is only good for tests.
    """

    def __init__(self, resize_to: int | None = 299):
        super().__init__()
        from torchvision.models import inception as tv

        fid = _fid_blocks()
        conv = tv.BasicConv2d
        self.resize_to = resize_to
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = tv.InceptionB(288)
        self.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = tv.InceptionD(768)
        self.Mixed_7b = fid.FIDInceptionE_1(1280)
        self.Mixed_7c = fid.FIDInceptionE_2(2048)

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
            f"{p.name}: DiffSketch only reads .safetensors weights (never pickles). Get {FID_WEIGHTS_SOURCE}."
        )
    if not p.is_file():
        raise WeightsNotFoundError(
            f"FID Inception weights not found: {p}. Put '{FID_WEIGHTS_FILE}' in {p.parent}. It is {FID_WEIGHTS_SOURCE}."
        )
    try:
        state = load_file(str(p))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise FileFormatError(
            f"{p.name} is not a readable safetensors file ({e}). Re-create it: {FID_WEIGHTS_SOURCE}."
        ) from e
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
    model = FIDInceptionV3()
    # Files written by old torch versions lack BatchNorm's num_batches_tracked counters; they are unused.
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    load_state_strict(
        model, state, p.name, f"These are not the FID Inception weights; use {FID_WEIGHTS_SOURCE}."
    )
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
