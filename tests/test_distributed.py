"""Pair generation and student training over several processes (torchrun on the CPU, Gloo):
the same pair folder byte for byte as one process, the same student up to float rounding, and
a process killed mid-write costs no pair and duplicates none once the launch is run again."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffsketch.distill import STUDENT_CHECKPOINT_PREFIX, DistillConfig, build_student
from diffsketch.distill.extractor import load_extractor
from diffsketch.distill.pairs import MANIFEST_NAME
from diffsketch.distributed import launch_device, launch_from_environment
from diffsketch.errors import InvalidInputError
from diffsketch.train.generator import save_generator

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

from distributed_pairs import TIMESTEPS, build  # noqa: E402

TIMEOUT = 900  # seconds for one launch; a hung collective fails the test instead of the suite


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # every process, alone or launched, computes with one thread
    return env


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return subprocess.run(
        [*command, *args], env=environment(), capture_output=True, text=True, timeout=TIMEOUT
    )


def alone(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=environment(), capture_output=True, text=True, timeout=TIMEOUT
    )


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_launch_is_read_from_the_environment():
    assert launch_from_environment({}) is None
    assert launch_from_environment({"WORLD_SIZE": "1", "RANK": "0"}) is None
    launch = launch_from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (launch.rank, launch.world_size, launch.local_rank) == (3, 4, 1)
    assert launch_device(launch, "cuda") == "cuda:1" and launch_device(launch, "cpu") == "cpu"
    with pytest.raises(InvalidInputError, match="RANK"):
        launch_from_environment({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(InvalidInputError, match="WORLD_SIZE"):
        launch_from_environment({"WORLD_SIZE": "two", "RANK": "0"})


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_backend):
    """A diffusers folder, a generator and conditions on disk, as the command line reads them."""
    root = tmp_path_factory.mktemp("job")
    for name in ("unet", "vae", "text_encoder"):
        getattr(tiny_backend, name).save_pretrained(root / "model" / name)
    _, generator, conditions = build()
    save_generator(root / "style.safetensors", generator, {"timesteps": TIMESTEPS})
    conditions.save(root / "conditions.safetensors")
    return root


def distill_args(job: Path, name: str) -> list[str]:
    return [
        "distill",
        "--model",
        str(job / "model"),
        "--device",
        "cpu",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "10",
        "--generator",
        str(job / "style.safetensors"),
        "--conditions",
        str(job / "conditions.safetensors"),
        "--pairs",
        "4",
        "--pairs-dir",
        str(job / name / "pairs"),
        "--iterations",
        "3",
        "--batch-size",
        "2",
        "--crop-size",
        "64",
        "--no-lpips",
        "--out",
        str(job / name / "student.safetensors"),
    ]


@pytest.fixture(scope="module")
def one_process(job):
    run = alone("-m", "diffsketch", *distill_args(job, "one"))
    assert run.returncode == 0, run.stderr[-3000:]
    return job / "one"


def check_same_as_one_process(one: Path, launched: Path):
    pairs_one, pairs_two = files(one / "pairs"), files(launched / "pairs")
    # the student's checkpoint, named by its run (the same pairs and settings: the same name),
    # holds float losses: the students are compared below
    checkpoints = [name for name in pairs_one if name.startswith(STUDENT_CHECKPOINT_PREFIX)]
    assert len(checkpoints) == 1 and checkpoints[0] in pairs_two
    pairs_one.pop(checkpoints[0]), pairs_two.pop(checkpoints[0])
    assert len(pairs_one) == 4 * 2 + 1 and pairs_two == pairs_one  # byte for byte
    assert json.loads(pairs_two[MANIFEST_NAME])["done"] == [[0, 3]]

    student_one = load_extractor(one / "student.safetensors")
    student_two = load_extractor(launched / "student.safetensors")
    assert student_two.meta["iterations_done"] == 3
    for name, value in student_one.state_dict().items():
        torch.testing.assert_close(student_two.state_dict()[name], value, atol=1e-5, rtol=1e-4)
    initial = build_student(DistillConfig.from_dict(student_one.meta["distill"])).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in student_one.state_dict().items())  # it trained


def test_torchrun_distill_equals_one_process(job, one_process):
    two = torchrun("-m", "diffsketch", *distill_args(job, "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    check_same_as_one_process(one_process, job / "two")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_distill_equals_one_process(job, one_process):
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("accelerate is not installed (optional: DiffSketch only reads the variables it sets)")
    # --multi_gpu is accelerate's torchrun launcher; with --device cpu the processes use Gloo
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2"]
    command += ["--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"]
    command += [f"--main_process_port={free_port()}", "-m", "diffsketch", *distill_args(job, "accelerate")]
    run = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    check_same_as_one_process(one_process, job / "accelerate")


def test_a_rank_killed_mid_write_is_completed_by_a_relaunch(tmp_path):
    worker = str(TESTS / "distributed_pairs.py")
    # batches of 2: rank 0 makes pairs 0-1 and 4-5, rank 1 pairs 2-3 and dies writing sketch 3
    reference = alone(worker, str(tmp_path / "one"), "6", "2")
    assert reference.returncode == 0, reference.stderr[-3000:]

    folder = tmp_path / "two"
    marker = tmp_path / "die-once"
    marker.write_text("")
    killed = torchrun(worker, str(folder), "6", "2", "--die-at-sketch", "2", str(marker))
    assert killed.returncode != 0 and not marker.exists()
    # what the kill left: a half-written temporary file, an image without its sketch, logs
    assert list((folder / "sketches").glob(".*.tmp"))
    assert (folder / "images" / "000003.png").is_file() and not (folder / "sketches" / "000003.png").exists()
    assert list(folder.glob("manifest.part-*.log"))

    relaunched = torchrun(worker, str(folder), "6", "2", "--die-at-sketch", "2", str(marker))
    assert relaunched.returncode == 0, relaunched.stderr[-3000:]
    assert files(folder) == files(tmp_path / "one")  # nothing missing, doubled or left over
    assert json.loads((folder / MANIFEST_NAME).read_text())["done"] == [[0, 5]]


def test_photo_pairs_of_a_launch_equal_one_process(tmp_path):
    worker = str(TESTS / "distributed_pairs.py")
    # 5 pairs, 3 from 2 photos (0, 2, 4; pair 4 a cropped variant), in blocks of 2 shared by 2 processes
    reference = alone(worker, str(tmp_path / "one"), "5", "2", "--photos", "2")
    assert reference.returncode == 0, reference.stderr[-3000:]
    launched = torchrun(worker, str(tmp_path / "two"), "5", "2", "--photos", "2")
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert files(tmp_path / "two") == files(tmp_path / "one")  # the manifest's photo records included
    manifest = json.loads((tmp_path / "two" / MANIFEST_NAME).read_text())
    assert sorted(manifest["photo_pairs"]) == ["0", "2", "4"] and manifest["done"] == [[0, 4]]
    assert manifest["photo_pairs"]["4"]["variant"] == 1


class OtherProcessStops:
    """A launch seen from one process (``rank``) in which another process asks to stop before
    step ``at``: what :class:`~diffsketch.train.loop.TrainingLoop` asks of a group."""

    def __init__(self, rank: int, at: int):
        self.rank, self.at, self.calls = rank, at, 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        self.calls += 1
        return flag or self.calls > self.at


@pytest.mark.parametrize("rank", [0, 1])
def test_the_training_loop_of_a_launch_stops_with_any_process_and_only_rank_0_writes(tmp_path, rank):
    from diffsketch.errors import TrainingInterrupted
    from diffsketch.train.loop import TrainingLoop

    saved = []

    def save():
        saved.append(loop.step)
        return tmp_path / "checkpoint.safetensors"

    loop = TrainingLoop(
        what="distillation",
        model=torch.nn.Linear(2, 1),
        iterations=5,
        save=save,
        checkpoint_every=1,
        group=OtherProcessStops(rank, at=2),
    )
    with pytest.raises(TrainingInterrupted) as stopped:
        loop.run(lambda i: None, lambda i, result: None, lambda step, result: None, should_stop=lambda: False)
    assert loop.step == 2 and loop.last_checkpoint_step == 2  # every process stops at the same step
    if rank == 0:
        assert saved == [1, 2] and str(tmp_path / "checkpoint.safetensors") in str(stopped.value)
    else:
        assert saved == [] and "Rank 0 of the launch wrote a resumable checkpoint" in str(stopped.value)
