"""The command line's options and help read as recorded (tests/fixtures/cli_options.json): every
subcommand's option set (flags, destination, default, type, nargs, choices, help) and its whole
help text. An intended change is recorded with ``python tools/cli_options.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from cli_options import SNAPSHOT, describe  # noqa: E402


def _differences(recorded: dict, now: dict) -> list[str]:
    out = []
    for command in sorted(set(recorded) | set(now)):
        name = command or "diffsketch"
        if command not in now:
            out.append(f"{name}: the command is gone")
            continue
        if command not in recorded:
            out.append(f"{name}: a new command")
            continue
        before = {tuple(a["options"]) or (a["dest"],): a for a in recorded[command]["options"]}
        after = {tuple(a["options"]) or (a["dest"],): a for a in now[command]["options"]}
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                out.append(f"{name} {'/'.join(key)}: {before.get(key)} -> {after.get(key)}")
        if recorded[command]["help"] != now[command]["help"]:
            out.append(f"{name}: the help text differs")
    return out


def test_the_options_and_help_are_as_recorded():
    recorded = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    differences = _differences(recorded, describe())
    assert differences == [], "run `python tools/cli_options.py` if intended:\n" + "\n".join(differences)


def test_a_changed_option_is_reported():
    recorded = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    changed = json.loads(json.dumps(recorded))
    option = next(a for a in changed["train"]["options"] if a["options"] == ["--iterations"])
    option["default"] = "7"
    changed["extract"]["help"] += " "
    del changed["sample"]
    assert _differences(recorded, changed) == [
        "extract: the help text differs",
        "sample: the command is gone",
        f"train --iterations: {recorded['train']['options'][[a['options'] for a in recorded['train']['options']].index(['--iterations'])]} -> {option}",
    ]
