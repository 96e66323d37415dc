"""XDoG against two independent references: a plain numpy re-implementation of OpenCV's 8-bit
fixed-point Gaussian blur (explicit kernel, np.pad(mode='reflect'), loops), and cv2 itself when it is
installed (skipped with a visible reason otherwise)."""

import math

import numpy as np
import pytest
import torch

from diffsketch.errors import InvalidInputError
from diffsketch.styles.xdog import (
    XDoG,
    gaussian_blur_u8,
    grey_u8,
    opencv_gaussian_kernel_u8,
    opencv_ksize_u8,
    reflect101_index,
    xdog,
)

# Odd, even, single-row/column and tiny shapes; all are smaller than the 601-tap kernel.
SIZES = [(1, 1), (1, 7), (6, 1), (2, 3), (5, 9), (17, 12), (23, 31)]
SIGMAS = [0.5, 100.0, 2.7]


# ---------------------------------------------------------------- independent numpy reference
def numpy_fixed_point_kernel(sigma):
    """OpenCV's 8-bit kernel, written out again in numpy from the algorithm description."""
    n = int(np.round(sigma * 6 + 1)) | 1  # np.round is half-to-even like cvRound
    d = np.arange(n) - n // 2
    g = np.exp(-(d.astype(np.float64) ** 2) / (2 * sigma * sigma))
    g = g / g.sum()
    k = np.zeros(n, dtype=np.int64)
    err = 0.0
    for i in range(n // 2):  # error diffusion from the outermost tap inwards
        v = g[i] * 256 + err
        k[i] = k[n - 1 - i] = int(np.round(v))
        err = v - k[i]
    k[n // 2] = 256 - 2 * k[: n // 2].sum()
    return k


def numpy_blur_u8(img, sigma):
    k = numpy_fixed_point_kernel(sigma)
    r = len(k) // 2
    x = np.pad(img.astype(np.int64), ((r, r), (r, r)), mode="reflect")  # numpy 'reflect' == reflect-101
    h, w = img.shape
    rows = np.zeros((h + 2 * r, w), dtype=np.int64)
    for t in range(len(k)):
        rows += k[t] * x[:, t : t + w]
    out = np.zeros((h, w), dtype=np.int64)
    for t in range(len(k)):
        out += k[t] * rows[t : t + h, :]
    return ((out + 32768) >> 16).astype(np.uint8)


def numpy_xdog(img_chw, blur, sigma=0.5, k=200, gamma=0.98, epsilon=0.1, phi=10):
    """The paper's xdog_garygrossi with a pluggable blur (numpy reference or cv2)."""
    grey = np.mean(img_chw.transpose(1, 2, 0) * 255.0, axis=2).astype(np.uint8)
    d = (blur(grey, sigma) - gamma * blur(grey, sigma * k)) / 255.0
    return np.where(d >= epsilon, 1.0, 1.0 + np.tanh(phi * (d - epsilon)))


def random_grey(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


# ---------------------------------------------------------------- kernel and borders
def test_kernel_size_rule():
    # cvRound(sigma*3*2 + 1) | 1 for 8-bit images (round half to even, as cvRound does)
    assert opencv_ksize_u8(0.5) == 5
    assert opencv_ksize_u8(100) == 601
    assert opencv_ksize_u8(1.0) == 7
    assert opencv_ksize_u8(0.25) == 3  # 2.5 rounds to 2, then | 1
    assert opencv_ksize_u8(0.1) == 3  # 1.6 rounds to 2, then | 1


def test_sigma_half_kernel_by_hand():
    # exp(-d^2/(2*0.25)) for d=0,1,2: 1, e^-2, e^-8; normalised and scaled by 256 the outer tap is
    # 0.068 -> 0 (carry 0.068), the next 27.26 + 0.068 -> 27, the centre takes 256 - 54 = 202.
    g = np.array([math.exp(-8), math.exp(-2), 1.0, math.exp(-2), math.exp(-8)])
    scaled = g / g.sum() * 256
    assert int(round(scaled[0])) == 0 and int(round(scaled[1] + scaled[0])) == 27
    assert opencv_gaussian_kernel_u8(0.5) == [0, 27, 202, 27, 0]


@pytest.mark.parametrize("sigma", [0.5, 1.3, 7.0, 100.0])
def test_kernel_matches_numpy_reference(sigma):
    k = opencv_gaussian_kernel_u8(sigma)
    assert sum(k) == 256 and k == k[::-1] and min(k) >= 0
    assert k == numpy_fixed_point_kernel(sigma).tolist()


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8])
def test_reflect101_index_wraps_like_numpy(length):
    pad = 40  # many times the axis length
    expected = np.pad(np.arange(length), pad, mode="reflect")
    got = reflect101_index(torch.arange(-pad, length + pad), length).numpy()
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------- blurs
@pytest.mark.parametrize("method", ["dense", "taps", "auto"])
@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("size", SIZES)
def test_blur_matches_numpy_reference(size, sigma, method):
    img = random_grey(*size, seed=hash((size, sigma)) % 1000)
    got = gaussian_blur_u8(torch.from_numpy(img), sigma, method=method).numpy()
    np.testing.assert_array_equal(got, numpy_blur_u8(img, sigma))


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("size", SIZES + [(40, 33), (64, 3)])
def test_blur_matches_cv2(size, sigma):
    cv2 = pytest.importorskip(
        "cv2", reason="opencv-python(-headless) is not installed; cv2 reference skipped"
    )
    img = random_grey(*size, seed=7 + size[0] * 100 + size[1])
    expected = cv2.GaussianBlur(img, (0, 0), sigma)
    got = gaussian_blur_u8(torch.from_numpy(img), sigma).numpy()
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_blur_is_batched_and_dtype_agnostic():
    imgs = np.stack([random_grey(9, 14, seed=s) for s in range(3)])
    batch = gaussian_blur_u8(torch.from_numpy(imgs).double(), 100.0)
    for i in range(3):
        np.testing.assert_array_equal(batch[i].numpy(), numpy_blur_u8(imgs[i], 100.0))


# ---------------------------------------------------------------- full XDoG
def test_grey_truncates_like_numpy_float32():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 11, 13)
    x[1] = torch.randint(0, 256, (3, 11, 13)).float() / 255  # values on the truncation boundaries
    expected = np.stack(
        [np.mean(x[i].numpy().transpose(1, 2, 0) * 255.0, axis=2).astype(np.uint8) for i in range(2)]
    )
    np.testing.assert_array_equal(grey_u8(x).numpy(), expected)


@pytest.mark.parametrize("size", [(1, 1), (4, 7), (19, 27), (40, 33)])
def test_xdog_matches_numpy_reference(size):
    torch.manual_seed(size[0])
    x = torch.rand(2, 3, *size)
    out = xdog(x, out_dtype=torch.float64)
    assert out.shape == (2, 1, *size)
    for i in range(2):
        ref = numpy_xdog(x[i].numpy(), numpy_blur_u8)
        assert np.abs(out[i, 0].numpy() - ref).max() <= 1 / 255


@pytest.mark.parametrize("size", [(5, 8), (19, 27), (40, 33)])
def test_xdog_matches_paper_code_with_cv2(size):
    cv2 = pytest.importorskip(
        "cv2", reason="opencv-python(-headless) is not installed; cv2 reference skipped"
    )
    torch.manual_seed(100 + size[1])
    # a smooth image plus noise gives both line and no-line regions
    base = torch.nn.functional.interpolate(
        torch.rand(1, 3, 4, 4), size=size, mode="bilinear", align_corners=False
    )
    x = (base + 0.1 * torch.rand(1, 3, *size)).clamp(0, 1)
    out = xdog(x)
    assert out.dtype == torch.float32
    ref = numpy_xdog(x[0].numpy(), lambda g, s: cv2.GaussianBlur(g, (0, 0), s))
    assert np.abs(out[0, 0].numpy() - ref).max() <= 1 / 255
    assert (ref < 0.99).any() and (ref == 1.0).any()  # the case exercises both branches


def test_xdog_range_and_custom_parameters():
    torch.manual_seed(3)
    x = torch.rand(3, 3, 16, 20)
    out = xdog(x)
    assert out.min() > 0 and out.max() <= 1
    custom = XDoG(sigma=1.0, k=3.0, gamma=0.9, epsilon=0.05, phi=5.0)
    got = custom(x, out_dtype=torch.float64)
    for i in range(3):
        ref = numpy_xdog(x[i].numpy(), numpy_blur_u8, sigma=1.0, k=3.0, gamma=0.9, epsilon=0.05, phi=5.0)
        assert np.abs(got[i, 0].numpy() - ref).max() <= 1 / 255
    assert XDoG().to_dict() == {"sigma": 0.5, "k": 200.0, "gamma": 0.98, "epsilon": 0.1, "phi": 10.0}
    assert torch.equal(XDoG()(x), out)


def test_xdog_batch_matches_single_images():
    torch.manual_seed(4)
    x = torch.rand(3, 3, 10, 12)
    batch = xdog(x)
    for i in range(3):
        assert torch.equal(batch[i : i + 1], xdog(x[i : i + 1]))


@pytest.mark.parametrize(
    "bad",
    [
        torch.rand(3, 8, 8),  # no batch dimension
        torch.rand(1, 4, 8, 8),  # RGBA
        torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8),
        torch.full((1, 3, 4, 4), float("nan")),
    ],
)
def test_xdog_rejects_bad_images(bad):
    with pytest.raises(InvalidInputError):
        xdog(bad)


def test_xdog_rejects_bad_parameters():
    x = torch.rand(1, 3, 4, 4)
    with pytest.raises(InvalidInputError, match="sigma"):
        xdog(x, sigma=0)
    with pytest.raises(InvalidInputError, match="k="):
        xdog(x, k=-1)
    with pytest.raises(InvalidInputError, match="sigma"):
        XDoG(sigma=-1.0)
