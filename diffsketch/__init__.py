"""DiffSketch: one-shot sketch extraction from Stable Diffusion features (arXiv 2401.04362).

Pure-torch library behind the ComfyUI nodes and the ``diffsketch`` command. Import submodules
directly (``diffsketch.spec``, ``diffsketch.backends.diffusers``, ...); nothing heavy is imported
here.
"""

__version__ = "0.1.0"
