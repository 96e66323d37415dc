"""The one place where DiffSketch reads and writes files.

Everything the project saves is a ``.safetensors`` file whose metadata carries a JSON header
``{"format": "diffsketch", "kind": ..., "version": ..., ...}``. Writes are atomic (temporary file
in the same folder, fsync, rename), so a crash or Cancel never leaves a half-written file. Reads
validate kind and version before any tensor is touched; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import FileFormatError, InvalidInputError

FORMAT = "diffsketch"
_HEADER_KEY = "diffsketch"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,120}$")


def check_save_name(name: str, what: str = "save name") -> str:
    """A plain file name: no folders, no '..', no absolute paths."""
    name = str(name).strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not name or "/" in name or "\\" in name or ".." in name or not _SAFE_NAME.match(name):
        raise InvalidInputError(
            f"{what} {name!r} is not a plain file name: use letters, digits, spaces, '.', '_', '+' or '-' "
            "(no folders, no '..'), e.g. 'my_style'."
        )
    return name


@contextmanager
def atomic_target(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``,
    on any error (or Cancel) it is removed, so ``path`` is never left half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete the temporary files :func:`atomic_target` leaves behind when its process is killed
    mid-write (no ``finally`` runs then). Only for a folder no other process is writing to.
    Returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_target(path) as tmp:
        Path(tmp).write_bytes(data)


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], kind: str, version: int, meta: dict
) -> Path:
    """Atomically write ``tensors`` with a DiffSketch JSON header (``meta`` must be JSON-serialisable)."""
    header = {"format": FORMAT, "kind": kind, "version": int(version), **meta}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_target(path) as tmp:
        save_file(contiguous, tmp, metadata={_HEADER_KEY: json.dumps(header)})
    return Path(path)


def read_header(path: str | os.PathLike, kind: str | None = None, versions=None) -> dict:
    """Read and validate the JSON header without loading tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix != ".safetensors":
        raise FileFormatError(f"{path.name}: DiffSketch only reads .safetensors files (never pickles).")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise FileFormatError(
            f"{path.name} is corrupt or truncated ({e}); re-create or re-download it."
        ) from e
    if _HEADER_KEY not in meta:
        raise FileFormatError(
            f"{path.name} is a safetensors file but not a DiffSketch file (no DiffSketch header)."
        )
    try:
        header = json.loads(meta[_HEADER_KEY])
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{path.name}: the DiffSketch header is not valid JSON.") from e
    if header.get("format") != FORMAT:
        raise FileFormatError(f"{path.name}: not a DiffSketch file.")
    if kind is not None and header.get("kind") != kind:
        raise FileFormatError(
            f"{path.name} holds a DiffSketch '{header.get('kind')}', not a '{kind}'. Pick a {kind} file."
        )
    if versions is not None and header.get("version") not in tuple(versions):
        raise FileFormatError(
            f"{path.name} is {header.get('kind')} format version {header.get('version')}; this DiffSketch reads "
            f"version(s) {list(versions)}. Re-create the file with this version of DiffSketch."
        )
    return header


def load_tensors(
    path: str | os.PathLike, kind: str, versions, device="cpu"
) -> tuple[dict[str, torch.Tensor], dict]:
    header = read_header(path, kind, versions)
    try:
        out = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    except FileFormatError:
        raise
    except Exception as e:
        raise FileFormatError(f"{Path(path).name} is corrupt or truncated ({e}).") from e
    return out, header
