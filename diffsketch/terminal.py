"""What the command-line tools share: the device to run on, checks of the paths they are given,
and tqdm progress bars."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidInputError
from .fileio import check_save_name


def pick_device(name: str) -> str:
    """``--device``: "auto" (CUDA when available, else the CPU) or a torch device that exists here;
    anything else is an InvalidInputError saying what is available."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InvalidInputError(
            f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:1, mps, ..."
        ) from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"--device {name}: this PyTorch sees no CUDA GPU (torch.cuda.is_available() is False); use --device "
                "cpu, or auto to take a GPU when there is one."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InvalidInputError(
                f"--device {name}: there are {count} CUDA device(s), cuda:0 to cuda:{count - 1}."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"--device {name}: Apple's MPS is not available here; use --device cpu.")
    return name


def check_input_file(path, option: str, *, folder_ok: bool = False) -> Path:
    """``path`` given as ``option`` must exist (a file, or also a folder with ``folder_ok``)."""
    p = Path(path)
    if p.is_file() or (folder_ok and p.is_dir()):
        return p
    if p.is_dir():
        raise InvalidInputError(f"{option} {p} is a folder; give a file.")
    raise InvalidInputError(f"{option} {p}: no such {'file or folder' if folder_ok else 'file'}.")


def check_output_file(path, option: str) -> Path:
    """A file to write: not an existing folder, its name a plain file name
    (:func:`~diffsketch.fileio.check_save_name`), its folder not a file."""
    p = Path(path)
    if p.is_dir():
        raise InvalidInputError(f"{option} {p} is a folder; give the path of the file to write.")
    check_save_name(p.name, option)
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InvalidInputError(f"{option} {p}: {parent} is a file, not a folder.")
            break
    return p


def check_output_folder(path, option: str) -> Path:
    """A folder to write into (made if missing): not an existing file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InvalidInputError(f"{option} {p} is a file; give a folder (it is made if missing).")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InvalidInputError(f"{option} {p}: {parent} is a file, not a folder.")
            break
    if p.is_dir() and not os.access(p, os.W_OK):
        raise InvalidInputError(f"{option} {p}: the folder is not writable.")
    return p


def progress_bar(total: int, desc: str, unit: str = "it"):
    """A tqdm bar driven as ``bar(done, total)``; ``bar.close()`` ends it."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def update(done: int, total_now: int):
        bar.total = total_now
        bar.n = done
        bar.refresh()

    update.close = bar.close
    return update
