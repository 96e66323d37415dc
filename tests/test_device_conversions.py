"""Tensors that may live on an accelerator reach numpy only through the CPU.

On CUDA/MPS/XPU, ``tensor.numpy()`` and ``np.asarray(tensor)`` raise ``TypeError: can't convert cuda:0
device type tensor to numpy``; ``.tolist()``, ``.item()`` and ``float()`` copy to the host and work,
so they are not checked. Two nets catch a missing ``.cpu()`` on a CPU-only machine:

* a static scan of the pack's Python (below): every ``.numpy()`` and ``np.asarray(...)`` /
  ``np.array(...)`` whose operand is not provably on the host is an error unless the allow-list
  says, with a reason, why the value there is a CPU tensor or not a tensor at all;
* the functions that hash or save tensors run on :class:`accelerator.OnAccelerator` tensors, which
  refuse numpy conversion as CUDA tensors do (ComfyUI's own functions are covered in
  tests/comfyui/test_memory_comfyui.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerator import on_accelerator

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("diffsketch", "nodes", "tools", "benchmarks")

_NUMPY_INPUT = "its operand is a numpy array, a PIL image, an h5py/scipy value or a list, never a tensor"
_EXTRACT_OUTPUT = "extract() returns CPU tensors (documented and converted there)"
_CPU_BY_CONTRACT = "every caller passes CPU tensors: the module documents its tensors as CPU"

#: (file, function) -> why the numpy conversions in that function never see an accelerator tensor.
ALLOWED = {
    ("diffsketch/capture/analysis.py", "kmeans"): _NUMPY_INPUT + " (analyse passes pca's CPU float64 points)",
    ("diffsketch/capture/analysis.py", "elbow_k"): _NUMPY_INPUT,
    ("diffsketch/capture/analysis.py", "analyse"): "np.asarray only runs for non-tensor input; the coords "
    "come from pca(), which moves its input to the CPU first",
    ("diffsketch/distill/extract_files.py", "sketch_pixels"): _EXTRACT_OUTPUT,
    ("diffsketch/distill/pairs.py", "_to_u8"): "its callers pass tensors that went through _check_image, "
    "which returns x.float().cpu()",
    ("diffsketch/eval/bsds.py", "read_bsds_ground_truth"): _NUMPY_INPUT,
    ("diffsketch/eval/bsds.py", "load_pair"): "the tensor is torch.from_numpy of a file read from disk",
    ("diffsketch/eval/metrics/boundaries.py", "boundary_thresholds"): _NUMPY_INPUT,
    ("diffsketch/eval/metrics/boundaries.py", "thin_boundaries"): _NUMPY_INPUT,
    ("diffsketch/eval/metrics/boundaries.py", "maximum_matching"): _NUMPY_INPUT,
    ("diffsketch/eval/metrics/boundaries.py", "match_boundaries"): _NUMPY_INPUT,
    ("diffsketch/eval/metrics/boundaries.py", "evaluate_boundary_image"): _NUMPY_INPUT,
    ("diffsketch/eval/metrics/boundaries.py", "_ratio"): _NUMPY_INPUT,
    ("diffsketch/eval/metrics/boundaries.py", "_fmeasure"): _NUMPY_INPUT,
    ("diffsketch/eval/metrics/fid.py", "activation_statistics"): "np.asarray only runs for non-tensor input",
    ("diffsketch/eval/metrics/fid.py", "frechet_distance"): _NUMPY_INPUT + " (activation_statistics' output)",
    ("diffsketch/eval/metrics/fid.py", "inception_features"): "each batch goes .cpu() before the cat",
    ("diffsketch/eval/report.py", "grid_png"): "the cells are _fit_cell of CPU tensors (_load_extractor and "
    "_ground_truth return .cpu() tensors)",
    ("diffsketch/eval/run.py", "evaluate"): "pred comes from _load_extractor's runner, which returns .cpu()",
    ("diffsketch/plotting.py", "colormap"): _NUMPY_INPUT,
    ("diffsketch/plotting.py", "to_image_tensor"): _NUMPY_INPUT,
    ("diffsketch/styles/hed.py", "visit"): _NUMPY_INPUT,
    ("tools/hed_reference.py", "_photo"): _NUMPY_INPUT,
    ("tools/hed_reference.py", "tensorflow_half"): "TensorFlow tensors and variables (eager, .numpy() copies "
    "to the host), and a PIL image",
    ("tools/hed_reference.py", "maps"): "TensorFlow eager tensors: their .numpy() copies to the host",
    ("tools/hed_reference.py", "compare_half"): "the models run on the CPU in this tool (no device option)",
    ("tools/make_readme_figures.py", "load_photo"): _NUMPY_INPUT,
    ("tools/make_readme_figures.py", "photo_height_for"): _NUMPY_INPUT,
    ("tools/make_readme_figures.py", "draw_examples"): _EXTRACT_OUTPUT + ", and photos read from disk",
    ("tools/make_readme_figures.py", "draw_distill_grid"): _EXTRACT_OUTPUT + ", and photos read from disk",
    ("tools/make_registry_art.py", "sketch_of"): "a PIL image, constants, xdog of a CPU tensor",
    ("tools/make_registry_art.py", "blend"): _NUMPY_INPUT,
    ("tools/train_default_extractor.py", "main"): "teacher_map is the teacher's output moved with .cpu()",
    ("benchmarks/photo_pairs.py", "load_photo"): _NUMPY_INPUT,
    ("benchmarks/photo_pairs.py", "boundary_f"): "teacher maps are moved with .cpu() and "
    "predictions come from extract(), which returns CPU tensors",
}

_LITERALS = (ast.List, ast.Tuple, ast.Constant, ast.ListComp, ast.GeneratorExp, ast.Dict, ast.Set)


def _chain(node: ast.AST) -> tuple[list[ast.Call], ast.AST]:
    """The calls along ``a.b(...)[i].c(...)`` (through arithmetic, both sides) and its root."""
    calls: list[ast.Call] = []
    while True:
        if isinstance(node, ast.Call):
            calls.append(node)
            node = node.func
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        elif isinstance(node, ast.UnaryOp):
            node = node.operand
        elif isinstance(node, ast.BinOp):
            left, right = _chain(node.left), _chain(node.right)
            return calls + left[0] + right[0], left[1] if not isinstance(left[1], ast.Constant) else right[1]
        else:
            return calls, node


def _moves_to_cpu(call: ast.Call) -> bool:
    f = call.func
    if not isinstance(f, ast.Attribute):
        return False
    if f.attr == "cpu":
        return True
    if f.attr == "to":
        values = list(call.args) + [k.value for k in call.keywords if k.arg == "device"]
        return any(isinstance(v, ast.Constant) and v.value == "cpu" for v in values)
    return False


def _numpy_call(call: ast.Call) -> bool:
    """``np.foo(...)`` / ``numpy.foo(...)`` / ``Image.foo(...)`` / ``torch.from_numpy(...)``: a host value."""
    f = call.func
    if not isinstance(f, ast.Attribute) or not isinstance(f.value, ast.Name):
        return False
    return f.value.id in ("np", "numpy", "Image") or (f.value.id == "torch" and f.attr == "from_numpy")


class _Function:
    """Which local names provably hold host values: every assignment to them is a host expression
    (the largest such set, so ``t = t.movedim(0, -1)`` after ``t = x.cpu()`` keeps ``t`` on the host)."""

    def __init__(self, fn: ast.AST):
        assigned: dict[str, list[ast.AST | None]] = {}

        def bind(target: ast.AST, value: ast.AST | None) -> None:
            if isinstance(target, ast.Name):
                assigned.setdefault(target.id, []).append(value)
            elif isinstance(target, (ast.Tuple, ast.List)):
                values = value.elts if isinstance(value, (ast.Tuple, ast.List)) else None
                if values is not None and len(values) != len(target.elts):
                    values = None
                for k, element in enumerate(target.elts):
                    bind(element, values[k] if values is not None else None)
            elif isinstance(target, ast.Starred):
                bind(target.value, None)
            # x[i] = ... and x.a = ...: storing into a tensor or a list does not move it

        for node in ast.walk(fn):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    bind(target, node.value)
            elif isinstance(node, ast.AnnAssign):
                bind(node.target, node.value)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        bind(item.optional_vars, item.context_expr)
            elif isinstance(node, (ast.AugAssign, ast.For, ast.AsyncFor, ast.NamedExpr, ast.comprehension)):
                bind(node.target, None)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and node is not fn:
                for arg in ast.walk(node.args):
                    if isinstance(arg, ast.arg):
                        assigned.setdefault(arg.arg, []).append(None)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for arg in ast.walk(fn.args):
                if isinstance(arg, ast.arg):
                    assigned.setdefault(arg.arg, []).append(None)  # parameters: whatever the caller passes
        self.host = set(assigned)
        changed = True
        while changed:
            changed = False
            for name, values in assigned.items():
                if name in self.host and not all(v is not None and self.is_host(v) for v in values):
                    self.host.discard(name)
                    changed = True

    def is_host(self, node: ast.AST) -> bool:
        if isinstance(node, _LITERALS):
            return True
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            if isinstance(node.left, (ast.List, ast.Tuple)) or isinstance(node.right, (ast.List, ast.Tuple)):
                return True  # a repeated list
        calls, root = _chain(node)
        if any(_moves_to_cpu(c) or _numpy_call(c) for c in calls):
            return True
        if any(isinstance(c.func, ast.Attribute) and c.func.attr == "numpy" for c in calls):
            return True  # the .numpy() itself is checked where it is called
        # A tensor method keeps its device, except .to(...) and .cuda() (handled above when to the CPU).
        moves = any(isinstance(c.func, ast.Attribute) and c.func.attr in ("to", "cuda") for c in calls)
        return isinstance(root, ast.Name) and root.id in self.host and not moves


def unproven_conversions(path: Path) -> list[tuple[str, int, str]]:
    """(function, line, source) of each numpy conversion in ``path`` not provably of a host value."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, function: str, scope: _Function | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function, scope = node.name, _Function(node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f, operand = node.func, None
            if f.attr == "numpy" and not any(k.arg == "force" for k in node.keywords):
                operand = f.value
            elif (
                f.attr in ("asarray", "array")
                and isinstance(f.value, ast.Name)
                and f.value.id in ("np", "numpy")
            ):
                operand = node.args[0] if node.args else None
            if operand is not None and not (scope or _Function(tree)).is_host(operand):
                found.append((function, node.lineno, ast.unparse(node)))
        for child in ast.iter_child_nodes(node):
            visit(child, function, scope)

    visit(tree, "<module>", None)
    return found


def _scanned_files():
    for folder in SCANNED:
        yield from sorted((REPO / folder).rglob("*.py"))


def test_numpy_conversions_go_through_the_cpu():
    unexplained, used = [], set()
    for path in _scanned_files():
        rel = path.relative_to(REPO).as_posix()
        for function, line, source in unproven_conversions(path):
            if (rel, function) in ALLOWED:
                used.add((rel, function))
            else:
                unexplained.append(f"{rel}:{line} in {function}: {source}")
    assert not unexplained, (
        "numpy conversions of values that may be on an accelerator (add .cpu(), or an ALLOWED entry saying why "
        "the value is on the host):\n" + "\n".join(unexplained)
    )
    stale = sorted(set(ALLOWED) - used)
    assert not stale, f"ALLOWED entries with nothing left to allow (remove them): {stale}"


@pytest.mark.parametrize(
    "source, flagged",
    [
        ("def f(t):\n    return t.float().numpy()\n", True),
        ("def f(t):\n    return np.asarray(t)\n", True),
        ("def f(t):\n    x = t * 2\n    return (x + 1).numpy()\n", True),
        ("def f(t):\n    return t.detach().cpu().numpy()\n", False),
        ("def f(t):\n    return t.to(device='cpu', dtype=torch.float16).numpy()\n", False),
        ("def f(t):\n    h = t.reshape(-1).to('cpu')\n    return (h * 255).numpy()\n", False),
        ("def f(t):\n    h = t.cpu()\n    h = t.float()\n    return h.numpy()\n", True),
        ("def f(im):\n    return np.asarray(Image.open(im))\n", False),
        ("def f(t):\n    return t.numpy(force=True)\n", False),
    ],
)
def test_the_scan_tells_host_values_from_others(tmp_path, source, flagged):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert bool(unproven_conversions(path)) == flagged


# -- the library's tensor-to-bytes functions on accelerator tensors ------------------------------
def test_accelerator_tensors_refuse_numpy_until_moved():
    t = on_accelerator(torch.arange(6.0))
    for convert in (lambda: t.float().numpy(), lambda: np.asarray(t[:3])):
        with pytest.raises(TypeError, match="device type tensor to numpy"):
            convert()
    assert t.to(device="cpu", dtype=torch.float16).numpy().tolist() == list(range(6))
    assert t.tolist() == list(range(6))  # copies to the host on CUDA too


def test_weights_fingerprint_of_accelerator_weights():
    from diffsketch.backends.base import weights_fingerprint

    weights = [torch.randn(40, 30, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    assert weights_fingerprint([on_accelerator(w) for w in weights]) == weights_fingerprint(weights)


def test_tensors_checksum_of_accelerator_tensors():
    from diffsketch.fileio import tensors_checksum

    tensors = {"a": torch.randn(5, 3), "b": torch.arange(4, dtype=torch.int64)}
    moved = {k: on_accelerator(v) for k, v in tensors.items()}
    assert tensors_checksum(moved, "x") == tensors_checksum(tensors, "x")


def test_save_png_of_an_accelerator_image(tmp_path):
    from diffsketch.images import save_png

    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    save_png(on_accelerator(image), tmp_path / "a.png")
    save_png(image, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_example_digest_of_an_accelerator_tensor():
    from diffsketch.train.example import tensor_digest

    sketch = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert tensor_digest(on_accelerator(sketch)) == tensor_digest(sketch)
