"""Evaluation metrics, one module per family: :mod:`.ssim` (SSIM, L1), :mod:`.perceptual` (CLIP
image similarity), :mod:`.fid` (FID) and :mod:`.boundaries` (the BSDS500 boundary benchmark).

Nothing here downloads anything: the FID Inception network reads a local ``.safetensors`` file
and CLIP similarity takes a model the caller already loaded.
"""
