"""Files written before the model-file path existed still load, and model files refuse what they must.

The writers below build each file exactly as the library did before generators, conditions and
training states carried a checksum (same kind, version, header keys and tensor names), so a user's
existing files stay readable. They must not be "updated" along with the library.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers_spec import random_features, tiny_spec

from diffsketch import fileio
from diffsketch.distill.extractor import ExtractorConfig, SketchExtractor, load_extractor, save_extractor
from diffsketch.errors import FileFormatError, InvalidInputError
from diffsketch.train.conditions import ConditionSampler
from diffsketch.train.generator import GeneratorConfig, SketchGenerator, load_generator, save_generator
from diffsketch.train.state import load_training_state, save_training_state

SMALL = dict(lower_dim=32, higher_dim=16, lower_groups=4, higher_groups=4, final_width=16)


def tiny_generator(seed=0) -> SketchGenerator:
    spec = tiny_spec()
    torch.manual_seed(seed)
    return SketchGenerator(spec, GeneratorConfig.from_spec(spec, 2, **SMALL))


def conditions() -> ConditionSampler:
    return ConditionSampler.fit(
        torch.randn(6, 77, 16, generator=torch.Generator().manual_seed(0)), n_components=3
    )


# --- the writers of the earlier format, frozen ------------------------------------------------
def write_old_generator(path, generator, meta):
    header = {
        "spec": generator.spec.to_json(),
        "spec_fingerprint": generator.spec.fingerprint(),
        "config": generator.config.to_dict(),
        "parameters": sum(p.numel() for p in generator.parameters()),
        "meta": meta,
    }
    fileio.save_tensors(path, generator.state_dict(), "generator", 1, header)


def write_old_conditions(path, sampler):
    tensors = {k: getattr(sampler, k) for k in ("mean", "components", "score_mean", "variance")}
    fileio.save_tensors(path, tensors, "conditions", 1, sampler.header())


def write_old_training_state(path, model, optimizer, step, meta):
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    for index, entries in state["state"].items():
        for key, value in entries.items():
            tensors[f"optim.{index}.{key}"] = value
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]
    ]
    header = {
        "step": step,
        "optimizer": {"type": type(optimizer).__name__, "param_groups": groups, "scalar_state": {}},
        "meta": meta,
    }
    fileio.save_tensors(path, tensors, "training_checkpoint", 1, header)


def old_extractor_checksum(tensors):
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --- earlier files load -----------------------------------------------------------------------
def test_files_of_the_earlier_format_still_load(tmp_path):
    gen = tiny_generator()
    write_old_generator(tmp_path / "g.safetensors", gen, {"timesteps": [1, 501]})
    loaded = load_generator(tmp_path / "g.safetensors")
    assert loaded.meta == {"timesteps": [1, 501]}
    for a, b in zip(gen.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    sampler = conditions()
    write_old_conditions(tmp_path / "c.safetensors", sampler)
    again = ConditionSampler.load(tmp_path / "c.safetensors")
    assert torch.equal(again.components, sampler.components) and again.n_prompts == sampler.n_prompts

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    write_old_training_state(tmp_path / "s.safetensors", model, optimizer, 7, {"config": {"lr": 1e-3}})
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    step, _, meta = load_training_state(
        tmp_path / "s.safetensors", kind="training_checkpoint", model=fresh, optimizer=fresh_opt
    )
    assert step == 7 and meta == {"config": {"lr": 1e-3}} and torch.equal(fresh.weight, model.weight)

    # Extractors always carried a checksum; the unified one is the same function.
    extractor = SketchExtractor(ExtractorConfig(channels=(4, 8), encoder_blocks=(1, 1), decoder_blocks=(1,)))
    tensors = {k: v.float() for k, v in extractor.state_dict().items()}
    header = {"config": extractor.config.to_dict(), "checksum": old_extractor_checksum(tensors), "style": "x"}
    fileio.save_tensors(tmp_path / "e.safetensors", tensors, "extractor", 3, header)
    assert load_extractor(tmp_path / "e.safetensors").meta == {"style": "x"}
    assert fileio.tensors_checksum(tensors) == header["checksum"]


# --- model files: checksum and finite weights, for every kind ---------------------------------
def _save_every_kind(folder):
    gen = tiny_generator()
    model = torch.nn.Linear(3, 2)
    return {
        "generator": (save_generator(folder / "g.safetensors", gen), lambda p: load_generator(p)),
        "conditions": (conditions().save(folder / "c.safetensors"), ConditionSampler.load),
        "extractor": (
            save_extractor(folder / "e.safetensors", SketchExtractor(ExtractorConfig(channels=(4,), encoder_blocks=(1,), decoder_blocks=()))),
            load_extractor,
        ),
        "training_checkpoint": (
            save_training_state(
                folder / "s.safetensors", kind="training_checkpoint", model=model,
                optimizer=torch.optim.Adam(model.parameters()), step=1,
            ),
            lambda p: load_training_state(p, kind="training_checkpoint", model=torch.nn.Linear(3, 2), optimizer=None),
        ),
    }  # fmt: skip


def test_every_model_file_carries_a_checksum_that_is_checked(tmp_path):
    for kind, (path, load) in _save_every_kind(tmp_path).items():
        header = fileio.read_header(path)
        assert header["kind"] == kind and len(header["checksum"]) == 64
        load(path)
        tensors, _ = fileio.load_tensors(path, kind, None)
        name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
        tensors[name] = tensors[name] + 1.0  # a changed weight under the old header
        rest = {k: v for k, v in header.items() if k not in ("format", "kind", "version")}
        fileio.save_tensors(path, tensors, kind, header["version"], rest)
        with pytest.raises(FileFormatError, match="checksum"):
            load(path)


def test_non_finite_weights_are_refused_when_loading_and_when_saving(tmp_path):
    # A generator file with NaN weights used to load, and Generate returned an all-NaN sketch.
    gen = tiny_generator()
    with torch.no_grad():
        next(gen.parameters()).fill_(float("nan"))
    write_old_generator(tmp_path / "nan.safetensors", gen, {})
    with pytest.raises(FileFormatError, match="NaN or infinite"):
        load_generator(tmp_path / "nan.safetensors")
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        save_generator(tmp_path / "again.safetensors", gen)
    assert not (tmp_path / "again.safetensors").exists()

    sampler = conditions()
    sampler.mean[0] = float("inf")
    write_old_conditions(tmp_path / "inf.safetensors", sampler)
    with pytest.raises(FileFormatError, match="NaN or infinite"):
        ConditionSampler.load(tmp_path / "inf.safetensors")

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    with torch.no_grad():
        model.bias.fill_(float("nan"))
    write_old_training_state(tmp_path / "s.safetensors", model, optimizer, 1, {})
    with pytest.raises(FileFormatError, match="NaN or infinite"):
        load_training_state(
            tmp_path / "s.safetensors", kind="training_checkpoint", model=model, optimizer=None
        )


def test_generator_outputs_of_a_loaded_file_equal_the_saved_ones(tmp_path):
    gen = tiny_generator().eval()
    loaded = load_generator(save_generator(tmp_path / "g.safetensors", gen)).eval()
    unet, vae, rgb = random_features(gen.spec, 32, 32, (1, 501))
    with torch.no_grad():
        assert torch.equal(loaded(unet, vae, rgb), gen(unet, vae, rgb))


# --- atomic writes ----------------------------------------------------------------------------
def _temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_temporary_one(tmp_path):
    target = tmp_path / "model.safetensors"
    fileio.atomic_write_bytes(target, b"good")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), fileio.atomic_target(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half a fi")
        raise Boom
    assert target.read_bytes() == b"good" and _temp_files(tmp_path) == []

    # a write that fails inside the library: a tensor the format cannot store
    with pytest.raises(InvalidInputError, match="complex64"):
        fileio.save_tensors(
            target, {"a": torch.zeros(4), "b": torch.zeros(2, dtype=torch.complex64)}, "features", 1, {}
        )
    assert target.read_bytes() == b"good" and _temp_files(tmp_path) == []


_KILLED_MID_SAVE = """
import resource, signal, sys, torch
from diffsketch import fileio
# The kernel kills the process (SIGXFSZ, which Python ignores unless told) at the first write past
# 1 MB: a crash in the middle of the save, where no except or finally runs, whoever does the writing.
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
fileio.save_tensors(sys.argv[1], {"w": torch.ones(1 << 20)}, "features", 1, {})
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_a_save_killed_mid_write_leaves_only_temporary_files_the_cleanup_removes(tmp_path):
    target = tmp_path / "model.safetensors"
    fileio.atomic_write_bytes(target, b"good")
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run([sys.executable, "-c", _KILLED_MID_SAVE, str(target)], env=env, capture_output=True)
    assert done.returncode == -signal.SIGXFSZ, done.stderr.decode()[-2000:]
    left = sorted(p.name for p in tmp_path.iterdir() if p != target)
    assert left, "the kill left no temporary file: it did not hit the save mid-write"
    assert target.read_bytes() == b"good"
    # every file the kill left is one of ours, and the cleanup of a later save removes it
    removed = fileio.remove_stale_temp_files(tmp_path, min_age=0)
    assert sorted(p.name for p in removed) == left
    assert list(tmp_path.iterdir()) == [target]


def test_stale_temporary_files_of_a_crash_are_removed_on_the_next_save(tmp_path):
    target = tmp_path / "run.safetensors"
    stale = tmp_path / ".run.safetensors.abcd1234.tmp"  # left by a kill -9 during a save
    fresh = tmp_path / ".run.safetensors.efgh5678.tmp"  # another process writing right now
    other = tmp_path / ".other.safetensors.abcd1234.tmp"  # another file's: not this save's business
    foreign = tmp_path / "notes.tmp"  # not ours at all
    for p in (stale, fresh, other, foreign):
        p.write_bytes(b"x" * 10)
    old = time.time() - fileio.STALE_TEMP_SECONDS - 60
    for p in (stale, other, foreign):
        os.utime(p, (old, old))
    fileio.atomic_write_bytes(target, b"data")
    assert not stale.exists() and fresh.exists() and other.exists() and foreign.exists()
    assert target.read_bytes() == b"data"
    # on start, a whole folder tree is cleaned of stale files of ours
    (tmp_path / "sub").mkdir()
    deep = tmp_path / "sub" / ".pair.png.zz99yy88.tmp"
    deep.write_bytes(b"x")
    os.utime(deep, (old, old))
    removed = fileio.remove_stale_temp_files(tmp_path, recursive=True)
    assert sorted(p.name for p in removed) == sorted([other.name, deep.name])
    assert fresh.exists() and foreign.exists()


def test_reserved_header_keys_and_meta_must_be_plain(tmp_path):
    with pytest.raises(InvalidInputError, match="reserved"):
        fileio.save_model_file(
            tmp_path / "x.safetensors", {"w": torch.zeros(1)}, "generator", 1, {"checksum": "0"}
        )
    with pytest.raises(InvalidInputError, match="JSON"):
        fileio.save_model_file(
            tmp_path / "x.safetensors", {"w": torch.zeros(1)}, "generator", 1, {"m": object()}
        )
    assert json.loads(json.dumps(fileio.read_header(fileio.save_model_file(
        tmp_path / "y.safetensors", {"w": torch.zeros(1)}, "generator", 1, {"m": 1}))))["m"] == 1  # fmt: skip


def test_pair_folder_settings_are_recorded_as_before(tiny_backend):
    """A pair folder continues only if the settings it recorded compare equal: the dict (keys, value
    types, fingerprints) must stay what earlier versions wrote."""
    from diffsketch.capture.sampling import SamplingSettings
    from diffsketch.distill.pairs import pair_settings

    torch.manual_seed(0)
    spec = tiny_backend.spec
    generator = SketchGenerator(spec, GeneratorConfig.from_spec(spec, 2, **SMALL))
    sampler = ConditionSampler.fit(
        torch.randn(6, 77, spec.context_dim, generator=torch.Generator().manual_seed(0)), n_components=3
    )

    def old_fingerprint(tensors, extra=""):
        digest = hashlib.sha256(extra.encode())
        for name in sorted(tensors):
            t = tensors[name].detach().contiguous().cpu()
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    settings = pair_settings(
        tiny_backend,
        generator,
        sampler,
        SamplingSettings(seed=4, steps=10, width=64, height=64, timesteps=(1, 501), schedule="fast"),
    )
    assert settings == {
        "teacher": "diffsketch",
        "seed": 4,
        "steps": 10,
        "cfg": 5.0,
        "width": 64,
        "height": 64,
        "timesteps": [1, 501],
        "schedule": "fast",
        "model_layout": spec.fingerprint(),
        "generator": old_fingerprint(
            generator.state_dict(),
            json.dumps(generator.config.to_dict(), sort_keys=True) + spec.fingerprint(),
        ),
        "conditions": old_fingerprint(
            {k: getattr(sampler, k) for k in ("mean", "components", "score_mean", "variance")}
        ),
    }
    assert [type(v) for v in settings.values()] == [str, int, int, float, int, int, list, str, str, str, str]
