"""The GPU check: every GPU figure docs/benchmarks.md and the templates' notes wait for, in one run of under
10 minutes, written to one JSON file (and each part's full log beside it, in <out>_logs/).

The command for a session's device machine (it runs in the repository root, with no internet; give
it timeout_s 600: the script stops itself at --budget, 570 s, so the JSON always comes back):

    python tools/gpu_check.py --device cuda --comfyui shared/comfyui --out "$OUT/gpu_check.json"

The ComfyUI part needs a ComfyUI v0.8 tree inside the repository copy (e.g. the CI's tree copied to
shared/comfyui in the checkout, or named in carry) and ComfyUI's requirements installed there;
without them that part is skipped with the reason (the missing packages are listed) and the others
run. Then, on the development machine, with the JSON that came back:

    cp <files_at>/gpu_check.json benchmarks/gpu_check.json
    python tools/gpu_figures.py            # the GPU table of docs/benchmarks.md
    python tools/make_workflows.py         # the templates' notes quote the stage times

Parts, in this order, each a subprocess with its own time limit (so one slow part cannot eat the
others' time; the whole run stops at ``--budget`` seconds):

- ``extract_speed``: benchmarks/extract_speed.py, bf16, 512x512, batch 32;
- ``pairs``: benchmarks/style_cost.py, pairs/s per batch size, SD 1.5 shapes;
- ``template_times_sd15``: benchmarks/template_times.py, each template stage, SD 1.5;
- ``train_memory_sdxl``: benchmarks/train_step.py, the SDXL 1024x1024 generator step with
  ``low_memory`` and 512-px windows, its peak GPU memory;
- ``train_memory_zimage``: the same at Z-Image's 1024x1024 shapes (one branch, as Turbo samples;
  6 blocks and 13 timesteps, more than the defaults), the 16 GB target of the DiTs;
- ``comfyui_tests``: tests/comfyui's capture, train and extract tests, with ComfyUI on the GPU
  (DIFFSKETCH_TEST_DEVICE=cuda);
- ``template_times_sdxl``: benchmarks/template_times.py for the SDXL quick start.

The JSON (schema: tools/gpu_figures.py) is rewritten atomically after every part, so a run killed
half-way keeps what it measured; ``--only`` reruns some parts into the same file. ``--device cpu
--quick`` runs every part small on the CPU (tests/test_gpu_check.py does, so the script cannot rot).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from gpu_figures import PART_FIGURES, SCHEMA, figure_problems, problems  # noqa: E402

BENCH = REPO / "benchmarks"
# The tier-2 tests that exercise capture, training and extraction through a real ComfyUI.
COMFYUI_TESTS = [
    "tests/comfyui/test_capture_comfyui.py",
    "tests/comfyui/test_generator_travels_comfyui.py",
    "tests/comfyui/test_extract_comfyui.py",
]
# Seconds each part may take on a GPU (the run as a whole is capped by --budget).
BUDGETS = {
    "extract_speed": 60,
    "pairs": 120,
    "template_times_sd15": 100,
    "train_memory_sdxl": 80,
    "train_memory_zimage": 80,
    "comfyui_tests": 150,
    "template_times_sdxl": 150,
}
if list(BUDGETS) != list(PART_FIGURES):
    raise RuntimeError("BUDGETS and gpu_figures.PART_FIGURES must name the same parts in the same order")
# Of ComfyUI's requirements (installed distributions are looked up by name), the ones the check does
# not ask for: torch comes with the project's requirements; torchaudio is for audio nodes only.
NOT_CHECKED = {"torch", "torchvision", "torchaudio"}


def _requirement_names(lines) -> list[str]:
    names = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[<>=!~;\[ @]", line, maxsplit=1)[0])
    return names


def project_requirements() -> list[str]:
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M).group(1)
    return _requirement_names(re.findall(r'"([^"]+)"', block))


def missing(names) -> list[str]:
    out = []
    for name in names:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def prerequisites(args) -> tuple[list[str], dict[str, str]]:
    """(what stops the whole run, {part: why it is skipped}); prints both."""
    fatal = [f"Python package {n} (pip install {n})" for n in missing(project_requirements())]
    skip = {}
    if not fatal:
        import torch

        if args.device.startswith("cuda") and not torch.cuda.is_available():
            fatal.append(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    if args.comfyui is None:
        skip["comfyui_tests"] = "no --comfyui given (a ComfyUI v0.8 tree)"
    elif not (Path(args.comfyui) / "main.py").is_file():
        skip["comfyui_tests"] = f"--comfyui {args.comfyui} has no main.py"
    else:
        req = Path(args.comfyui) / "requirements.txt"
        names = _requirement_names(req.read_text().splitlines()) if req.is_file() else []
        lacking = missing([n for n in [*names, "pytest"] if n not in NOT_CHECKED])
        if lacking:
            skip["comfyui_tests"] = f"missing Python packages for ComfyUI and its tests: {', '.join(lacking)}"
    if args.quick and "template_times_sdxl" not in skip:
        skip["template_times_sdxl"] = (
            "--quick: the tiny model stands in for both backbones (template_times_sd15)"
        )
    for line in fatal:
        print(f"MISSING: {line}")
    for part, why in skip.items():
        print(f"skipping {part}: {why}")
    return fatal, skip


def commands(args, work: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Part -> (command, extra environment). Each benchmark writes its figures to work/<part>.json."""
    py, d = sys.executable, args.device
    one_thread = ["--threads", "1"]
    if args.quick:  # every part small, one CPU thread each (two parts run at a time)
        extract = ["--size", "64", "--repeats", "1", "--warmup", "0", *one_thread]
        extract += ["--skip", "hed", "informative", "pix2pix"]
        pairs = ["--quick", *one_thread]
        template = [
            "--tiny",
            "--prompts",
            "8",
            "--train-iterations",
            "2",
            "--pairs",
            "2",
            "--student-steps",
            "2",
        ]
        train = ["--arch", "sd15", "--sd15-size", "64", "--sd15-timesteps", "1", *one_thread]
        train_dit = ["--arch", "zimage", "--sd15-size", "64", "--sd15-timesteps", "1", "--dit-taps", "2"]
        train_dit += one_thread
    else:
        extract, pairs, template = [], [], ["--dtype", "fp16"]
        threads = ["--threads", str(os.cpu_count() or 1)]
        train = ["--arch", "sdxl", "--sample-crop", "512", *threads]
        train_dit = ["--arch", "zimage", "--sample-crop", "512", *threads]
    cmds = {
        "extract_speed": [py, str(BENCH / "extract_speed.py"), "--device", d, "--big", "0", *extract],
        "pairs": [py, str(BENCH / "style_cost.py"), "--device", d, *pairs],
        "template_times_sd15": [py, str(BENCH / "template_times.py"), "--device", d, *template],
        "train_memory_sdxl": [py, str(BENCH / "train_step.py"), "--skip-tiny", "--sd15-modes", "low_memory"]
        + ["--device", d, *train],
        "train_memory_zimage": [py, str(BENCH / "train_step.py"), "--skip-tiny", "--sd15-modes", "low_memory"]
        + ["--device", d, *train_dit],
        "template_times_sdxl": [py, str(BENCH / "template_times.py"), "--arch", "sdxl", "--device", d]
        + ["--dtype", "fp16"],
    }
    quick_env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if args.quick else {}
    out = {part: (cmd + ["--json", str(work / f"{part}.json")], quick_env) for part, cmd in cmds.items()}
    out["comfyui_tests"] = (
        [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *COMFYUI_TESTS]
        + ["--junitxml", str(work / "comfyui_tests.xml")],
        {
            "COMFYUI_PATH": str(Path(args.comfyui or "").resolve()),
            "DIFFSKETCH_TEST_DEVICE": "cuda" if d.startswith("cuda") else "cpu",
            "DIFFSKETCH_TEST_CACHE": str(work / "test-cache"),
        },
    )
    return {part: out[part] for part in BUDGETS}


def junit_figures(path: Path) -> dict:
    """Counts and per-test outcomes from pytest's JUnit XML (written by pytest itself)."""
    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        tests[name] = (
            "failed"
            if "failure" in kinds
            else "error"
            if "error" in kinds
            else "skipped"
            if "skipped" in kinds
            else "passed"
        )
    counts = {k: sum(v == k for v in tests.values()) for k in ("passed", "failed", "skipped")}
    return {**counts, "errors": sum(v == "error" for v in tests.values()), "tests": tests}


RUNNING: set[int] = set()  # process groups of the parts now running
INTERRUPTED = threading.Event()  # this script is being stopped (Ctrl-C, SIGTERM)


def stop_group(pid: int) -> None:
    RUNNING.discard(pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def run_part(part: str, command: list[str], env: dict, limit: float, work: Path, logs: Path) -> dict:
    """Run one part in its own process group (killed whole at ``limit``: a benchmark's or pytest's
    own children included) and collect its figures."""
    log_path = logs / f"{part}.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        RUNNING.add(proc.pid)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            rc = None
        finally:  # what the part started goes with it (a benchmark's child, pytest's ComfyUI server)
            stop_group(proc.pid)
            proc.wait()
    wall = time.monotonic() - start
    log_text = log_path.read_text(errors="replace")
    result = {
        "command": command,
        "budget_s": round(limit),
        "wall_s": round(wall, 1),
        "log_tail": log_text[-3000:],
    }
    if INTERRUPTED.is_set():
        return {**result, "status": "failed", "reason": "stopped: gpu_check itself was interrupted"}
    if rc is None:
        return {**result, "status": "timeout", "reason": f"killed after its {limit:.0f} s"}
    figures_path = work / (f"{part}.xml" if part == "comfyui_tests" else f"{part}.json")
    if not figures_path.is_file():
        return {**result, "status": "failed", "reason": f"exit {rc}, no figures written"}
    figures = junit_figures(figures_path) if part == "comfyui_tests" else json.loads(figures_path.read_text())
    found = figure_problems(part, figures)
    if part == "comfyui_tests" and (figures["failed"] or figures["errors"]) or rc != 0:
        return {**result, "status": "failed", "reason": f"exit {rc}", "figures": figures}
    if found:
        return {**result, "status": "failed", "reason": "; ".join(found), "figures": figures}
    return {**result, "status": "ok", "figures": figures}


def device_info(requested: str) -> dict:
    import torch

    cuda = requested.startswith("cuda") and torch.cuda.is_available()
    info = {
        "requested": requested,
        "name": torch.cuda.get_device_name(requested) if cuda else platform.processor() or "CPU",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if cuda:
        info["memory_gib"] = round(torch.cuda.get_device_properties(requested).total_memory / 2**30, 1)
    return info


def commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def write(path: Path, data: dict) -> None:
    from diffsketch.fileio import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def headline(part: str, entry: dict) -> str:
    f = entry.get("figures")
    if entry["status"] != "ok" or not f:
        return entry.get("reason", "")
    if part == "extract_speed":
        return (
            f"student {f['images_per_s']['DiffSketch student']:,.1f} img/s ({f['dtype']}, batch {f['batch']})"
        )
    if part == "pairs":
        return ", ".join(f"B={b['batch']} {b['pairs_per_s']:.2f}/s" for b in f["batches"])
    if part.startswith("template_times_"):
        return ", ".join(f"{k} {v:.2f}s" for k, v in f["seconds"].items())
    if part.startswith("train_memory_"):
        return ", ".join(
            f"{m}: {r['seconds_per_iteration']:.2f} s/it, GPU peak "
            + (f"{r['peak_gpu_bytes'] / 1e9:.2f} GB" if r.get("peak_gpu_bytes") else "-")
            for m, r in f["modes"].items()
        )
    return f"{f['passed']} passed, {f['failed']} failed, {f['errors']} errors, {f['skipped']} skipped"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:1, ... (cpu only with --quick)")
    ap.add_argument("--comfyui", default=None, help="a ComfyUI v0.8 tree for the ComfyUI part (else skipped)")
    ap.add_argument(
        "--out", default="gpu_check.json", help="the JSON file to write (rewritten after each part)"
    )
    ap.add_argument("--budget", type=float, default=570, help="seconds for the whole run (default 570)")
    ap.add_argument("--only", default=None, help=f"comma-separated parts to (re)run: {', '.join(BUDGETS)}")
    ap.add_argument(
        "--quick", action="store_true", help="every part small (tiny models): checks the script runs"
    )
    args = ap.parse_args(argv)
    if not args.device.startswith("cuda") and not args.quick:
        ap.error("GPU figures need --device cuda; --device cpu is for --quick smoke runs")
    only = set(args.only.split(",")) if args.only else set(BUDGETS)
    if only - set(BUDGETS):
        ap.error(f"--only: unknown parts {sorted(only - set(BUDGETS))}; the parts are {', '.join(BUDGETS)}")
    started = time.monotonic()
    # SIGTERM (a device tool's time limit) unwinds like Ctrl-C, so running parts are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    fatal, skip = prerequisites(args)
    if fatal:
        print("gpu_check: install what is missing above, then run again.")
        return 2
    sys.path.insert(0, str(REPO))
    out = Path(args.out)
    logs = out.parent / f"{out.stem}_logs"
    logs.mkdir(parents=True, exist_ok=True)
    data = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(),
        "device": device_info(args.device),
        "quick": args.quick,
        "budget_s": args.budget,
        "parts": {part: {"status": "pending"} for part in BUDGETS},
    }
    if args.only and out.is_file():  # a rerun of some parts keeps the others' results
        previous = json.loads(out.read_text())
        if problems(previous) or previous["device"]["name"] != data["device"]["name"]:
            sys.exit(f"{out} is not a valid gpu_check file of {data['device']['name']}: give another --out")
        data["parts"] = previous["parts"]
        data["quick"] = previous["quick"] or args.quick
    print(
        f"gpu_check on {data['device']['name']} (torch {data['device']['torch']}, CUDA {data['device']['cuda']})"
    )
    lock = threading.Lock()

    def run(part: str, command: list[str], env: dict, work: Path) -> None:
        left = args.budget - (time.monotonic() - started)
        if part in skip:
            entry = {"status": "skipped", "reason": skip[part]}
        elif left < 10:
            entry = {"status": "skipped", "reason": f"--budget {args.budget:.0f} s used up"}
        else:
            # the budgets are for a GPU: a CPU smoke run's part may take what is left
            limit = left if args.quick else min(BUDGETS[part], left)
            with lock:
                data["parts"][part] = {"status": "running", "budget_s": round(limit)}
                write(out, data)
                print(f"-- {part} (up to {limit:.0f} s)", flush=True)
            entry = run_part(part, command, env, limit, work, logs)
        with lock:
            data["parts"][part] = entry
            print(
                f"   {part}: {entry['status']} {entry.get('wall_s', 0):.0f} s: {headline(part, entry)}",
                flush=True,
            )
            write(out, data)

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        todo = [(part, *spec, work) for part, spec in commands(args, work).items() if part in only]
        # On a GPU the parts run one after another (one device, peak memory per part). A CPU smoke
        # run's parts are small and mostly single-threaded Python: two at a time, one thread each.
        with ThreadPoolExecutor(max_workers=2 if args.quick else 1) as pool:
            try:
                for future in [pool.submit(run, *job) for job in todo]:
                    future.result()
            except BaseException:  # stopped early (Ctrl-C, SIGTERM): the running parts are stopped too
                INTERRUPTED.set()
                for pid in list(RUNNING):
                    stop_group(pid)
                raise
    data["wall_s"] = round(time.monotonic() - started, 1)
    write(out, data)
    print(f"\n{'part':22s} {'status':8s} {'wall':>6s} {'budget':>6s}  figures")
    for part, entry in data["parts"].items():
        wall = f"{entry['wall_s']:.0f}s" if "wall_s" in entry else "-"
        budget = f"{entry['budget_s']}s" if "budget_s" in entry else "-"
        print(f"{part:22s} {entry['status']:8s} {wall:>6s} {budget:>6s}  {headline(part, entry)}")
    print(f"\nwrote {out} ({data['wall_s']:.0f} s)")
    return 0 if all(e["status"] in ("ok", "skipped") for e in data["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
