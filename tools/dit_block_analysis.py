"""Analyse a DiT's blocks x timesteps on real weights (diffsketch.capture.block_analysis): taps
EVERY transformer block of a local diffusers folder of Z-Image, SD 3.5 or Flux.1, samples a few images
and prints, per block, the massive-activation ratio, the share of the map that varies over the
image (with and without the massive channels) and the similarity to the next block; writes the
full blocks x timesteps tables as JSON.

    python tools/dit_block_analysis.py PATH/Z-Image-Turbo --steps 8 --cfg 1 --samples 4 \\
        --device cuda --dtype bfloat16 --json zimage_blocks.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model", help="a local diffusers folder of Z-Image, SD 3.5 or Flux.1 (with transformer/)"
    )
    parser.add_argument(
        "--prompts", nargs="+", default=["a cat on a sofa", "a city street at night", "a portrait"]
    )
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--json", type=Path, help="write the full tables here")
    args = parser.parse_args(argv)

    from diffsketch.backends.dit import DiffusersFlowBackend
    from diffsketch.capture.block_analysis import run_block_analysis
    from diffsketch.capture.spec import dit_block_count

    loaded = DiffusersFlowBackend.from_pretrained(args.model, args.device, getattr(torch, args.dtype))
    backend = DiffusersFlowBackend(
        loaded.transformer,
        loaded.vae,
        loaded.text_encoder,
        loaded.tokenizer,
        args.device,
        getattr(torch, args.dtype),
        text_encoder_2=loaded.text_encoder_2,
        tokenizer_2=loaded.tokenizer_2,
        text_encoder_3=loaded.text_encoder_3,
        tokenizer_3=loaded.tokenizer_3,
        shift=loaded.shift,
        guidance=loaded.guidance,
        blocks=tuple(
            range(dit_block_count(loaded.transformer) - 1)
        ),  # SD 3.5's last block has no image output worth tapping
    )
    result = run_block_analysis(
        backend,
        args.prompts,
        args.samples,
        args.steps,
        cfg=args.cfg,
        width=args.size,
        height=args.size,
        progress=lambda i, n: print(f"sampled {i}/{n}", flush=True),
    )
    print(result.table())
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
