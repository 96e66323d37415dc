import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_backend():
    from tiny_models import tiny_backend as make

    return make(0)


# -- time per tier ------------------------------------------------------------------------------------
# Summed over every test's setup, call and teardown (session fixtures such as the ComfyUI server
# count where they start); shown at the end of the run, and written as JSON to the file
# DIFFSKETCH_TIER_TIMES_JSON names (.ci/run prints it with its own set-up times).
_COMFYUI_TESTS = Path(__file__).resolve().parent / "comfyui"
_FRONTEND_TEST = _COMFYUI_TESTS / "test_frontend_comfyui.py"
TIER_1 = "tier 1 (tests/)"
TIER_2 = "tier 2 (tests/comfyui/, without the frontend test)"
TIER_2_FRONTEND = "tier 2 frontend test (tests/comfyui/test_frontend_comfyui.py)"
_tier_seconds = dict.fromkeys((TIER_1, TIER_2, TIER_2_FRONTEND), 0.0)
_session_start = time.perf_counter()


def _tier_of(path: Path) -> str:
    if path == _FRONTEND_TEST:
        return TIER_2_FRONTEND
    return TIER_2 if _COMFYUI_TESTS in path.parents else TIER_1


def pytest_sessionstart(session):
    global _session_start
    _session_start = time.perf_counter()


def pytest_runtest_logreport(report):
    _tier_seconds[_tier_of(Path(str(report.fspath)).resolve())] += report.duration


def pytest_terminal_summary(terminalreporter):
    total = time.perf_counter() - _session_start
    rows = {**_tier_seconds, "collection and the rest": max(0.0, total - sum(_tier_seconds.values()))}
    terminalreporter.write_sep("-", "time per tier")
    for name, seconds in rows.items():
        terminalreporter.write_line(f"{seconds:8.1f} s  {name}")
    out = os.environ.get("DIFFSKETCH_TIER_TIMES_JSON")
    if out:
        Path(out).write_text(json.dumps(rows, indent=1))


# -- CI: a skipped tier 2, frontend or real-HED test is a broken install --------------------------------
# CI (CI=true, as CI services set it) always has ComfyUI, the browser, the current frontend and the
# real HED weights set up (.ci/run), so a skip there means an install step broke: it fails, with the
# skip's reason. A test that may rightly skip in CI too (e.g. one that needs a GPU) says so with
# @pytest.mark.ci_may_skip.
_CI_GUARDED_FILES = (
    _COMFYUI_TESTS / "test_frontend_comfyui.py",
    Path(__file__).resolve().parent / "test_hed_keras.py",
)


def _ci_guarded(path: Path) -> bool:
    return _COMFYUI_TESTS in path.parents or path in _CI_GUARDED_FILES


def _skip_fails_in_ci(report, path: Path) -> None:
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    if not _ci_guarded(path.resolve()):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in CI (CI=true): {reason}\n"
        "CI sets up ComfyUI, the frontend test's browser and frontends and the real HED weights (.ci/run); "
        "a skip of these tests there means an install step broke."
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ci_may_skip(reason): this test may skip in CI too (a skip there is no broken install)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if item.get_closest_marker("ci_may_skip") is None:
        _skip_fails_in_ci(outcome.get_result(), Path(str(item.fspath)))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    path = getattr(collector, "path", None)
    if path is not None:  # a whole module skipped at import (pytest.importorskip)
        _skip_fails_in_ci(outcome.get_result(), Path(path))
