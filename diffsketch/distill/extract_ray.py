"""Sketches for millions of image files on a Ray cluster (the optional ``scale`` extra).

The work is a Ray Data stream of three stages over the items still to do:

1. decode (CPU tasks): read each file into raw pixels, or the reason it cannot be read;
2. extract (a pool of actors, one per GPU, or CPU actors on a cluster without GPUs): load the
   network once per actor and turn the pixels into 8-bit sketches;
3. write (CPU tasks): encode each sketch as PNG and write it atomically into the output folder.

The driver appends each finished image to the output folder's manifest as results stream
back (see :class:`~diffsketch.distill.extract_files.SketchFolder`), so a rerun skips them. A
dead worker loses nothing: Ray retries a failed task and restarts a dead actor and reruns
its batch, and since every write is atomic and a rerun writes the same file, a batch done
twice is harmless. Every node must see the inputs and the output folder at the same paths
(a shared file system).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError
from ..images import read_image_pixels
from .extract import resolve_dtype
from .extract_files import (
    ExtractReport,
    InputImage,
    Outcome,
    ProgressFn,
    SketchOptions,
    describe_error,
    extraction_settings,
    open_folder,
    precision_name,
    sketch_pixels,
    write_sketch,
)
from .extractor import load_extractor

#: Rows per block of the stream: small enough to spread over the cluster and to lose little
#: work when a worker dies, large enough to keep the per-block overhead low.
ROWS_PER_BLOCK = 64

ModelLoader = Callable[[str], nn.Module]


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is a separate part of the wheel
    except ImportError as e:
        raise InvalidInputError(
            "--ray needs Ray Data, which is not installed: pip install 'diffsketch[scale]' (or 'ray[data]')."
        ) from e
    return ray


class ExtractorFile:
    """Loads an extractor file on the actor's device (a picklable model loader)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)

    def __call__(self, device: str) -> nn.Module:
        return load_extractor(self.path, device=device)


# ------------------------------------------------------------------------------ stage 1: decode


def decode_batch(batch: dict) -> dict:
    pixels, heights, widths, channels, bits, errors = [], [], [], [], [], []
    for path in batch["input"]:
        try:
            image = read_image_pixels(str(path))
            error = ""
        except Exception as e:  # noqa: BLE001 - any decoding failure is reported per file
            image, error = np.zeros((1, 1, 1), np.uint8), describe_error(e)
        pixels.append(image.tobytes())
        heights.append(image.shape[0])
        widths.append(image.shape[1])
        channels.append(image.shape[2])
        bits.append(16 if image.dtype == np.uint16 else 8)
        errors.append(error)
    return {
        "key": batch["key"],
        "input": batch["input"],
        "pixels": np.array(pixels, dtype=object),
        "height": np.array(heights, np.int64),
        "width": np.array(widths, np.int64),
        "channels": np.array(channels, np.int64),
        "bits": np.array(bits, np.int64),
        "error": np.array(errors, dtype=object),
    }


def _unpack(batch: dict, k: int) -> np.ndarray:
    dtype = np.uint16 if int(batch["bits"][k]) == 16 else np.uint8
    shape = (int(batch["height"][k]), int(batch["width"][k]), int(batch["channels"][k]))
    return np.frombuffer(batch["pixels"][k], dtype=dtype).reshape(shape)


# ------------------------------------------------------------------------------ stage 2: extract


class SketchActor:
    """Holds the network on its device for the life of the actor."""

    def __init__(self, load_model: ModelLoader, options: SketchOptions, device: str, threads: int):
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.model = load_model(device).eval()
        self.options = options

    def __call__(self, batch: dict) -> dict:
        rows = [k for k in range(len(batch["key"])) if not batch["error"][k]]
        sketches = sketch_pixels(self.model, [_unpack(batch, k) for k in rows], self.options)
        encoded = [b""] * len(batch["key"])
        for k, grey in zip(rows, sketches, strict=True):
            encoded[k] = grey.tobytes()
        return {
            "key": batch["key"],
            "input": batch["input"],
            "sketch": np.array(encoded, dtype=object),
            "height": batch["height"],
            "width": batch["width"],
            "error": batch["error"],
        }


# ------------------------------------------------------------------------------ stage 3: write


def write_batch(batch: dict, out: str) -> dict:
    for k, key in enumerate(batch["key"]):
        if not batch["error"][k]:
            shape = (int(batch["height"][k]), int(batch["width"][k]))
            write_sketch(out, str(key), np.frombuffer(batch["sketch"][k], np.uint8).reshape(shape))
    return {"key": batch["key"], "input": batch["input"], "error": batch["error"]}


# ------------------------------------------------------------------------------ driver


def _resources(ray) -> tuple[int, float]:
    resources = ray.cluster_resources()
    return int(resources.get("GPU", 0)), float(resources.get("CPU", 1))


def _actor_precision(dtype: str, gpus: int) -> str:
    """The one precision every actor runs at, named so the folder's settings record it: ``dtype``
    resolved here for the actors' device. "auto" on GPUs this process cannot see is bfloat16 (what
    CUDA devices since Ampere run by default)."""
    if not gpus:
        return precision_name(resolve_dtype("cpu", dtype))
    if dtype == "auto" and not torch.cuda.is_available():
        return "bfloat16"
    return precision_name(resolve_dtype("cuda", dtype))


def extract_files_ray(
    extractor: str | os.PathLike,
    items: Sequence[InputImage],
    out: str | os.PathLike,
    options: SketchOptions | None = None,
    *,
    address: str | None = None,
    actors: int | None = None,
    load_model: ModelLoader | None = None,
    progress: ProgressFn | None = None,
) -> ExtractReport:
    """Extract a sketch for every item into ``out`` on a Ray cluster; same folder and manifest
    as :func:`~diffsketch.distill.extract_files.extract_files`.

    Connects to the cluster at ``address`` (None: the one Ray would pick, ``RAY_ADDRESS`` or a new
    local one) unless Ray is already initialised in this process. ``actors``: extraction actors
    (None: one per GPU, or one per two CPUs on a cluster without GPUs). ``load_model(device)``
    builds the network in each actor (default: load ``extractor``, the file the settings are
    read from).
    """
    ray = require_ray()
    options = options or SketchOptions()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        gpus = _resources(ray)[0]
        options = replace(options, dtype=_actor_precision(options.dtype, gpus))
        settings = extraction_settings(
            load_extractor(extractor, device="cpu"), options, device="cuda" if gpus else "cpu"
        )
        folder, todo, report = open_folder(out, settings, items)
        if progress is not None:
            progress(0, len(todo))
        if not todo:
            return report
        dataset = _pipeline(ray, todo, folder, options, extractor, actors, load_model)
        done = 0
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            outcomes = [
                Outcome(str(key), str(path), str(error) or None)
                for key, path, error in zip(batch["key"], batch["input"], batch["error"], strict=True)
            ]
            folder.record(outcomes)
            failed = [(o.input, o.error) for o in outcomes if o.error is not None]
            report.failed += failed
            report.written += len(outcomes) - len(failed)
            done += len(outcomes)
            if progress is not None:
                progress(done, len(todo))
        return report
    finally:
        if started_here:
            ray.shutdown()


def _pipeline(ray, todo, folder, options, extractor, actors, load_model):
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    gpus, cpus = _resources(ray)
    if actors is None:
        actors = gpus if gpus else max(1, int(cpus) // 2)
    if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
        raise InvalidInputError(f"actors must be a positive integer, got {actors!r}.")
    batch = max(options.batch_size, 8)
    rows = [{"key": item.key, "input": str(item.path)} for item in todo]
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / ROWS_PER_BLOCK)))
    # A dead worker costs no image: Ray Data retries the tasks of a dead worker and restarts a
    # dead actor, then reruns its batch (its defaults; the tests kill an actor to check).
    dataset = dataset.map_batches(decode_batch, batch_size=batch, num_cpus=1)
    dataset = dataset.map_batches(
        SketchActor,
        fn_constructor_kwargs={
            "load_model": load_model or ExtractorFile(extractor),
            "options": options,
            "device": "cuda" if gpus else "cpu",
            "threads": 1,
        },
        batch_size=batch,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpus else None,
        num_cpus=None if gpus else 1,
    )
    return dataset.map_batches(
        write_batch,
        batch_size=batch,
        num_cpus=1,
        fn_kwargs={"out": str(folder.root)},
    )
