"""DiffSketch: one-shot sketch extraction from Stable Diffusion features (arXiv 2401.04362).

Pure-torch library behind the ComfyUI nodes and the ``diffsketch`` command, laid out by pipeline
stage: :mod:`~diffsketch.capture` (taps, hooks, captured samples, timesteps), :mod:`~diffsketch.backends`
(sampling), :mod:`~diffsketch.train` (the generator and its training), :mod:`~diffsketch.distill`
(pairs, the student extractor, extraction), :mod:`~diffsketch.styles` (example-sketch styles) and
:mod:`~diffsketch.eval` (metrics and evaluation), over small shared modules (errors, fileio,
images, seeds, plotting); :mod:`diffsketch.cli` is on top. Import submodules directly; nothing
heavy is imported here.
"""

__version__ = "0.1.0"
