"""The ``diffsketch`` command on a tiny diffusers folder written at test time (no downloads)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from compare import relative_error
from PIL import Image

from diffsketch.capture.sampling import SamplingSettings
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
    direct = tiny_backend.sample("a horse", SamplingSettings(seed=3, steps=50, width=64, height=64))
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


def test_sample_encodes_a_long_weighted_prompt_at_the_clip_skip_asked_and_says_so(
    tiny_model_dir, tmp_path, capsys, tiny_backend
):
    from compare import TAG_PROMPT, clip_skip_conditions

    from diffsketch.capture.sample import CapturedSample

    out = tmp_path / "example.safetensors"
    few = ["--steps", "10", "--timesteps", "1,501", "--width", "64", "--height", "64", "--seed", "3"]
    args = ["sample", "--model", str(tiny_model_dir), "--prompt", TAG_PROMPT, *few, "--device", "cpu"]
    assert main([*args, "--clip-skip", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "note: the prompt is 208 tokens" in err and "3 windows" in err and "nothing is cut off" in err
    cond = clip_skip_conditions(tiny_backend, TAG_PROMPT, skips=(2,))[2]
    uncond = clip_skip_conditions(tiny_backend, "", skips=(2,))[2]  # the negative is read at clip skip 2 too
    assert cond.context.shape == (1, 3 * 77, 32)
    few_settings = SamplingSettings(seed=3, steps=10, width=64, height=64, timesteps=(1, 501))
    direct = tiny_backend.sample(cond, few_settings, uncond=uncond)
    torch.testing.assert_close(CapturedSample.load(out).image, direct.image)
    rc = main([*args, "--clip-skip", "3", "--out", str(tmp_path / "x.safetensors")])
    assert (
        rc == 2 and "clip skip must be a whole number from 1 (the last layer) to 2" in capsys.readouterr().err
    )


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
    err = capsys.readouterr().err
    assert rc == 2 and "--model" in err and "no such file or folder" in err


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


def test_extract_command_dtype_gives_that_precisions_sketches(tmp_path, monkeypatch):
    import diffsketch.distill.extract as extract_module
    from diffsketch.distill.extract import extract
    from diffsketch.distill.extractor import SketchExtractor, save_extractor

    # the default is bfloat16 here whatever this machine's CPU is, so fp32 must be asked for
    monkeypatch.setattr(extract_module, "cpu_has_native_bf16", lambda: True)
    torch.manual_seed(0)
    model = SketchExtractor().eval()
    ext = save_extractor(tmp_path / "style.safetensors", model)
    pixels = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")

    def library(dtype):
        sketch, _ = extract(model, pixels[None], dtype=dtype)
        return (sketch[0, ..., 0].clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()

    assert not np.array_equal(library("fp32"), library("bf16"))  # the precision shows in the pixels
    command = ["extract", str(tmp_path / "a.png"), "--extractor", str(ext), "--device", "cpu"]
    assert main([*command, "--out", str(tmp_path / "fp32"), "--dtype", "fp32"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "fp32" / "a.png")), library("fp32"))
    assert main([*command, "--out", str(tmp_path / "auto")]) == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "auto" / "a.png")), library("fp32"))
    # the folder keeps its precision: continuing it in another one is refused
    assert main([*command, "--out", str(tmp_path / "fp32"), "--dtype", "bf16"]) == 2


def loss_model_files(root: Path) -> tuple[Path, Path]:
    """``(clip, alexnet)``: random-weight CLIP image tower and AlexNet files for ``train --clip
    --lpips``, written in ``root``."""
    import torchvision
    from safetensors.torch import save_file

    from diffsketch.train.losses import TINY_CLIP_ARCHITECTURE, ClipImageEncoder

    torch.manual_seed(0)
    clip = root / "clip_vit_b_32.safetensors"
    tower = ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE).tower
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, str(clip))
    alex = root / "alexnet-owt-7be5be79.safetensors"
    save_file(
        {k: v.contiguous() for k, v in torchvision.models.alexnet(weights=None).state_dict().items()},
        str(alex),
    )
    return clip, alex


@pytest.fixture(scope="module")
def train_inputs(tiny_model_dir, tmp_path_factory):
    """An example, conditions, a sketch and tiny CLIP / AlexNet files, made with the command line."""
    root = tmp_path_factory.mktemp("train_inputs")
    clip, alex = loss_model_files(root)
    prompts = root / "prompts.txt"
    prompts.write_text("a horse\na cat\na city\na lake\na bowl of fruit\na mountain\n")
    model = ["--model", str(tiny_model_dir), "--device", "cpu"]
    small = ["--width", "64", "--height", "64"]
    example = ["--prompt", "a horse", "--steps", "10", "--timesteps", "1,501,901"]
    assert main(["sample", *model, *small, *example, "--out", str(root / "ex.safetensors")]) == 0
    fit = ["--prompts", str(prompts), "--components", "3", "--out", str(root / "cond.safetensors")]
    assert main(["fit-conditions", *model, *fit]) == 0
    sketch = (np.asarray(Image.open(root / "ex.png").convert("L")) > 128).astype(np.uint8) * 255
    Image.fromarray(sketch).save(root / "sketch.png")
    return SimpleNamespace(
        model=model,
        small=small,
        clip=clip,
        alex=alex,
        example=root / "ex.safetensors",
        conditions=root / "cond.safetensors",
        sketch=root / "sketch.png",
        root=root,
    )


def train_args(inputs, out, *extra):
    return [
        "train",
        *inputs.model,
        "--example",
        str(inputs.example),
        "--sketch",
        str(inputs.sketch),
        "--conditions",
        str(inputs.conditions),
        "--clip",
        str(inputs.clip),
        "--lpips",
        str(inputs.alex),
        "--schedule",
        "fast",
        "--out",
        str(out),
        *extra,
    ]


def test_train_generate_distill_chain(train_inputs, tmp_path, capfd):
    """train -> generate -> distill -> extract with the same files as the nodes; what each prints."""
    from diffsketch.distill.extractor import load_extractor
    from diffsketch.train.generator import load_generator

    inputs = train_inputs
    style = tmp_path / "style.safetensors"
    capfd.readouterr()
    assert main(train_args(inputs, style, "--iterations", "2", "--low-memory")) == 0
    out, err = capfd.readouterr()
    trained = load_generator(style)
    assert trained.meta["training"]["low_memory"] is True and trained.timesteps == (1, 501, 901)
    assert (tmp_path / "style.train.safetensors").is_file() and (tmp_path / "style.loss.png").is_file()
    assert f"loss plot: {tmp_path / 'style.loss.png'}" in out
    # diffusers' and transformers' loading reports are silenced; the command's own bar is there
    assert "Loading weights" not in err and "kept in float32" not in err and "training" in err

    gen = ["generate", *inputs.model, *inputs.small, "--steps", "10", "--generator", str(style)]
    assert main([*gen, "--prompt", "a cat", "--out", str(tmp_path / "gen")]) == 0
    out, err = capfd.readouterr()
    assert Image.open(tmp_path / "gen" / "000000_sketch.png").size == (64, 64)
    assert "generating" in err and "1 image/sketch pair(s)" in out

    distill_args = [
        "distill",
        *inputs.model,
        *inputs.small,
        "--steps",
        "10",
        "--generator",
        str(style),
        "--conditions",
        str(inputs.conditions),
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
    assert main(distill_args) == 0
    out, err = capfd.readouterr()
    # the two bars follow each other: the training bar starts once the pairs are done
    assert "pairs" in err and err.index("training") > err.rindex("pairs")
    assert "training a new student from step 0 on 2 pairs" in out
    load_extractor(tmp_path / "ext.safetensors")
    pairs_manifest = json.loads((tmp_path / "pairs" / "manifest.json").read_text())
    assert pairs_manifest["settings"]["schedule"] == "fast" and pairs_manifest["done"] == [[0, 1]]
    extract = ["extract", str(inputs.root / "ex.png"), "--extractor", str(tmp_path / "ext.safetensors")]
    assert main([*extract, "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "out" / "ex.png").size == (64, 64)


class CtrlCAt:
    """A progress bar that raises KeyboardInterrupt (Ctrl-C) when it is moved to step ``n``."""

    def __init__(self, n):
        self.n = n

    def __call__(self, total, desc, unit="it"):
        def update(done, total_now):
            if desc == "training" and done == self.n:
                raise KeyboardInterrupt

        update.close = lambda: None
        return update


def test_ctrl_c_in_train_says_where_the_checkpoint_is_and_how_to_continue(
    train_inputs, tmp_path, capsys, monkeypatch
):
    import shlex

    import diffsketch.cli.train as cli
    from diffsketch.train.generator import load_generator

    style = tmp_path / "style.safetensors"
    args = train_args(train_inputs, style, "--iterations", "3", "--checkpoint-every", "100")
    with monkeypatch.context() as patch:
        patch.setattr(cli, "progress_bar", CtrlCAt(2))
        assert main(args) == 130
    err = capsys.readouterr().err
    checkpoint = tmp_path / "style.train.safetensors"
    assert "cancelled at step 2 of 3" in err and f"checkpoint (step 2): {checkpoint}" in err
    command = err.split("to continue: ")[1].strip()
    assert command.startswith("diffsketch train ") and command.endswith(" --resume")

    # a rerun without --resume would overwrite that checkpoint: refused, saying how to go on
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a training run (step 2)" in err and "--resume" in err and "--restart" in err
    assert main([*args, "--resume", "--restart"]) == 2

    # the printed command continues the run
    assert main(shlex.split(command)[1:]) == 0
    assert "resumed at step 2 of 3" in capsys.readouterr().out
    assert load_generator(style).meta["steps_done"] == 3


def test_a_scripted_cancel_checkpoints_like_ctrl_c(train_inputs, tmp_path):
    """`diffsketch train ... &` in a script starts with SIGINT ignored; `kill -INT` must still cancel it."""
    import os
    import signal
    import subprocess
    import sys

    style = tmp_path / "style.safetensors"
    checkpoint = tmp_path / "style.train.safetensors"
    args = train_args(train_inputs, style, "--iterations", "100000", "--checkpoint-every", "1")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffsketch.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        for _ in range(6000):  # training has begun once the first checkpoint is there
            if checkpoint.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGINT)
        try:  # a guard against a hang, not a timing check: a cancel takes one step and a checkpoint
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGINT did not stop `diffsketch train` (still running after 300 s)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "diffsketch train: cancelled at step" in err and f"{checkpoint}" in err and "--resume" in err
    assert not style.exists()


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if anything loads the SD model: the checks must come first."""
    from diffsketch.backends.diffusers import DiffusersBackend

    def refuse(*args, **kwargs):
        raise AssertionError("the SD model was loaded before the inputs were checked")

    monkeypatch.setattr(DiffusersBackend, "load", refuse)


def _one_error_line(capsys, command) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"diffsketch {command}: error: "), err
    return err[0]


@pytest.mark.parametrize("option", ["--example", "--sketch", "--conditions", "--clip"])
def test_train_checks_every_path_before_loading_anything(
    train_inputs, tmp_path, capsys, no_model_loading, option
):
    args = train_args(train_inputs, tmp_path / "style.safetensors", "--iterations", "1")
    args[args.index(option) + 1] = str(tmp_path / "missing.file")
    assert main(args) == 2
    line = _one_error_line(capsys, "train")
    assert option in line and "missing.file" in line


def test_train_refuses_a_features_file_from_another_prediction_type(train_inputs, tmp_path, capsys):
    """The example was sampled with the model's own (epsilon) prediction type; training with
    --prediction-type v_prediction reads the same weights another way, so it is refused."""
    args = train_args(train_inputs, tmp_path / "style.safetensors", "--iterations", "1")
    assert main([*args, "--prediction-type", "v_prediction"]) == 2
    line = _one_error_line(capsys, "train")
    assert "the example was made with epsilon-prediction" in line
    assert "the model you train on samples v-prediction" in line and "--prediction-type" in line
    assert not (tmp_path / "style.safetensors").exists()


def test_commands_refuse_bad_paths_and_devices_in_one_line(
    train_inputs, tiny_backend, tmp_path, capsys, no_model_loading
):
    import torch

    model = train_inputs.model
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    generator = tmp_path / "missing_style.safetensors"
    gen = ["generate", *model, "--generator", str(train_inputs.conditions), "--prompt", "x"]
    cases = [
        (["generate", *model, "--generator", str(generator), "--prompt", "x", "--out", str(tmp_path)], "--generator"),
        ([*gen, "--out", str(tmp_path / "o")], "conditions"),  # a file of another kind
        (["distill", *model, "--generator", str(generator), "--conditions", str(train_inputs.conditions),
          "--pairs-dir", str(tmp_path / "p"), "--out", str(tmp_path / "e.safetensors")], "--generator"),
        (["extract", str(a_file), "--extractor", str(tmp_path / "none.safetensors"), "--out", str(tmp_path)],
         "--extractor"),
        (["timesteps", *model, "--out", str(a_file)], "--out"),
        (["sample", *model, "--prompt", "x", "--out", str(tmp_path)], "--out"),
        (["sample", *model, "--prompt", "x", "--out", str(tmp_path / "con.safetensors")], "Windows"),
        (["sample", "--model", str(train_inputs.root), "--device", "gpu", "--prompt", "x", "--out",
          str(tmp_path / "x.safetensors")], "--device"),
        (["eval", str(tmp_path), "--extractor", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "r")],
         "--extractor"),
    ]  # fmt: skip
    if not torch.cuda.is_available():
        cases.append(
            (["sample", "--model", str(train_inputs.root), "--device", "cuda", "--prompt", "x", "--out",
              str(tmp_path / "x.safetensors")], "no CUDA GPU"),
        )  # fmt: skip
    for args, expected in cases:
        assert main(args) == 2, args
        assert expected in _one_error_line(capsys, args[0]), args
    # a good generator, but an existing file as the output folder
    from diffsketch.train.generator import GeneratorConfig, SketchGenerator, save_generator

    spec = tiny_backend.spec
    good = save_generator(
        tmp_path / "good.safetensors", SketchGenerator(spec, GeneratorConfig.from_spec(spec, 3))
    )
    assert main(["generate", *model, "--generator", str(good), "--prompt", "x", "--out", str(a_file)]) == 2
    assert "is a file" in _one_error_line(capsys, "generate")


def test_extract_keeps_every_output_when_inputs_share_a_name(tmp_path, capsys):
    from diffsketch.distill.extract_files import output_names
    from diffsketch.distill.extractor import SketchExtractor, save_extractor

    torch.manual_seed(0)
    ext = save_extractor(tmp_path / "style.safetensors", SketchExtractor())
    rng = np.random.default_rng(0)
    for folder, name in (("a", "horse.png"), ("b", "horse.jpg"), ("b", "cat.png")):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(tmp_path / folder / name)
    out = tmp_path / "sketches"
    args = [str(tmp_path / "a"), str(tmp_path / "b"), "--extractor", str(ext), "--out", str(out)]
    assert main(["extract", *args, "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["cat.png", "horse_jpg.png", "horse_png.png"]
    assert "3 sketches written" in capsys.readouterr().out

    same = [Path("x/a/horse.png"), Path("x/b/horse.png"), Path("y/horse_png.png"), Path("horse.jpg")]
    names = output_names(same)
    assert len(set(names)) == 4 and names[:2] == ["a_horse_png.png", "b_horse_png.png"]


#: The scheduler config of SD 1.5, SD 2.x and SDXL folders (what differs: prediction_type).
SD_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def _save_folder(root: Path, backend, scheduler: dict | None = None) -> Path:
    """``backend``'s modules as a diffusers folder; ``scheduler``: what changes in :data:`SD_SCHEDULER`
    (None: no scheduler/ folder)."""
    backend.unet.save_pretrained(root / "unet")
    backend.vae.save_pretrained(root / "vae")
    backend.text_encoder.save_pretrained(root / "text_encoder")
    if getattr(backend, "text_encoder_2", None) is not None:
        backend.text_encoder_2.save_pretrained(root / "text_encoder_2")
    if scheduler is not None:
        (root / "scheduler").mkdir()
        config = {k: v for k, v in (SD_SCHEDULER | scheduler).items() if v is not None}
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory):
    from tiny_models import tiny_backend

    return _save_folder(tmp_path_factory.mktemp("sd15"), tiny_backend(0), {})


def _with_scheduler(folder: Path, tmp_path: Path, **changes) -> Path:
    """A copy of ``folder`` (its weights linked) whose scheduler config has ``changes``
    (a value of None removes the key)."""
    copy = tmp_path / "model"
    for sub in ("unet", "vae", "text_encoder"):
        (copy / sub).mkdir(parents=True)
        for f in (folder / sub).iterdir():
            (copy / sub / f.name).symlink_to(f)
    (copy / "scheduler").mkdir()
    config = {k: v for k, v in (SD_SCHEDULER | changes).items() if v is not None}
    (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return copy


PLAYGROUND_V25_SCHEDULER = {
    "_class_name": "EDMDPMSolverMultistepScheduler",
    "beta_schedule": None,
    "beta_start": None,
    "beta_end": None,
    "sigma_data": 0.5,
    "sigma_max": 80.0,
    "sigma_min": 0.002,
    "sigma_schedule": "exponential",
    "prediction_type": "epsilon",
}


@pytest.mark.parametrize(
    "changes, named",
    [
        (
            PLAYGROUND_V25_SCHEDULER,
            ["EDMDPMSolverMultistepScheduler", "EDM noise schedule", "SD 1.x, SD 2.x"],
        ),
        ({"beta_schedule": None}, ["no beta_schedule", "'linear' default", "scaled_linear"]),
        ({"beta_schedule": "linear"}, ["beta_schedule 'linear'", "scaled_linear"]),
        (
            {"_class_name": "FlowMatchEulerDiscreteScheduler"},
            ["FlowMatchEulerDiscreteScheduler", "flow-matching"],
        ),
        ({"_class_name": "MyScheduler"}, ["MyScheduler", "DDIM, PNDM, Euler"]),
        ({"_class_name": None}, ["no _class_name", "scaled_linear"]),
        ({"timestep_spacing": "uniform"}, ["timestep_spacing 'uniform'", "leading, trailing, linspace"]),
    ],
    ids=[
        "edm-playground-v2.5",
        "no-beta-schedule",
        "linear-betas",
        "flow-match",
        "unknown-class",
        "no-class",
        "spacing",
    ],
)
def test_schedulers_the_sampler_cannot_follow_are_refused_by_name(
    sd15_folder, tmp_path, capsys, changes, named
):
    from diffsketch.backends.diffusers import DiffusersBackend
    from diffsketch.errors import DiffSketchError

    folder = _with_scheduler(sd15_folder, tmp_path, **changes)
    with pytest.raises(DiffSketchError) as raised:
        DiffusersBackend.load(folder)
    message = str(raised.value)
    assert str(folder / "scheduler" / "scheduler_config.json") in message
    for part in named:
        assert part in message, (part, message)
    out = tmp_path / "x.safetensors"
    rc = main(["sample", "--model", str(folder), "--prompt", "x", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and named[0] in err and "Traceback" not in err and not out.exists()


def test_sd_schedulers_of_any_spacing_and_solver_are_read(sd15_folder, tmp_path):
    from diffsketch.backends.base import rescale_zero_terminal_snr, scaled_linear_alphas_cumprod
    from diffsketch.backends.diffusers import DiffusersBackend

    backend = DiffusersBackend.load(sd15_folder)
    assert backend.prediction_type == "epsilon"
    torch.testing.assert_close(backend.alphas_cumprod, scaled_linear_alphas_cumprod().double())
    changes = dict(
        _class_name="DPMSolverMultistepScheduler",
        timestep_spacing="trailing",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
    )
    backend = DiffusersBackend.load(_with_scheduler(sd15_folder, tmp_path, **changes))
    assert backend.prediction_type == "v_prediction"
    torch.testing.assert_close(
        backend.alphas_cumprod, rescale_zero_terminal_snr(scaled_linear_alphas_cumprod()).double()
    )


def test_a_vae_with_per_channel_latent_statistics_is_refused(sd15_folder, tmp_path, capsys):
    from diffsketch.backends.diffusers import DiffusersBackend
    from diffsketch.errors import UnsupportedModelError

    folder = _with_scheduler(sd15_folder, tmp_path)
    config_file = folder / "vae" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.unlink()  # a link into the shared folder: replaced, not written through
    config_file.write_text(json.dumps(config | {"latents_mean": [0.5] * 4, "latents_std": [0.9] * 4}))
    with pytest.raises(UnsupportedModelError, match=r"vae: the VAE normalises latents .*latents_mean"):
        DiffusersBackend.load(folder)


@pytest.mark.parametrize("family", ["sdxl", "sd2"])
def test_sample_reads_sdxl_and_sd2_diffusers_folders(family, tmp_path):
    from tiny_models import tiny_sd2_backend, tiny_sdxl_backend

    from diffsketch.capture.sample import CapturedSample

    backend = tiny_sdxl_backend(0) if family == "sdxl" else tiny_sd2_backend(0)
    # SD 2.x 768-v's scheduler says v_prediction; the SDXL base's says nothing (epsilon)
    scheduler = {"prediction_type": "v_prediction"} if family == "sd2" else {}
    folder = _save_folder(tmp_path / family, backend, scheduler)
    out = tmp_path / "example.safetensors"
    args = ["sample", "--model", str(folder), "--prompt", "a horse", "--seed", "3", "--steps", "20"]
    # no --width/--height: the model's native size, here the tiny UNet's 8-px latent x the VAE's 8
    assert backend.native_size == 64
    rc = main([*args, "--device", "cpu", "--out", str(out)])
    assert rc == 0
    sample = CapturedSample.load(out)
    assert tuple(sample.image.shape[-2:]) == (64, 64)
    assert sample.spec.family == family and len(sample.spec.unet) == (9 if family == "sdxl" else 12)
    assert sample.meta["prediction_type"] == ("v_prediction" if family == "sd2" else "epsilon")
    direct = backend.sample("a horse", SamplingSettings(seed=3, steps=20, width=64, height=64))
    torch.testing.assert_close(sample.image, direct.image)


def test_an_sdxl_refiner_folder_is_refused_with_the_reason(tmp_path, capsys):
    from tiny_models import tiny_sdxl_backend

    folder = _save_folder(tmp_path / "refiner", tiny_sdxl_backend(0))
    for sub in (folder / "text_encoder").iterdir():
        sub.unlink()
    (folder / "text_encoder").rmdir()
    rc = main(
        ["sample", "--model", str(folder), "--prompt", "x", "--device", "cpu", "--out", str(tmp_path / "x")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "SDXL refiner" in err and "SD 1.x, SD 2.x" in err and "Traceback" not in err


def test_capture_a_picture_then_train_on_it(train_inputs, tmp_path, tiny_backend, capfd):
    """capture --picture writes the features of the user's picture (those of the library's
    capture_from_image), and train takes them with the user's drawing."""
    from diffsketch.backends.inversion import PictureCapture
    from diffsketch.capture.sample import CapturedSample
    from diffsketch.train.generator import load_generator

    pixels = (np.random.default_rng(0).random((64, 128, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    features = tmp_path / "photo.safetensors"
    capture = [
        "capture",
        *train_inputs.model,
        "--picture",
        str(tmp_path / "photo.png"),
        "--caption",
        "a horse",
    ]
    small = ["--steps", "10", "--timesteps", "1,501,901", "--schedule", "fast", "--cfg", "4"]
    capfd.readouterr()
    assert main([*capture, *small, "--out", str(features)]) == 0
    out, err = capfd.readouterr()
    example = CapturedSample.load(features)
    assert example.size == (128, 64) and example.timesteps == (1, 501, 901)
    assert (
        example.meta["source"] == "picture"
        and example.meta["cfg"] == 4.0
        and example.meta["prompt"] == "a horse"
    )
    assert Image.open(tmp_path / "photo.replay.png").size == (128, 64)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "photo.png")), pixels)  # the picture is kept
    image_is_picture = ["--image", str(tmp_path / "photo.png"), "--out", str(tmp_path / "other.safetensors")]
    assert main([*capture, *small, *image_is_picture]) != 0
    assert "the replay would overwrite it" in capfd.readouterr().err
    direct = tiny_backend.capture_from_image(
        torch.from_numpy(pixels),
        SamplingSettings(steps=10, cfg=4.0, timesteps=(1, 501, 901), schedule="fast"),
        caption="a horse",
    )
    # the folder's UNet computes as the in-memory one up to float rounding (attention set up on
    # loading), which the random UNet's inversion amplifies: equal to 1%, not bit for bit
    assert relative_error(example.latent, direct.sample.latent) < 1e-2
    assert relative_error(example.unet[501][0], direct.sample.unet[501][0]) < 1e-2
    assert f"PSNR {direct.replay_psnr:.1f} dB" in out and "inverting, then replaying" in err
    # the tiny random model replays badly: the user is told, in words
    assert (
        direct.replay_psnr < 20
        and f"warning: {PictureCapture(direct.sample, direct.replay_psnr, direct.noise).warning}" in out
    )

    drawing = (pixels.mean(-1) > 128).astype(np.uint8) * 255
    Image.fromarray(drawing).save(tmp_path / "drawing.png")
    inputs = SimpleNamespace(
        **{**vars(train_inputs), "example": features, "sketch": tmp_path / "drawing.png"}
    )
    style = tmp_path / "style.safetensors"
    assert main(train_args(inputs, style, "--iterations", "2")) == 0
    assert load_generator(style).timesteps == (1, 501, 901)


def test_capture_fits_a_picture_of_any_size_and_train_fits_the_drawing_alike(train_inputs, tmp_path, capfd):
    """A 100x70 picture is centre-cropped to 64x64 (SD 1.x), written as used next to --out; a
    drawing at the picture's own size then trains, cropped exactly as the picture was."""
    from diffsketch.capture.sample import CapturedSample
    from diffsketch.train.generator import load_generator

    pixels = (np.random.default_rng(1).random((70, 100, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    features = tmp_path / "photo.safetensors"
    small = ["--steps", "10", "--timesteps", "1,501,901", "--schedule", "fast"]
    capfd.readouterr()
    args = ["capture", *train_inputs.model, "--picture", str(tmp_path / "photo.png"), *small]
    assert main([*args, "--out", str(features)]) == 0
    out, _ = capfd.readouterr()
    assert "the picture is 100x70: cropped 36 px of width and 6 px of height (centred) to 64x64" in out
    assert f"the picture as used (cropped/resized): {tmp_path / 'photo.picture.png'}" in out
    used = np.asarray(Image.open(tmp_path / "photo.picture.png"))
    assert np.array_equal(used, pixels[3:67, 18:82])
    example = CapturedSample.load(features)
    assert example.size == (64, 64) and example.meta["picture_fit"]["source"] == [100, 70]
    # --max-side resizes first
    assert main([*args, "--max-side", "96", "--out", str(tmp_path / "resized.safetensors")]) == 0
    assert (
        "resized to 96x67 (max_side 96), then cropped 32 px of width and 3 px of height"
        in capfd.readouterr()[0]
    )

    drawing = (pixels.mean(-1) > 128).astype(np.uint8) * 255
    Image.fromarray(drawing).save(tmp_path / "drawing.png")
    inputs = SimpleNamespace(
        **{**vars(train_inputs), "example": features, "sketch": tmp_path / "drawing.png"}
    )
    style = tmp_path / "style.safetensors"
    assert main(train_args(inputs, style, "--iterations", "2")) == 0
    assert "the sketch is 100x70: resized and cropped like the picture, to 64x64" in capfd.readouterr()[0]
    assert load_generator(style).timesteps == (1, 501, 901)
    # a drawing of another shape is refused, naming both sizes
    Image.fromarray(drawing[:, :70]).save(tmp_path / "square.png")
    inputs.sketch = tmp_path / "square.png"
    assert main(train_args(inputs, tmp_path / "other.safetensors", "--iterations", "2")) != 0
    assert (
        "the sketch is 70x70, but the picture the features were captured from is 100x70"
        in capfd.readouterr()[1]
    )


@pytest.mark.parametrize(
    "size, message",
    [((40, 40), "40x40 pixels: this SD 1.x model"), ((12, 100), "100x12 pixels: DiffSketch")],
    ids=["too-small-for-sd1", "too-small-for-any-model"],
)
def test_capture_refuses_a_picture_too_small_by_name(tiny_model_dir, tmp_path, capsys, size, message):
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(tmp_path / "photo.png")
    args = [
        "capture",
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--picture",
        str(tmp_path / "photo.png"),
    ]
    assert main([*args, "--out", str(tmp_path / "f.safetensors")]) != 0
    err = capsys.readouterr().err
    assert f"--picture {tmp_path / 'photo.png'} is {message}" in err and "smallest picture it takes" in err
    assert not (tmp_path / "f.safetensors").exists()


def test_distill_on_a_folder_of_photos_lists_what_it_leaves_out(train_inputs, tiny_backend, tmp_path, capfd):
    from diffsketch.distill.extractor import load_extractor
    from diffsketch.train.generator import GeneratorConfig, SketchGenerator, save_generator

    spec = tiny_backend.spec
    torch.manual_seed(0)
    style = save_generator(
        tmp_path / "style.safetensors",
        SketchGenerator(spec, GeneratorConfig.from_spec(spec, 3)),
        {"timesteps": [1, 501, 901]},
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("b.png", (90, 70)), ("a.jpg", (64, 64)), ("c.png", (64, 64)), ("c.jpg", (64, 64))):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(photos / name)
    (photos / "broken.png").write_bytes(b"not a png")
    base = [
        "distill", *train_inputs.model, *train_inputs.small, "--steps", "10", "--schedule", "fast",
        "--generator", str(style), "--conditions", str(train_inputs.conditions), "--pairs", "3",
        "--iterations", "1", "--batch-size", "2", "--crop-size", "64", "--no-lpips",
    ]  # fmt: skip
    out_file = tmp_path / "ext.safetensors"
    pairs = tmp_path / "pairs"
    capfd.readouterr()
    args = [*base, "--pairs-dir", str(pairs), "--out", str(out_file), "--photos", str(photos)]
    assert main([*args, "--photo-share", "0.34"]) == 0
    out, err = capfd.readouterr()
    for left_out in ("broken.png: cannot be read", "c.jpg: skipped, another photo has the same name (c.png)",
                     "c.png: skipped, another photo has the same name (c.jpg)"):  # fmt: skip
        assert f"--photos: left out {left_out}" in err
    assert "1 of 3 pairs come from 1 photo(s)" in out and "training a new student" in out
    manifest = json.loads((pairs / "manifest.json").read_text())
    assert [r["photo"] for r in manifest["photo_pairs"].values()] == ["a.jpg"]
    assert [p["name"] for p in manifest["photo_set"]] == ["a.jpg", "b.png"]
    sources = load_extractor(out_file).meta["pair_sources"]
    assert sources["generated"] == 2 and sources["photos"] == 1 and sources["photo_share"] == 0.34
    # the same folder with another share is refused, naming the difference, and nothing is lost
    assert main([*args, "--photo-share", "0.5"]) == 2
    assert "photo_share: folder has 0.34, asked 0.5" in capfd.readouterr().err
    assert json.loads((pairs / "manifest.json").read_text())["done"] == [[0, 2]]


def test_distill_refuses_bad_photo_options_before_loading_anything(
    train_inputs, tiny_backend, tmp_path, capsys, no_model_loading
):
    from diffsketch.train.generator import GeneratorConfig, SketchGenerator, save_generator

    spec = tiny_backend.spec
    style = save_generator(
        tmp_path / "g.safetensors", SketchGenerator(spec, GeneratorConfig.from_spec(spec, 3))
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    base = [
        "distill", *train_inputs.model, "--generator", str(style), "--conditions", str(train_inputs.conditions),
        "--pairs-dir", str(tmp_path / "p"), "--out", str(tmp_path / "e.safetensors"),
    ]  # fmt: skip
    cases = [
        ([*base, "--photos", str(empty)], f"no readable photo in {empty}"),
        ([*base, "--photos", str(tmp_path / "nowhere")], "photos folder not found"),
        ([*base, "--photo-share", "0.5"], "--photo-share needs --photos"),
        ([*base, "--photos", str(empty), "--photo-share", "1.5"], "photo_share must be a number in 0..1"),
    ]
    for args, expected in cases:
        assert main(args) == 2, args
        assert expected in _one_error_line(capsys, "distill"), args
