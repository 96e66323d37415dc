"""Resumable training checkpoints: a model, its optimiser, the step count and RNG states in one file.

Used by the one-example trainer (``training.py``) and by distillation. The file is a DiffSketch
``.safetensors`` written atomically through :mod:`diffsketch.fileio`, so a Cancel or crash while
saving leaves the previous checkpoint intact. Layout:

- ``model.<name>``: every entry of ``model.state_dict()``;
- ``optim.<param_index>.<key>``: every tensor of the optimiser's per-parameter state (Adam's
  ``exp_avg``, ``exp_avg_sq``, ``step``); the optimiser's ``param_groups`` and any non-tensor
  per-parameter state go into the JSON header (``"optimizer"``);
- ``rng.<name>``: RNG states as uint8 tensors (``torch.get_rng_state()`` and friends);
- header: ``"step"`` and the caller's ``"meta"`` (any JSON: config, loss history, ...).

``kind`` names what the checkpoint belongs to (e.g. ``"training_checkpoint"``), so a file of one
loop can never be resumed by another; ``version`` is the caller's format version.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn

from .. import fileio
from ..errors import FileFormatError, InvalidInputError

MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."
RNG_PREFIX = "rng."


def _json_value(value, where: str):
    """Plain JSON value of an optimiser setting (tuples become lists, 0-dim tensors numbers)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{where} is {value}; a checkpoint cannot store a non-finite setting")
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(
            f"{where} ({type(value).__name__}) cannot be stored in a checkpoint: {e}"
        ) from e
    return list(value) if isinstance(value, tuple) else value


def save_training_state(
    path: str | os.PathLike,
    *,
    kind: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    rng: dict[str, torch.Tensor] | None = None,
    meta: dict | None = None,
    version: int = 1,
) -> Path:
    """Atomically write a resumable checkpoint (see the module docstring for the layout)."""
    if not isinstance(step, int) or step < 0:
        raise InvalidInputError(f"checkpoint step must be a non-negative integer, got {step!r}")
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        tensors[MODEL_PREFIX + name] = value
    optim_state = optimizer.state_dict()
    scalar_state: dict[str, dict] = {}
    for index, entries in optim_state["state"].items():
        for key, value in entries.items():
            if "." in str(key):
                raise InvalidInputError(f"optimiser state key {key!r} contains a '.'; cannot store it")
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIM_PREFIX}{index}.{key}"] = value
            else:
                scalar_state.setdefault(str(index), {})[key] = _json_value(
                    value, f"optimiser state {index}.{key}"
                )
    groups = []
    for g, group in enumerate(optim_state["param_groups"]):
        groups.append({k: _json_value(v, f"optimiser param_groups[{g}].{k}") for k, v in group.items()})
    for name, state in (rng or {}).items():
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
            raise InvalidInputError(
                f"RNG state {name!r} must be a uint8 tensor (as torch.get_rng_state() gives)"
            )
        tensors[RNG_PREFIX + name] = state
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"checkpoint meta must be JSON-serialisable: {e}") from e
    header = {
        "step": step,
        "optimizer": {
            "type": type(optimizer).__name__,
            "param_groups": groups,
            "scalar_state": scalar_state,
        },
        "meta": meta,
    }
    return fileio.save_model_file(path, tensors, kind, version, header)


def _restore_tuples(loaded_groups: list[dict], current_groups: Iterable[dict]) -> list[dict]:
    """JSON turned tuple settings (Adam's ``betas``) into lists; give them back their type."""
    out = []
    for loaded, current in zip(loaded_groups, current_groups):
        group = dict(loaded)
        for key, value in current.items():
            if isinstance(value, tuple) and isinstance(group.get(key), list):
                group[key] = tuple(group[key])
        out.append(group)
    return out


def _check_state_shapes(state: dict[int, dict], optimizer: torch.optim.Optimizer, name: str) -> None:
    """Per-parameter state tensors (Adam's moments) must have their parameter's shape; torch itself
    would only fail at the next step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entries in state.items():
        if not 0 <= index < len(params):
            raise FileFormatError(
                f"{name}: optimiser state for parameter {index}, which this optimiser lacks."
            )
        for entry, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                raise FileFormatError(
                    f"{name}: optimiser state {index}.{entry} has shape {list(value.shape)} but the parameter is "
                    f"{list(params[index].shape)}; the checkpoint was made for another model."
                )


def load_training_state(
    path: str | os.PathLike,
    *,
    kind: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    device="cpu",
    versions=(1,),
) -> tuple[int, dict[str, torch.Tensor], dict]:
    """Load a checkpoint written by :func:`save_training_state` into ``model`` (and ``optimizer``
    unless None). Returns ``(step, rng, meta)``.

    A file of another kind or version, or whose weights or optimiser state do not fit ``model``
    and ``optimizer``, raises :class:`FileFormatError` (``model`` may then be partly loaded).
    """
    name = Path(path).name
    tensors, header = fileio.load_model_file(path, kind, versions, device)
    step = header.get("step")
    if not isinstance(step, int) or step < 0 or not isinstance(header.get("meta", {}), dict):
        raise FileFormatError(f"{name}: the checkpoint header is incomplete (no valid step); re-create it.")
    model_state = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    fileio.load_state_strict(
        model,
        model_state,
        name,
        "The checkpoint was made for a model of another shape; resume with the same model settings or start "
        "a new run.",
    )
    if optimizer is not None:
        saved = header.get("optimizer")
        if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list):
            raise FileFormatError(f"{name}: the checkpoint holds no optimiser state; re-create it.")
        if saved.get("type") not in (None, type(optimizer).__name__):
            raise FileFormatError(
                f"{name} holds {saved.get('type')} optimiser state, not {type(optimizer).__name__}."
            )
        state: dict[int, dict] = {}
        try:
            for key, value in tensors.items():
                if key.startswith(OPTIM_PREFIX):
                    index, entry = key[len(OPTIM_PREFIX) :].split(".", 1)
                    state.setdefault(int(index), {})[entry] = value
            for index, entries in saved.get("scalar_state", {}).items():
                state.setdefault(int(index), {}).update(entries)
            _check_state_shapes(state, optimizer, name)
            groups = _restore_tuples(saved["param_groups"], optimizer.param_groups)
            optimizer.load_state_dict({"state": state, "param_groups": groups})
        except FileFormatError:
            raise
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise FileFormatError(
                f"{name}: the optimiser state does not fit this optimiser ({e}); the checkpoint was made for "
                "other parameters."
            ) from e
    rng = {k[len(RNG_PREFIX) :]: v.cpu() for k, v in tensors.items() if k.startswith(RNG_PREFIX)}
    return step, rng, dict(header.get("meta", {}))


__all__ = ["load_training_state", "save_training_state"]
