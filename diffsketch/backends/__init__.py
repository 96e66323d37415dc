"""Sampling backends: diffusers (here) and ComfyUI (``nodes/comfy_backend.py``)."""

from .base import SamplingBackend, check_size, fast_schedule, make_noise

__all__ = ["SamplingBackend", "check_size", "fast_schedule", "make_noise"]
