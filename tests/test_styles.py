"""Style extractors: released parameter layouts, DiffSketch's HED quirks, loading and its messages."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from diffsketch.errors import FileFormatError, InvalidInputError, WeightsNotFoundError
from diffsketch.styles import (
    DIFFSKETCH_HED_SIDES,
    HED_BGR_MEAN,
    STANDARD_HED_SIDES,
    STYLES,
    InformativeDrawings,
    ModifiedHED,
    build_style,
    load_style,
    save_style_weights,
)
from diffsketch.styles.xdog import xdog


@pytest.fixture(scope="module")
def hed():
    torch.manual_seed(0)
    return ModifiedHED().eval()


@pytest.fixture(scope="module")
def informative():
    torch.manual_seed(1)
    return InformativeDrawings(style_name="informative_anime").eval()


def photos(b=2, h=40, w=52, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


# ------------------------------------------------------------------------------------------ xdog
def test_xdog_style_is_the_papers_xdog():
    x = photos()
    style = load_style("xdog")
    out = style(x)
    assert out.shape == (2, 1, 40, 52) and out.dtype == torch.float32
    torch.testing.assert_close(out, xdog(x), rtol=0, atol=0)
    with pytest.raises(InvalidInputError, match="needs no weights"):
        load_style("xdog", weights="whatever.safetensors")


def test_bad_inputs_and_names():
    with pytest.raises(InvalidInputError, match="unknown style"):
        load_style("picasso")
    with pytest.raises(InvalidInputError, match=r"\[B, 3, H, W\]"):
        load_style("xdog")(torch.rand(1, 1, 16, 16))
    with pytest.raises(InvalidInputError, match="float"):
        load_style("xdog")(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(InvalidInputError, match="side_order"):
        ModifiedHED(side_order=(0, 1, 2))
    with pytest.raises(InvalidInputError, match="input_mode"):
        ModifiedHED(input_mode="rgb")


# ------------------------------------------------------------------------------------------ HED
def expected_hed_names() -> dict[str, tuple]:
    """sniklaus/pytorch-hed's 'bsds500' network: stages 2-5 begin with a MaxPool at index 0."""
    names = {}
    widths = {"One": (3, 64, 64), "Two": (64, 128, 128), "Thr": (128, 256, 256, 256)}
    widths["Fou"] = (256, 512, 512, 512)
    widths["Fiv"] = (512, 512, 512, 512)
    for stage, chans in widths.items():
        first = 0 if stage == "One" else 1
        for j in range(len(chans) - 1):
            idx = first + 2 * j
            names[f"netVgg{stage}.{idx}.weight"] = (chans[j + 1], chans[j], 3, 3)
            names[f"netVgg{stage}.{idx}.bias"] = (chans[j + 1],)
        names[f"netScore{stage}.weight"] = (1, chans[-1], 1, 1)
        names[f"netScore{stage}.bias"] = (1,)
    names["netCombine.0.weight"] = (1, 5, 1, 1)
    names["netCombine.0.bias"] = (1,)
    return names


def test_hed_parameters_have_the_released_names_and_shapes(hed):
    state = hed.state_dict()
    expected = expected_hed_names()
    assert set(state) == set(expected)
    for k, shape in expected.items():
        assert tuple(state[k].shape) == shape, k


def with_small_fusion(model: ModifiedHED) -> ModifiedHED:
    """Fusion weights small enough that the sigmoid stays far from saturation, so every side
    output visibly moves the result."""
    with torch.no_grad():
        model.netCombine[0].weight.copy_(torch.tensor([1.0, -2.0, 3.0, 4.0, -5.0]).view(1, 5, 1, 1) * 1e-3)
        model.netCombine[0].bias.zero_()
    return model


def test_hed_fuses_s1_s2_s3_s2_s1_and_inverts(hed):
    model = with_small_fusion(ModifiedHED().eval())
    model.load_state_dict(hed.state_dict())
    with_small_fusion(model)
    x = photos(1, 48, 48, seed=3)
    with torch.no_grad():
        s = model.side_outputs(x)
        out = model(x)
        conv = model.netCombine[0]
        modified = 1 - torch.sigmoid(conv(torch.cat([s[0], s[1], s[2], s[1], s[0]], 1)))
        standard = 1 - torch.sigmoid(conv(torch.cat(s, 1)))
    assert model.side_order == DIFFSKETCH_HED_SIDES
    torch.testing.assert_close(out, modified, rtol=0, atol=1e-6)
    # the plain-HED wiring gives a clearly different picture on the same weights
    assert (standard - modified).abs().max() > 1e-2
    plain = ModifiedHED(side_order=STANDARD_HED_SIDES).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), standard, rtol=0, atol=1e-6)


def test_hed_ignores_the_two_deepest_side_outputs(hed):
    model = ModifiedHED().eval()
    model.load_state_dict(hed.state_dict())
    with_small_fusion(model)
    x = photos(1, 48, 48, seed=4)
    with torch.no_grad():
        before = model(x)
        model.netScoreFou.weight.mul_(-3.0).add_(0.5)
        model.netScoreFiv.bias.add_(10.0)
        after_deep = model(x)
        model.netScoreTwo.weight.mul_(-3.0)
        after_two = model(x)
    torch.testing.assert_close(after_deep, before, rtol=0, atol=0)
    assert (after_two - before).abs().max() > 1e-3


def test_hed_input_quirk_rgb_with_bgr_means(hed):
    x = photos(1, 32, 32, seed=5)
    quirk = ModifiedHED().eval()
    caffe = ModifiedHED(input_mode="caffe_bgr").eval()
    quirk.load_state_dict(hed.state_dict())
    caffe.load_state_dict(hed.state_dict())
    for m in (quirk, caffe):
        with_small_fusion(m)
    net_in = quirk.network_input(x)
    for c in range(3):  # R gets the blue mean, G the green one, B the red one: no channel flip
        torch.testing.assert_close(net_in[:, c], x[:, c] * 255.0 - HED_BGR_MEAN[c])
    with torch.no_grad():
        # DiffSketch on RGB == correct Caffe input on the channel-flipped image, not on the image
        torch.testing.assert_close(quirk(x), caffe(x.flip(1)), rtol=0, atol=1e-6)
        assert (quirk(x) - caffe(x)).abs().max() > 1e-4


def test_hed_round_trips_diffsketch_and_released_key_layouts(hed, tmp_path):
    x = photos(1, 32, 40, seed=6)
    with torch.no_grad():
        reference = hed(x)
    path = save_style_weights(tmp_path / "hed_bsds500.safetensors", hed)
    loaded = load_style("hed", weights=path)
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference, rtol=0, atol=0)
    # a plain conversion of the released file keeps sniklaus' old 'module' prefix: also accepted
    released = {k.replace("net", "module", 1): v.contiguous() for k, v in hed.state_dict().items()}
    folder = tmp_path / "styles"
    folder.mkdir()
    save_file(released, str(folder / "hed_bsds500.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(load_style("hed", weights=folder)(x), reference, rtol=0, atol=0)
        found = load_style("hed", search_dirs=[tmp_path / "nowhere", folder])
        torch.testing.assert_close(found(x), reference, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ Informative Drawings
def test_informative_parameters_have_the_released_names(informative):
    names = set(informative.state_dict())
    expected = {"model0.1", "model1.0", "model1.3", "model3.0", "model3.3", "model4.1"}
    expected |= {f"model2.{i}.conv_block.{j}" for i in range(3) for j in (1, 5)}
    assert names == {f"{e}.{p}" for e in expected for p in ("weight", "bias")}
    sd = informative.state_dict()
    assert tuple(sd["model0.1.weight"].shape) == (64, 3, 7, 7)
    assert tuple(sd["model2.2.conv_block.5.weight"].shape) == (256, 256, 3, 3)
    assert tuple(sd["model3.0.weight"].shape) == (256, 128, 3, 3)  # ConvTranspose: (in, out, k, k)
    assert tuple(sd["model4.1.weight"].shape) == (1, 64, 7, 7)


@pytest.mark.parametrize("hw", [(32, 32), (30, 45), (5, 6)])
def test_informative_keeps_any_size(informative, hw):
    x = photos(1, *hw, seed=7)
    with torch.no_grad():
        out = informative(x)
    assert out.shape == (1, 1, *hw)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_informative_matches_bare_network_on_multiples_of_4(informative):
    x = photos(1, 24, 36, seed=8)
    with torch.no_grad():
        bare = x
        for block in (informative.model0, informative.model1, informative.model2, informative.model3):
            bare = block(bare)
        bare = informative.model4(bare)
        torch.testing.assert_close(informative(x), bare, rtol=0, atol=0)


def test_informative_round_trip_and_style_check(informative, tmp_path):
    x = photos(1, 28, 28, seed=9)
    with torch.no_grad():
        reference = informative(x)
    path = save_style_weights(tmp_path / "informative_anime.safetensors", informative)
    with torch.no_grad():
        torch.testing.assert_close(load_style("informative_anime", path)(x), reference, rtol=0, atol=0)
    # a DiffSketch-written file remembers its style
    with pytest.raises(FileFormatError, match="informative_anime"):
        load_style("informative_contour", path)
    # a plain conversion of netG_A_latest.pth has no header and loads as either style
    plain = tmp_path / "informative_contour.safetensors"
    save_file({k: v.contiguous() for k, v in informative.state_dict().items()}, str(plain))
    with torch.no_grad():
        torch.testing.assert_close(load_style("informative_contour", tmp_path)(x), reference, rtol=0, atol=0)


def test_wrong_network_in_the_file_is_reported(informative, tmp_path):
    path = tmp_path / "hed_bsds500.safetensors"
    save_file({k: v.contiguous() for k, v in informative.state_dict().items()}, str(path))
    with pytest.raises(FileFormatError) as e:
        load_style("hed", path)
    msg = str(e.value)
    assert "missing 38 tensors" in msg and "netCombine.0.bias" in msg and "unexpected 24 tensors" in msg
    bad = dict(informative.state_dict())
    bad["model4.1.weight"] = torch.zeros(3, 64, 7, 7)
    save_file({k: v.contiguous() for k, v in bad.items()}, str(tmp_path / "x.safetensors"))
    with pytest.raises(FileFormatError, match="wrong shapes: model4.1.weight"):
        load_style("informative_anime", tmp_path / "x.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FileFormatError, match="not a readable"):
        load_style("hed", tmp_path / "broken.safetensors")


# ------------------------------------------------------------------------------------------ missing / pickled files
@pytest.mark.parametrize("name", ["hed", "informative_anime", "informative_contour"])
def test_missing_weights_message_says_what_where_and_how(name, tmp_path):
    info = STYLES[name]
    for weights in (None, tmp_path, tmp_path / "absent.safetensors"):
        with pytest.raises(WeightsNotFoundError) as e:
            load_style(name, weights)
        msg = str(e.value)
        for part in (info.file_name, info.original_file, "models/diffsketch/styles", "weights_only=True"):
            assert part in msg, (part, msg)
    repo = "sniklaus/pytorch-hed" if name == "hed" else "carolineec/informative-drawings"
    assert repo in msg


def test_pickled_files_are_refused_without_unpickling(tmp_path, monkeypatch):
    pickled = tmp_path / "network-bsds500.pytorch"
    torch.save({"moduleVggOne.0.weight": torch.zeros(1)}, pickled)
    disguised = tmp_path / "hed_bsds500_from_pickle.safetensors"
    disguised.write_bytes(pickled.read_bytes())

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must never be called on user files")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(FileFormatError) as e:
        load_style("hed", pickled)
    assert "pickled" in str(e.value) and "hed_bsds500.safetensors" in str(e.value)
    assert "save_file" in str(e.value)
    # a folder with only the released file: say it was found and how to convert it
    with pytest.raises(FileFormatError, match="found the released pickled file"):
        load_style("hed", tmp_path)
    with pytest.raises(FileFormatError, match="pickled"):
        load_style("hed", disguised)


def test_build_style_gives_every_registered_style():
    x = photos(1, 20, 24, seed=10)
    for name in STYLES:
        model = build_style(name).eval()
        with torch.no_grad():
            out = model(x)
        assert out.shape == (1, 1, 20, 24), name
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
