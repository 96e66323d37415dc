"""The GPU figures: what tools/gpu_check.py writes, checked, and the benchmarks page's table made from them.

One JSON file (:data:`FIGURES_PATH`, committed once a GPU has run the check) holds every GPU figure
docs/benchmarks.md and the templates' notes quote. tools/gpu_check.py writes it part by part;
tools/make_workflows.py reads the template stage times from it; this script rewrites the GPU table
of docs/benchmarks.md from it (the README links there):

    python tools/gpu_figures.py                  # rewrite docs/benchmarks.md's GPU table from FIGURES_PATH
    python tools/gpu_figures.py --check FILE     # validate a gpu_check JSON, print its problems

Without the file the page's table says what is waiting to be measured and the notes give the work
per stage, never a time. Only a full (not ``--quick``) run on a CUDA device counts as GPU figures:
a CPU smoke run's numbers are for checking the script, not for quoting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES_PATH = REPO / "benchmarks" / "gpu_check.json"
PAGE = REPO / "docs" / "benchmarks.md"  # where the GPU table lives, between BEGIN and END
SCHEMA = 1
STATUSES = ("pending", "running", "ok", "failed", "timeout", "skipped")
# The figures each part must leave when it is "ok": the keys its benchmark's --json writes.
PART_FIGURES = {
    "extract_speed": ("device", "size", "batch", "dtype", "images_per_s"),
    "pairs": ("device", "arch", "size", "steps", "dtype", "batches", "generator_step_s", "student_step_s"),
    "template_times_sd15": ("device", "dtype", "arch", "size", "seconds"),
    "train_memory_sdxl": ("arch", "size", "timesteps", "sample_crop", "device", "modes"),
    "train_memory_zimage": ("arch", "size", "timesteps", "sample_crop", "device", "modes"),
    "comfyui_tests": ("passed", "failed", "errors", "skipped", "tests"),
    "template_times_sdxl": ("device", "dtype", "arch", "size", "seconds"),
}
STAGE_KEYS = ("sample", "fit_conditions", "train_iteration", "pair", "student_step", "extract")
BEGIN, END = (
    "<!-- gpu-figures: begin (tools/gpu_figures.py writes this table) -->",
    "<!-- gpu-figures: end -->",
)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and x >= 0


def figure_problems(part: str, figures) -> list[str]:
    """What is missing or malformed in one part's figures (empty: fine)."""
    if not isinstance(figures, dict):
        return [f"{part}: figures are not an object"]
    problems = [f"{part}: no {key!r}" for key in PART_FIGURES[part] if key not in figures]
    if problems:
        return problems
    if part == "extract_speed":
        rates = figures["images_per_s"]
        if "DiffSketch student" not in rates or not all(_number(v) and v > 0 for v in rates.values()):
            problems.append(f"{part}: images_per_s needs a positive rate for 'DiffSketch student': {rates}")
    elif part == "pairs":
        rows = figures["batches"]
        if not rows or rows[0].get("batch") != 1:
            problems.append(f"{part}: batches must start with B = 1: {rows}")
        for row in rows:
            if not all(_number(row.get(k)) for k in ("batch", "pairs_per_s", "speedup", "unet_eval_s")):
                problems.append(f"{part}: malformed batch row {row}")
    elif part.startswith("template_times_"):
        seconds = figures["seconds"]
        missing = [k for k in STAGE_KEYS if not _number(seconds.get(k))]
        if missing:
            problems.append(f"{part}: seconds has no number for {missing}")
    elif part.startswith("train_memory_"):
        modes = figures["modes"]
        if not modes:
            problems.append(f"{part}: no mode was measured")
        for mode, r in modes.items():
            if not _number(r.get("peak_bytes")) or not _number(r.get("seconds_per_iteration")):
                problems.append(f"{part}: mode {mode} has no peak_bytes / seconds_per_iteration")
            if figures["device"].startswith("cuda") and not _number(r.get("peak_gpu_bytes")):
                problems.append(f"{part}: mode {mode} ran on {figures['device']} without peak_gpu_bytes")
    elif part == "comfyui_tests":
        if not isinstance(figures["tests"], dict) or not all(
            isinstance(figures[k], int) for k in ("passed", "failed", "errors", "skipped")
        ):
            problems.append(f"{part}: counts must be integers and tests an object")
    return problems


def problems(data) -> list[str]:
    """Everything wrong with a gpu_check JSON document (empty: valid)."""
    if not isinstance(data, dict):
        return ["not a JSON object"]
    out = [f"no {key!r}" for key in ("schema", "created", "device", "quick", "parts") if key not in data]
    if out:
        return out
    if data["schema"] != SCHEMA:
        out.append(f"schema {data['schema']!r}, expected {SCHEMA}")
    for key in ("requested", "name", "torch", "cuda"):
        if key not in data["device"]:
            out.append(f"device has no {key!r}")
    unknown = sorted(set(data["parts"]) - set(PART_FIGURES))
    if unknown:
        out.append(f"unknown parts {unknown}")
    for name, part in data["parts"].items():
        if name not in PART_FIGURES:
            continue
        if part.get("status") not in STATUSES:
            out.append(f"{name}: status {part.get('status')!r} is not one of {STATUSES}")
        if part.get("status") in ("failed", "timeout", "skipped") and not part.get("reason"):
            out.append(f"{name}: status {part['status']} without a reason")
        if part.get("status") in ("ok", "failed", "timeout") and not _number(part.get("wall_s")):
            out.append(f"{name}: no wall_s")
        if part.get("status") == "ok":
            out += figure_problems(name, part.get("figures"))
    return out


def is_gpu_run(data: dict) -> bool:
    return str(data["device"]["requested"]).startswith("cuda") and not data["quick"]


def load(path: Path = FIGURES_PATH) -> dict | None:
    """The committed GPU figures, or None when no GPU has run the check yet. A file that is not a
    valid full GPU run is an error: its numbers must not reach the docs or the notes."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    found = problems(data)
    if found:
        raise SystemExit(f"{path} is not a valid gpu_check file: " + "; ".join(found))
    if not is_gpu_run(data):
        raise SystemExit(
            f"{path} comes from a --quick or CPU run ({data['device']['requested']}): its figures check the "
            "script only. Remove it, or replace it with the JSON of `python tools/gpu_check.py --device cuda`."
        )
    return data


def part_figures(data: dict | None, part: str) -> dict | None:
    """One part's figures when that part ran to the end ("ok"), else None."""
    if data is None or data["parts"].get(part, {}).get("status") != "ok":
        return None
    return data["parts"][part]["figures"]


# ---------------------------------------------------------------------------------------------
# The GPU table of docs/benchmarks.md
# ---------------------------------------------------------------------------------------------
# What each part measures: its row title and, until it is measured, what the page waits for.
WAITING = {
    "extract_speed": (
        "Extractor speed",
        "student images/s at 512×512, bf16, batch 32 (target 300), beside the other networks'",
    ),
    "pairs": (
        "Pairs per batch size",
        "pairs/s at B = 1, 4, 8, 16 (SD 1.5 shapes, 512×512, fp16; target: B = 8 at least 3× B = 1), "
        "GPU peak per B",
    ),
    "template_times_sd15": ("Template stages, SD 1.5", "minutes per stage with the templates' settings"),
    "train_memory_sdxl": (
        "SDXL training memory",
        "GPU peak of the generator step at 1024×1024 with `low_memory` and 512-px windows",
    ),
    "train_memory_zimage": (
        "Z-Image training memory",
        "GPU peak of the generator step at Z-Image's 1024×1024 shapes (one branch, 6 blocks, 13 timesteps: "
        "an upper bound of the defaults) with `low_memory` and 512-px windows (target: under 16 GB)",
    ),
    "comfyui_tests": ("ComfyUI on the GPU", "the capture, train and extract tests of tests/comfyui on CUDA"),
    "template_times_sdxl": ("Template stages, SDXL", "minutes per stage of the SDXL quick start"),
}


def _gb(x) -> str:
    return f"{x / 1e9:.2f} GB" if _number(x) else "-"


def rows(data: dict) -> list[tuple[str, str]]:
    """(what, figure) per part; a part that did not finish says its status and why."""
    sys.path.insert(0, str(REPO / "tools"))
    from make_workflows import QUICK, STYLE, stage_minutes

    out = []
    for part, (what, _) in WAITING.items():
        entry = data["parts"].get(part)
        figures = part_figures(data, part)
        if figures is None:
            status = entry["status"] if entry else "not run"
            why = f": {entry['reason']}" if entry and entry.get("reason") else ""
            out.append((what, f"not measured ({status}{why})"))
            continue
        if part == "extract_speed":
            r = figures["images_per_s"]
            text = (
                f"{figures['size']}×{figures['size']}, {figures['dtype']}, batch {figures['batch']}: "
                + ", ".join(f"{name} **{rate:,.1f}** img/s" for name, rate in r.items())
            )
        elif part == "pairs":
            text = (
                f"{figures['arch']}, {figures['size']}×{figures['size']}, {figures['steps']} steps, {figures['dtype']}: "
                + "; ".join(
                    f"B = {b['batch']} **{b['pairs_per_s']:.2f}** pairs/s ({b['speedup']:.2f}×"
                    + (f", peak {b['peak_gib']:.1f} GiB" if _number(b.get("peak_gib")) else "")
                    + ")"
                    for b in figures["batches"]
                )
            )
        elif part.startswith("template_times_"):
            quick, style = stage_minutes(figures["seconds"], QUICK), stage_minutes(figures["seconds"], STYLE)
            text = (
                f"{figures['size']}×{figures['size']}, {figures['dtype']}, minutes quick start / templates 2-5: "
                + ", ".join(f"{stage} {quick[stage]:.1f} / {style[stage]:.1f}" for stage in quick)
            )
        elif part.startswith("train_memory_"):
            text = "; ".join(
                f"{mode}, {figures['size']}×{figures['size']}, window {figures['sample_crop']}: GPU peak "
                f"**{_gb(r.get('peak_gpu_bytes'))}**, {r['seconds_per_iteration']:.2f} s/iteration"
                for mode, r in figures["modes"].items()
            )
        else:
            failing = [k for k, v in figures["tests"].items() if v not in ("passed", "skipped")]
            text = (
                f"{figures['passed']} passed, {figures['failed']} failed, {figures['errors']} errors, "
                f"{figures['skipped']} skipped" + (f" (failing: {', '.join(failing)})" if failing else "")
            )
        out.append((what, text))
    return out


def figures_block(data: dict | None) -> str:
    if data is None:
        lines = [
            "Not measured yet: no GPU has run `tools/gpu_check.py`. Waiting for it:",
            "",
            *[f"- {what}: {desc}" for what, desc in WAITING.values()],
        ]
    else:
        d = data["device"]
        lines = [
            f"Measured by `tools/gpu_check.py` on **{d['name']}** (torch {d['torch']}, CUDA {d['cuda']}), "
            f"{data['created'][:10]}, commit {(data.get('commit') or 'unknown')[:12]}; random-weight models of the "
            "real architectures.",
            "",
            "| what | figures |",
            "|---|---|",
            *[f"| {what} | {text} |" for what, text in rows(data)],
        ]
    return "\n".join([BEGIN, *lines, END])


def rewrite_page(data: dict | None, page: Path = PAGE) -> bool:
    """Put :func:`figures_block` between the markers; True when the page changed."""
    text = page.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"{page} needs exactly one {BEGIN!r} and one {END!r} line")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    new = head + figures_block(data) + tail
    if new != text:
        partial = page.with_name(page.name + ".partial")
        partial.write_text(new, encoding="utf-8")
        partial.replace(page)
    return new != text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="FILE", help="validate this gpu_check JSON instead")
    ap.add_argument("--figures", default=str(FIGURES_PATH), help="the GPU figures to quote")
    args = ap.parse_args(argv)
    if args.check:
        found = problems(json.loads(Path(args.check).read_text(encoding="utf-8")))
        print("\n".join(found) or f"{args.check}: valid")
        return 1 if found else 0
    changed = rewrite_page(load(Path(args.figures)))
    print(f"{PAGE.relative_to(REPO)} {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
