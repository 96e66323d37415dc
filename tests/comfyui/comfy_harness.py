"""Helpers for the real-ComfyUI tier: paths, a server process driven over HTTP, graph results."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
PACK_NAME = "comfyui-diffsketch"
# Seconds one queued graph may take. The quick-start workflow samples, trains and distils in one
# graph; on a busy 2-core machine that can take longer than 15 minutes, so it can be raised.
PROMPT_TIMEOUT = float(os.environ.get("DIFFSKETCH_TEST_PROMPT_TIMEOUT", "900"))
# Where ComfyUI runs, in the server and in-process: the CPU unless DIFFSKETCH_TEST_DEVICE=cuda asks for
# the GPU (tools/gpu_check.py runs the capture, train and extract tests so).
TEST_DEVICE = os.environ.get("DIFFSKETCH_TEST_DEVICE", "cpu")
if TEST_DEVICE not in ("cpu", "cuda"):
    raise ValueError(f"DIFFSKETCH_TEST_DEVICE={TEST_DEVICE!r}: use 'cpu' (the default) or 'cuda'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(
        self, base: Path, tiny_checkpoint: Path, artifacts: Path, front_end_root: str | Path | None = None
    ):
        """``front_end_root``: a frontend's ``static`` folder to serve instead of the installed
        ``comfyui_frontend_package`` (ComfyUI's ``--front-end-root``)."""
        self.base = base
        self.front_end_root = front_end_root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # One log per server and pytest process: two test runs on one machine must not overwrite
        # each other's, nor two servers of one run.
        self.log_path = artifacts / f"comfyui-server-{base.name}-{os.getpid()}.log"
        (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        link = base / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        ckpts = base / "models" / "checkpoints"
        ckpts.mkdir(parents=True, exist_ok=True)
        if not (ckpts / "tiny_sd15.safetensors").exists():
            (ckpts / "tiny_sd15.safetensors").symlink_to(tiny_checkpoint)
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "w")
        cmd = [
            sys.executable,
            "main.py",
            *(["--cpu"] if TEST_DEVICE == "cpu" else []),
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base),
            "--disable-api-nodes",
            "--database-url",
            "sqlite:///:memory:",
            "--log-stdout",
        ]
        if self.front_end_root is not None:
            cmd += ["--front-end-root", str(self.front_end_root)]
        self.proc = subprocess.Popen(cmd, cwd=COMFYUI_PATH, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ComfyUI exited at start; log: {self.log_path}\n{self.log_path.read_text()[-3000:]}"
                )
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within 180 s; log: {self.log_path}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "log", None):
            self.log.close()

    def restart(self):
        self.stop()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        return self.start()

    # -- HTTP -------------------------------------------------------------------------------------
    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
                return json.loads(body) if body else {}
        except urllib.error.HTTPError as e:
            raise AssertionError(f"POST {path} -> {e.code}: {e.read().decode()[:3000]}") from e

    def post_raw(self, path: str, payload: dict) -> dict:
        """POST without raising on HTTP errors: ``{"status": code, "body": text}``."""
        req = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return {"status": r.status, "body": r.read().decode()}
        except urllib.error.HTTPError as e:
            return {"status": e.code, "body": e.read().decode()}

    def run(self, graph: dict, timeout: float = PROMPT_TIMEOUT) -> dict:
        """Queue an API-format graph and wait for its history entry."""
        pid = self.post("/prompt", {"prompt": graph, "client_id": "diffsketch-tests"})["prompt_id"]
        return self.wait(pid, timeout)

    def wait(self, prompt_id: str, timeout: float = PROMPT_TIMEOUT) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.5)
        # stop it, so it does not go on using the CPU the tests after this one need
        self.post_raw("/queue", {"clear": True})
        self.post_raw("/interrupt", {})
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s; log: {self.log_path}")

    def log_text(self) -> str:
        return self.log_path.read_text()


@contextlib.contextmanager
def running_server(
    base: Path, tiny_checkpoint: Path, artifacts: Path, front_end_root: str | Path | None = None
):
    """A started :class:`ComfyServer`, stopped on every exit path (a failed start included), its
    temp folder removed."""
    server = ComfyServer(base, tiny_checkpoint, artifacts, front_end_root)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(base / "temp", ignore_errors=True)


def write_loss_weights(models: Path) -> Path:
    """Random-weight CLIP (the tiny architecture) and AlexNet (LPIPS) files under a server's
    ``models/diffsketch`` folder, as Load CLIP Loss finds them, unless already there."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    from diffsketch.train.losses import TINY_CLIP_ARCHITECTURE, ClipImageEncoder

    clip = models / "clip" / "clip_vit_b_32.safetensors"
    lpips = models / "lpips" / "alexnet-owt-7be5be79.safetensors"
    if not clip.exists():
        clip.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        tower = ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE).tower
        save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, str(clip))
    if not lpips.exists():
        lpips.parent.mkdir(parents=True, exist_ok=True)
        alex = torchvision.models.alexnet(weights=None).state_dict()
        save_file({k: v.contiguous() for k, v in alex.items()}, str(lpips))
    return models


def random_loss_models() -> dict:
    """A LOSS_MODELS value with random weights (torch's seed 0): the tiny CLIP and LPIPS's AlexNet."""
    import torch

    from diffsketch.train.losses import TINY_CLIP_ARCHITECTURE, ClipImageEncoder, build_lpips

    torch.manual_seed(0)
    return {
        "clip": ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE),
        "lpips": build_lpips(random_weights=True),
    }


def run_train_node(nodes, model, clip, vae, features, sketch, conditions, loss_models, save_name, **inputs):
    """The generator the pack's Train node (``nodes``: the pack's ``nodes`` package) trains in-process:
    one step with the template's loss weights by default, ``inputs`` (iterations, low_memory, ...)
    over those."""
    inputs = {
        "iterations": 1,
        "learning_rate": 1e-4,
        "h_iter": 1,
        "lpips_weight": 15.0,
        "l1_weight": 30.0,
        "clip_weight": 30.0,
        "across_weight": 1.0,
        "within_weight": 1.0,
        "timestep_policy": "fixed",
        "schedule": "fast",
        "low_memory": False,
        "seed": 0,
        "save_name": save_name,
        "resume_from": nodes.train.NO_RESUME,
        "checkpoint_every": 1,
        **inputs,
    }
    return nodes.train.DiffSketchTrain.execute(
        model, clip, vae, features, sketch, conditions, loss_models, **inputs
    ).result[0]


def error_message(entry: dict) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message')}"
    return ""


def hook_count(model, vae=None) -> int:
    """Forward (pre-)hooks on ComfyUI's UNet, plus forward hooks on its VAE when given: 0 once
    a capture has removed what it added."""
    unet = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.model.diffusion_model.modules()
    )
    if vae is None:
        return unet
    return unet + sum(len(m._forward_hooks) for m in vae.first_stage_model.modules())


@contextlib.contextmanager
def loaded_checkpoint(path):
    """``(model, clip, vae)`` of a checkpoint loaded as ComfyUI's Load Checkpoint does, unloaded
    from ComfyUI's model management on exit."""
    import comfy.model_management
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    try:
        yield model, clip, vae
    finally:
        del model, clip, vae
        comfy.model_management.unload_all_models()
        gc.collect()


def check_tag_prompt_parity(comfy_inprocess, clip, ours: dict, context_dim: int, default_skip: int) -> None:
    """The diffusers backend's conditions of TAG_PROMPT (``ours``: ``{1: ..., 2: ...}`` from
    compare.clip_skip_conditions) equal what ComfyUI's CLIP gives after CLIPSetLastLayer -1 and -2
    (a clone with ``clip_layer(-skip)``, as the node makes it), pooled embedding included where
    there is one; ``ours[default_skip]`` equals ComfyUI's CLIP without CLIPSetLastLayer."""
    from compare import TAG_PROMPT, relative_error

    encode_text = comfy_inprocess.nodes.comfy_backend.encode_text
    with_pooled = ours[1].pooled is not None
    for skip in (1, 2):
        clip_at = clip.clone()
        clip_at.clip_layer(-skip)
        theirs = encode_text(clip_at, TAG_PROMPT, with_pooled)
        assert ours[skip].context.shape == theirs.context.shape == (1, 3 * 77, context_dim)
        assert relative_error(ours[skip].context, theirs.context) < 1e-4, skip
        if with_pooled:
            assert relative_error(ours[skip].pooled, theirs.pooled) < 1e-4, skip
    plain = encode_text(clip, TAG_PROMPT, with_pooled)
    assert relative_error(ours[default_skip].context, plain.context) < 1e-4
    assert relative_error(ours[1].context, ours[2].context) > 0.1


def diffusers_reference(backend, prompt: str, sampling) -> dict:
    """What a parity test holds ComfyUI's backend to, from the diffusers backend on the same
    checkpoint: its spec, model hash, prediction type and native size, the conditionings of
    ``prompt`` and of "", and one captured sample of ``prompt``."""
    cond = backend.encode_prompt(prompt)
    return {
        "spec": backend.spec,
        "hash": backend.model_hash(),
        "prediction": backend.prediction_type,
        "native_size": backend.native_size,
        "cond": cond,
        "uncond": backend.encode_prompt(""),
        "sample": backend.sample(cond, sampling),
    }
