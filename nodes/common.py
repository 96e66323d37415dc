"""Small helpers shared by the node modules: model folders, file combos, schema fields."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import folder_paths
from comfy_api.latest import io

from diffsketch.errors import Cancelled, WeightsNotFoundError
from diffsketch.fileio import remove_stale_temp_files

MODEL_FOLDERS = {
    "diffsketch_generators": "generators",
    "diffsketch_extractors": "extractors",
    "diffsketch_conditions": "conditions",
    "diffsketch_clip": "clip",
    "diffsketch_lpips": "lpips",
}
# torchvision publishes the AlexNet weights LPIPS needs only as a .pth (read with weights_only=True);
# every other DiffSketch folder holds .safetensors only.
FOLDER_EXTENSIONS = {"diffsketch_lpips": {".safetensors", ".pth"}}
# Where each folder kind a loader reads lives in a default install (what the UI tells users).
FOLDER_LABELS = {key: f"models/diffsketch/{sub}" for key, sub in MODEL_FOLDERS.items()} | {
    "clip_vision": "models/clip_vision"
}
MISSING_PREFIX = "(missing) "
logger = logging.getLogger("diffsketch.nodes")


@contextmanager
def cancel_as_interrupt():
    """Around a library call that polls ``should_stop``: ComfyUI shows a run as interrupted (not
    failed) only for its own InterruptProcessingException, so the library's :class:`Cancelled`
    (raised when ``should_stop`` noticed the Cancel before a progress callback did) becomes one. The
    library has written its checkpoint by then."""
    import comfy.model_management

    try:
        yield
    except Cancelled as e:
        raise comfy.model_management.InterruptProcessingException() from e


@contextmanager
def on_torch_device(*modules):
    """Run the block with ``modules`` (None entries skipped) on ComfyUI's torch device; yields
    ``(device, more)``, where the block appends modules it puts on the device itself.

    ComfyUI's model management knows nothing of these modules (generator, loss networks, student),
    so on every exit -- success, error, Cancel -- they all go back to the CPU and the allocator's
    cache is released: the next node (or the UNet at the next sample) gets the memory back, which
    is what lets a small card train SDXL at 1024. ``nn.Module.to`` moves in place, so modules that
    are other nodes' outputs (LOSS_MODELS, a GENERATOR) stay where their owner left them: on the CPU."""
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    more: list = []
    try:
        for module in modules:
            if module is not None:
                module.to(device)
        yield device, more
    finally:
        for module in (*modules, *more):
            if module is not None:
                module.to("cpu")
        comfy.model_management.soft_empty_cache()


def register_model_folders() -> None:
    """Register ``models/diffsketch/<sub>`` with folder_paths (extra_model_paths.yaml keys win)."""
    for key, sub in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, "diffsketch", sub)
        exts = FOLDER_EXTENSIONS.get(key, {".safetensors"})
        if key in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[key]
            if default not in paths:
                paths.append(default)
            known.update(exts)
        else:
            folder_paths.folder_names_and_paths[key] = ([default], set(exts))


def remove_stale_temp_files_of_ours() -> None:
    """Remove temporary files a crash or kill -9 left in models/diffsketch (see
    :func:`diffsketch.fileio.stale_temp_files` for what counts as ours and as stale)."""
    root = os.path.join(folder_paths.models_dir, "diffsketch")
    if os.path.isdir(root):
        remove_stale_temp_files(root, recursive=True)  # each removal is logged by the library


def save_path(key: str, *parts: str) -> str:
    """A path in the first folder registered for ``key`` (where DiffSketch writes its files)."""
    return os.path.join(folder_paths.get_folder_paths(key)[0], *parts)


def unused_name(name: str, taken: Callable[[str], bool]) -> str:
    """``name``, or else the first of ``name_00001``, ``name_00002``, ... that ``taken`` says is free:
    a save never replaces an earlier file (ComfyUI's own save nodes count up the same way)."""
    candidate, counter = name, 0
    while taken(candidate):
        counter += 1
        candidate = f"{name}_{counter:05}"
    return candidate


def unused_save_path(key: str, name: str) -> str:
    """Where to save ``name``.safetensors in ``key``'s folder without replacing a file (:func:`unused_name`)."""
    return save_path(
        key, unused_name(name, lambda n: os.path.exists(save_path(key, n + ".safetensors"))) + ".safetensors"
    )


def show_on_node(text: str) -> dict:
    """Log ``text`` (e.g. which file a node wrote) and show it on the running node, as ComfyUI's API
    nodes show their status; returns the node's UI entry with it, for API clients."""
    from comfy_execution.utils import get_executing_context

    logger.info("[DiffSketch] %s", text)
    context = get_executing_context()
    # ComfyUI's server module is loaded only where a server runs the graph; importing it elsewhere
    # (a node run in-process, a script) would pull in the server's own start-up imports.
    server_module = sys.modules.get("server")
    server = getattr(getattr(server_module, "PromptServer", None), "instance", None)
    if context is not None and server is not None:
        server.send_progress_text(text, context.node_id)
    return {"text": (text,)}


def size_inputs(what: str) -> list[io.Int.Input]:
    """The ``width`` and ``height`` inputs of a node that samples images: ``what`` is sized (e.g.
    "Image", "Each pair's image"). 0, the default, is the connected checkpoint's native size,
    resolved at run time (``SamplingBackend.image_size``), so an unedited SDXL graph samples at 1024.
    The step is the finest multiple any family takes; the backend refuses a size its own family
    cannot take, naming valid ones (``SamplingBackend.check_size``)."""
    from diffsketch.capture.sampling import FINEST_SIZE_MULTIPLE
    from diffsketch.capture.spec import NATIVE_SIZES_TEXT, SIZE_MULTIPLES_TEXT

    return [
        io.Int.Input(
            side,
            default=0,
            min=0,
            max=4096,
            step=FINEST_SIZE_MULTIPLE,
            tooltip=f"{what} {side} in pixels, a multiple of {SIZE_MULTIPLES_TEXT}; 0 = the checkpoint's "
            f"native size ({NATIVE_SIZES_TEXT}).",
        )
        for side in ("width", "height")
    ]


def flux_guidance_input() -> io.Float.Input:
    """The ``guidance`` input of a node that samples or inverts: Flux.1 dev's embedded guidance,
    the value ComfyUI's FluxGuidance node puts in a conditioning. These nodes encode their prompts
    themselves, so the value is a widget of theirs; it is recorded with the features, and the
    nodes that use features or a generator (Train, Generate, Distill) sample at the recorded one."""
    from diffsketch.capture.spec import FLUX_DEFAULT_GUIDANCE, FLUX_MAX_GUIDANCE

    return io.Float.Input(
        "guidance",
        default=FLUX_DEFAULT_GUIDANCE,
        min=0.0,
        max=FLUX_MAX_GUIDANCE,
        step=0.1,
        round=0.01,
        optional=True,
        tooltip=f"Flux.1 dev only: the guidance it embeds, as ComfyUI's FluxGuidance node sets it "
        f"({FLUX_DEFAULT_GUIDANCE:g} by default). Not cfg: it adds no branch. Recorded with the features; "
        "Train, Generate and Distill use the recorded value. Other models have no such input and ignore it.",
    )


def backbones_note() -> str:
    """What every node that takes a MODEL or CLIP ends its description with: the families it takes,
    and that the diffusion transformers are experimental."""
    from diffsketch.capture.spec import DIT_EXPERIMENTAL_NOTE, SUPPORTED_MODELS

    return f" Takes {SUPPORTED_MODELS}. {DIT_EXPERIMENTAL_NOTE}"


def sampler_steps_text() -> str:
    """Which sampler a steps input drives, by family, for its tooltip."""
    from diffsketch.capture.spec import DIT_NAMES_TEXT

    return f"DDIM steps on the UNet models, Euler steps on {DIT_NAMES_TEXT}"


# What people type when they look for a line-art extractor (node search matches these too).
LINE_ART_ALIASES = ("lineart", "line art", "sketch", "edge")


def search_aliases(*aliases: str) -> dict:
    """The ``io.Schema`` keyword with the words users search for, where ComfyUI's Schema has the
    field (it arrived after v0.8, whose Schema rejects unknown keywords); empty otherwise."""
    has_field = any(f.name == "search_aliases" for f in dataclasses.fields(io.Schema))
    return {"search_aliases": list(aliases)} if has_field else {}


def missing_entry(what: str, keys: Sequence[str]) -> str:
    """The one combo entry a loader shows when none of its folders has a file: what to put where.
    Running with it raises :class:`WeightsNotFoundError` with this same text."""
    return MISSING_PREFIX + f"put {what} in " + " or ".join(FOLDER_LABELS.get(k, k) for k in keys)


def file_options(
    keys: Sequence[str], what: str, extra: Iterable[str] = (), keep: Callable[[str], bool] | None = None
) -> list[str]:
    """The files of the folder kinds ``keys`` (first folder first) that ``keep`` accepts, then
    ``extra`` names; the :func:`missing_entry` alone when there are none."""
    names: list[str] = []
    for key in keys:
        try:
            listed = folder_paths.get_filename_list(key)
        except KeyError:  # folder kind not registered (e.g. clip_vision in a trimmed install)
            continue
        names.extend(n for n in listed if n not in names and (keep is None or keep(n)))
    names.extend(n for n in extra if n not in names)
    return names or [missing_entry(what, keys)]


def file_path(keys: Sequence[str], name: str) -> str | None:
    """The full path of combo value ``name`` in the folder kinds ``keys``; None when it is in none
    of them (the missing entry is in none)."""
    for key in keys:
        try:
            path = folder_paths.get_full_path(key, name)
        except KeyError:
            continue
        if path:
            return path
    return None


def file_path_or_raise(keys: Sequence[str], name: str, what: str) -> str:
    """:func:`file_path`, or :class:`WeightsNotFoundError`: the missing entry's own text when
    ``name`` is that entry, else a message saying the file has gone since the list was made."""
    if name.startswith(MISSING_PREFIX):
        raise WeightsNotFoundError(missing_entry(what, keys))
    path = file_path(keys, name)
    if path is None:
        where = " or ".join(FOLDER_LABELS.get(k, k) for k in keys)
        raise WeightsNotFoundError(f"{name} is not in {where} (any more): put {what} there")
    return path
