"""Write a random-weight SD1.5-format checkpoint with ComfyUI's own module classes.

The UNet keeps SD 1.5's block pattern (2 ResBlocks per level, cross-attention on the first three
levels, 12 output blocks) with 320 channels at every level, so ComfyUI detects it as SD15 and
diffusers can express it too (the parity test loads the same file in both). CLIP-L and the VAE
are full size, as ComfyUI's configs for them are fixed. Run: python tiny_checkpoint.py OUT.safetensors
"""

from __future__ import annotations

import json
import os
import sys

import torch
from comfy_harness import TEST_DEVICE

UNET_KWARGS = dict(
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=320,
    num_res_blocks=[2, 2, 2, 2],
    channel_mult=[1, 1, 1, 1],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
    # popped from the end: the last entries are output blocks 0-2 (lowest resolution, no attention)
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    transformer_depth_middle=1,
    context_dim=768,
    num_heads=8,
    num_head_channels=-1,
    use_spatial_transformer=True,
    use_linear_in_transformer=False,
    legacy=False,
    adm_in_channels=None,
)
VAE_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def prepare_comfy_import(comfy_path: str) -> None:
    """Make ``import comfy...`` work in-process on a CPU-only machine.

    comfy.model_management probes CUDA at import and ``args`` are not parsed from argv when
    ComfyUI is imported as a library, so set the device first: the CPU, as the test server's
    ``--cpu``, unless DIFFSKETCH_TEST_DEVICE=cuda asks for the GPU."""
    if comfy_path not in sys.path:
        sys.path.insert(0, comfy_path)
    import comfy.cli_args

    if TEST_DEVICE == "cpu" or not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True


def import_pack(comfy_path: str, module_name: str):
    """ComfyUI importable in this process (:func:`prepare_comfy_import`), then this pack imported
    under ``module_name`` (a private name, so it never clashes with a pack ComfyUI loaded itself)."""
    import importlib.util
    from pathlib import Path

    prepare_comfy_import(comfy_path)
    if module_name not in sys.modules:
        repo = Path(__file__).resolve().parents[2]
        spec = importlib.util.spec_from_file_location(
            module_name, repo / "__init__.py", submodule_search_locations=[str(repo)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def meta_modules(comfy_path: str, unet_kwargs: dict, clip_configs: list[str]):
    """``(unet, vae, clips)``: ComfyUI's UNet built from ``unet_kwargs``, SD's VAE and one CLIP
    text tower per config file (paths under ComfyUI's ``comfy/``), all on the meta device, as only
    their parameter names and shapes are used."""
    prepare_comfy_import(comfy_path)
    import comfy.clip_model
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    unet = UNetModel(**unet_kwargs, device="meta", operations=ops)
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=4)
    clips = []
    for config_file in clip_configs:
        with open(os.path.join(comfy_path, "comfy", config_file)) as f:
            config = json.load(f)
        clips.append(
            comfy.clip_model.CLIPTextModel(config, dtype=torch.float32, device="meta", operations=ops)
        )
    return unet, vae, clips


def build_state_dict(comfy_path: str, seed: int = 0) -> dict[str, torch.Tensor]:
    unet, vae, (clip,) = meta_modules(comfy_path, UNET_KWARGS, ["sd1_clip_config.json"])
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for prefix, module in (
        ("model.diffusion_model.", unet),
        ("first_stage_model.", vae),
        ("cond_stage_model.transformer.", clip),
    ):
        out.update(random_state(module, g, prefix))
    return out


def random_tensor(shape, key: str, g: torch.Generator) -> torch.Tensor:
    """A random-weight value for the parameter ``key``: ones for norm scales (zeros would flatten
    every feature), zeros for biases, N(0, 0.02^2) for the rest."""
    if len(shape) == 1 and key.endswith("weight"):
        return torch.ones(shape)
    if key.endswith("bias"):
        return torch.zeros(shape)
    return torch.randn(shape, generator=g) * 0.02


def random_state(module, g: torch.Generator, prefix: str = "") -> dict[str, torch.Tensor]:
    """``module``'s state (a meta-device module will do) filled by :func:`random_tensor` in float16,
    its keys prefixed; position ids, which are buffers, are left out."""
    return {
        prefix + k: random_tensor(v.shape, k, g).to(torch.float16)
        for k, v in module.state_dict().items()
        if not k.endswith("position_ids")
    }


def save_checkpoint(path: str, state: dict[str, torch.Tensor]) -> str:
    """Write ``state`` to ``path`` atomically (a killed run leaves no half file in the cache)."""
    from safetensors.torch import save_file

    tmp = path + ".tmp"
    save_file(state, tmp)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    save_checkpoint(sys.argv[1], build_state_dict(os.environ["COMFYUI_PATH"]))
