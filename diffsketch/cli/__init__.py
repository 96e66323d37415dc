"""The ``diffsketch`` command: the same stages as the ComfyUI nodes, on a diffusers folder or a
single-file checkpoint of SD 1.x, SD 2.x or SDXL.

    diffsketch sample     --model M --prompt P --seed S --out example.safetensors [--image example.png]
    diffsketch capture    --model M --picture photo.png [--caption C] --out example.safetensors
    diffsketch timesteps  --model M --samples 8 --out analysis/
    diffsketch fit-conditions --model M --out conditions.safetensors
    diffsketch train      --model M --example example.safetensors --sketch sketch.png --out style.safetensors ...
    diffsketch generate   --model M --generator style.safetensors --prompt P --out pairs/
    diffsketch distill    --model M --generator style.safetensors --out extractor.safetensors ...
    diffsketch extract    INPUTS... [--extractor extractor.safetensors] --out sketches/ [--ray [ADDRESS]]
    diffsketch extract    clip.mp4 --out sketch.mp4 [--temporal stabilize|off] [--overwrite]
    diffsketch eval       PHOTOS_DIR --extractor extractor.safetensors --style xdog --out report/ [--bsds-gt GT_DIR]

Files are the same .safetensors files the nodes read and write. Every option has a --help text.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ..errors import DiffSketchError
from . import capture, distill, extract, fit_conditions, generate, sample, timesteps, train

#: The subcommands in the order ``diffsketch --help`` lists them (``eval`` last, from the eval package).
COMMANDS = (sample, capture, timesteps, fit_conditions, train, generate, distill, extract)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    ap = argparse.ArgumentParser(
        prog="diffsketch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--version", action="version", version=f"diffsketch {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)

    from ..eval.cli import add_eval_parser

    add_eval_parser(sub)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    # Python leaves SIGINT ignored when it starts ignored (a command run with & from a script), so
    # `kill -INT` would not cancel: install the Ctrl-C handler, so either way checkpoints and exits.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except DiffSketchError as e:
        print(f"diffsketch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"diffsketch {args.command}: cancelled", file=sys.stderr)
        for note in getattr(e, "__notes__", []):
            print(note, file=sys.stderr)
        return 130
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
