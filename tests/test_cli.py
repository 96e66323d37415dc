"""The ``diffsketch`` command on a tiny diffusers folder written at test time (no downloads)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffsketch.cli import main
from diffsketch.distill.extract_files import list_inputs


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_backend):
    root = tmp_path_factory.mktemp("tiny_sd")
    tiny_backend.unet.save_pretrained(root / "unet")
    tiny_backend.vae.save_pretrained(root / "vae")
    tiny_backend.text_encoder.save_pretrained(root / "text_encoder")
    return root


def test_sample_writes_features_and_image(tiny_model_dir, tmp_path, tiny_backend):
    from diffsketch.capture.sample import CapturedSample

    out = tmp_path / "example.safetensors"
    rc = main(
        [
            "sample",
            "--model",
            str(tiny_model_dir),
            "--prompt",
            "a horse",
            "--seed",
            "3",
            "--steps",
            "50",
            "--width",
            "64",
            "--height",
            "64",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    s = CapturedSample.load(out)
    assert len(s.unet) == 13 and s.meta["prompt"] == "a horse"
    assert Image.open(out.with_suffix(".png")).size == (64, 64)
    # the saved folder reproduces the in-memory backend exactly
    direct = tiny_backend.sample("a horse", seed=3, steps=50, width=64, height=64)
    torch.testing.assert_close(s.image, direct.image)


def test_sample_bad_size_is_an_error_exit(tiny_model_dir, tmp_path, capsys):
    rc = main(
        [
            "sample",
            "--model",
            str(tiny_model_dir),
            "--prompt",
            "x",
            "--width",
            "100",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "x.safetensors"),
        ]
    )
    assert rc == 2
    assert "width=100" in capsys.readouterr().err


def test_missing_model_folder(tmp_path, capsys):
    rc = main(
        [
            "sample",
            "--model",
            str(tmp_path / "nope"),
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "x.safetensors"),
        ]
    )
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_timesteps_command(tiny_model_dir, tmp_path):
    out = tmp_path / "analysis"
    rc = main(
        [
            "timesteps",
            "--model",
            str(tiny_model_dir),
            "--samples",
            "2",
            "--steps",
            "10",
            "--k",
            "3",
            "--width",
            "64",
            "--height",
            "64",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads((out / "timesteps.json").read_text())
    assert len(result["chosen"]) == 3
    for name in ("pca", "elbow", "schedule"):
        assert Image.open(out / f"{name}.png").size[0] > 100


def test_extract_command_files_folders_globs(tmp_path):
    from diffsketch.distill.extractor import SketchExtractor, save_extractor

    torch.manual_seed(0)
    ext = save_extractor(tmp_path / "style.safetensors", SketchExtractor())
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(photos / "a.png")
    Image.fromarray(rng.integers(0, 255, (33, 70), dtype=np.uint8)).save(photos / "b.png")  # grey
    Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8)).save(tmp_path / "c.png")  # RGBA
    (photos / "broken.png").write_bytes(b"not an image")
    files, missing = list_inputs([str(photos), str(tmp_path / "*.png"), "nothing/*.jpg"])
    assert {f.path.name for f in files} == {"a.png", "b.png", "c.png", "broken.png"} and missing == [
        "nothing/*.jpg"
    ]

    out = tmp_path / "sketches"
    rc = main(
        [
            "extract",
            str(photos),
            str(tmp_path / "c.png"),
            "--extractor",
            str(ext),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 1  # the unreadable file is listed and reported by the exit code
    assert Image.open(out / "a.png").size == (50, 40)
    assert Image.open(out / "b.png").size == (70, 33)
    assert Image.open(out / "c.png").size == (20, 20)
    assert not (out / "broken.png").exists()


def test_train_generate_distill_chain(tiny_model_dir, tmp_path):
    """sample -> fit-conditions -> train -> generate -> distill -> extract with the same files as the nodes."""
    import torchvision
    from safetensors.torch import save_file

    from diffsketch.distill.extractor import load_extractor
    from diffsketch.train.generator import load_generator
    from diffsketch.train.losses import TINY_CLIP_ARCHITECTURE, ClipImageEncoder

    torch.manual_seed(0)
    clip = tmp_path / "clip_vit_b_32.safetensors"
    tower = ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE).tower
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, str(clip))
    alex = tmp_path / "alexnet-owt-7be5be79.safetensors"
    save_file(
        {k: v.contiguous() for k, v in torchvision.models.alexnet(weights=None).state_dict().items()},
        str(alex),
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a horse\na cat\na city\na lake\na bowl of fruit\na mountain\n")
    model = ["--model", str(tiny_model_dir), "--device", "cpu"]
    small = ["--width", "64", "--height", "64"]

    assert (
        main(
            [
                "sample",
                *model,
                *small,
                "--prompt",
                "a horse",
                "--steps",
                "10",
                "--timesteps",
                "1,501,901",
                "--out",
                str(tmp_path / "ex.safetensors"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "fit-conditions",
                *model,
                "--prompts",
                str(prompts),
                "--components",
                "3",
                "--out",
                str(tmp_path / "cond.safetensors"),
            ]
        )
        == 0
    )
    sketch = (np.asarray(Image.open(tmp_path / "ex.png").convert("L")) > 128).astype(np.uint8) * 255
    Image.fromarray(sketch).save(tmp_path / "sketch.png")
    assert (
        main(
            [
                "train",
                *model,
                "--example",
                str(tmp_path / "ex.safetensors"),
                "--sketch",
                str(tmp_path / "sketch.png"),
                "--conditions",
                str(tmp_path / "cond.safetensors"),
                "--clip",
                str(clip),
                "--lpips",
                str(alex),
                "--iterations",
                "2",
                "--schedule",
                "fast",
                "--low-memory",
                "--out",
                str(tmp_path / "style.safetensors"),
            ]
        )
        == 0
    )
    trained = load_generator(tmp_path / "style.safetensors")
    assert trained.meta["training"]["low_memory"] is True
    assert (tmp_path / "style.train.safetensors").is_file() and (tmp_path / "style.loss.png").is_file()
    assert (
        main(
            [
                "generate",
                *model,
                *small,
                "--steps",
                "10",
                "--generator",
                str(tmp_path / "style.safetensors"),
                "--prompt",
                "a cat",
                "--out",
                str(tmp_path / "gen"),
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "gen" / "000000_sketch.png").size == (64, 64)
    assert (
        main(
            [
                "distill",
                *model,
                *small,
                "--steps",
                "10",
                "--generator",
                str(tmp_path / "style.safetensors"),
                "--conditions",
                str(tmp_path / "cond.safetensors"),
                "--pairs",
                "2",
                "--pairs-dir",
                str(tmp_path / "pairs"),
                "--pairs-batch",
                "2",
                "--schedule",
                "fast",
                "--iterations",
                "2",
                "--batch-size",
                "2",
                "--crop-size",
                "64",
                "--no-lpips",
                "--out",
                str(tmp_path / "ext.safetensors"),
            ]
        )
        == 0
    )
    load_extractor(tmp_path / "ext.safetensors")
    pairs_manifest = json.loads((tmp_path / "pairs" / "manifest.json").read_text())
    assert pairs_manifest["settings"]["schedule"] == "fast" and pairs_manifest["done"] == [[0, 1]]
    assert (
        main(
            [
                "extract",
                str(tmp_path / "ex.png"),
                "--extractor",
                str(tmp_path / "ext.safetensors"),
                "--out",
                str(tmp_path / "out"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "out" / "ex.png").size == (64, 64)
