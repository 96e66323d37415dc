"""The GPU check (tools/gpu_check.py) and what is made from its JSON (tools/gpu_figures.py, the
templates' notes in tools/make_workflows.py).

The check itself runs here as a subprocess with ``--device cpu --quick``, so the script and the
benchmarks' ``--json`` outputs it reads cannot rot between the sessions that have a GPU.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import gpu_figures  # noqa: E402
import make_workflows  # noqa: E402
from gpu_check import junit_figures  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    command = [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--device", "cpu", "--quick"]
    result = subprocess.run(
        [*command, "--out", str(out), "--budget", "900"], capture_output=True, text=True, cwd=out.parent
    )
    assert out.is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(out.read_text())


def test_quick_cpu_run_measures_every_part_and_writes_a_valid_file(quick_run):
    result, data = quick_run
    assert gpu_figures.problems(data) == []
    statuses = {part: entry["status"] for part, entry in data["parts"].items()}
    expected = dict.fromkeys(gpu_figures.PART_FIGURES, "ok")
    expected.update(comfyui_tests="skipped", template_times_sdxl="skipped")
    assert statuses == expected, result.stdout[-4000:]
    assert "--comfyui" in data["parts"]["comfyui_tests"]["reason"]
    assert result.returncode == 0, result.stdout[-3000:]
    assert data["device"]["requested"] == "cpu" and data["quick"] is True
    # the summary table names every part
    assert all(part in result.stdout for part in gpu_figures.PART_FIGURES)


def test_a_quick_run_is_never_quoted(quick_run, tmp_path):
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(quick_run[1]))
    with pytest.raises(SystemExit, match="--quick or CPU run"):
        gpu_figures.load(path)


def test_gpu_check_refuses_cpu_figures_without_quick():
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--quick" in result.stderr


def _as_gpu_run(data: dict) -> dict:
    """The quick run's document as a full CUDA run: every part's figures kept as measured."""
    gpu = copy.deepcopy(data)
    gpu["quick"] = False
    gpu["device"].update(requested="cuda", name="Test GPU")
    for part in ("comfyui_tests", "template_times_sdxl"):
        gpu["parts"][part] = {"status": "timeout", "wall_s": 1.0, "reason": "killed after its 1 s"}
    return gpu


def test_problems_name_what_is_missing(quick_run):
    data = _as_gpu_run(quick_run[1])
    del data["parts"]["pairs"]["figures"]["batches"]
    data["parts"]["template_times_sd15"]["figures"]["seconds"].pop("pair")
    data["parts"]["extract_speed"] = {"status": "failed"}
    found = gpu_figures.problems(data)
    assert "pairs: no 'batches'" in found
    assert any("template_times_sd15" in p and "pair" in p for p in found)
    assert "extract_speed: status failed without a reason" in found


def test_gpu_table_without_figures_lists_what_waits_and_is_what_the_benchmarks_page_has():
    block = gpu_figures.figures_block(None)
    assert "Not measured yet" in block
    assert all(what in block for what, _ in gpu_figures.WAITING.values())
    assert gpu_figures.PAGE == REPO / "docs" / "benchmarks.md"
    page = gpu_figures.PAGE.read_text(encoding="utf-8")
    assert block in page
    assert not gpu_figures.FIGURES_PATH.exists() or gpu_figures.figures_block(gpu_figures.load()) in page
    # The README quotes no GPU figure of its own: it links to the page that holds the table.
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert gpu_figures.BEGIN not in readme and "docs/benchmarks.md#measuring-on-a-gpu" in readme


def test_gpu_table_quotes_each_measured_part_and_says_why_the_others_are_missing(quick_run, tmp_path):
    data = _as_gpu_run(quick_run[1])
    block = gpu_figures.figures_block(data)
    rows = dict(gpu_figures.rows(data))
    student = data["parts"]["extract_speed"]["figures"]["images_per_s"]["DiffSketch student"]
    assert f"**{student:,.1f}** img/s" in rows["Extractor speed"]
    assert "B = 2" in rows["Pairs per batch size"]
    assert rows["Template stages, SDXL"] == "not measured (timeout: killed after its 1 s)"
    assert "Test GPU" in block
    page = tmp_path / "benchmarks.md"
    page.write_text(f"before\n{gpu_figures.BEGIN}\nold\n{gpu_figures.END}\nafter\n")
    assert gpu_figures.rewrite_page(data, page)
    assert page.read_text() == f"before\n{block}\nafter\n"
    assert not gpu_figures.rewrite_page(data, page)
    assert [f.name for f in tmp_path.iterdir()] == ["benchmarks.md"]


def _notes() -> dict[str, str]:
    out = {}
    for template in make_workflows.TEMPLATES:
        nodes = template.build()["nodes"]
        out[template.key] = next(n["text"] for n in nodes.values() if n["type"] == "MarkdownNote")
    return out


def test_notes_without_gpu_figures_give_the_work_per_stage(monkeypatch):
    monkeypatch.setattr(make_workflows, "load_gpu_figures", lambda: None)
    notes = _notes()
    quick = notes["quick_start"]
    fast = make_workflows.unet_evaluations("fast")
    assert fast == 13 and make_workflows.unet_evaluations("full") == 50
    assert f"{make_workflows.QUICK.train_iterations * fast:,} UNet evaluations" in quick
    assert f"{make_workflows.QUICK.pair_count * fast:,} UNet evaluations" in quick
    assert "2,400 prompts encoded" in quick
    assert f"{make_workflows.STYLE.pair_count * fast:,} UNet evaluations" in notes["distill"]
    for text in notes.values():
        assert " min" not in text and "not measured yet" in text


def test_notes_quote_the_gpu_figures_when_they_exist(monkeypatch, quick_run):
    data = _as_gpu_run(quick_run[1])
    seconds = dict.fromkeys(gpu_figures.STAGE_KEYS, 0.0)
    seconds.update(train_iteration=2.0, pair=1.5)  # 300 x 2 s = 10 min of training
    data["parts"]["template_times_sd15"]["figures"].update(device="Test GPU", seconds=seconds)
    monkeypatch.setattr(make_workflows, "load_gpu_figures", lambda: data)
    notes = _notes()
    assert "### Train (about 10 min):" in notes["quick_start"]
    assert "Times measured on Test GPU" in notes["quick_start"]
    assert "UNet evaluations" not in notes["quick_start"]
    # the SDXL template's part timed out: its note keeps the work per stage
    assert "not measured yet" in notes["quick_start_sdxl"]


def test_the_committed_notes_are_what_make_workflows_writes():
    ui_files = make_workflows.template_files()
    for key, text in _notes().items():
        ui = json.loads((REPO / "workflows" / f"{ui_files[key]}.json").read_text(encoding="utf-8"))
        note = next(n for n in ui["nodes"] if n["type"] == "MarkdownNote")
        assert note["widgets_values"][0] == text, f"{key}: run tools/make_workflows.py"


def test_comfyui_part_reads_pytests_junit_report(tmp_path):
    """The ComfyUI part's figures come from pytest's own JUnit XML: one test of each outcome."""
    (tmp_path / "test_outcomes.py").write_text(
        "import pytest\n"
        "def test_passes(): pass\n"
        "def test_fails(): assert False\n"
        "def test_skips(): pytest.skip('no GPU')\n"
        "@pytest.fixture\n"
        "def broken(): raise RuntimeError('fixture')\n"
        "def test_errors(broken): pass\n"
    )
    xml = tmp_path / "report.xml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_outcomes.py",
            "--junitxml",
            str(xml),
        ],
        cwd=tmp_path,
        capture_output=True,
    )
    figures = junit_figures(xml)
    assert gpu_figures.figure_problems("comfyui_tests", figures) == []
    assert (figures["passed"], figures["failed"], figures["skipped"], figures["errors"]) == (1, 1, 1, 1)
    assert figures["tests"]["test_outcomes::test_fails"] == "failed"
