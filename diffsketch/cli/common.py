"""What the commands share: loading the model, the checks made before it loads, and the options
every command that samples takes (model, device, prediction type, clip skip; steps, guidance,
size; schedule)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..capture.sampling import DEFAULT_CFG
from ..capture.spec import (
    DIT_NAMES_TEXT,
    FLUX_DEFAULT_GUIDANCE,
    FLUX_MAX_GUIDANCE,
    NATIVE_SIZES_TEXT,
    SIZE_MULTIPLES_TEXT,
)
from ..capture.timesteps import DEFAULT_STEPS_TEXT
from ..terminal import check_input_file, pick_device
from ..train.inference import generator_cfg


def load_backend(args, device: str | None = None, recorded_guidance: float | None = None):
    """``--model`` loaded; a Flux.1 dev model embeds :func:`sampling_guidance` (``recorded_guidance``:
    the guidance the example or the generator's features were captured at, where known)."""
    import torch

    from ..backends.diffusers import DiffusersBackend

    device = device or pick_device(args.device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    prediction = None if args.prediction_type == "auto" else args.prediction_type
    guidance = sampling_guidance(args, recorded_guidance)
    _quiet_model_loading()
    return DiffusersBackend.load(
        args.model,
        device=device,
        dtype=dtype,
        prediction_type=prediction,
        clip_skip=args.clip_skip,
        guidance=guidance,
    )


def print_prompt_notice(backend, prompt: str) -> None:
    """Say how a long prompt is encoded (CLIP windows, T5 past its minimum length, as ComfyUI
    does), or that Z-Image reads weights as text."""
    notice = backend.prompt_notice(prompt)
    if notice:
        print(f"note: {notice}", file=sys.stderr)


def _quiet_model_loading() -> None:
    """diffusers and transformers report every model they load (progress bars, dtype advice that
    does not apply here); the command shows its own progress, so only their errors are let
    through. Only this command's process is changed, never the library's users."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def check_model(args) -> None:
    """``--model``, ``--device`` and (where the command has it) ``--guidance``: checked before
    anything is loaded."""
    check_input_file(args.model, "--model", folder_ok=True)
    pick_device(args.device)
    if getattr(args, "guidance", None) is not None:
        guidance_before_loading(args.model, args.guidance)


def _transformer_config(path) -> dict | None:
    """The transformer/config.json of a diffusers folder of a diffusion transformer; None for a
    UNet model (folder or single file)."""
    import json

    from ..errors import InvalidInputError

    config = Path(path) / "transformer" / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise InvalidInputError(
            f"--model {path}: {config} cannot be read as a diffusers config ({e})."
        ) from e
    return data


def family_before_loading(path) -> str | None:
    """The flow family of ``--model`` when it is a diffusers folder of a diffusion transformer,
    read from its transformer/config.json (another transformer family is refused by name); None
    for a UNet model (folder or single file), whose grid is DDIM's. Lets the sampling options be
    checked on the model's own timestep grid before the model loads."""
    from ..capture.spec import diffusers_dit_family

    config = _transformer_config(path)
    return None if config is None else diffusers_dit_family(str(config.get("_class_name")))


def _guidance_input(path) -> tuple[str | None, bool]:
    """``(flow family or None, whether it has Flux.1 dev's guidance input)`` of ``--model``, read
    once from its transformer config before it loads."""
    from ..capture.spec import diffusers_dit_family

    config = _transformer_config(path)
    if config is None:
        return None, False
    return diffusers_dit_family(str(config.get("_class_name"))), bool(config.get("guidance_embeds"))


def guidance_before_loading(path, guidance, option: str = "--guidance") -> float | None:
    """:func:`~diffsketch.capture.spec.check_embedded_guidance` for ``--model`` before it loads."""
    from ..capture.spec import check_embedded_guidance

    return check_embedded_guidance(guidance, *_guidance_input(path), option)


def sampling_guidance(args, recorded: float | None = None) -> float | None:
    """--guidance, or when it is not given (or the command has none) the guidance the features
    were captured at (``recorded``: the example's or the generator's) where the model takes one;
    None: the model's own (Flux.1 dev's 3.5; the other models have no guidance input)."""
    from ..capture.spec import check_embedded_guidance

    given = getattr(args, "guidance", None)
    if given is None and recorded is None:
        return None
    family, guidance_embeds = _guidance_input(args.model)
    if given is not None:
        return check_embedded_guidance(given, family, guidance_embeds, "--guidance")
    if check_embedded_guidance(None, family, guidance_embeds) is None:
        return None  # no guidance input: the recorded value does not apply to this model
    return check_embedded_guidance(
        recorded, family, guidance_embeds, "the guidance the features were captured at"
    )


#: The size the sampling options are checked at before the model is loaded (the default size, the
#: model's native one, is known only then).
SIZE_STAND_IN = 512


def model_size(args, backend) -> dict[str, int]:
    """``{"width", "height"}`` from --width/--height; one not given is the model's native side
    (``backend.native_size``: 1024 for SDXL)."""
    return {"width": args.width or backend.native_size, "height": args.height or backend.native_size}


def check_file_kind(path, option: str, kind: str) -> Path:
    """``path`` exists and is a DiffSketch file of ``kind`` (its header only is read)."""
    from ..fileio import read_header

    path = check_input_file(path, option)
    read_header(path, kind)
    return path


def model_args(p):
    p.add_argument(
        "--model",
        required=True,
        help="SD 1.x, SD 2.x or SDXL model: a diffusers folder or a single-file .safetensors checkpoint; "
        f"{DIT_NAMES_TEXT} (experimental): a diffusers folder",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--prediction-type",
        choices=["auto", "epsilon", "v_prediction"],
        default="auto",
        help="what the UNet predicts; auto reads it from the scheduler config or the checkpoint, as ComfyUI "
        "does (SD 2.x 768-v and v-pred SDXL fine-tunes are v_prediction)",
    )
    p.add_argument(
        "--clip-skip",
        type=int,
        default=None,
        help="text encoder layer prompts are read from, as ComfyUI's CLIPSetLastLayer -N: 1 = last, 2 = the one "
        "before (default: the model's own, 1 for SD 1.x, 2 for SD 2.x and SDXL; Pony, Illustrious and NoobAI "
        "prompts are written for 2)",
    )


def sampling_args(p, steps: int | None = None):
    """``steps``: the --steps default; None: the model's own (:func:`sampling_steps`)."""
    p.add_argument(
        "--steps",
        type=int,
        default=steps,
        help=f"sampling steps (DDIM; Euler for {DIT_NAMES_TEXT}; default "
        + (f"{steps})" if steps is not None else f"{DEFAULT_STEPS_TEXT})"),
    )
    p.add_argument(
        "--cfg",
        type=float,
        default=None,
        help=f"classifier-free guidance scale (default {DEFAULT_CFG:g}; 1 for a guidance-distilled model, Z-Image "
        "Turbo and Flux.1, and for a generator trained on one-branch features)",
    )
    guidance_arg(p)
    for side in ("width", "height"):
        p.add_argument(
            f"--{side}",
            type=int,
            default=None,
            help=f"{side} in pixels, a multiple of {SIZE_MULTIPLES_TEXT} (default: the model's native size: "
            f"{NATIVE_SIZES_TEXT})",
        )


def guidance_arg(p) -> None:
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help=f"Flux.1 dev's embedded guidance, as ComfyUI's FluxGuidance node sets it, 0 to {FLUX_MAX_GUIDANCE:g} "
        f"(default {FLUX_DEFAULT_GUIDANCE:g}, or the guidance the example or the generator's features were "
        "captured at); not cfg: it adds no branch. Refused for a model without a guidance input (Flux.1 "
        "schnell, the other families)",
    )


def sampling_steps(args, backend) -> int:
    """--steps, or when it is not given the model's own (``backend.default_steps``: 8 for Z-Image
    Turbo and Flux.1 schnell, else the paper's 50)."""
    return int(args.steps) if args.steps is not None else backend.default_steps


def sampling_cfg(args, backend, generator=None) -> float:
    """--cfg, or when it is not given: with a generator, the guidance its features were captured at
    (:func:`~diffsketch.train.inference.generator_cfg`: 1 for one branch, else :data:`DEFAULT_CFG`,
    the Generate and Distill nodes' rule); without one, 1 for a guidance-distilled model (Z-Image
    Turbo, Flux.1), else :data:`DEFAULT_CFG`."""
    if args.cfg is not None:
        return float(args.cfg)
    if generator is not None:
        return generator_cfg(generator)
    return 1.0 if getattr(backend, "guidance_distilled", False) else DEFAULT_CFG


def schedule_arg(p):
    p.add_argument(
        "--schedule",
        choices=["full", "fast"],
        default=None,
        help="sampling schedule (default: the one the generator was trained with)",
    )
