"""Custom socket types shared by the DiffSketch nodes (ids are public: keep them stable)."""

from comfy_api.latest import io

Features = io.Custom("DIFFSKETCH_FEATURES")
Timesteps = io.Custom("DIFFSKETCH_TIMESTEPS")
Conditions = io.Custom("DIFFSKETCH_CONDITIONS")
Generator = io.Custom("DIFFSKETCH_GENERATOR")
ClipLoss = io.Custom("DIFFSKETCH_CLIP_LOSS")
Extractor = io.Custom("DIFFSKETCH_EXTRACTOR")

CATEGORY = "DiffSketch"
