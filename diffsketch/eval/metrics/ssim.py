"""SSIM and L1 between two image batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import InvalidInputError
from ...images import gaussian_kernel_1d
from .common import check_pair


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
    check_pair(x, y, "ssim")
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
    check_pair(x, y, "l1_distance")
    return (x.detach().to(torch.float64) - y.detach().to(torch.float64)).abs().flatten(1).mean(dim=1)
