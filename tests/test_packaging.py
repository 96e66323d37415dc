"""Packaging: pyproject.toml is valid for the Comfy Registry and requirements.txt mirrors it."""

from __future__ import annotations

import re
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


def test_test_extra_brings_ray_and_accelerate_for_their_tests():
    """CI installs `.[test]`; the Ray Data test (tests/test_extract_ray.py) skips without Ray and
    the `accelerate launch` test (tests/test_distributed.py) without accelerate."""
    extras = _pyproject()["project"]["optional-dependencies"]
    assert any(_name(e) == "ray" for e in extras["scale"])
    assert "diffsketch[scale]" in [e.replace(" ", "") for e in extras["test"]]
    assert any(_name(e) == "accelerate" for e in extras["test"])


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


def test_entry_point_imports_nothing_heavy_outside_comfyui():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pack_root_probe", ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not hasattr(module, "comfy_entrypoint")  # no ComfyUI here: nothing to register


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
