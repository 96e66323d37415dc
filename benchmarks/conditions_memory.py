"""Peak host memory of fitting the CDST condition distribution (Fit Conditions) at real sizes.

No text encoder is run. A stand-in encoder returns, for each of N prompts, a random
conditioning of the family's exact shape: low rank plus noise (``mean + scores @ basis + noise``
with 64 directions of decaying variance), so the PCA has structure to find. Each fit runs
``ConditionSampler.fit_from_prompts`` with 512 components in a fresh process, and the table
gives that process's peak RSS, its RSS before the fit (interpreter, torch, the stand-in
encoder's basis) and the difference, beside the bound the library states
(``diffsketch.train.conditions.fit_memory_bound``).

Shapes (F = values per prompt): SD 1.x 77 x 768 (59,136), SDXL 77 x 2048 + pooled 1280 (158,976),
SD 3.5 154 x 4096 + pooled 2048 (632,832), Z-Image 2560 per token at ``--zimage-tokens`` (default
128; its prompts vary in length, 3/4 to all of it here).

``--compare-with DIR`` also measures the library found in DIR (a checkout of an earlier version:
its ``diffsketch`` package is imported instead of this one) on the same rows, side by side, where
its estimated need (the N x F float32 rows, the k x F float64 components and their float32 copy)
is under half the memory available; otherwise the row says "skipped" with the estimate.

    python benchmarks/conditions_memory.py                        # SD 1.x, SDXL, SD 3.5 at N = 2,400
    python benchmarks/conditions_memory.py --families sd1 --prompts 600
    python benchmarks/conditions_memory.py --compare-with /path/to/older/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: family -> (tokens, context width, pooled width, variable length)
SHAPES = {
    "sd1": (77, 768, 0, False),
    "sdxl": (77, 2048, 1280, False),
    "sd35": (154, 4096, 2048, False),
    "zimage": (128, 2560, 0, True),
}
RANK = 64
N_COMPONENTS = 512


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss if sys.platform == "darwin" else rss * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def old_fit_estimate(n: int, features: int) -> int:
    """What the fit that held every row in memory needs: rows float32, components float64 and float32."""
    k = min(N_COMPONENTS, n - 1, features)
    return n * features * 4 + k * features * (8 + 4)


def child(args) -> int:
    """Run one fit in this process and print one JSON line with the measurements."""
    root = Path(args.library) if args.library else REPO
    sys.path.insert(0, str(root))
    import torch

    import diffsketch
    from diffsketch.backends.conditioning import Conditioning
    from diffsketch.train import conditions

    if not Path(diffsketch.__file__).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"diffsketch was imported from {diffsketch.__file__}, not from {root}")

    torch.set_num_threads(max(1, args.threads))
    tokens, dim, pooled, variable = SHAPES[args.family]
    if args.family == "zimage":
        tokens = args.zimage_tokens
    features = tokens * dim + pooled
    g = torch.Generator().manual_seed(args.seed)
    basis = torch.randn(RANK, features, generator=g) / features**0.5
    mean = torch.randn(features, generator=g)
    spread = torch.logspace(1, -1, RANK)  # decaying variances: 100 to 0.01

    def encode(prompt: str):
        index = int(prompt.split()[-1])
        row_g = torch.Generator().manual_seed(args.seed * 1_000_003 + index)
        row = mean + (torch.randn(RANK, generator=row_g) * spread) @ basis
        row += 0.01 * torch.randn(features, generator=row_g)
        context = row[: tokens * dim].reshape(1, tokens, dim)
        if variable:  # the prompt's own token count: 3/4 of the length to all of it
            own = tokens - int(torch.randint(0, tokens // 4 + 1, (1,), generator=row_g))
            context = context[:, :own]
        return Conditioning(context, row[tokens * dim :].reshape(1, pooled)) if pooled else context

    prompts = [f"prompt {i}" for i in range(args.prompts)]
    encode(prompts[0])  # the stand-in encoder's own first-call allocations are not the fit's
    before = current_rss_bytes()
    start = time.perf_counter()
    sampler = conditions.ConditionSampler.fit_from_prompts(
        encode, prompts, n_components=N_COMPONENTS, family=args.family
    )
    seconds = time.perf_counter() - start
    bound_fn = getattr(conditions, "fit_memory_bound", None)
    dtype_fn = getattr(conditions, "components_dtype", None)
    component_bytes = dtype_fn(args.family).itemsize if dtype_fn else 4
    print(
        json.dumps(
            {
                "features": features,
                "tokens": sampler.embedding_shape[0],
                "components": sampler.n_components,
                "component_dtype": str(sampler.components.dtype).replace("torch.", ""),
                "component_bytes": sampler.components.numel() * sampler.components.element_size(),
                "before": before,
                "peak": peak_rss_bytes(),
                "bound": bound_fn(args.prompts, features, N_COMPONENTS, component_bytes)
                if bound_fn
                else None,
                "seconds": seconds,
                # the planted directions' share of the variance kept: the PCA found the structure
                "planted_share": float(sampler.variance[:RANK].sum() / sampler.variance.sum()),
            }
        )
    )
    return 0


def run_child(family: str, args, library: str | None) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--families",
        family,
        "--prompts",
        str(args.prompts),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--zimage-tokens",
        str(args.zimage_tokens),
    ]
    if library:
        command += ["--library", library]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def gib(value) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="sd1,sdxl,sd35", help="comma-separated, of " + ", ".join(SHAPES))
    ap.add_argument("--prompts", type=int, default=2400, help="N (default 2,400: the built-in list)")
    ap.add_argument("--zimage-tokens", type=int, default=128, help="Z-Image token length (default 128)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-with", default=None, help="root of an earlier checkout to measure beside")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--library", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.family = args.families
        return child(args)

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in SHAPES]
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {', '.join(SHAPES)}")
    print(
        f"N = {args.prompts} prompts, {N_COMPONENTS} components, rank-{RANK} rows + noise, {args.threads} threads"
    )
    header = (
        f"{'family':8} {'fit':10} {'F':>8} {'peak GiB':>9} {'before':>7} {'fit GiB':>8} {'bound':>6} "
        f"{'time s':>7} {'components':>16} {'top-64 share':>12}"
    )
    print(header)
    print("-" * len(header))
    failed = False
    for family in families:
        runs = [("streamed", None)]
        if args.compare_with:
            runs.append(("compared", str(Path(args.compare_with).resolve())))
        for label, library in runs:
            tokens, dim, pooled, _ = SHAPES[family]
            if family == "zimage":
                tokens = args.zimage_tokens
            features = tokens * dim + pooled
            if library is not None:
                need = old_fit_estimate(args.prompts, features)
                if need > available_bytes() / 2:
                    print(
                        f"{family:8} {label:10} {features:>8} skipped: needs about {gib(need)} GiB, "
                        f"{gib(available_bytes())} GiB available"
                    )
                    continue
            result = run_child(family, args, library)
            if "error" in result:
                print(f"{family:8} {label:10} {features:>8} failed: {result['error']}")
                failed = True
                continue
            used = result["peak"] - result["before"]
            components = f"{gib(result['component_bytes'])} GiB {result['component_dtype']}"
            print(
                f"{family:8} {label:10} {features:>8} {gib(result['peak']):>9} {gib(result['before']):>7} "
                f"{gib(used):>8} {gib(result['bound']):>6} {result['seconds']:>7.0f} {components:>16} "
                f"{result['planted_share']:>12.3f}",
                flush=True,
            )
            if library is None and result["bound"] is not None and used > result["bound"]:
                print(f"  OVER the stated bound by {gib(used - result['bound'])} GiB")
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
