"""SketchExtractor, extract() and the extractor file format, on tiny random-weight networks."""

from __future__ import annotations

import functools
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffsketch.distill import extract as extract_module
from diffsketch.distill.extract import extract
from diffsketch.distill.extractor import (
    EXTRACTOR_VERSION,
    ExtractorConfig,
    SketchExtractor,
    load_extractor,
    save_extractor,
)
from diffsketch.errors import FileFormatError, InvalidInputError
from diffsketch.eval.baselines import Pix2PixHDGlobalGenerator, build_baseline
from diffsketch.fileio import save_tensors
from diffsketch.styles import STANDARD_HED_SIDES, InformativeDrawings, ModifiedHED

REPO = Path(__file__).resolve().parents[1]
TINY = ExtractorConfig(channels=(4, 8), encoder_blocks=(1, 1), decoder_blocks=(1,))


def randomised(config: ExtractorConfig = TINY, seed: int = 0) -> SketchExtractor:
    """A network whose every weight is non-zero (fresh residual blocks start as identities)."""
    torch.manual_seed(seed)
    model = SketchExtractor(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.normal_(0.0, 1.0 / fan_in**0.5)
    return model


class RedChannel(nn.Module):
    """Stub network: the sketch grey level is the input's red channel, pixel for pixel. It lets the
    tests state exactly what extract() must return (an identity has no receptive field)."""

    def __init__(self, multiple: int = 8):
        super().__init__()
        self.multiple = multiple
        self.anchor = nn.Parameter(torch.zeros(()))  # gives extract() a device to find

    def forward(self, x):
        assert x.shape[-2] % self.multiple == 0 and x.shape[-1] % self.multiple == 0
        return x[:, :1] + self.anchor


class LocalConvNet(nn.Module):
    """Stub network with a finite receptive field and no per-image statistics: for it (unlike
    SketchExtractor, whose GroupNorm and context branch look at the whole tile) tiled extraction
    must equal untiled extraction once the overlap covers the receptive field."""

    multiple = 8

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1),
        )  # fmt: skip

    def forward(self, x):
        return torch.sigmoid(self.body(x))


def images(b=1, h=40, w=52, c=3, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, c, generator=g)


# ---------------------------------------------------------------------------------- network


def test_network_shape_range_and_multiple():
    model = randomised()
    assert model.multiple == 4
    with torch.no_grad():
        y = model(torch.rand(2, 3, 16, 24))
    assert y.shape == (2, 1, 16, 24)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    with pytest.raises(InvalidInputError, match="multiples of 4"):
        model(torch.rand(1, 3, 18, 24))


def test_fresh_network_starts_near_white_and_default_size_is_reasonable():
    model = SketchExtractor()
    assert model.multiple == 32
    with torch.no_grad():
        y = model(torch.rand(1, 3, 64, 64))
    assert torch.allclose(y, torch.full_like(y, 0.9), atol=0.02)
    params = sum(p.numel() for p in model.parameters())
    assert 300_000 <= params <= 3_000_000


def test_config_json_round_trip_and_validation():
    config = ExtractorConfig(channels=(8, 16, 32), encoder_blocks=(0, 1, 2), decoder_blocks=(1, 0))
    again = ExtractorConfig.from_json(config.to_json())
    assert again == config and again.multiple == 8
    with pytest.raises(InvalidInputError, match="decoder_blocks"):
        ExtractorConfig(channels=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1, 1))
    with pytest.raises(InvalidInputError, match="unknown extractor config keys"):
        ExtractorConfig.from_dict({**config.to_dict(), "kernel": 5})
    with pytest.raises(InvalidInputError, match="context_pool"):
        ExtractorConfig(context_pool=0)
    with pytest.raises(InvalidInputError, match="lowpass_sigmas"):
        ExtractorConfig(lowpass_sigmas=(1.0, 0.0))
    with pytest.raises(InvalidInputError, match="head_gain"):
        ExtractorConfig(head_gain=0)
    with pytest.raises(InvalidInputError, match="head_channels"):
        ExtractorConfig(head_channels=-1)
    # JSON gives lists; the config keeps tuples so it stays hashable and equal to the original.
    assert ExtractorConfig.from_dict({"lowpass_sigmas": [1, 2]}).lowpass_sigmas == (1.0, 2.0)


def test_lowpass_maps_are_local_means_without_a_dark_frame():
    """The low-pass blurs renormalise at borders: a flat image stays flat up to the edge (zero
    padding alone would darken a frame as wide as the kernel), and a step stays a step's mean."""
    lowpass = SketchExtractor(ExtractorConfig(lowpass_sigmas=(1.0, 4.0))).lowpass
    flat = torch.full((1, 3, 64, 96), 0.3)
    maps = lowpass(flat, (2, 3))
    assert maps.shape == (1, 9, 2, 3)
    assert torch.allclose(maps, torch.full_like(maps, 0.3), atol=1e-6)
    step = torch.zeros(1, 3, 32, 256)
    step[..., 128:] = 1.0
    row = lowpass(step, (1, 8))[0, 3, 0]  # sigma 1 cell
    assert torch.all(row[1:] >= row[:-1]) and float(row[0]) < 0.05 and float(row[-1]) > 0.95
    assert torch.allclose(row, 1 - row.flip(0), atol=1e-6)


def test_lowpass_branch_can_be_switched_off_and_changes_the_parameters():
    with_branch = SketchExtractor(
        ExtractorConfig(channels=(4, 8), encoder_blocks=(1, 1), decoder_blocks=(1,))
    )
    without = SketchExtractor(
        ExtractorConfig(channels=(4, 8), encoder_blocks=(1, 1), decoder_blocks=(1,), lowpass_sigmas=())
    )
    assert without.lowpass is None and "lowpass_to_bottom.weight" not in without.state_dict()
    assert (
        with_branch.state_dict()["head.weight"].shape[1] == without.state_dict()["head.weight"].shape[1] + 12
    )
    with torch.no_grad():
        assert without(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)


# ---------------------------------------------------------------------------------- extract()


def test_odd_size_shapes_and_value_conventions():
    sketch, mask = extract(randomised(), images(2, 70, 131))
    assert sketch.shape == (2, 70, 131, 3) and mask.shape == (2, 70, 131)
    assert sketch.dtype == torch.float32 and mask.dtype == torch.float32
    assert torch.equal(sketch[..., 0], sketch[..., 2])
    assert torch.allclose(sketch[..., 0], 1 - mask)  # dark lines on white
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0


def test_padding_and_cropping_put_every_pixel_back_in_place():
    x = images(2, 70, 131)
    sketch, mask = extract(RedChannel(multiple=16), x)
    assert torch.allclose(sketch[..., 0], x[..., 0], atol=1e-6)
    assert torch.allclose(mask, 1 - x[..., 0], atol=1e-6)


@pytest.mark.parametrize("size", [(1, 1), (10, 7), (63, 200)])
def test_images_under_64_px_are_padded_up_and_cropped_back(size):
    h, w = size
    seen = []

    class Spy(RedChannel):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return super().forward(x)

    x = images(1, h, w)
    sketch, _ = extract(Spy(), x)
    assert sketch.shape == (1, h, w, 3)
    assert torch.allclose(sketch[..., 0], x[..., 0], atol=1e-6)
    assert min(seen[0]) >= 64


def test_grey_rgba_uint8_uint16_and_numpy_inputs_are_converted():
    # float32: this checks the conversions; bfloat16 (the default on a CPU with native bf16) would
    # turn uint16's 1e-5 quantisation into 4e-3 rounding steps and hide a wrong scale among them
    extract_fp32 = functools.partial(extract, randomised(), dtype="fp32")
    rgb = images(1, 33, 45)
    reference, _ = extract_fp32(rgb)

    grey = rgb[..., :1]
    from_grey, _ = extract_fp32(grey)
    assert torch.allclose(from_grey, extract_fp32(grey.expand(-1, -1, -1, 3))[0])
    assert torch.allclose(extract_fp32(grey[0, :, :, 0])[0], from_grey)  # a bare [H,W] image

    opaque = torch.cat([rgb, torch.ones_like(rgb[..., :1])], dim=-1)
    assert torch.allclose(extract_fp32(opaque)[0], reference)
    transparent = torch.cat([rgb, torch.zeros_like(rgb[..., :1])], dim=-1)
    assert torch.allclose(extract_fp32(transparent)[0], extract_fp32(torch.ones_like(rgb))[0])

    words16 = (rgb.numpy() * 65535).round().astype(np.uint16)
    assert torch.allclose(extract_fp32(words16)[0], reference, atol=1e-4)
    if hasattr(torch, "uint16"):
        assert torch.allclose(extract_fp32(torch.from_numpy(words16.astype(np.int32)).to(torch.uint16))[0],
                              reference, atol=1e-4)  # fmt: skip
    bytes8 = (rgb * 255).round().to(torch.uint8)
    assert torch.allclose(extract_fp32(bytes8)[0], extract_fp32(bytes8.float() / 255)[0])
    assert torch.allclose(extract_fp32(rgb[0].numpy())[0], reference)  # [H,W,C] numpy


def test_bad_inputs_give_clear_errors():
    model = randomised()
    with pytest.raises(InvalidInputError, match="empty"):
        extract(model, torch.zeros(0, 64, 64, 3))
    with pytest.raises(InvalidInputError, match="empty"):
        extract(model, np.zeros((1, 64, 0, 3), dtype=np.uint8))
    with pytest.raises(InvalidInputError, match="channels-first"):
        extract(model, torch.rand(1, 3, 64, 64))
    with pytest.raises(InvalidInputError, match="NaN"):
        extract(model, torch.full((1, 8, 8, 3), float("nan")))
    with pytest.raises(InvalidInputError, match="int32"):
        extract(model, np.zeros((8, 8, 3), dtype=np.int32))
    with pytest.raises(InvalidInputError, match="overlap"):
        extract(model, images(), tile=64, overlap=48)
    with pytest.raises(InvalidInputError, match="contrast"):
        extract(model, images(), contrast=0.0)
    with pytest.raises(InvalidInputError, match="float16"):
        extract(model, images(), dtype=torch.float16)


def test_invert_and_contrast_semantics():
    # Red channel 0..1 in steps: line strength is exactly 1 - red.
    ramp = torch.linspace(0, 1, 65)
    x = ramp.repeat(64, 1)[None, :, :, None].expand(-1, -1, -1, 3)
    strength = 1 - ramp.repeat(64, 1)[None]
    model = RedChannel()

    sketch, mask = extract(model, x)
    assert torch.allclose(mask, strength, atol=1e-6)
    inverted, inverted_mask = extract(model, x, invert=True)
    assert torch.allclose(inverted[..., 0], mask, atol=1e-6)  # white lines on black
    assert torch.allclose(inverted_mask, mask)  # the mask is line strength either way

    bold, bold_mask = extract(model, x, contrast=2.0)
    assert torch.allclose(bold_mask, strength.sqrt(), atol=1e-5)
    faint, faint_mask = extract(model, x, contrast=0.5)
    assert torch.allclose(faint_mask, strength**2, atol=1e-5)
    assert bool((bold_mask >= mask - 1e-6).all()) and bool((faint_mask <= mask + 1e-6).all())
    assert torch.allclose(bold[..., 0], 1 - bold_mask)
    for m in (bold_mask, faint_mask):  # paper and full ink stay put
        assert torch.allclose(m[strength == 0], torch.zeros(()), atol=1e-6)
        assert torch.allclose(m[strength == 1], torch.ones(()), atol=1e-6)


def receptive_radius(model: nn.Module, size: int = 64) -> int:
    """Largest distance from the centre output pixel to an input pixel that influences it."""
    radius = 0
    for seed in range(3):
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed), requires_grad=True)
        model(x)[0, 0, size // 2, size // 2].backward()
        ys, xs = torch.nonzero(x.grad.abs().sum(1)[0], as_tuple=True)
        radius = max(radius, int((ys - size // 2).abs().max()), int((xs - size // 2).abs().max()))
    return radius


def test_tiled_matches_untiled_when_the_overlap_covers_the_receptive_field():
    model = LocalConvNet().eval()
    radius = receptive_radius(model)
    assert 4 < radius < 32  # the network does look around, and the probe image is big enough
    # Tiles discard overlap // 4 px at each cut edge, so that margin must cover the radius.
    overlap = -(-4 * radius // model.multiple) * model.multiple
    tile = max(2 * overlap, 64)
    x = images(2, tile + 20, tile + 9, seed=3)
    calls = []
    tiled, tiled_mask = extract(model, x, tile=tile, overlap=overlap, batch_size=3,
                                progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    untiled, untiled_mask = extract(model, x, tile=4 * tile)
    assert calls[-1][0] == calls[-1][1] == 2 * 4  # really tiled: 2 images x 2x2 tiles
    assert torch.allclose(tiled, untiled, atol=1e-5)
    assert torch.allclose(tiled_mask, untiled_mask, atol=1e-5)


def test_tile_blending_reproduces_the_image_exactly():
    # An identity network isolates the placement and normalisation of tiles and windows.
    x = images(1, 301, 517, seed=4)
    sketch, _ = extract(RedChannel(), x, tile=128, overlap=40, batch_size=5)
    assert torch.allclose(sketch[..., 0], x[..., 0], atol=1e-6)


def test_batches_are_independent_of_batch_size():
    model = randomised()
    x = images(5, 40, 40)
    # float32: the bfloat16 CPU default rounds differently per kernel by ~4e-3, hiding what is tested
    one, _ = extract(model, x, batch_size=1, dtype="fp32")
    many, _ = extract(model, x, batch_size=4, dtype="fp32")
    # CPU convolutions pick different kernels per batch size: float32 rounding differs by ~1e-5
    # (the head gain scales it up). Any mixing between images would differ by far more.
    assert torch.allclose(one, many, atol=1e-4)
    alone, _ = extract(model, x[3:4], dtype="fp32")
    assert torch.allclose(alone, one[3:4], atol=1e-4)


def test_bfloat16_autocast_on_cpu_stays_close_to_float32():
    model = randomised()
    x = images(1, 64, 64)
    full, _ = extract(model, x, dtype=torch.float32, channels_last=False)
    half, _ = extract(model, x, dtype="bf16", channels_last=True)
    assert (half - full).abs().max() < 0.05


# ---------------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path):
    model = randomised()
    path = save_extractor(tmp_path / "style.safetensors", model, {"style": "xdog", "steps": 12})
    loaded = load_extractor(path)
    assert loaded.config == model.config
    assert loaded.meta == {"style": "xdog", "steps": 12}
    x = images(1, 37, 50)
    assert torch.equal(extract(loaded, x)[0], extract(model, x)[0])
    with pytest.raises(InvalidInputError, match="reserved"):
        save_extractor(tmp_path / "bad.safetensors", model, {"config": {}})


def _header_length(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def test_truncated_file_is_rejected(tmp_path):
    path = save_extractor(tmp_path / "a.safetensors", randomised())
    data = path.read_bytes()
    for cut in (len(data) - 7, _header_length(data) - 5, 4):
        path.write_bytes(data[:cut])
        with pytest.raises(FileFormatError):
            load_extractor(path)


def test_flipped_bytes_are_rejected(tmp_path):
    path = save_extractor(tmp_path / "a.safetensors", randomised())
    data = bytearray(path.read_bytes())
    weights = bytearray(data)
    weights[len(data) - 10] ^= 0x40  # inside the last tensor: only the checksum can see this
    path.write_bytes(bytes(weights))
    with pytest.raises(FileFormatError, match="checksum"):
        load_extractor(path)
    header = bytearray(data)
    header[20] ^= 0xFF  # inside the JSON header
    path.write_bytes(bytes(header))
    with pytest.raises(FileFormatError):
        load_extractor(path)


def test_other_kind_version_or_shape_is_rejected(tmp_path):
    model = randomised()
    tensors = model.state_dict()
    meta = {"config": model.config.to_dict()}
    other_kind = save_tensors(tmp_path / "k.safetensors", tensors, kind="generator", version=1, meta=meta)
    with pytest.raises(FileFormatError, match="not a 'extractor'|'generator'"):
        load_extractor(other_kind)
    other_version = save_tensors(
        tmp_path / "v.safetensors", tensors, kind="extractor", version=EXTRACTOR_VERSION + 1, meta=meta
    )
    with pytest.raises(FileFormatError, match="version"):
        load_extractor(other_version)
    # A header that promises another network than the weights hold.
    good = save_extractor(tmp_path / "g.safetensors", model)
    from diffsketch.fileio import read_header

    header = read_header(good)
    wrong = {
        **header,
        "config": ExtractorConfig(channels=(4, 16), encoder_blocks=(1, 1), decoder_blocks=(1,)).to_dict(),
    }
    for key in ("format", "kind", "version"):
        wrong.pop(key)
    mismatch = save_tensors(
        tmp_path / "m.safetensors", tensors, kind="extractor", version=EXTRACTOR_VERSION, meta=wrong
    )
    with pytest.raises(FileFormatError, match="do not fit"):
        load_extractor(mismatch)
    not_json = tmp_path / "n.safetensors"
    not_json.write_bytes(json.dumps({"hello": 1}).encode())
    with pytest.raises(FileFormatError):
        load_extractor(not_json)


# ---------------------------------------------------------------------------------- baselines


def test_baselines_build_and_run_with_the_published_shapes():
    with torch.device("meta"):  # the 182M-parameter default: check its structure without allocating
        p2p = Pix2PixHDGlobalGenerator()
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in p2p.modules()) == 4
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in p2p.modules()) == 2 + 2 * 9
    assert max(m.out_channels for m in p2p.modules() if isinstance(m, nn.Conv2d)) == 1024
    assert sum(p.numel() for p in p2p.parameters()) > 150e6
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        y = Pix2PixHDGlobalGenerator(ngf=4)(x * 2 - 1)
        assert y.shape == (1, 1, 32, 32) and float(y.abs().max()) <= 1
        # the other two are the style networks, wired as their papers publish them
        informative = build_baseline("informative_drawings")
        assert isinstance(informative, InformativeDrawings)
        assert sum(isinstance(m, nn.InstanceNorm2d) for m in informative.modules()) == 3 + 2 * 3 + 2
        y = informative(x)
        assert y.shape == (1, 1, 32, 32) and 0 <= float(y.min()) and float(y.max()) <= 1
        hed = build_baseline("hed")
        assert isinstance(hed, ModifiedHED) and hed.side_order == STANDARD_HED_SIDES
        assert (
            hed.input_mode == "caffe_bgr"
            and sum(isinstance(m, nn.Conv2d) for m in hed.modules()) == 13 + 5 + 1
        )
        y = hed(x)
        assert y.shape == (1, 1, 32, 32) and 0 <= float(y.min()) and float(y.max()) <= 1
    with pytest.raises(InvalidInputError, match="unknown baseline"):
        build_baseline("unet")


@pytest.mark.parametrize("seed", [0, 1])
def test_tiling_seams_of_the_real_extractor_stay_small(seed):
    """The default SketchExtractor sees a whole tile (GroupNorm, the low-pass context), so tiled and
    untiled outputs differ; the blended overlaps keep the difference below a stated bound: on a
    320x384 image cut into 256-px tiles overlapping by 64 px, at most 0.12 anywhere and 0.02 on
    average (1 = the full range from ink to paper; measured with random weights, which react to
    context more strongly than trained ones: about 0.075 and 0.009)."""
    model = randomised(ExtractorConfig(), seed=seed)
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 12, 14, generator=g)
    photo = F.interpolate(low, size=(320, 384), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    photo = (photo + 0.05 * torch.rand(photo.shape, generator=g)).clamp(0, 1)[None]
    whole, _ = extract(model, photo, tile=1024)
    calls = []
    tiled, _ = extract(model, photo, tile=256, overlap=64, progress=lambda done, total: calls.append(total))
    assert calls[-1] == 4  # 2 x 2 tiles: the tiled path really ran
    error = (tiled - whole)[0, ..., 0].abs()
    assert float(whole.std()) > 0.1  # a picture with lines, not a blank page
    assert float(error.max()) <= 0.12 and float(error.mean()) <= 0.02


def test_half_precision_files_are_half_the_size_and_load_as_float32(tmp_path):
    from diffsketch.distill.extractor import SketchExtractor, load_extractor, save_extractor

    torch.manual_seed(0)
    model = SketchExtractor().eval()
    full = save_extractor(tmp_path / "full.safetensors", model)
    half = save_extractor(tmp_path / "half.safetensors", model, {"note": "fp16"}, dtype=torch.float16)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded = load_extractor(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters()) and loaded.meta == {"note": "fp16"}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max() < 1e-2
    with pytest.raises(InvalidInputError, match="float16"):
        save_extractor(tmp_path / "x.safetensors", model, dtype=torch.int8)


def test_a_missing_built_in_extractor_is_reported(tmp_path, monkeypatch):
    from diffsketch.distill import extractor as module
    from diffsketch.errors import WeightsNotFoundError

    monkeypatch.setattr(module, "DEFAULT_EXTRACTOR_FILE", tmp_path / "default_extractor.safetensors")
    with pytest.raises(
        WeightsNotFoundError, match="built-in extractor default_extractor.safetensors is missing"
    ):
        module.load_default_extractor()


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu sse avx512f avx512_bf16", True), ("fpu amx_tile amx_bf16", True), ("fpu sse avx2 avx512f", False)],
)
def test_the_cpu_default_is_bfloat16_exactly_where_the_cpu_computes_it_natively(
    tmp_path, monkeypatch, flags, native
):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert extract_module.cpu_has_native_bf16(str(cpuinfo)) is native
    assert extract_module.cpu_has_native_bf16(str(tmp_path / "absent")) is False
    monkeypatch.setattr(extract_module, "cpu_has_native_bf16", lambda: native)
    expected = torch.bfloat16 if native else torch.float32
    assert extract_module._resolve_precision(torch.device("cpu"), None, None)[0] == expected
    assert extract_module._resolve_precision(torch.device("cpu"), "fp32", None)[0] == torch.float32


def test_bfloat16_sketches_of_the_built_in_extractor_stay_close_to_float32_on_photos():
    """The guard on the bfloat16 CPU default: per photo, the sketch keeps SSIM >= 0.99 to float32's
    and no pixel moves by more than 0.05 (measured: SSIM 0.999, max 0.01-0.03)."""
    pytest.importorskip(
        "skimage", reason="the photos are scikit-image's samples (the test extra installs it)"
    )
    from diffsketch.distill.extractor import load_default_extractor
    from diffsketch.eval.metrics.ssim import ssim

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from photo_pairs import load_photo
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    model = load_default_extractor()
    for name in ("coffee", "chelsea", "camera"):
        photo = load_photo(name, 256).permute(1, 2, 0)[None]
        full, _ = extract(model, photo, dtype="fp32")
        half, _ = extract(model, photo, dtype="bf16")
        score = float(ssim(half[..., :1].permute(0, 3, 1, 2), full[..., :1].permute(0, 3, 1, 2))[0])
        assert score >= 0.99, (name, score)
        assert float((half - full).abs().max()) <= 0.05, name


def test_lowpass_maps_stay_float32_under_bfloat16_autocast():
    """oneDNN's bfloat16 depthwise convolution hangs on some channels_last shapes (a 25-tap blur
    over a 32x32 map), which made the bfloat16 CPU default hang on small images; the low-pass maps
    are computed in float32 whatever the autocast."""
    model = randomised()
    x = torch.rand(2, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = model.lowpass(x * 2 - 1, (8, 8))
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, model.lowpass(x * 2 - 1, (8, 8)))
