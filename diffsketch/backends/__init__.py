"""Sampling backends: diffusers (here) and ComfyUI (``nodes/comfy_backend.py``)."""

from .base import SamplingBackend, make_noise

__all__ = ["SamplingBackend", "make_noise"]
