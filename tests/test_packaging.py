"""Packaging: pyproject.toml is valid for the Comfy Registry and requirements.txt mirrors it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_registry_fields():
    data = _pyproject()
    project, comfy = data["project"], data["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z0-9_.-]{1,99}", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["license"] == {"file": "LICENSE"} and (ROOT / "LICENSE").is_file()
    assert project["requires-python"].startswith(">=")
    assert project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert project["scripts"]["diffsketch"] == "diffsketch.cli:main"
    assert "pytest" in " ".join(project["optional-dependencies"]["test"])


def test_torch_unpinned():
    deps = _pyproject()["project"]["dependencies"]
    torch = [d for d in deps if _name(d) == "torch"]
    assert torch and "==" not in torch[0] and "<" not in torch[0]


def test_requirements_in_sync_with_pyproject():
    deps = {_name(d): d.replace(" ", "") for d in _pyproject()["project"]["dependencies"]}
    reqs = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            reqs[_name(line)] = line.replace(" ", "")
    assert "torch" not in reqs and "torchvision" not in reqs  # ComfyUI brings its own
    expected = {k: v for k, v in deps.items() if k not in ("torch", "torchvision")}
    assert reqs == expected


# Runs in a fresh interpreter: in this pytest process ComfyUI may already be importable (the
# real-ComfyUI tier puts it on sys.path and imports comfy_api), which is "inside ComfyUI".
_ENTRY_POINT_PROBE = """
import importlib.util, json, sys
assert importlib.util.find_spec("comfy_api") is None, "comfy_api is importable: not outside ComfyUI"
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("pack_root_probe", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps({"has_entrypoint": hasattr(module, "comfy_entrypoint"),
                  "imported": sorted(set(sys.modules) - before)}))
"""
HEAVY_MODULES = ("torch", "numpy", "diffusers", "transformers", "open_clip", "lpips", "safetensors", "PIL")


def test_entry_point_imports_nothing_heavy_outside_comfyui(tmp_path):
    # -I: no PYTHONPATH, no user site, no script folder on sys.path; run from an empty folder
    done = subprocess.run(
        [sys.executable, "-I", "-c", _ENTRY_POINT_PROBE, str(ROOT / "__init__.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert not result["has_entrypoint"]  # no ComfyUI here: nothing to register
    heavy = sorted({m.split(".")[0] for m in result["imported"]} & set(HEAVY_MODULES))
    assert heavy == [], f"importing the pack outside ComfyUI imported {heavy}"


def test_every_node_has_category_description_and_tooltips():
    """Checked on the node sources, so it runs without ComfyUI: each io.*.Input(...) has a tooltip."""
    for path in sorted((ROOT / "nodes").glob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"\.Input\(", text):
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            assert "tooltip=" in text[m.end() : i], (
                f"{path.name}: input without tooltip: {text[m.start() : i][:80]}"
            )
        for schema in re.finditer(r"io\.Schema\(", text):
            body = text[schema.end() : schema.end() + 600]
            assert "category=" in body and "description=" in body, (
                f"{path.name}: schema without category/description"
            )
