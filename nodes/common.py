"""Small helpers shared by the node modules: errors for the UI, folders, tensor layout."""

from __future__ import annotations

import os

import folder_paths

from diffsketch.fileio import remove_stale_temp_files

MODEL_FOLDERS = {
    "diffsketch_generators": "generators",
    "diffsketch_extractors": "extractors",
    "diffsketch_conditions": "conditions",
    "diffsketch_clip": "clip",
    "diffsketch_lpips": "lpips",
}


def register_model_folders() -> None:
    """Register ``models/diffsketch/<sub>`` with folder_paths (extra_model_paths.yaml keys win)."""
    for key, sub in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, "diffsketch", sub)
        if key in folder_paths.folder_names_and_paths:
            paths, exts = folder_paths.folder_names_and_paths[key]
            if default not in paths:
                paths.append(default)
            exts.update({".safetensors"})
        else:
            folder_paths.folder_names_and_paths[key] = ([default], {".safetensors"})


def remove_stale_temp_files_of_ours() -> None:
    """Remove temporary files a crash or kill -9 left in models/diffsketch (see
    :func:`diffsketch.fileio.stale_temp_files` for what counts as ours and as stale)."""
    root = os.path.join(folder_paths.models_dir, "diffsketch")
    if os.path.isdir(root):
        remove_stale_temp_files(root, recursive=True)  # each removal is logged by the library


def save_path(key: str, *parts: str) -> str:
    """A path in the first folder registered for ``key`` (where DiffSketch writes its files)."""
    return os.path.join(folder_paths.get_folder_paths(key)[0], *parts)


def missing_option(filename: str, folder: str) -> str:
    """The combo entry shown when no file is found: the node then fails with a message naming the file."""
    return f"(missing: put {filename} in models/diffsketch/{folder})"


def list_or_missing(keys: list[str], filename: str, folder: str) -> list[str]:
    names: list[str] = []
    for key in keys:
        try:
            names.extend(n for n in folder_paths.get_filename_list(key) if n not in names)
        except KeyError:  # folder kind not registered (e.g. clip_vision in a trimmed install)
            continue
    return names or [missing_option(filename, folder)]
