"""The one place where DiffSketch reads and writes files.

Everything the project saves is a ``.safetensors`` file whose metadata carries a JSON header
``{"format": "diffsketch", "kind": ..., "version": ..., ...}``. Writes are atomic (temporary file
in the same folder, fsync, rename), so a crash or Cancel never leaves a half-written file. Reads
validate kind and version before any tensor is touched; nothing is ever unpickled.

Model files -- generators, extractors, condition distributions and training states -- go through
:func:`save_model_file` / :func:`load_model_file`, which add what a plain tensor file lacks: a
checksum of the weights (safetensors has none of its own, so a flipped byte would otherwise load
as a silently broken network) and a refusal of NaN or infinite weights, in both directions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import stat
import struct
import sys
import time
import unicodedata
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .errors import FileFormatError, InvalidInputError

logger = logging.getLogger(__name__)

FORMAT = "diffsketch"
_HEADER_KEY = "diffsketch"
#: Header key of the weights' checksum in model files.
CHECKSUM_KEY = "checksum"

# Temporary files of atomic writes: ".<target name>.<8 random characters>.tmp" beside the target
# (made by _new_temp_file). A temporary file is stale -- left by a crash or kill -9, never to
# be renamed -- once nobody has written to it for STALE_TEMP_SECONDS: a writer that is alive
# keeps touching its file until it renames it, and no write of ours pauses for minutes.
_TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
STALE_TEMP_SECONDS = 15 * 60

# Punctuation a save name may hold besides letters and digits of any script.
_NAME_PUNCTUATION = " ._+-"
_MAX_NAME_CHARS = 120
# Room left for the suffixes DiffSketch adds (".train.safetensors", an atomic write's temporary
# ".<name>.<8 chars>.tmp") within the 255-byte file-name limit of common file systems.
_MAX_NAME_BYTES = 200
# Device names Windows reserves in every folder, with or without an extension ("con.txt" too).
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"{port}{n}" for port in ("COM", "LPT") for n in [*"0123456789", "\u00b9", "\u00b2", "\u00b3"]]
)


def _name_problem(name: str) -> str | None:
    """Why ``name`` (NFC, without surrounding spaces or ".safetensors") is not a safe file name."""
    if not name:
        return "is empty"
    if "/" in name or "\\" in name or ".." in name:
        return "is a path (no folders, no '..')"
    for ch in name:
        kind = unicodedata.category(ch)[0]
        if kind not in "LNM" and ch not in _NAME_PUNCTUATION:
            return f"contains {ch!r}"
    if unicodedata.category(name[0])[0] not in "LN":
        return "must start with a letter or digit"
    if name[-1] in ". ":
        return "ends with a dot or a space (Windows drops those, so the file would get another name)"
    if name.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        return (
            "is a Windows device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9), which no Windows folder can hold"
        )
    if len(name) > _MAX_NAME_CHARS or len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        return f"is too long (at most {_MAX_NAME_CHARS} characters and {_MAX_NAME_BYTES} bytes in UTF-8)"
    return None


def check_save_name(name: str, what: str = "save name") -> str:
    """A plain file name for a file DiffSketch writes, or InvalidInputError naming ``what``.

    Surrounding spaces and a ".safetensors" ending are dropped and the name is NFC-normalised
    (so "é" typed either way names one file). Letters and digits of any script, spaces and
    ``. _ + -`` are allowed; the name starts with a letter or digit and does not end with a dot
    or a space. Refused: folders and '..' (nothing is written outside the target folder), and the
    device names Windows reserves (CON, PRN, AUX, NUL, COM0-9, LPT0-9, any case, with or without
    an extension), so a workflow made anywhere saves on Windows too. Returns the cleaned name.
    """
    name = unicodedata.normalize("NFC", str(name).strip())
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    problem = _name_problem(name)
    if problem is not None:
        raise InvalidInputError(
            f"{what} {name!r} {problem}. Use a plain file name: letters and digits (any script), spaces, '.', "
            "'_', '+' or '-', starting with a letter or digit, e.g. 'my_style'."
        )
    return name


# ---------------------------------------------------------------------------------------------
# atomic writes and their temporary files
# ---------------------------------------------------------------------------------------------
def stale_temp_files(
    folder: str | os.PathLike,
    target: str | None = None,
    now: float | None = None,
    min_age: float = STALE_TEMP_SECONDS,
) -> list[Path]:
    """Temporary files of our atomic writes in ``folder`` (of ``target``'s name only, when given)
    that nobody has written to for ``min_age`` seconds (:data:`STALE_TEMP_SECONDS`)."""
    folder = Path(folder)
    now = time.time() if now is None else now
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or (target is not None and match["target"] != target):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime >= min_age:
                found.append(Path(entry.path))
        except OSError:  # removed meanwhile
            continue
    return sorted(found)


def remove_stale_temp_files(
    folder: str | os.PathLike,
    target: str | None = None,
    recursive: bool = False,
    min_age: float = STALE_TEMP_SECONDS,
) -> list[Path]:
    """Delete what :func:`stale_temp_files` finds (in every subfolder too with ``recursive``);
    returns the files removed. Files that vanish or cannot be removed are left to the next try.
    ``min_age=0`` removes every one at once: only for a folder no other process is writing to
    (a killed process leaves them behind, as no ``finally`` runs)."""
    folders = [Path(folder)]
    if recursive:
        folders += [Path(root) / d for root, dirs, _ in os.walk(folder) for d in dirs]
    removed = []
    for f in folders:
        for path in stale_temp_files(f, target, min_age=min_age):
            try:
                path.unlink()
                removed.append(path)
                logger.info("DiffSketch: removed %s, a temporary file left by an interrupted save", path)
            except OSError:
                pass
    return removed


_TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def _new_temp_file(path: Path) -> str:
    """Create an empty ".<name>.<8 random characters>.tmp" beside ``path`` and return its path.

    Unlike ``tempfile.mkstemp`` (always mode 0600), the file is created with mode 0666 less the
    process umask, as ``open()`` creates files, so what DiffSketch saves is as readable as any
    other file the user makes. The kernel applies the umask, so it is never read or changed (a
    read-and-restore of the umask would briefly change it for every thread of the process)."""
    for _ in range(100):
        suffix = "".join(secrets.choice(_TEMP_CHARS) for _ in range(8))
        tmp = path.parent / f".{path.name}.{suffix}{_TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return str(tmp)
    raise FileExistsError(f"could not create a temporary file beside {path}")


@contextmanager
def atomic_target(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``,
    on any error (or Cancel) it is removed, so ``path`` is never left half-written. Stale
    temporary files of earlier writes of ``path`` (a crash, kill -9) are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent, path.name)
    tmp = _new_temp_file(path)
    try:
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        yield tmp
        # A writer that re-creates the file (e.g. by renaming its own file onto it) loses the mode.
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_target(path) as tmp:
        Path(tmp).write_bytes(data)


# ---------------------------------------------------------------------------------------------
# DiffSketch tensor files
# ---------------------------------------------------------------------------------------------
# torch dtype -> the safetensors format's name for it
_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_safetensors(file, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` (contiguous, on the CPU) and ``metadata`` in the safetensors format to the
    open binary ``file``, one tensor at a time.

    safetensors' own ``save_file`` writes through a temporary file of its own naming beside the
    target, which a killed process leaves behind where no cleanup of ours recognises it; its
    ``save`` builds the whole file in memory (twice the size of a feature file). Writing the format
    ourselves into the atomic write's temporary file avoids both. The layout is the one
    safetensors writes: an 8-byte little-endian header length, a JSON header padded with spaces to
    a multiple of 8 bytes, then the tensors' bytes, larger element sizes first so every tensor stays
    aligned to its element size."""
    if sys.byteorder != "little":
        raise InvalidInputError("saving .safetensors files needs a little-endian machine")
    for name, t in tensors.items():
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise InvalidInputError(f"cannot save tensor {name!r} of dtype {t.dtype} as .safetensors")
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    file.write(struct.pack("<Q", len(text)))
    file.write(text)
    for name in order:
        t = tensors[name]
        if t.numel():
            file.write(memoryview(t.detach().cpu().reshape(-1).view(torch.uint8).numpy()))


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], kind: str, version: int, meta: dict
) -> Path:
    """Atomically write ``tensors`` with a DiffSketch JSON header (``meta`` must be JSON-serialisable).

    Nothing but the atomic write's own temporary file is written, so a kill -9 or power cut
    mid-write leaves only a file :func:`remove_stale_temp_files` removes."""
    header = {"format": FORMAT, "kind": kind, "version": int(version), **meta}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        write_safetensors(f, contiguous, {_HEADER_KEY: json.dumps(header)})
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


# ---------------------------------------------------------------------------------------------
# model files: checksum, finite weights, strict loading
# ---------------------------------------------------------------------------------------------
def tensors_checksum(tensors: Mapping[str, torch.Tensor], extra: str = "") -> str:
    """SHA-256 (hex) over ``extra`` and, by name, every tensor's name, dtype, shape and raw bytes.

    The one fingerprint of a set of tensors: model files store it to detect corruption, and pair
    folders record a prefix of it to tell two teachers apart."""
    digest = hashlib.sha256(extra.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity."""
    return sorted(
        name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
    )


def save_model_file(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], kind: str, version: int, header: dict
) -> Path:
    """Atomically write a model file: the tensors, ``header`` and the tensors' checksum.

    Refuses NaN or infinite weights (InvalidInputError), so a diverged model never overwrites a
    good file. ``header`` must be JSON-serialisable and must not set the reserved keys."""
    reserved = {"format", "kind", "version", CHECKSUM_KEY} & set(header)
    if reserved:
        raise InvalidInputError(f"{kind} header may not set the reserved keys {sorted(reserved)}.")
    try:
        json.dumps(header)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{kind} metadata must be JSON-serialisable: {e}") from e
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    bad = non_finite_tensors(tensors)
    if bad:
        raise InvalidInputError(
            f"not writing {Path(path).name}: the {kind} holds NaN or infinite values in {bad[:3]}"
            f"{' and more' if len(bad) > 3 else ''}."
        )
    return save_tensors(path, tensors, kind, version, {**header, CHECKSUM_KEY: tensors_checksum(tensors)})


def load_model_file(
    path: str | os.PathLike, kind: str, versions, device="cpu"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a model file written by :func:`save_model_file` (or by an earlier version that stored no
    checksum): ``(tensors on device, header)``.

    A checksum that does not match, or NaN or infinite weights, raise FileFormatError."""
    name = Path(path).name
    tensors, header = load_tensors(path, kind, versions, "cpu")
    stored = header.get(CHECKSUM_KEY)
    if stored is not None and stored != tensors_checksum(tensors):
        raise FileFormatError(
            f"{name}: the weights do not match their checksum (the file is corrupt); re-create or re-download it."
        )
    bad = non_finite_tensors(tensors)
    if bad:
        raise FileFormatError(
            f"{name}: the {kind} holds NaN or infinite values in {bad[:3]}{' and more' if len(bad) > 3 else ''}; "
            "it was saved from a diverged run. Use an earlier file or train again."
        )
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, header


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], name: str, fix: str) -> None:
    """``module.load_state_dict(state, strict=True)``, or FileFormatError listing the missing,
    unexpected and misshapen tensors, then ``fix`` (what the user should do)."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape))
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
    if details:
        raise FileFormatError(
            f"{name}: the weights do not fit this {type(module).__name__} ({'; '.join(details)}). {fix}"
        )
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied
        raise FileFormatError(
            f"{name}: the weights do not fit this {type(module).__name__} ({e}). {fix}"
        ) from e
