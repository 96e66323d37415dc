"""Tier 2: tests against a real ComfyUI source tree (``COMFYUI_PATH``), skipped with a reason otherwise.

Fixtures write a random-weight SD1.5-format checkpoint once (cached by the recipe's hash), lay out
a throw-away ComfyUI base directory with this pack linked into ``custom_nodes``, and start a real
server on 127.0.0.1 (a free port) for the session.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from comfy_harness import COMFYUI_PATH, REPO, running_server, write_loss_weights

SKIP_REASON = (
    "COMFYUI_PATH is not set: the real-ComfyUI tier needs a ComfyUI v0.8 source tree with its requirements "
    "installed (see docs/development.md, 'Running the tests')"
)


def pytest_collection_modifyitems(config, items):
    if COMFYUI_PATH and Path(COMFYUI_PATH, "main.py").is_file():
        return
    reason = SKIP_REASON if not COMFYUI_PATH else f"COMFYUI_PATH={COMFYUI_PATH} has no main.py"
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.skip(reason=reason))


def cached_checkpoint(
    recipe_name: str, stem: str, uses: tuple[str, ...] = (), args: tuple[str, ...] = ()
) -> Path:
    """A random-weight checkpoint written by the recipe script ``recipe_name`` (in a child process,
    so its memory is returned; ``args`` go before the output path), cached under
    DIFFSKETCH_TEST_CACHE by the hash of the recipe, of the recipes it ``uses`` and of ``args``."""
    recipe = Path(__file__).with_name(recipe_name)
    digest = hashlib.sha256(recipe.read_bytes())
    for name in uses:
        digest.update(Path(__file__).with_name(name).read_bytes())
    digest.update(repr(args).encode())
    digest = digest.hexdigest()[:12]
    cache = Path(os.environ.get("DIFFSKETCH_TEST_CACHE", Path.home() / ".cache" / "diffsketch-tests"))
    path = cache / f"{stem}_{digest}.safetensors"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "COMFYUI_PATH": COMFYUI_PATH}
        subprocess.run([sys.executable, str(recipe), *args, str(path)], check=True, env=env, cwd=str(cache))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """Random-weight SD1.5-format checkpoint, generated once per recipe version."""
    return cached_checkpoint("tiny_checkpoint.py", "tiny_sd15")


@pytest.fixture(scope="session")
def sdxl_checkpoint() -> Path:
    """Random-weight SDXL checkpoint ComfyUI detects as SDXL (2.3 GB, see sdxl_checkpoint.py)."""
    return cached_checkpoint("sdxl_checkpoint.py", "tiny_sdxl", uses=("tiny_checkpoint.py",))


@pytest.fixture(scope="session")
def sd2_checkpoint() -> Path:
    """Random-weight SD 2.x 768-v checkpoint ComfyUI detects as SD 2.x v-prediction (1.0 GB, see
    sd2_checkpoint.py)."""
    return cached_checkpoint("sd2_checkpoint.py", "tiny_sd2v", uses=("tiny_checkpoint.py",))


@pytest.fixture(scope="session")
def sd2_23_layer_checkpoint() -> Path:
    """The SD 2.x checkpoint with a 23-layer text encoder, as diffusers' conversion script writes
    them (see sd2_23_layer_checkpoint.py)."""
    return cached_checkpoint(
        "sd2_23_layer_checkpoint.py", "tiny_sd2v_23", uses=("sd2_checkpoint.py", "tiny_checkpoint.py")
    )


@pytest.fixture(scope="session")
def zimage_files() -> tuple[Path, Path]:
    """``(diffusion model, VAE)``: a random-weight Z-Image for UNETLoader (2.5 GB) and the Flux
    16-channel VAE for VAELoader (0.17 GB), see dit_checkpoints.py; no text encoder."""
    uses = ("tiny_checkpoint.py",)
    return (
        cached_checkpoint("dit_checkpoints.py", "tiny_zimage", uses, ("zimage",)),
        cached_checkpoint("dit_checkpoints.py", "tiny_flux_vae", uses, ("flux_vae",)),
    )


@pytest.fixture(scope="session")
def flux_files() -> tuple[Path, Path, Path]:
    """``(dev diffusion model, schnell diffusion model, VAE)``: random-weight Flux.1 dev and schnell
    for UNETLoader (1.4 GB each; the same weights, schnell without ``guidance_in``) and the 16-channel
    VAE for VAELoader (0.17 GB), see dit_checkpoints.py; no text encoders."""
    uses = ("tiny_checkpoint.py",)
    return (
        cached_checkpoint("dit_checkpoints.py", "tiny_flux_dev", uses, ("flux",)),
        cached_checkpoint("dit_checkpoints.py", "tiny_flux_schnell", uses, ("flux_schnell",)),
        cached_checkpoint("dit_checkpoints.py", "tiny_flux_vae", uses, ("flux_vae",)),
    )


@pytest.fixture(scope="session")
def zimage_text_encoder() -> Path:
    """Z-Image's Qwen3 text encoder for CLIPLoader (type lumina2), random weights, shrunk to a depth
    and FFN width ComfyUI only builds with qwen3_checkpoint.py's config patch (0.95 GB)."""
    return cached_checkpoint("qwen3_checkpoint.py", "tiny_qwen3", ("tiny_checkpoint.py",))


@pytest.fixture(scope="session")
def t5_text_encoders() -> tuple[Path, Path]:
    """``(T5-XXL, CLIP-L)``: SD 3.5's and Flux.1's text encoders for the CLIP loaders, random
    weights; T5-XXL shrunk to a width ComfyUI only builds with t5_checkpoint.py's config patch
    (0.40 GB), CLIP-L full size (0.25 GB)."""
    uses = ("tiny_checkpoint.py",)
    return (
        cached_checkpoint("t5_checkpoint.py", "tiny_t5xxl", uses, ("t5xxl",)),
        cached_checkpoint("t5_checkpoint.py", "tiny_clip_l", uses, ("clip_l",)),
    )


@pytest.fixture(scope="session")
def sd35_checkpoint() -> Path:
    """A random-weight SD 3.5 checkpoint (MM-DiT, CLIP-L, CLIP-G, VAE; no T5) for Load Checkpoint
    (1.8 GB, see dit_checkpoints.py)."""
    return cached_checkpoint("dit_checkpoints.py", "tiny_sd35", ("tiny_checkpoint.py",), ("sd35",))


@pytest.fixture(scope="session")
def comfy_inprocess():
    """ComfyUI imported in this process (CPU), plus this pack imported under a private name."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_checkpoint import import_pack

    pack = import_pack(COMFYUI_PATH, "diffsketch_pack_under_test")
    import comfy.sd  # noqa: F401

    importlib.import_module(f"{pack.__name__}.nodes.comfy_backend")  # imported lazily by the nodes
    return pack


@pytest.fixture(scope="session")
def loaded_checkpoint(comfy_inprocess, tiny_checkpoint):
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(tiny_checkpoint), output_vae=True, output_clip=True
    )
    return model, clip, vae


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    d = REPO / "test_artifacts"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, tiny_checkpoint, artifacts_dir):
    with running_server(tmp_path_factory.mktemp("comfy_base"), tiny_checkpoint, artifacts_dir) as server:
        yield server


@pytest.fixture(scope="session")
def loss_files(comfy_server):
    """Tiny CLIP and AlexNet weight files in the server's model folders (random weights)."""
    return write_loss_weights(comfy_server.base / "models" / "diffsketch")
