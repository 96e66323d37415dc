"""Sampling with feature capture vs without: same model, seed and steps, side by side in one run.

Runs are interleaved (plain, captured, plain, captured, ...) after a warm-up, so machine load
affects both alike; the best-of-N and median ratios are printed. Prints the ratio captured/plain (target <= 1.10
on CPU). Random-weight diffusers models built from configs; nothing is downloaded.

    python benchmarks/capture_overhead.py                     # SD 1.5 UNet/VAE architecture, 256 px
    python benchmarks/capture_overhead.py --arch tiny --size 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from diffsketch.capture.sampling import SamplingSettings  # noqa: E402


def build(arch: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffsketch.backends.diffusers import DiffusersBackend

    torch.manual_seed(0)
    if arch == "tiny":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from tiny_models import tiny_backend

        return tiny_backend(0)
    widths = {"sd15": (320, 640, 1280, 1280), "sd15-320": (320, 320, 320, 320)}[arch]
    unet = UNet2DConditionModel(
        block_out_channels=widths,
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    te = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            vocab_size=49408,
        )
    )
    return DiffusersBackend(unet, vae, te)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sd15", choices=["sd15", "sd15-320", "tiny"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    backend = build(args.arch)
    if args.device != "cpu":
        backend = type(backend)(
            backend.unet, backend.vae, backend.text_encoder, device=args.device, dtype=torch.float16
        )
    cond = backend.encode_prompt("a photo of a horse in mud")
    kw = dict(seed=0, steps=args.steps, cfg=5.0, width=args.size, height=args.size)

    def run(capture: bool) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        s = backend.sample(cond, SamplingSettings(**kw), capture=capture)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        run.last = s
        return time.perf_counter() - t0

    run(False)  # warm-up
    plain, captured = [], []
    for _ in range(args.repeats):
        plain.append(run(False))
        captured.append(run(True))
    sample = run.last
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    p, c = statistics.median(plain), statistics.median(captured)
    print(
        f"arch {args.arch}, {args.size}x{args.size}, {args.steps} DDIM steps, {device}, torch {torch.__version__}"
    )
    print(
        f"captured: {len(sample.unet)} timesteps x {len(sample.spec.unet)} UNet taps x 2 branches + "
        f"{len(sample.vae)} VAE taps = {sample.nbytes() / 2**20:.1f} MiB (fp16, CPU)"
    )
    print(f"sample without capture : median {p:.2f} s  {[f'{x:.2f}' for x in plain]}")
    print(f"sample with capture    : median {c:.2f} s  {[f'{x:.2f}' for x in captured]}")
    # the best-of-N ratio is the least sensitive to load from other processes on a shared machine
    print(
        f"ratio captured/plain   : best-of-{args.repeats} {min(captured) / min(plain):.3f}, median {c / p:.3f}"
        "  (target <= 1.10)"
    )


if __name__ == "__main__":
    main()
