"""DiffSketch's training losses (docs/method.md §5) and the frozen networks they use.

- :func:`perceptual_preprocess`: the released code's preprocessing for BOTH LPIPS and CLIP:
  bilinear resize to 224x224, one-channel sketches repeated to RGB, ImageNet mean/std (not CLIP's
  and not LPIPS' [-1, 1]; docs/method.md §5). Differentiable.
- :func:`build_lpips`: LPIPS-AlexNet from the ``lpips`` package. Its linear layers ship inside the
  package; the AlexNet trunk is torchvision's ImageNet file, read from a local path (the torch hub
  cache by default), never downloaded.
- :class:`ClipImageEncoder` / :func:`load_clip_image_encoder`: a frozen open_clip ViT image tower
  (ViT-B/32 in the paper) loaded from a local ``.safetensors`` file, open_clip or transformers
  key layout.
- :class:`DiffSketchLoss`: 15 LPIPS + 30 L1 + 30 (1 - cos CLIP) on the example, plus the
  Mind-the-Gap-style directional terms ``across`` and ``within`` on a new sample.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InvalidInputError, WeightsNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PERCEPTUAL_SIZE = 224


def perceptual_preprocess(x: torch.Tensor, size: int = PERCEPTUAL_SIZE) -> torch.Tensor:
    """``[B, 1|3, H, W]`` (or ``[1|3, H, W]``) in [0, 1] -> ``[B, 3, size, size]`` ImageNet-normalised.

    Matches the released ``Resize((224, 224)) + Normalize(ImageNet)`` on tensors: bilinear, no
    antialiasing. Used for both LPIPS and CLIP inputs, as the released code does.
    """
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise InvalidInputError(f"expected an image [B, 1 or 3, H, W]; got shape {tuple(x.shape)}")
    x = x.float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def _resolve_weights(
    given: str | Path | None,
    names: Sequence[str],
    default_dirs: Iterable[str | Path],
    what: str,
    how_to_get: str,
) -> Path:
    """Find a weights file without downloading: ``given`` may be a file or a folder; with None,
    the ``names`` are looked up in ``default_dirs``. Missing -> WeightsNotFoundError that names
    the file, where it comes from and the folder to put it in."""
    if given is not None and Path(given).is_file():
        return Path(given)
    dirs = [Path(given)] if given is not None and Path(given).is_dir() else []
    if given is None:
        dirs = [Path(d) for d in default_dirs]
    for d in dirs:
        for name in names:
            if (d / name).is_file():
                return d / name
    if given is not None and not dirs:
        where = f"{Path(given)} does not exist"
        put = f"Put it at {Path(given)}"
    elif dirs:
        where = "looked for " + " / ".join(names) + " in " + ", ".join(str(d) for d in dirs)
        put = f"Put it in {dirs[0]} as {names[0]}"
    else:
        where = "no file or folder was given"
        put = f"Save it as {names[0]} and pass its path or folder"
    raise WeightsNotFoundError(
        f"{what} weights not found ({where}). {how_to_get} {put}. Nothing is downloaded automatically."
    )


# ---------------------------------------------------------------------------------------------
# LPIPS (AlexNet)
# ---------------------------------------------------------------------------------------------
ALEXNET_FILENAME = "alexnet-owt-7be5be79.pth"
ALEXNET_SAFETENSORS_FILENAME = "alexnet-owt-7be5be79.safetensors"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def default_alexnet_dir() -> Path:
    """Where torchvision keeps its ImageNet weights: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _read_alexnet_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # torchvision distributes this file only as a pickle; weights_only=True uses torch's
    # restricted unpickler (tensors and containers only), so no code in the file can run.
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsNotFoundError(
            f"{path} could not be read as torchvision AlexNet weights ({e}). Re-download {ALEXNET_FILENAME} "
            f"from {ALEXNET_URL}."
        ) from e
    if not isinstance(state, Mapping):
        raise WeightsNotFoundError(
            f"{path} does not hold a state dict; expected torchvision's {ALEXNET_FILENAME}."
        )
    return dict(state)


def _new_lpips(pretrained_linear: bool) -> nn.Module:
    import lpips

    with warnings.catch_warnings():
        # lpips 0.1.4 calls torchvision's deprecated ``alexnet(pretrained=False)``; harmless here.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        # pnet_rand=True: the trunk is built without torchvision fetching ImageNet weights.
        return lpips.LPIPS(net="alex", pretrained=pretrained_linear, pnet_rand=True, verbose=False)


def build_lpips(
    alexnet_weights: str | Path | None = None,
    *,
    random_weights: bool = False,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """A frozen ``lpips.LPIPS(net='alex')`` (v0.1) that expects inputs from :func:`perceptual_preprocess`.

    ``alexnet_weights`` is torchvision's ImageNet AlexNet file (``alexnet-owt-7be5be79.pth``) or
    the folder holding it; by default the torch hub cache, where torchvision itself keeps it.
    The file is checked before anything is built, so nothing is ever downloaded.
    ``random_weights=True`` gives a random trunk with the package's linear layers (tests: still a
    non-negative distance that is 0 for identical inputs).
    """
    if random_weights:
        return _freeze(_new_lpips(pretrained_linear=True)).to(device)
    path = _resolve_weights(
        alexnet_weights,
        (ALEXNET_FILENAME, ALEXNET_SAFETENSORS_FILENAME),
        [default_alexnet_dir()],
        "LPIPS AlexNet (torchvision ImageNet)",
        f"Download {ALEXNET_FILENAME} from {ALEXNET_URL} (torchvision's AlexNet weights).",
    )
    state = _read_alexnet_state(path)
    # The package's bundled linear-layer calibration is loaded; the trunk is filled below.
    model = _new_lpips(pretrained_linear=True)
    trunk = {}
    for name, _ in model.net.named_parameters():
        m = re.fullmatch(r"slice\d+\.(\d+)\.(weight|bias)", name)
        key = f"features.{m.group(1)}.{m.group(2)}" if m else name
        if key not in state:
            raise WeightsNotFoundError(
                f"{path} is not torchvision's AlexNet ({key} missing). Use {ALEXNET_FILENAME} from {ALEXNET_URL}."
            )
        trunk[name] = state[key]
    try:
        model.net.load_state_dict(trunk, strict=True)
    except RuntimeError as e:
        raise WeightsNotFoundError(
            f"{path} does not fit AlexNet ({e}). Use {ALEXNET_FILENAME} from {ALEXNET_URL}."
        ) from e
    return _freeze(model).to(device)


# ---------------------------------------------------------------------------------------------
# CLIP image encoder
# ---------------------------------------------------------------------------------------------
#: File names looked for in a CLIP folder, first = the name to save the download as.
CLIP_FILENAMES = (
    "clip_vit_b_32.safetensors",
    "open_clip_vit_b_32.safetensors",
    "CLIP-ViT-B-32.safetensors",
    "clip-vit-base-patch32.safetensors",
)
#: OpenAI's CLIP ViT-B/32 weights as one .safetensors (open_clip layout), on the main branch of the
#: timm organisation's copy (openai/clip-vit-base-patch32 itself has no .safetensors on main).
CLIP_URL = (
    "https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_model.safetensors"
)
CLIP_HOW_TO_GET = (
    "DiffSketch's CLIP losses use OpenAI CLIP ViT-B/32 as a .safetensors file: download "
    f"{CLIP_URL} (open_clip layout; the transformers layout of openai/clip-vit-base-patch32 works too) "
    f"and save it as {CLIP_FILENAMES[0]} (in ComfyUI in models/diffsketch/clip or models/clip_vision)."
)

#: A one-layer ViT with the ViT-B/32 input format (224 px, patch 32): for tests and smoke runs.
TINY_CLIP_ARCHITECTURE = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "patch_size": 32},
}

# Attention heads of the released CLIP towers by width (open_clip default head width is 64,
# ViT-H and ViT-bigG use wider heads); heads cannot be read from weight shapes.
_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16, 1664: 16}


def _open_clip_vision_tower(embed_dim: int, vision_cfg: Mapping, quick_gelu: bool) -> nn.Module:
    from open_clip.model import CLIP

    # CLIP() always builds a text tower; a minimal one keeps construction cheap. Only .visual is kept.
    text_cfg = {"context_length": 4, "vocab_size": 8, "width": 8, "heads": 1, "layers": 1}
    return CLIP(int(embed_dim), dict(vision_cfg), text_cfg, quick_gelu=quick_gelu).visual


def build_clip_image_tower(architecture: str | Mapping = "ViT-B-32", quick_gelu: bool = True) -> nn.Module:
    """A randomly initialised open_clip image tower: a model name (``open_clip.list_models()``) or
    ``{"embed_dim": ..., "vision_cfg": {...}}`` such as :data:`TINY_CLIP_ARCHITECTURE`."""
    if isinstance(architecture, str):
        import open_clip

        cfg = open_clip.get_model_config(architecture)
        if cfg is None:
            raise InvalidInputError(f"unknown open_clip model {architecture!r}; e.g. 'ViT-B-32'")
    else:
        cfg = dict(architecture)
    return _open_clip_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu)


def _hf_to_open_clip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``CLIPVisionModelWithProjection`` / ``CLIPModel`` keys -> open_clip ``VisionTransformer``."""
    p = "vision_model."
    out = {
        "class_embedding": state[p + "embeddings.class_embedding"],
        "conv1.weight": state[p + "embeddings.patch_embedding.weight"],
        "positional_embedding": state[p + "embeddings.position_embedding.weight"],
        "ln_pre.weight": state[p + "pre_layrnorm.weight"],
        "ln_pre.bias": state[p + "pre_layrnorm.bias"],
        "ln_post.weight": state[p + "post_layernorm.weight"],
        "ln_post.bias": state[p + "post_layernorm.bias"],
        "proj": state["visual_projection.weight"].t().contiguous(),
    }
    n_layers = 1 + max(
        int(m.group(1)) for k in state if (m := re.match(re.escape(p) + r"encoder\.layers\.(\d+)\.", k))
    )
    for i in range(n_layers):
        src, dst = f"{p}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [state[src + f"self_attn.{q}_proj.{kind}"] for q in ("q", "k", "v")], dim=0
            )
            out[dst + f"attn.out_proj.{kind}"] = state[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = state[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = state[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = state[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = state[src + f"mlp.fc2.{kind}"]
    return out


def _vision_state(state: Mapping[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The open_clip ``VisionTransformer`` state dict inside a CLIP file, and the layout it came in."""
    if "vision_model.embeddings.class_embedding" in state:
        try:
            return _hf_to_open_clip(state), "transformers"
        except (KeyError, ValueError) as e:
            raise WeightsNotFoundError(
                f"{path.name} looks like a transformers CLIP file but lacks {e}."
            ) from e
    if "visual.class_embedding" in state:
        return {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}, "open_clip"
    if "class_embedding" in state and "conv1.weight" in state:
        return dict(state), "open_clip (image tower only)"
    raise WeightsNotFoundError(
        f"{path.name} is not a CLIP ViT image tower (no class embedding found). {CLIP_HOW_TO_GET}"
    )


# The weights file of a Hugging Face CLIP folder (transformers' save_pretrained, e.g. a download of
# openai/clip-vit-base-patch32) and of an open_clip / timm hub folder.
HF_CLIP_FILENAMES = ("model.safetensors", "open_clip_model.safetensors")


def _hugging_face_folder(folder: Path) -> tuple[Path, dict] | None:
    """``(weights file, vision settings)`` of a Hugging Face CLIP folder, or None when ``folder``
    is not one. The settings are the ``vision_config`` of its config.json (a CLIPModel's) or the
    whole file (a CLIPVisionModel's): they give the head count and activation, which the weights
    do not."""
    weights = next((folder / n for n in HF_CLIP_FILENAMES if (folder / n).is_file()), None)
    if weights is None:
        return None
    config_path = folder / "config.json"
    if not config_path.is_file():
        return weights, {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsNotFoundError(f"{config_path} is not valid JSON ({e}). {CLIP_HOW_TO_GET}") from e
    vision = config.get("vision_config", config) if isinstance(config, dict) else None
    if not isinstance(vision, dict):
        raise WeightsNotFoundError(f"{config_path} has no vision settings. {CLIP_HOW_TO_GET}")
    return weights, vision


def _architecture_from_state(vision: Mapping[str, torch.Tensor], path: Path, settings: Mapping) -> dict:
    """open_clip's vision settings, read from the weight shapes (and ``settings`` of a config.json
    for the head count, which the shapes do not give)."""
    try:
        width = vision["class_embedding"].shape[-1]
        patch = vision["conv1.weight"].shape[-1]
        n_pos = vision["positional_embedding"].shape[0]
        layers = 1 + max(
            int(m.group(1)) for k in vision if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))
        )
        mlp = vision["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        embed_dim = vision["proj"].shape[-1]
    except (KeyError, ValueError, IndexError) as e:
        raise WeightsNotFoundError(
            f"{path.name} is not a complete CLIP ViT image tower ({e}). {CLIP_HOW_TO_GET}"
        ) from e
    grid = math.isqrt(n_pos - 1)
    if grid * grid != n_pos - 1:
        raise WeightsNotFoundError(
            f"{path.name}: the positional embedding ({n_pos}) is not a square ViT grid."
        )
    heads = int(settings.get("num_attention_heads", 0)) or _HEADS_BY_WIDTH.get(width, max(1, width // 64))
    if width % heads:
        raise WeightsNotFoundError(f"{path.name}: width {width} does not split into {heads} attention heads.")
    return {
        "embed_dim": int(embed_dim),
        "vision_cfg": {
            "image_size": int(grid * patch),
            "layers": int(layers),
            "width": int(width),
            "patch_size": int(patch),
            "head_width": int(width // heads),
            "mlp_ratio": mlp / width,
        },
    }


class ClipImageEncoder(nn.Module):
    """Frozen CLIP image tower: ImageNet-preprocessed ``[B, 3, 224, 224]`` -> ``[B, D]`` float32
    embeddings, not L2-normalised (the released code differences raw embeddings)."""

    def __init__(self, tower: nn.Module, description: str = "custom CLIP image tower"):
        super().__init__()
        self.tower = _freeze(tower)
        self.description = description
        self.train(False)

    @classmethod
    def wrap(cls, module: nn.Module) -> ClipImageEncoder:
        """Accept an already-built encoder: a ClipImageEncoder, an open_clip ``CLIP`` (its
        ``.visual`` is used) or any module mapping pixels to embeddings."""
        if isinstance(module, ClipImageEncoder):
            return module
        visual = getattr(module, "visual", None)
        if isinstance(visual, nn.Module) and hasattr(module, "encode_image"):
            return cls(visual, f"open_clip {type(module).__name__}.visual")
        return cls(module, type(module).__name__)

    @classmethod
    def random(cls, architecture: str | Mapping = "ViT-B-32", quick_gelu: bool = True) -> ClipImageEncoder:
        """Random weights (tests); :data:`TINY_CLIP_ARCHITECTURE` is the cheap choice."""
        name = architecture if isinstance(architecture, str) else "custom ViT"
        return cls(build_clip_image_tower(architecture, quick_gelu), f"{name} (random weights)")

    def train(self, mode: bool = True) -> ClipImageEncoder:
        # Frozen: stays in eval mode even when a parent module is put in training mode.
        return super().train(False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        p = next(self.tower.parameters())
        out = self.tower(pixels.to(device=p.device, dtype=p.dtype))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if hasattr(out, "image_embeds"):
            out = out.image_embeds
        return out.float()


def load_clip_image_encoder(
    weights: str | Path | None = None,
    *,
    search_dirs: Iterable[str | Path] = (),
    quick_gelu: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ClipImageEncoder:
    """Load a frozen CLIP image tower from a local ``.safetensors`` file.

    ``weights`` is the file, a folder holding one of :data:`CLIP_FILENAMES`, or a downloaded
    Hugging Face folder (``model.safetensors`` or ``open_clip_model.safetensors``, with the
    ``config.json`` transformers writes); with None, the names are looked up in
    ``search_dirs``. Both the open_clip layout (``visual.*``, as in
    ``open_clip_model.safetensors``) and the transformers layout (``vision_model.*`` +
    ``visual_projection``, as in ``openai/clip-vit-base-patch32`` or a ComfyUI ``clip_vision``
    file) are read; the architecture is read from the weight shapes. ``quick_gelu`` must be True
    for OpenAI's weights (the paper's) and False for LAION/open_clip-trained ones; a folder's
    config.json says which (its ``hidden_act``), and then it is taken from there.
    """
    settings: dict = {}
    hugging_face = None
    if weights is not None and Path(weights).is_dir():
        if not any((Path(weights) / n).is_file() for n in CLIP_FILENAMES):
            hugging_face = _hugging_face_folder(Path(weights))
    if hugging_face is not None:
        path, settings = hugging_face
        act = settings.get("hidden_act", "quick_gelu")  # transformers' CLIPVisionConfig default
        if act not in ("quick_gelu", "gelu"):
            raise WeightsNotFoundError(
                f"{path.parent / 'config.json'}: hidden_act {act!r} is neither quick_gelu (OpenAI CLIP) nor gelu."
            )
        quick_gelu = act == "quick_gelu"
    else:
        path = _resolve_weights(
            weights, CLIP_FILENAMES, search_dirs, "CLIP ViT-B/32 image encoder", CLIP_HOW_TO_GET
        )
    if path.suffix != ".safetensors":
        raise WeightsNotFoundError(
            f"{path.name} is not a .safetensors file; DiffSketch never loads pickled weights. {CLIP_HOW_TO_GET}"
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            # Full CLIP files also hold the text tower; read only the image tower's tensors.
            if any(k.startswith("vision_model.") for k in keys):
                keys = [k for k in keys if k.startswith(("vision_model.", "visual_projection."))]
            elif any(k.startswith("visual.") for k in keys):
                keys = [k for k in keys if k.startswith("visual.")]
            state = {k: f.get_tensor(k) for k in keys}
    except Exception as e:
        raise WeightsNotFoundError(
            f"{path.name} could not be read as safetensors ({e}). {CLIP_HOW_TO_GET}"
        ) from e
    vision, layout = _vision_state(state, path)
    arch = _architecture_from_state(vision, path, settings)
    tower = _open_clip_vision_tower(arch["embed_dim"], arch["vision_cfg"], quick_gelu)
    try:
        tower.load_state_dict({k: v.float() for k, v in vision.items()}, strict=True)
    except RuntimeError as e:
        raise WeightsNotFoundError(
            f"{path.name} does not fit a CLIP ViT image tower ({e}). {CLIP_HOW_TO_GET}"
        ) from e
    cfg = arch["vision_cfg"]
    description = (
        f"CLIP ViT (width {cfg['width']}, {cfg['layers']} layers, patch {cfg['patch_size']}, "
        f"{cfg['image_size']} px) from {path.name} ({layout} layout)"
    )
    return ClipImageEncoder(tower.to(device=device, dtype=dtype), description)


# ---------------------------------------------------------------------------------------------
# the DiffSketch loss
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (released defaults; the L1 weight 30 is the code's 15 x (2 x L1))."""

    lpips: float = 15.0
    l1: float = 30.0
    clip_sim: float = 30.0
    across: float = 1.0
    within: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> LossWeights:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidInputError(f"unknown loss weight(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: float(v) for k, v in d.items()})


def _one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(a, b, dim=-1)).mean()


def directional_losses(
    sample_sketch: torch.Tensor,
    sample_image: torch.Tensor,
    example_sketch: torch.Tensor,
    example_image: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mind-the-Gap directional terms on CLIP embeddings (docs/method.md §5):

    - across = 1 - cos(E(S_i) - E(I_i), E(S_ex) - E(I_ex)): the sample's image->sketch direction
      matches the example's;
    - within = 1 - cos(E(S_i) - E(S_ex), E(I_i) - E(I_ex)): the sketch-domain offset from the
      example matches the image-domain offset.
    """
    across = _one_minus_cos(sample_sketch - sample_image, example_sketch - example_image)
    within = _one_minus_cos(sample_sketch - example_sketch, sample_image - example_image)
    return across, within


class DiffSketchLoss(nn.Module):
    """The DiffSketch training objective.

    Call :meth:`set_example` once with the example image and sketch (their CLIP embeddings are
    cached), then per iteration ``loss(pred_example_sketch, pred_sample_sketch, sample_image)``:

    ``total = w.lpips*LPIPS(Ŝ_ex, S_ex) + w.l1*|Ŝ_ex - S_ex| + w.clip_sim*(1 - cos(E(Ŝ_ex), E(S_ex)))
    + w.across*across + w.within*within``

    Images are [1, 3, H, W] in [0, 1]; sketches [1, 1, H, W] (white ~ 1), predictions unbounded.
    Terms whose weight is 0 are not computed (the LPIPS model may then be None).
    """

    def __init__(
        self,
        clip_encoder: nn.Module,
        lpips_model: nn.Module | None = None,
        weights: LossWeights | None = None,
    ):
        super().__init__()
        self.weights = weights or LossWeights()
        if self.weights.lpips and lpips_model is None:
            raise InvalidInputError(
                "the LPIPS weight is non-zero but no LPIPS model was given (see build_lpips)."
            )
        self.clip = ClipImageEncoder.wrap(clip_encoder)
        self.lpips = _freeze(lpips_model) if lpips_model is not None else None
        self._example: dict[str, torch.Tensor] | None = None

    def train(self, mode: bool = True) -> DiffSketchLoss:
        # The perceptual networks are frozen and always run in eval mode.
        super().train(mode)
        self.clip.eval()
        if self.lpips is not None:
            self.lpips.eval()
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP embedding of images/sketches in [0, 1] (differentiable with respect to ``x``)."""
        return self.clip(perceptual_preprocess(x))

    @torch.no_grad()
    def set_example(self, image: torch.Tensor, sketch: torch.Tensor) -> None:
        """Cache what the loss needs of the fixed example pair."""
        _check_image(image, "example image", 3)
        _check_image(sketch, "example sketch", 1)
        sketch = sketch.float()
        self._example = {
            "sketch": sketch,
            "sketch_pre": perceptual_preprocess(sketch),
            "image_emb": self.embed(image),
            "sketch_emb": self.embed(sketch),
        }

    def forward(
        self,
        pred_example_sketch: torch.Tensor,
        pred_sample_sketch: torch.Tensor | None = None,
        sample_image: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Returns ``(total, terms)``; ``terms`` has each computed term unweighted (``"l1"``) and
        weighted (``"l1_weighted"``) as floats, plus ``"total"``."""
        if self._example is None:
            raise InvalidInputError(
                "call DiffSketchLoss.set_example(image, sketch) before computing the loss"
            )
        ex = self._example
        w = self.weights
        _check_image(pred_example_sketch, "predicted example sketch", 1)
        target = ex["sketch"].to(pred_example_sketch.device)
        if pred_example_sketch.shape[-2:] != target.shape[-2:]:
            raise InvalidInputError(
                f"the predicted example sketch is {tuple(pred_example_sketch.shape[-2:])} but the example sketch is "
                f"{tuple(target.shape[-2:])}; they must be the same size."
            )
        pred_example_sketch = pred_example_sketch.float()
        terms: dict[str, torch.Tensor] = {}
        if w.l1:
            terms["l1"] = (pred_example_sketch - target).abs().mean()
        if w.lpips:
            pre = perceptual_preprocess(pred_example_sketch)
            lp = self.lpips.to(pre.device)
            terms["lpips"] = lp(pre, ex["sketch_pre"].to(pre.device)).mean()
        if w.clip_sim:
            terms["clip_sim"] = _one_minus_cos(self.embed(pred_example_sketch), ex["sketch_emb"])
        if w.across or w.within:
            if pred_sample_sketch is None or sample_image is None:
                raise InvalidInputError(
                    "the directional (across/within) terms need the predicted sketch of the new sample and its "
                    "image; pass them, or set their weights to 0."
                )
            _check_image(pred_sample_sketch, "predicted sample sketch", 1)
            _check_image(sample_image, "sample image", 3)
            with torch.no_grad():
                e_image = self.embed(sample_image)
            e_sketch = self.embed(pred_sample_sketch.float())
            across, within = directional_losses(e_sketch, e_image, ex["sketch_emb"], ex["image_emb"])
            if w.across:
                terms["across"] = across
            if w.within:
                terms["within"] = within
        total = sum(getattr(w, name) * value for name, value in terms.items())
        log = {}
        for name, value in terms.items():
            log[name] = float(value.detach())
            log[f"{name}_weighted"] = float(getattr(w, name) * value.detach())
        log["total"] = float(total.detach())
        return total, log


def _check_image(x: torch.Tensor, what: str, channels: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidInputError(f"{what} must be a [B, {channels}, H, W] tensor; got {shape}")


__all__ = [
    "ALEXNET_FILENAME",
    "ALEXNET_URL",
    "CLIP_FILENAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TINY_CLIP_ARCHITECTURE",
    "ClipImageEncoder",
    "DiffSketchLoss",
    "LossWeights",
    "build_clip_image_tower",
    "build_lpips",
    "default_alexnet_dir",
    "directional_losses",
    "load_clip_image_encoder",
    "perceptual_preprocess",
]
