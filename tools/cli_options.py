"""The ``diffsketch`` command's option sets and help texts as JSON: what tests/test_cli_options.py
compares the parser against, so moving code between the command modules cannot change an option,
a default or a help line unnoticed.

    python tools/cli_options.py          # rewrite tests/fixtures/cli_options.json (an intended change)
    python tools/cli_options.py --check  # exit 1 when the parser differs from the file
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO / "tests" / "fixtures" / "cli_options.json"
#: Help is wrapped to the terminal width; the snapshot is taken at this one.
COLUMNS = 100


def _action(a: argparse.Action) -> dict:
    return {
        "options": list(a.option_strings),
        "dest": a.dest,
        "default": repr(a.default),
        "type": getattr(a.type, "__name__", repr(a.type)) if a.type is not None else None,
        "nargs": a.nargs if not isinstance(a.nargs, int) else int(a.nargs),
        "choices": list(a.choices) if a.choices is not None and not isinstance(a.choices, dict) else None,
        "required": bool(a.required),
        "help": a.help,
        "kind": type(a).__name__,
    }


def describe() -> dict:
    """``{command: {"options": [...], "help": text}}`` for ``diffsketch`` ("") and every subcommand."""
    sys.path.insert(0, str(REPO))
    from diffsketch.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(COLUMNS)
    try:
        parser = build_parser()
        out = {"": {"options": [_action(a) for a in parser._actions], "help": parser.format_help()}}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out[name] = {"options": [_action(a) for a in sub._actions], "help": sub.format_help()}
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = ap.parse_args()
    text = json.dumps(describe(), indent=1, ensure_ascii=False) + "\n"
    if args.check:
        same = SNAPSHOT.is_file() and SNAPSHOT.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{SNAPSHOT} differs from the parser")
        return 0 if same else 1
    SNAPSHOT.write_text(text, encoding="utf-8")
    print(f"wrote {SNAPSHOT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
