"""Distillation: pair folders (generation, resume, determinism, errors) and student training
(loss goes down, exact resume, Cancel, NaN), on tiny random-weight models."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffsketch.capture.sampling import SamplingSettings
from diffsketch.distill import (
    DISTILL_CHECKPOINT_KIND,
    DistillConfig,
    PairSet,
    build_student,
    distill,
    generate_pairs,
    pair_paths,
    pair_settings,
    pair_settings_digest,
    student_checkpoint_path,
    train_student,
    write_pair,
)
from diffsketch.distill.extractor import ExtractorConfig, SketchExtractor, load_extractor, save_extractor
from diffsketch.distill.pairs import MANIFEST_NAME
from diffsketch.errors import (
    Cancelled,
    FileFormatError,
    InvalidInputError,
    TrainingDiverged,
    TrainingInterrupted,
)
from diffsketch.fileio import read_header
from diffsketch.seeds import derive_seed
from diffsketch.styles.informative import InformativeDrawings
from diffsketch.train.conditions import ConditionSampler
from diffsketch.train.generator import GeneratorConfig, SketchGenerator
from diffsketch.train.losses import build_lpips
from diffsketch.train.state import load_training_state

TIMESTEPS = [1, 501]
SIZE = 64
SAMPLING = SamplingSettings(steps=10, width=SIZE, height=SIZE, timesteps=TIMESTEPS, schedule="fast", cfg=5.0)
SMALL_GENERATOR = dict(
    lower_dim=32, higher_dim=16, lower_groups=4, higher_groups=4, fusion_channels=(64, 32, 16)
)
TINY_STUDENT = ExtractorConfig(channels=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1,))


# ------------------------------------------------------------------------------------ fixtures


def make_generator(spec, seed=0) -> SketchGenerator:
    torch.manual_seed(seed)
    generator = SketchGenerator(spec, GeneratorConfig.from_spec(spec, len(TIMESTEPS), **SMALL_GENERATOR))
    with torch.no_grad():  # push the output into [0, 1] so the sketches are not all clamped
        generator.final[-1].bias.fill_(0.5)
    return generator


@pytest.fixture(scope="module")
def conditions():
    g = torch.Generator().manual_seed(0)
    return ConditionSampler.fit(torch.randn(6, 77, 32, generator=g), n_components=4)


class CountingBackend:
    """Delegates to the tiny backend and counts samples, to see which pairs a run generated."""

    def __init__(self, backend):
        self.backend = backend
        self.spec = backend.spec
        self.calls = 0

    def sample(self, *args, **kwargs):
        self.calls += 1
        return self.backend.sample(*args, **kwargs)

    def sample_batch(self, *args, **kwargs):
        self.calls += 1
        return self.backend.sample_batch(*args, **kwargs)


def read_bytes(folder, index):
    return tuple(p.read_bytes() for p in pair_paths(folder, index))


# ------------------------------------------------------------------------------------ pairs


def test_pairs_are_written_resumed_and_deterministic(tiny_backend, conditions, tmp_path):
    generator = make_generator(tiny_backend.spec)
    one_go = tmp_path / "one_go"
    pairs = generate_pairs(tiny_backend, generator, conditions, one_go, 3, SAMPLING.replace(seed=4))
    assert len(pairs) == 3 and pairs.indices == [0, 1, 2]
    image, sketch = pairs[1]
    assert image.shape == (3, SIZE, SIZE) and sketch.shape == (1, SIZE, SIZE)
    assert 0 <= float(sketch.min()) and float(sketch.max()) <= 1 and float(sketch.std()) > 0
    manifest = json.loads((one_go / MANIFEST_NAME).read_text())
    assert manifest["done"] == [[0, 2]] and manifest["settings"]["seed"] == 4
    assert manifest["settings"]["timesteps"] == TIMESTEPS

    # Pair 1 is what the backend and generator give for the condition and noise of (seed, 1).
    condition = conditions.sample(torch.Generator().manual_seed(derive_seed("condition", 4, 1)), 1)
    sample = tiny_backend.sample(condition, SAMPLING.replace(seed=derive_seed("noise", 4, 1)))
    with torch.no_grad():
        expected = generator.forward_sample(sample).clamp(0, 1)[0]
    assert (sketch - expected).abs().max() <= 0.5 / 255 + 1e-6
    assert (image - sample.image[0]).abs().max() <= 0.5 / 255 + 1e-6

    # Two sittings: cancelled after one pair, then continued with a larger count.
    counting = CountingBackend(tiny_backend)
    split = tmp_path / "split"
    with pytest.raises(Cancelled, match="1 of 2 pairs"):
        generate_pairs(
            counting,
            generator,
            conditions,
            split,
            2,
            SAMPLING.replace(seed=4),
            should_stop=lambda: counting.calls >= 1,
        )
    assert len(PairSet(split)) == 1
    progress = []
    resumed = generate_pairs(
        counting,
        generator,
        conditions,
        split,
        3,
        SAMPLING.replace(seed=4),
        progress=lambda d, t: progress.append((d, t)),
    )
    assert counting.calls == 3 and progress[0] == (1, 3) and progress[-1] == (3, 3)
    assert len(resumed) == 3
    for i in range(3):
        assert read_bytes(split, i) == read_bytes(one_go, i)
    # A complete folder generates nothing more.
    generate_pairs(counting, generator, conditions, split, 3, SAMPLING.replace(seed=4))
    assert counting.calls == 3
    # A pair whose files vanished is made again, identically.
    before = read_bytes(split, 2)
    for p in pair_paths(split, 2):
        p.unlink()
    with pytest.raises(FileFormatError, match="missing"):
        PairSet(split)
    generate_pairs(counting, generator, conditions, split, 3, SAMPLING.replace(seed=4))
    assert counting.calls == 4 and read_bytes(split, 2) == before


def png_pixels(folder, index):
    import numpy as np
    from PIL import Image

    return [np.asarray(Image.open(p), dtype=np.int16) for p in pair_paths(folder, index)]


def test_batched_sampling_and_pairs_match_one_at_a_time(tiny_backend, conditions, tmp_path):
    generator = make_generator(tiny_backend.spec)
    conds = [conditions.sample(torch.Generator().manual_seed(k), 1) for k in range(3)]
    batch = tiny_backend.sample_batch(conds, SAMPLING, seeds=[5, 6, 7])
    assert batch.batch_size == 3 and batch.image.shape == (3, 3, SIZE, SIZE)
    items = batch.split()
    with torch.no_grad():
        batched_sketches = generator.forward_sample(batch)
        for k, item in enumerate(items):
            one = tiny_backend.sample(conds[k], SAMPLING.replace(seed=5 + k))
            assert item.meta["seed"] == 5 + k and item.unet.keys() == one.unet.keys()
            # the same sample up to float rounding (batched kernels are not bitwise batch-invariant)
            torch.testing.assert_close(item.latent, one.latent, atol=1e-3, rtol=1e-3)
            torch.testing.assert_close(item.image, one.image, atol=1e-3, rtol=0)
            for a, b in zip(item.unet[TIMESTEPS[0]], one.unet[TIMESTEPS[0]], strict=True):
                torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=1e-2)
            torch.testing.assert_close(
                batched_sketches[k : k + 1], generator.forward_sample(item), atol=1e-5, rtol=1e-5
            )
    with pytest.raises(InvalidInputError, match="one seed per condition"):
        tiny_backend.sample_batch(conds, SAMPLING, seeds=[1])

    # Pair folders at B=1 and B=3: the same pairs, PNGs equal but for a few pixels one 8-bit
    # step apart (measured on this model: about 0.01% of image and 0.2% of sketch pixels).
    one_at_a_time = tmp_path / "b1"
    generate_pairs(
        tiny_backend, generator, conditions, one_at_a_time, 4, SAMPLING.replace(seed=2), batch_size=1
    )
    counting = CountingBackend(tiny_backend)
    batched = tmp_path / "b3"
    with pytest.raises(Cancelled):
        generate_pairs(
            counting, generator, conditions, batched, 4, SAMPLING.replace(seed=2), batch_size=3,
            should_stop=lambda: counting.calls >= 1,
        )  # fmt: skip
    assert PairSet(batched).indices == [0, 1, 2]  # one whole block
    generate_pairs(counting, generator, conditions, batched, 4, SAMPLING.replace(seed=2), batch_size=3)
    assert counting.calls == 2 and PairSet(batched).indices == [
        0,
        1,
        2,
        3,
    ]  # block 1 made whole, 4..5 unsaved
    differing = total = 0
    for i in range(4):
        for a, b in zip(png_pixels(one_at_a_time, i), png_pixels(batched, i), strict=True):
            assert a.shape == b.shape and int(abs(a - b).max()) <= 1
            differing += int((a != b).sum())
            total += a.size
    assert differing / total <= 0.01

    # At one B the bytes do not depend on how the blocks were reached: a folder made in one go
    # with a larger count has the same first pairs, byte for byte.
    one_go = tmp_path / "b3_one_go"
    generate_pairs(tiny_backend, generator, conditions, one_go, 6, SAMPLING.replace(seed=2), batch_size=3)
    for i in range(4):
        assert read_bytes(one_go, i) == read_bytes(batched, i)
    with pytest.raises(InvalidInputError, match="batch_size"):
        generate_pairs(tiny_backend, generator, conditions, one_go, 6, SAMPLING.replace(seed=2), batch_size=0)


def test_other_settings_in_the_same_folder_are_refused(tiny_backend, conditions, tmp_path):
    generator = make_generator(tiny_backend.spec)
    folder = tmp_path / "pairs"
    generate_pairs(tiny_backend, generator, conditions, folder, 1, SAMPLING.replace(seed=0))
    with pytest.raises(InvalidInputError, match="cfg"):
        generate_pairs(
            tiny_backend,
            generator,
            conditions,
            folder,
            1,
            SAMPLING.replace(cfg=2.0),
        )
    with pytest.raises(InvalidInputError, match="seed"):
        generate_pairs(tiny_backend, generator, conditions, folder, 1, SAMPLING.replace(seed=1))
    with pytest.raises(InvalidInputError, match="generator"):
        generate_pairs(
            tiny_backend,
            make_generator(tiny_backend.spec, seed=1),
            conditions,
            folder,
            1,
            SAMPLING,
        )
    with pytest.raises(InvalidInputError, match="3 timesteps|2 timesteps"):
        generate_pairs(
            tiny_backend,
            generator,
            conditions,
            tmp_path / "other",
            1,
            SAMPLING.replace(timesteps=(1, 501, 901)),
        )
    with pytest.raises(InvalidInputError, match="count"):
        generate_pairs(tiny_backend, generator, conditions, tmp_path / "other", 0, SAMPLING)
    # the nodes name pair folders by this digest: same inputs, same folder; a new teacher or
    # other settings, another folder (instead of the clash above)
    digest = pair_settings_digest(pair_settings(tiny_backend, generator, conditions, SAMPLING))
    assert digest == pair_settings_digest(pair_settings(tiny_backend, generator, conditions, SAMPLING))
    retrained = make_generator(tiny_backend.spec, seed=1)
    assert digest != pair_settings_digest(pair_settings(tiny_backend, retrained, conditions, SAMPLING))
    assert digest != pair_settings_digest(
        pair_settings(tiny_backend, generator, conditions, SAMPLING.replace(cfg=2.0))
    )


def test_pair_folders_written_before_keep_their_settings_and_folder_name():
    """A pair folder is found by ``pair_settings_digest`` and resumed when its manifest's settings
    compare equal. The values below are what the library wrote before SamplingSettings and the
    shared tensors_checksum existed: a change here orphans every existing pair folder."""
    teacher = nn.Linear(3, 2)
    with torch.no_grad():
        teacher.weight.copy_(torch.arange(6.0).reshape(2, 3) / 7)
        teacher.bias.copy_(torch.tensor([0.5, -0.25]))
    conditions = SimpleNamespace(
        mean=torch.arange(4.0),
        components=torch.eye(2, 4),
        score_mean=torch.tensor([0.5, 1.5]),
        variance=torch.tensor([2.0, 3.0]),
    )
    backend = SimpleNamespace(spec=SimpleNamespace(fingerprint=lambda: "layout-0123456789", family="sd1"))
    fingerprints = {"conditions": "1920e0ac3df493f8", "generator": "0f3d71a1b597a184"}
    common = {"teacher": "diffsketch", "timesteps": [1, 501], "model_layout": "layout-0123456789"}

    fast = SamplingSettings(
        seed=7, steps=10, cfg=5, width=64, height=128, timesteps=[1, 501], schedule="fast"
    )
    settings = pair_settings(backend, teacher, conditions, fast)
    assert json.dumps(settings, sort_keys=True) == json.dumps(
        {
            **common,
            **fingerprints,
            "seed": 7,
            "steps": 10,
            "cfg": 5.0,
            "width": 64,
            "height": 128,
            "schedule": "fast",
        },
        sort_keys=True,
    )
    assert pair_settings_digest(settings) == "1ec7dc059609"

    explicit = SamplingSettings(steps=20, cfg=7.5, timesteps=(1, 501), schedule=(951, 501, 1))
    settings = pair_settings(backend, teacher, conditions, explicit)
    assert settings["schedule"] == [951, 501, 1] and settings["width"] == settings["height"] == 512
    assert pair_settings_digest(settings) == "4d0bd57f65eb"


def test_write_pair_and_pairset_report_damage(tmp_path):
    g = torch.Generator().manual_seed(0)
    image, sketch = torch.rand(1, 3, 20, 24, generator=g), torch.rand(20, 24, generator=g)
    write_pair(tmp_path, 0, image, sketch, settings={"teacher": "xdog"})
    write_pair(tmp_path, 1, image[0], sketch[None], settings={"teacher": "xdog"})
    pairs = PairSet(tmp_path)
    assert len(pairs) == 2
    got_image, got_sketch = pairs[0]
    assert (got_image - image[0]).abs().max() <= 0.5 / 255 + 1e-6
    assert (got_sketch[0] - sketch).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(InvalidInputError, match="teacher"):
        write_pair(tmp_path, 2, image, sketch, settings={"teacher": "hed"})
    with pytest.raises(InvalidInputError, match="differ in size"):
        write_pair(tmp_path, 2, image, sketch[:10], settings={"teacher": "xdog"})
    with pytest.raises(InvalidInputError, match="NaN"):
        write_pair(tmp_path, 2, image * float("nan"), sketch, settings={"teacher": "xdog"})
    pair_paths(tmp_path, 1)[1].write_bytes(b"not a png")
    with pytest.raises(FileFormatError, match="000001.png"):
        PairSet(tmp_path)[1]
    (tmp_path / MANIFEST_NAME).write_text("{broken")
    with pytest.raises(FileFormatError, match="not valid JSON"):
        PairSet(tmp_path)
    with pytest.raises(InvalidInputError, match="not a pair folder"):
        PairSet(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------ config


def test_config_json_round_trip_validation_and_schedule():
    config = DistillConfig(
        iterations=100, warmup_iterations=10, extractor=TINY_STUDENT, lr=1e-3, min_lr_ratio=0.1
    )
    assert DistillConfig.from_json(json.dumps(json.loads(config.to_json()))) == config
    lrs = [config.lr_at(i) for i in range(100)]
    assert lrs[0] < lrs[9] and max(lrs) <= 1e-3
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert math.isclose(lrs[-1], 1e-4, rel_tol=1e-9)
    assert DistillConfig(lr=2e-3, lr_schedule="constant", warmup_iterations=0).lr_at(500) == 2e-3
    for bad in ({"lr": 0}, {"batch_size": 0}, {"lr_schedule": "linear"}, {"l1_weight": 0, "lpips_weight": 0}):
        with pytest.raises(InvalidInputError):
            DistillConfig(**bad)
    with pytest.raises(InvalidInputError, match="unknown"):
        DistillConfig.from_dict({"iterationz": 3})


# ------------------------------------------------------------------------------------ training


def synthetic_pairs(n, size=48, seed=0):
    """Smooth random images; the sketch is a local function of the image (dark where the grey
    level changes fast), so a small network can learn it."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        low = torch.rand(1, 3, size // 8, size // 8, generator=g)
        image = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0]
        grey = image.mean(0, keepdim=True)[None]
        gx = F.pad(grey[..., :, 1:] - grey[..., :, :-1], (0, 1, 0, 0))
        gy = F.pad(grey[..., 1:, :] - grey[..., :-1, :], (0, 0, 0, 1))
        sketch = (1 - 12 * (gx.abs() + gy.abs())).clamp(0, 1)[0]
        out.append((image, sketch))
    return out


def tiny_config(**overrides) -> DistillConfig:
    base = dict(
        iterations=6,
        batch_size=2,
        crop_size=32,
        lr=2e-3,
        warmup_iterations=2,
        checkpoint_every=3,
        preview_every=3,
        extractor=TINY_STUDENT,
        lpips_weight=0.0,
    )
    return DistillConfig(**{**base, **overrides})


def full_l1(student, pairs) -> float:
    with torch.no_grad():
        return sum(float((student(i[None]) - s[None]).abs().mean()) for i, s in pairs) / len(pairs)


def test_training_reduces_l1_on_held_out_pairs():
    train, test = synthetic_pairs(6, seed=0), synthetic_pairs(3, seed=1)
    config = tiny_config(iterations=80, batch_size=4, lr=3e-3, warmup_iterations=5)
    before = full_l1(build_student(config).eval(), test)
    seen = []
    student = train_student(
        train, config, on_step=lambda s, losses, preview: seen.append((s, losses, preview))
    )
    after = full_l1(student, test)
    assert after < 0.6 * before, (before, after)
    assert [s for s, _, _ in seen] == list(range(1, 81))
    previews = {s: p for s, _, p in seen if p is not None}
    assert sorted(previews) == list(range(3, 81, 3)) + [80]
    assert (
        previews[80].shape == (1, 32, 96, 3)
        and 0 <= float(previews[80].min()) <= float(previews[80].max()) <= 1
    )
    assert set(seen[-1][1]) == {"loss", "l1", "lr"}
    assert student.meta["iterations_done"] == 80 and not student.training


def test_resume_equals_one_go_and_cancel_writes_a_checkpoint(tmp_path):
    pairs = synthetic_pairs(4, size=72)
    lpips_model = build_lpips(random_weights=True)
    config = tiny_config(crop_size=64, lpips_weight=0.5)
    one_go = train_student(pairs, config, lpips_model=lpips_model)

    ckpt = tmp_path / "student.safetensors"
    steps = []
    with pytest.raises(TrainingInterrupted, match="step 4"):
        train_student(
            pairs,
            config,
            lpips_model=lpips_model,
            checkpoint_path=ckpt,
            on_step=lambda s, losses, p: steps.append(losses),
            should_stop=lambda: len(steps) >= 4,
        )
    assert "lpips" in steps[0]
    probe = build_student(config)
    step, _, meta = load_training_state(ckpt, kind=DISTILL_CHECKPOINT_KIND, model=probe, optimizer=None)
    assert step == 4 and meta["config"] == config.to_dict()
    resumed = train_student(pairs, config, lpips_model=lpips_model, checkpoint_path=ckpt, resume_from=ckpt)
    for (name, a), b in zip(one_go.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert load_training_state(ckpt, kind=DISTILL_CHECKPOINT_KIND, model=probe, optimizer=None)[0] == 6

    with pytest.raises(InvalidInputError, match="lr"):
        train_student(pairs, tiny_config(crop_size=64, lpips_weight=0.5, lr=1e-3), resume_from=ckpt)
    # Training further: only the iteration count changed.
    longer = train_student(pairs, tiny_config(crop_size=64, lpips_weight=0.5, iterations=8), resume_from=ckpt)
    assert longer.meta["iterations_done"] == 8


class NanAfter(nn.Module):
    """A student that returns NaN from its ``n``-th forward call on."""

    def __init__(self, inner: nn.Module, n: int):
        super().__init__()
        self.inner, self.n, self.calls, self.multiple = inner, n, 0, inner.multiple

    def forward(self, x):
        self.calls += 1
        y = self.inner(x)
        return y * float("nan") if self.calls >= self.n else y


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    pairs = synthetic_pairs(3)
    config = tiny_config(iterations=10, checkpoint_every=2)
    ckpt = tmp_path / "student.safetensors"
    student = NanAfter(build_student(config), n=5)
    with pytest.raises(TrainingDiverged, match="diverged at step 5.*step 4"):
        train_student(pairs, config, student=student, checkpoint_path=ckpt)
    probe = NanAfter(build_student(config), n=99)
    step, _, _ = load_training_state(ckpt, kind=DISTILL_CHECKPOINT_KIND, model=probe, optimizer=None)
    assert step == 4 and all(torch.isfinite(p).all() for p in probe.parameters())


def test_any_student_module_trains_and_bad_inputs_are_refused():
    pairs = synthetic_pairs(2)
    baseline = InformativeDrawings(n_blocks=1, ngf=4)
    trained = train_student(pairs, tiny_config(iterations=2), student=baseline)
    assert trained is baseline and trained.meta["iterations_done"] == 2
    with pytest.raises(InvalidInputError, match="multiple of 4"):
        train_student(pairs, tiny_config(crop_size=30))
    with pytest.raises(InvalidInputError, match="empty"):
        train_student([], tiny_config())
    with pytest.raises(InvalidInputError, match="pair 0"):
        train_student([(torch.rand(3, 32, 32), torch.rand(3, 32, 32))], tiny_config())


def test_distill_chains_generation_and_training(tiny_backend, conditions, tmp_path):
    generator = make_generator(tiny_backend.spec)
    config = tiny_config(iterations=2, crop_size=48)
    student = distill(tiny_backend, generator, conditions, tmp_path / "pairs", 2, config, SAMPLING)
    assert isinstance(student, SketchExtractor)
    pairs = PairSet(tmp_path / "pairs", count=2)
    assert student_checkpoint_path(tmp_path / "pairs", pairs, config).is_file()
    assert student.meta["pairs"] == 2 and student.meta["generator"]
    path = save_extractor(tmp_path / "student.safetensors", student, student.meta)
    loaded = load_extractor(path)
    assert loaded.meta["iterations_done"] == 2
    x = torch.rand(1, 3, 48, 48)
    assert torch.equal(loaded(x), student(x))


class HostInterrupt(Exception):
    """Stands for ComfyUI's InterruptProcessingException, which Cancel raises from the progress
    callback (``on_step``), not through ``should_stop``."""


def test_a_host_interrupt_in_training_keeps_a_checkpoint_and_the_rerun_resumes(
    tiny_backend, conditions, tmp_path
):
    generator = make_generator(tiny_backend.spec)
    # no periodic checkpoint before the interrupt: only the interrupt's own can keep the progress
    config = tiny_config(iterations=6, crop_size=48, checkpoint_every=100)
    one_go = distill(tiny_backend, generator, conditions, tmp_path / "one_go", 2, config, SAMPLING)

    def interrupt_at_4(step, losses, preview):
        if step == 4:
            raise HostInterrupt("processing interrupted")

    folder = tmp_path / "pairs"

    def run(on_step):
        return distill(tiny_backend, generator, conditions, folder, 2, config, SAMPLING, on_step=on_step)

    with pytest.raises(HostInterrupt) as info:
        run(interrupt_at_4)
    checkpoint = student_checkpoint_path(folder, PairSet(folder, count=2), config)
    assert read_header(checkpoint)["step"] == 4
    if sys.version_info >= (3, 11):  # exceptions take notes from Python 3.11 on
        assert any(str(checkpoint) in note for note in getattr(info.value, "__notes__", []))

    steps = []
    resumed = run(lambda s, *_: steps.append(s))
    assert steps == [5, 6]  # continued from the checkpoint, not from step 1
    for (name, a), b in zip(one_go.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_crash_in_the_student_loop_keeps_a_resumable_checkpoint(tmp_path):
    pairs = synthetic_pairs(3)
    config = tiny_config(iterations=5, checkpoint_every=100)
    one_go = train_student(pairs, config)
    ckpt = tmp_path / "student.safetensors"

    def boom(step, losses, preview):
        if step == 2:
            raise MemoryError("out of memory")

    with pytest.raises(MemoryError):
        train_student(pairs, config, checkpoint_path=ckpt, on_step=boom)
    assert read_header(ckpt)["step"] == 2
    resumed = train_student(pairs, config, checkpoint_path=ckpt, resume_from=ckpt)
    for a, b in zip(one_go.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------- a changed pair set or setting


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def run_distill(backend, generator, conditions, folder, count, config, **kwargs):
    """distill() with the notices and training steps it reported."""
    notices, steps = [], []
    student = distill(
        backend, generator, conditions, folder, count, config, SAMPLING,
        notice=notices.append, on_step=lambda step, *_: steps.append(step), **kwargs,
    )  # fmt: skip
    return student, notices, steps


def test_more_pairs_train_a_new_student_on_them(tiny_backend, conditions, tmp_path):
    """Raising pair_count on a finished run used to 'resume' the finished student and return it
    unchanged: the new pairs were written and never trained on."""
    generator = make_generator(tiny_backend.spec)
    config = tiny_config(iterations=3, crop_size=48)
    folder = tmp_path / "pairs"
    first, notices, steps = run_distill(tiny_backend, generator, conditions, folder, 2, config)
    assert steps == [1, 2, 3] and notices == ["training a new student from step 0 on 2 pairs"]

    more, notices, steps = run_distill(tiny_backend, generator, conditions, folder, 3, config)
    assert steps == [1, 2, 3] and more.meta["pairs"] == 3 and more.meta["started_at_step"] == 0
    assert "new student" in notices[0] and "pairs: 2 -> 3" in notices[0]
    assert not same_weights(first, more)
    # exactly what a fresh run on those three pairs gives
    assert same_weights(more, train_student(PairSet(folder, count=3), config))

    # fewer pairs than the folder holds: trained on exactly the pairs asked for, which is the first run
    again, notices, steps = run_distill(tiny_backend, generator, conditions, folder, 2, config)
    assert steps == [] and again.meta["pairs"] == 2 and "already finished step 3 of 3" in notices[0]
    assert same_weights(again, first)


def test_changed_settings_start_a_new_student_and_the_old_run_resumes(tiny_backend, conditions, tmp_path):
    """A changed batch size under one folder used to be a dead end ('... or start a new run')."""
    generator = make_generator(tiny_backend.spec)
    config = tiny_config(iterations=4, crop_size=48, checkpoint_every=2)
    folder = tmp_path / "pairs"
    done = []
    with pytest.raises(TrainingInterrupted):
        distill(
            tiny_backend, generator, conditions, folder, 2, config, SAMPLING,
            on_step=lambda step, *_: done.append(step), should_stop=lambda: len(done) == 2,
        )  # fmt: skip

    other = tiny_config(iterations=4, crop_size=48, checkpoint_every=2, batch_size=3)
    changed, notices, steps = run_distill(tiny_backend, generator, conditions, folder, 2, other)
    assert steps == [1, 2, 3, 4] and "new student" in notices[0] and "batch_size: 2 -> 3" in notices[0]
    assert same_weights(changed, train_student(PairSet(folder, count=2), other))

    # the first settings again: their run continues where it was cancelled
    resumed, notices, steps = run_distill(tiny_backend, generator, conditions, folder, 2, config)
    checkpoint = student_checkpoint_path(folder, PairSet(folder, count=2), config)
    assert checkpoint.is_file()
    assert notices == [f"resuming the student at step 2 of 4 on 2 pairs ({checkpoint.name})"]
    assert steps == [3, 4] and resumed.meta["started_at_step"] == 2
    assert same_weights(resumed, train_student(PairSet(folder, count=2), config))

    # more iterations continue the same run
    longer, notices, steps = run_distill(tiny_backend, generator, conditions, folder, 2, tiny_config(
        iterations=5, crop_size=48, checkpoint_every=2
    ))  # fmt: skip
    assert steps == [5] and notices[0].startswith("resuming the student at step 4 of 5")
    # and resume=False starts over
    _, notices, steps = run_distill(tiny_backend, generator, conditions, folder, 2, config, resume=False)
    assert steps == [1, 2, 3, 4] and "not resuming" in notices[0]


def test_a_student_checkpoint_of_the_earlier_single_name_is_resumed(tiny_backend, conditions, tmp_path):
    generator = make_generator(tiny_backend.spec)
    config = tiny_config(iterations=3, crop_size=48)
    folder = tmp_path / "pairs"
    pairs = generate_pairs(tiny_backend, generator, conditions, folder, 2, SAMPLING)
    legacy = folder / "student_checkpoint.safetensors"  # what distill() wrote before runs had names
    with pytest.raises(TrainingInterrupted):
        train_student(pairs, config, checkpoint_path=legacy, should_stop=iter([False, True]).__next__)
    student, notices, steps = run_distill(tiny_backend, generator, conditions, folder, 2, config)
    assert notices == ["resuming the student at step 1 of 3 on 2 pairs (student_checkpoint.safetensors)"]
    assert steps == [2, 3] and same_weights(student, train_student(pairs, config))


def test_resuming_a_checkpoint_of_other_pairs_names_the_difference(tmp_path):
    config = tiny_config(iterations=2)
    ckpt = tmp_path / "student.safetensors"
    train_student(synthetic_pairs(2), config, checkpoint_path=ckpt)
    with pytest.raises(InvalidInputError, match="pairs: 2 -> 3"):
        train_student(synthetic_pairs(3), config, resume_from=ckpt)


# ------------------------------------------------------------------ adversarial terms (Pix2PixHD)


def test_adversarial_terms_train_a_discriminator_and_resume_exactly(tmp_path):
    pairs = synthetic_pairs(4, size=48)
    config = tiny_config(adversarial_weight=0.1, feature_matching_weight=1.0)
    seen = []
    one_go = train_student(pairs, config, on_step=lambda s, losses, p: seen.append(losses))
    assert {"discriminator", "adversarial", "feature_matching"} <= set(seen[-1])
    assert all(math.isfinite(v) for v in seen[-1].values())
    assert one_go.meta["distill"]["adversarial_weight"] == 0.1
    plain = train_student(pairs, tiny_config())
    assert not same_weights(one_go, plain)  # the terms reach the student

    ckpt = tmp_path / "gan.safetensors"
    steps = []
    with pytest.raises(TrainingInterrupted, match="step 4"):
        train_student(
            pairs,
            config,
            checkpoint_path=ckpt,
            on_step=lambda s, losses, p: steps.append(s),
            should_stop=lambda: len(steps) >= 4,
        )
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        keys = list(f.keys())
    assert any(".adversarial.discriminator." in k for k in keys)  # the discriminator is kept
    resumed = train_student(pairs, config, checkpoint_path=ckpt, resume_from=ckpt)
    assert same_weights(one_go, resumed)
    with pytest.raises(InvalidInputError, match="adversarial_weight: 0.1 -> 0.2"):
        train_student(
            pairs, tiny_config(adversarial_weight=0.2, feature_matching_weight=1.0), resume_from=ckpt
        )
    with pytest.raises(InvalidInputError, match="adversarial_weight: 0.1 -> 0.0"):
        train_student(pairs, tiny_config(), resume_from=ckpt)


def test_gan_only_recipe_and_pix2pixhd_schedule():
    config = tiny_config(l1_weight=0.0, adversarial_weight=1.0, feature_matching_weight=10.0)
    assert config.adversarial
    with pytest.raises(InvalidInputError, match="cannot all be 0"):
        tiny_config(l1_weight=0.0)
    with pytest.raises(InvalidInputError, match="discriminator_lr_ratio"):
        tiny_config(discriminator_lr_ratio=0.0)
    schedule = DistillConfig(iterations=100, lr=2e-4, lr_schedule="constant_then_linear", warmup_iterations=0)
    lrs = [schedule.lr_at(i) for i in range(100)]
    assert lrs[0] == lrs[50] == 2e-4 and math.isclose(lrs[75], 1e-4) and lrs[99] < 1e-5
    trained = train_student(synthetic_pairs(2), config)
    losses = trained.meta["final_losses"]
    assert {"l1", "adversarial", "feature_matching"} <= set(losses) and all(
        map(math.isfinite, losses.values())
    )


def test_runs_from_before_the_adversarial_settings_keep_their_name_and_resume(tmp_path):
    from diffsketch.distill import run_differences, student_run_key

    config = tiny_config()
    added = ("adversarial_weight", "feature_matching_weight", "discriminator_scales")
    old = {
        k: v for k, v in config.to_dict().items() if k not in added + ("discriminator_lr_ratio", "adam_beta1")
    }
    pairs = synthetic_pairs(2)
    assert run_differences({"config": old, "pairs": 2}, pairs, config) == []
    assert run_differences({"config": old, "pairs": 2}, pairs, tiny_config(adversarial_weight=1.0)) == [
        "adversarial_weight: 0.0 -> 1.0"
    ]
    # the key hashes only what the run had before the settings existed
    import hashlib

    from diffsketch.distill.student import pair_set_identity

    settings = {k: v for k, v in old.items() if k not in ("iterations", "checkpoint_every", "preview_every")}
    blob = json.dumps({"pairs": pair_set_identity(pairs), "config": settings}, sort_keys=True)
    assert student_run_key(pairs, config) == hashlib.sha256(blob.encode()).hexdigest()[:12]
    assert student_run_key(pairs, tiny_config(adversarial_weight=1.0)) != student_run_key(pairs, config)


def test_adversarial_terms_are_refused_in_a_launch_of_several_processes():
    class TwoProcesses:
        world_size, rank, is_main = 2, 0, True

    with pytest.raises(InvalidInputError, match="not supported in a launch of several processes"):
        train_student(synthetic_pairs(2), tiny_config(adversarial_weight=0.1), group=TwoProcesses())
