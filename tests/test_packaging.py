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


# What only the diffsketch command imports (diffsketch/backends/{diffusers,checkpoint}.py).
CLI_ONLY = {"diffusers", "transformers"}


def test_requirements_in_sync_with_pyproject():
    deps = {_name(d): d.replace(" ", "") for d in _pyproject()["project"]["dependencies"]}
    reqs = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            reqs[_name(line)] = line.replace(" ", "")
    assert "torch" not in reqs and "torchvision" not in reqs  # ComfyUI brings its own
    # the diffsketch command's sampling backends: project dependencies (a plain `pip install .`
    # gives a working command), left out of what ComfyUI-Manager installs for the nodes
    assert CLI_ONLY <= deps.keys()
    expected = {k: v for k, v in deps.items() if k not in {"torch", "torchvision"} | CLI_ONLY}
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


# ---------------------------------------------------------------------------------------------
# Comfy Registry metadata and the Registry zip, checked without comfy-cli
# ---------------------------------------------------------------------------------------------
# comfy-cli's accepted accelerator classifiers (comfy_cli/registry/config_parser.py): one other
# "Environment ::" entry and it drops them all.
REGISTRY_ACCELERATORS = {
    "Environment :: GPU :: NVIDIA CUDA",
    "Environment :: GPU :: AMD ROCm",
    "Environment :: GPU :: Intel Arc",
    "Environment :: NPU :: Huawei Ascend",
    "Environment :: GPU :: Apple Metal",
}
# Imports that ComfyUI itself provides to a node pack.
COMFY_MODULES = {
    "comfy",
    "comfy_api",
    "comfy_execution",
    "folder_paths",
    "server",
    "nodes",
    "node_helpers",
    "latent_preview",
}
# import name -> distribution name, for the third-party packages the nodes use
DISTRIBUTIONS = {"PIL": "pillow", "open_clip": "open-clip-torch"}


def _repo_file_of(url: str) -> Path:
    """The repository file a raw.githubusercontent.com URL of this project's main branch names."""
    repo = _pyproject()["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    assert url.startswith(prefix), f"{url} is not a file of {repo}'s main branch"
    return ROOT / url.removeprefix(prefix)


def test_registry_icon_banner_urls_and_classifiers():
    from PIL import Image

    data = _pyproject()
    project, comfy = data["project"], data["tool"]["comfy"]
    assert project["urls"]["Issues"] == project["urls"]["Repository"] + "/issues"
    icon, banner = _repo_file_of(comfy["Icon"]), _repo_file_of(comfy["Banner"])
    with Image.open(icon) as img:  # the Registry takes PNG/JPG/SVG/GIF icons up to 800x400
        assert img.format == "PNG" and img.width <= 800 and img.height <= 400
    with Image.open(banner) as img:  # a 21:9 banner
        assert img.format == "PNG" and abs(img.width / img.height - 21 / 9) < 0.01
    classifiers = project["classifiers"]
    assert "Operating System :: OS Independent" in classifiers
    accelerators = {c for c in classifiers if c.startswith("Environment ::")}
    assert accelerators <= REGISTRY_ACCELERATORS, accelerators - REGISTRY_ACCELERATORS
    # plain torch through ComfyUI's device handling: NVIDIA, AMD (ROCm builds) and Apple (MPS)
    assert {"Environment :: GPU :: NVIDIA CUDA", "Environment :: GPU :: AMD ROCm"} <= accelerators
    assert "Environment :: GPU :: Apple Metal" in accelerators


def _imports_of_the_nodes() -> dict[str, set[str]]:
    """Third-party top-level imports (anywhere in a module, lazy ones too) of nodes/ and of every
    diffsketch module they reach, with the files that import each. Imports in a ``try`` that
    catches ImportError are optional by construction (e.g. h5py, which only tools/convert_hed.py
    needs) and are not counted."""
    import ast

    def optional_imports(tree: ast.AST) -> set[int]:
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers
            ):
                guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        return guarded

    queue, seen, third = sorted((ROOT / "nodes").glob("*.py")), set(), {}
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        optional = optional_imports(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.ImportFrom) and node.level:  # nodes/ importing its siblings
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                parts = (node.module or "").split(".") if node.module else []
                queue += [p for p in (base.joinpath(*parts).with_suffix(".py"),) if parts and p.is_file()]
                queue += [p for a in node.names if (p := base.joinpath(*parts, f"{a.name}.py")).is_file()]
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "diffsketch":  # the module and the packages above it
                    for n in range(1, len(parts) + 1):
                        target = ROOT.joinpath(*parts[:n])
                        queue += [
                            p for p in (target.with_suffix(".py"), target / "__init__.py") if p.is_file()
                        ]
                elif parts[0] not in sys.stdlib_module_names and parts[0] not in COMFY_MODULES:
                    third.setdefault(parts[0], set()).add(str(path.relative_to(ROOT)))
    return third


def test_requirements_are_what_the_nodes_import():
    """requirements.txt (what ComfyUI-Manager installs) names every package the nodes import, and
    nothing they never import (the diffsketch command's diffusers and transformers stay out)."""
    imported = {DISTRIBUTIONS.get(name, name).lower().replace("_", "-") for name in _imports_of_the_nodes()}
    required = set()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            required.add(_name(line))
    assert required == imported - {"torch", "torchvision"}, _imports_of_the_nodes()
    assert not CLI_ONLY & imported, {name: _imports_of_the_nodes()[name] for name in CLI_ONLY & imported}


def _comfyignore() -> list[str]:
    lines = (ROOT / ".comfyignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for pattern in patterns:  # what this test can match without comfy-cli's gitwildmatch
        assert re.fullmatch(r"/[\w.-]+/", pattern), (
            f".comfyignore: use anchored folders like /tests/, got {pattern}"
        )
    return patterns


def test_registry_zip_leaves_out_tests_benchmarks_and_ci():
    """`comfy node pack` zips the git-tracked files that .comfyignore does not match."""
    import subprocess

    patterns = _comfyignore()
    for folder in ("/tests/", "/benchmarks/", "/.ci/"):
        assert folder in patterns
    try:
        tracked = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files"], check=True, capture_output=True, text=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no git checkout to list the tracked files of ({e})")
    packed = [f for f in tracked if not any(f"/{f}".startswith(p) for p in patterns)]
    assert not [f for f in packed if f.startswith(("tests/", "benchmarks/", ".ci/"))]
    for needed in ("__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md"):
        assert needed in packed, needed
    for folder in ("nodes/", "diffsketch/", "workflows/", "web/docs/"):
        assert any(f.startswith(folder) for f in packed), folder
