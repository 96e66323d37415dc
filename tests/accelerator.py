"""A CPU tensor that converts to numpy the way an accelerator's (CUDA, MPS, XPU) tensor does, so code
paths that forget ``.cpu()`` fail on a CPU-only machine.

On a GPU, ``tensor.numpy()`` and ``np.asarray(tensor)`` (``__array__``) raise ``TypeError: can't
convert cuda:0 device type tensor to numpy``; ``.tolist()``, ``.item()``, ``float()`` and ``bool()``
copy to the host and work. :class:`OnAccelerator` refuses the same conversions, keeps itself
through every other tensor operation (``.float()``, ``.flatten()``, slicing, ``.to(dtype)``), and
becomes a plain tensor where the data would really reach the host: ``.cpu()``, ``.to("cpu")``,
``.to(device="cpu")``, ``.to(torch.device("cpu"))``, and ``.numpy(force=True)``.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

DEVICE_NAME = "cuda:0"
_REFUSED = {torch.Tensor.numpy, torch.Tensor.__array__}


def _is_cpu(device) -> bool:
    return device is not None and torch.device(device).type == "cpu"


def _moves_to_cpu(func, args, kwargs) -> bool:
    if func is torch.Tensor.cpu:
        return True
    if func is torch.Tensor.to:
        if _is_cpu(kwargs.get("device")):
            return True
        return any(isinstance(a, (str, torch.device)) and _is_cpu(a) for a in args[1:])
    return False


def _plain(value):
    return tree_map(lambda v: v.as_subclass(torch.Tensor) if isinstance(v, OnAccelerator) else v, value)


class OnAccelerator(torch.Tensor):
    """See the module docstring; make one with :func:`on_accelerator`."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _REFUSED and not kwargs.get("force", False):
            raise TypeError(
                f"can't convert {DEVICE_NAME} device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                "to host memory first."
            )
        if _moves_to_cpu(func, args, kwargs) or func in _REFUSED:
            with torch._C.DisableTorchFunctionSubclass():
                return _plain(func(*_plain(args), **kwargs))
        return super().__torch_function__(func, types, args, kwargs)


def on_accelerator(tensor: torch.Tensor) -> OnAccelerator:
    """``tensor``'s data as an :class:`OnAccelerator` (shared storage; a Parameter stays one for
    ``isinstance`` checks only through its data)."""
    return tensor.detach().as_subclass(OnAccelerator)
