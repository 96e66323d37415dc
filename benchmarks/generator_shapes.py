"""SketchGenerator at SD 1.5 shapes: parameter counts, and optionally one training step's time/memory.

The parameter counts come from a generator built on the meta device (no memory). They are set
beside the released code's counts (docs/method.md §4): there, 21.57 M parameters were registered
but only 3.27 M were trained (the lower aggregation never reached the output and the VAE
reductions were not registered).

    python benchmarks/generator_shapes.py                                   # counts only
    python benchmarks/generator_shapes.py --step --size 256                 # + one fwd/bwd on CPU
    python benchmarks/generator_shapes.py --step --device cuda --size 512   # paper size on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffsketch.capture.spec import LAYOUT_LDM, FeatureSpec, Tap  # noqa: E402
from diffsketch.train.generator import GeneratorConfig, SketchGenerator, parameter_report  # noqa: E402

RELEASED = {"registered": 21_573_597, "trained": 3_271_080}


def sd15_spec() -> FeatureSpec:
    levels = [(1280, -3), (1280, -2), (640, -1), (320, 0)]
    unet = [
        Tap(f"output_blocks.{3 * i + j}.0.out_layers", c, s)
        for i, (c, s) in enumerate(levels)
        for j in range(3)
    ]
    vae = [Tap("decoder.mid.block_1", 512, 0), Tap("decoder.mid.block_2", 512, 0)]
    for scale, channels in enumerate((512, 512, 256, 128)):
        vae += [Tap(f"decoder.up.{3 - scale}.block.{b}", channels, scale) for b in range(3)]
    return FeatureSpec(LAYOUT_LDM, tuple(unet), tuple(vae), Tap("decoder.conv_out", 3, 3), 768)


def one_step(spec: FeatureSpec, n_timesteps: int, size: int, device: str, dtype: torch.dtype) -> dict:
    gen = SketchGenerator(spec, GeneratorConfig.from_spec(spec, n_timesteps)).to(device)
    unet = {
        20 * k + 1: [
            torch.randn(2, c, h, w, device=device, dtype=dtype) for c, h, w in spec.unet_shapes(size, size)
        ]
        for k in range(n_timesteps)
    }
    vae = [torch.randn(1, c, h, w, device=device, dtype=dtype) for c, h, w in spec.vae_shapes(size, size)]
    rgb = torch.rand(1, 3, size, size, device=device) * 2 - 1
    target = torch.rand(1, 1, size, size, device=device)
    optim = torch.optim.Adam(gen.parameters(), lr=1e-4)
    times = []
    for _ in range(3):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.float16, enabled=device == "cuda"):
            out = gen(unet, vae, rgb)
        F.l1_loss(out.float(), target).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {"size": size, "timesteps": n_timesteps, "device": device, "step_s": min(times)}
    if device == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timesteps", type=int, default=13)
    ap.add_argument("--step", action="store_true", help="also time one training step")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    spec = sd15_spec()
    report = parameter_report(spec, args.timesteps)
    print(json.dumps({"this_generator_all_trained": report, "released_code": RELEASED}, indent=2))
    print(f"trained parameters: {report['total'] / RELEASED['trained']:.2f}x the released code's")
    if args.step:
        dtype = torch.float16 if args.device == "cuda" else torch.float32
        print(json.dumps(one_step(spec, args.timesteps, args.size, args.device, dtype), indent=2))


if __name__ == "__main__":
    main()
