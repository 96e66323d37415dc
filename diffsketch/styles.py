"""Example-sketch styles: the automatic extractors that make DiffSketch's example sketch and the
ground truth of its evaluation (method.md §7, §10).

Every style is an ``nn.Module`` mapping photos ``[B, 3, H, W]`` RGB in [0, 1] to sketches
``[B, 1, H, W]`` in [0, 1] (1 = paper, black lines on white):

- ``"xdog"`` -- :func:`diffsketch.xdog.xdog` with the paper's parameters; needs no weights.
- ``"hed"`` -- the paper code's *modified* HED (kwanyun/diffsketch ``models/hed.py``) on
  sniklaus/pytorch-hed's "bsds500" weights. Three departures from HED, all reproduced on purpose
  because they define the style the paper trained and evaluated on:

  1. the fusion layer is fed the side outputs ``[s1, s2, s3, s2, s1]`` instead of
     ``[s1, s2, s3, s4, s5]`` ("modification for the style": finer lines; the two deepest, coarsest
     side outputs are computed but never used);
  2. the output is ``1 - sigmoid(...)``: black lines on white;
  3. the photo goes in as **RGB**, although the Caffe weights expect BGR: the network's own
     ``x * 255 - (104.00698793, 116.66876762, 122.67891434)`` (the BGR means) is applied to the
     R, G, B channels in that order, so red gets the blue mean and blue the red mean. (sniklaus'
     ``run.py`` flips the PIL image to BGR before calling the network; DiffSketch passes the SD
     image straight in.) ``ModifiedHED(input_mode="caffe_bgr")`` gives the correctly ordered input.

- ``"informative_anime"`` / ``"informative_contour"`` -- the Informative-Drawings generator
  (Chan et al. 2022; carolineec/informative-drawings ``Generator(3, 1, 3)``): 3 residual blocks,
  instance norm, sigmoid; the photo goes in as RGB in [0, 1] and the drawing comes out in [0, 1]
  (white paper), used as is.

Weights are never shipped or downloaded and never unpickled: the user converts the released
pickles once to ``.safetensors`` with the one-line command in :data:`STYLES` (printed by every
"not found" error) and puts them in ``models/diffsketch/styles`` (ComfyUI) or passes the path.

Why not :class:`diffsketch.baselines.HED` / :class:`~diffsketch.baselines.InformativeDrawingsGenerator`?
Both have the right architecture but their own parameter names (``stages.0.0.weight``,
``side_outputs.0``, ``fuse``; ``net.1.weight``, ``net.10.body.1``): the released files use
``netVggOne.0.weight`` ... ``netScoreOne`` ... ``netCombine.0`` (sniklaus; the file itself says
``module`` for ``net``) and ``model0.1.weight``, ``model2.0.conv_block.1`` ... ``model4.1``
(Informative Drawings). The modules here keep the released names so a converted file loads with
``strict=True`` and every missing or extra tensor is reported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FileFormatError, InvalidInputError, WeightsNotFoundError
from .fileio import save_tensors
from .xdog import XDoG

__all__ = [
    "STYLES",
    "STYLE_WEIGHTS_KIND",
    "StyleInfo",
    "StyleExtractor",
    "XDoGStyle",
    "ModifiedHED",
    "InformativeDrawings",
    "build_style",
    "load_style",
    "save_style_weights",
    "resolve_style_weights",
    "HED_BGR_MEAN",
    "DIFFSKETCH_HED_SIDES",
    "STANDARD_HED_SIDES",
]

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

    @property
    def needs_weights(self) -> bool:
        return self.file_name is not None

    def how_to_get(self) -> str:
        if not self.needs_weights:
            return f"style '{self.name}' needs no weights."
        return (
            f"Get '{self.original_file}' from {self.source}. DiffSketch never unpickles files, so convert it "
            f"once yourself: {self.convert_command} -- then put '{self.file_name}' in "
            f"{COMFYUI_STYLES_FOLDER} (ComfyUI) or pass its path."
        )


STYLES: dict[str, StyleInfo] = {
    "xdog": StyleInfo(
        "xdog",
        "XDoG with the DiffSketch paper's parameters (sigma 0.5, k 200, gamma 0.98, eps 0.1, phi 10)",
    ),
    "hed": StyleInfo(
        "hed",
        "DiffSketch's modified HED (sides [s1,s2,s3,s2,s1], RGB fed where BGR is expected, 1 - sigmoid)",
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
# Modules
# ============================================================================================
class StyleExtractor(nn.Module):
    """Base class: checks the photos, runs :meth:`sketch`, returns ``[B, 1, H, W]`` in [0, 1]."""

    style_name = "custom"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InvalidInputError(
                f"style '{self.style_name}' expects RGB photos [B, 3, H, W] in [0, 1]; got {shape}."
            )
        if not images.is_floating_point():
            raise InvalidInputError(
                f"style '{self.style_name}' expects float photos in [0, 1]; got {images.dtype} "
                "(divide uint8 images by 255)."
            )
        if images.shape[-1] < 1 or images.shape[-2] < 1 or images.shape[0] < 1:
            raise InvalidInputError(f"style '{self.style_name}' got an empty batch {tuple(images.shape)}.")
        out = self.sketch(images.clamp(0.0, 1.0))
        return out.clamp(0.0, 1.0)

    def sketch(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class XDoGStyle(StyleExtractor):
    """:func:`diffsketch.xdog.xdog` as a module (no parameters; float32 output on the input's device)."""

    style_name = "xdog"

    def __init__(self, settings: XDoG | None = None):
        super().__init__()
        self.settings = settings or XDoG()

    def sketch(self, images: torch.Tensor) -> torch.Tensor:
        return self.settings(images.float()).to(images.device)


#: Caffe HED's BGR pixel means (sniklaus ``run.py``), subtracted after scaling to [0, 255].
HED_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
#: Which side output feeds each of the fusion layer's 5 inputs (0-based): DiffSketch's and HED's.
DIFFSKETCH_HED_SIDES = (0, 1, 2, 1, 0)
STANDARD_HED_SIDES = (0, 1, 2, 3, 4)
_HED_STAGES = ("One", "Two", "Thr", "Fou", "Fiv")
_VGG16_WIDTHS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


class ModifiedHED(StyleExtractor):
    """HED on VGG16 with sniklaus/pytorch-hed's parameter names, wired as DiffSketch wires it.

    ``side_order``: the side outputs fed to the 5-input fusion layer, 0-based; DiffSketch's
    ``(0, 1, 2, 1, 0)`` by default, ``(0, 1, 2, 3, 4)`` for plain HED.
    ``input_mode``: ``"diffsketch_rgb"`` (default) reproduces DiffSketch: RGB in, BGR means
    subtracted channel by channel; ``"caffe_bgr"`` flips RGB to BGR first, as the weights expect.
    Output: ``1 - sigmoid(fuse(...))`` -- the sketch (1 = paper), any input size.
    """

    style_name = "hed"

    def __init__(
        self,
        side_order: Sequence[int] = DIFFSKETCH_HED_SIDES,
        input_mode: str = "diffsketch_rgb",
    ):
        super().__init__()
        side_order = tuple(int(i) for i in side_order)
        if len(side_order) != 5 or not all(0 <= i < 5 for i in side_order):
            raise InvalidInputError(
                f"side_order must list 5 side-output indices in 0..4 (e.g. {DIFFSKETCH_HED_SIDES}); got {side_order}."
            )
        if input_mode not in ("diffsketch_rgb", "caffe_bgr"):
            raise InvalidInputError(f"input_mode {input_mode!r} is not one of 'diffsketch_rgb', 'caffe_bgr'.")
        self.side_order = side_order
        self.input_mode = input_mode
        c_in = 3
        for stage, (n_convs, width) in zip(_HED_STAGES, _VGG16_WIDTHS, strict=True):
            # Stages 2..5 start with the max-pool, as in the released network (it shifts the indices
            # of the convolutions inside each Sequential, hence of the parameter names).
            layers: list[nn.Module] = [] if stage == "One" else [nn.MaxPool2d(kernel_size=2, stride=2)]
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
        sides = self.side_outputs(images)
        return self.netCombine(torch.cat([sides[i] for i in self.side_order], dim=1))

    def sketch(self, images: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.edge_probability(images)


class _InformativeResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        # Parameter names conv_block.1 / conv_block.5 as in the released checkpoints.
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class InformativeDrawings(StyleExtractor):
    """Informative-Drawings generator with the released checkpoints' parameter names
    (``model0`` stem, ``model1`` 2 downsamplings, ``model2`` residual blocks, ``model3`` 2
    upsamplings, ``model4`` head + sigmoid). Reflection padding and affine-free instance norm, as in
    the repository's first (mainline) ``model.py`` and DiffSketch's ``models/informative.py``.

    Sizes that are not multiples of 4 are reflection-padded at the bottom/right and cropped back
    (the bare network would return a larger image); instance-norm statistics then include the few
    padded pixels.
    """

    style_name = "informative"
    multiple = 4

    def __init__(self, n_blocks: int = 3, ngf: int = 64, style_name: str = "informative"):
        super().__init__()
        self.style_name = style_name
        self.model0 = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(inplace=True)
        )
        self.model1 = nn.Sequential(
            nn.Conv2d(ngf, ngf * 2, 3, stride=2, padding=1),
            nn.InstanceNorm2d(ngf * 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(ngf * 2, ngf * 4, 3, stride=2, padding=1),
            nn.InstanceNorm2d(ngf * 4),
            nn.ReLU(inplace=True),
        )
        self.model2 = nn.Sequential(*[_InformativeResidualBlock(ngf * 4) for _ in range(n_blocks)])
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(ngf * 2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(ngf * 2, ngf, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(inplace=True),
        )
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, 1, 7), nn.Sigmoid())

    def sketch(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        x = images
        if ph or pw:
            # reflection needs pad < size; tiny images fall back to edge replication
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        for block in (self.model0, self.model1, self.model2, self.model3, self.model4):
            x = block(x)
        return x[..., :h, :w]


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


def save_style_weights(path: str | os.PathLike, model: StyleExtractor) -> Path:
    """Atomically write a learned style's weights as safetensors (DiffSketch header, kind
    ``style_weights``); :func:`load_style` reads these files as well as plain converted ones."""
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
        meta={"style": model.style_name},
    )


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
    :func:`resolve_style_weights`. ``options`` go to the module (e.g. ``input_mode="caffe_bgr"``).
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
    model = build_style(name, **options)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {len(missing)} tensors, e.g. {missing[:3]}")
        if unexpected:
            details.append(f"unexpected {len(unexpected)} tensors, e.g. {unexpected[:3]}")
        if wrong:
            details.append(
                "wrong shapes: "
                + ", ".join(f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in wrong[:3])
            )
        raise FileFormatError(
            f"{path.name} does not hold the {name} style network ({'; '.join(details)}). {info.how_to_get()}"
        )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.weights_file = str(path)
    return model.to(device).eval().requires_grad_(False)
