"""Peak host memory of the representative-timestep analysis at SD 1.5 512x512 scale.

Target (issue): 32 images x 50 DDIM steps must fit in 8 GB of host memory.

No model is run. For every (image, step) this makes random tensors with the exact shapes of the
12 SD 1.5 UNet decoder taps at the chosen size (batch 2: uncond + cond), passes each through
:class:`diffsketch.capture.analysis.FeatureReducer` the way the capture hook does, keeps only the reduced
``[2, dim]`` vectors (the structure a backend returns), builds the [N, T, D] matrix exactly as
``run_timestep_analysis`` does, and runs :func:`diffsketch.capture.analysis.analyse` and the plots.
The features get a smooth timestep-dependent component so the PCA and k-means see a trajectory
rather than pure noise.

This measures the analysis' own memory; the diffusion model's weights are not included (on a
GPU setup they live in GPU memory; SD 1.5 fp16 is about 2 GB if held on the host).

    python benchmarks/timesteps_memory.py              # full 32 x 50 at 512x512
    python benchmarks/timesteps_memory.py --images 4   # quicker
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffsketch.capture.analysis import FeatureReducer, analyse, plots  # noqa: E402
from diffsketch.capture.hooks import COND  # noqa: E402
from diffsketch.capture.timesteps import ddim_grid  # noqa: E402

#: SD 1.5 UNet output_blocks[0..11] ResBlock channels and their size relative to the latent
#: (docs/method.md §3): 1280 @ latent/8 x3, 1280 @ latent/4 x3, 640 @ latent/2 x3, 320 @ latent x3.
SD15_DECODER_TAPS = [(1280, 8)] * 3 + [(1280, 4)] * 3 + [(640, 2)] * 3 + [(320, 1)] * 3

TARGET_GIB = 8.0


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--dim", type=int, default=64, help="reduced size per layer")
    ap.add_argument("--pool", type=int, default=2, help="pooling grid per side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the per-tap work is many small ops, where thread hand-offs "
        "cost more than they give on a small shared CPU)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))

    rss_start = peak_rss_gib()
    t0 = time.perf_counter()
    grid = ddim_grid(args.steps)
    lat_h, lat_w = args.height // 8, args.width // 8
    shapes = [(c, -(-lat_h // f), -(-lat_w // f)) for c, f in SD15_DECODER_TAPS]
    full_bytes_fp16 = sum(2 * c * h * w for c, h, w in shapes) * 2 * len(grid) * args.images
    reducer = FeatureReducer(dim=args.dim, pool=args.pool, seed=args.seed, out_device="cpu")
    gen = torch.Generator().manual_seed(args.seed)
    # Fresh Gaussian draws for every tap of every step would dominate the run time on a small
    # CPU, so each tap reads a randomly shifted window of a Gaussian pool twice its size: every
    # step still gets a different random tensor of the exact shape, written into a new buffer
    # like the activation a UNet call produces.
    pools = [torch.randn(2 * 2 * c * h * w, generator=gen) for c, h, w in shapes]
    buffers = [torch.empty(2, c, h, w) for c, h, w in shapes]
    directions = [torch.randn(1, c, 1, 1, generator=gen) for c, _, _ in shapes]

    vectors = None
    for i in range(args.images):
        unet: dict[int, list[torch.Tensor]] = {}
        for ts in reversed(grid):  # sampling visits timesteps from noisy to clean
            phase = torch.tensor(ts / 1000.0)
            reduced = []
            for layer, (pool, buf, direction) in enumerate(zip(pools, buffers, directions, strict=True)):
                offset = int(torch.randint(0, buf.numel(), (1,), generator=gen))
                window = pool[offset : offset + buf.numel()].view(buf.shape)
                torch.add(window, direction * (3.0 * torch.cos(torch.pi * phase)), out=buf)
                reduced.append(reducer(layer, buf))
            unet[ts] = reduced
        # As run_timestep_analysis does: cond branch, layers concatenated, [T, D] per image.
        sample = torch.stack([torch.cat([x[COND] for x in unet[ts]]) for ts in grid])
        if vectors is None:
            vectors = torch.empty(args.images, len(grid), sample.shape[1])
        vectors[i] = sample
        print(f"  image {i + 1}/{args.images}: peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    t_capture = time.perf_counter() - t0

    t1 = time.perf_counter()
    result = analyse(vectors, grid, seed=args.seed)
    images = plots(result)
    t_analyse = time.perf_counter() - t1
    peak = peak_rss_gib()

    n_values = vectors.numel()
    print()
    print(
        f"images x steps            : {args.images} x {len(grid)} at {args.width}x{args.height} (SD 1.5 decoder taps)"
    )
    print(
        f"reducer                   : pool {args.pool}x{args.pool}, {args.dim} dims per layer, {len(shapes)} layers"
    )
    print(f"kept vectors              : {tuple(vectors.shape)} float32 = {n_values * 4 / 2**20:.1f} MiB")
    print(f"full features (fp16)      : {full_bytes_fp16 / 2**30:.1f} GiB if they were stored instead")
    print(f"result                    : {result.summary()}")
    print(
        f"plots                     : {', '.join(f'{k} {v.size[0]}x{v.size[1]}' for k, v in images.items())}"
    )
    print(
        f"time                      : capture simulation {t_capture:.1f} s, analysis + plots {t_analyse:.1f} s"
    )
    print(f"peak host memory (RSS)    : {peak:.2f} GiB (at start, after imports: {rss_start:.2f} GiB)")
    ok = peak <= TARGET_GIB
    print(f"target                    : {TARGET_GIB:.0f} GiB -> {'OK' if ok else 'OVER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
