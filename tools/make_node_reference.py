"""Write the node reference from the nodes' own schemas so it cannot drift from the code: docs/nodes.md
(all nodes) and one help page per node, web/docs/<NodeId>.md, which the ComfyUI frontend shows in its
node help panel (it asks for /extensions/<pack folder>/docs/<NodeId>.md; ComfyUI serves the pack's
WEB_DIRECTORY, web/, there).

Each node class's ``define_schema()`` is called (with ComfyUI imported in-process on the CPU) and its
id, display name, category, description, inputs and outputs are written out in the order the pack
registers the nodes. Combos listing model files show the folder they list, as in a fresh install,
instead of whatever files this machine happens to have, so the output is the same everywhere.

    COMFYUI_PATH=/path/to/ComfyUI python tools/make_node_reference.py           # (re)write all pages
    COMFYUI_PATH=/path/to/ComfyUI python tools/make_node_reference.py --check   # exit 1 if any is stale

tests/comfyui/test_node_reference_comfyui.py runs the check in the real-ComfyUI test tier.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "nodes.md"
HELP_DIR = REPO / "web" / "docs"
PACK_MODULE = "diffsketch_pack_reference"
REGENERATE = "COMFYUI_PATH=/path/to/ComfyUI python tools/make_node_reference.py"


class FileListing(str):
    """Stands in for the files of a model folder in a combo's options (see ``fresh_install_view``)."""

    def __new__(cls, folders: list[str]):
        text = " or ".join(folders) if folders else "its model folder"
        listing = super().__new__(cls, f"<files in {text}>")
        listing.folders = folders
        return listing


def import_pack(comfy_path: str) -> ModuleType:
    """ComfyUI imported in this process (CPU), then this pack under a private module name."""
    sys.path.insert(0, str(REPO / "tests" / "comfyui"))
    try:
        from tiny_checkpoint import import_pack as import_pack_as
    finally:
        sys.path.remove(str(REPO / "tests" / "comfyui"))
    return import_pack_as(comfy_path, PACK_MODULE)


@contextlib.contextmanager
def _environ(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def fresh_install_view():
    """Make folder_paths answer as in a fresh install while the schemas are built.

    File combos get one ``FileListing`` per folder kind instead of this machine's files, the
    folders the pack writes to (checkpoints to resume from, ...) and the torch hub cache (where
    torchvision keeps AlexNet) look empty. Restored afterwards,
    because ComfyUI's folder_paths is shared by everything else in the process."""
    import folder_paths

    real_filename_list = folder_paths.get_filename_list
    real_folder_paths = folder_paths.get_folder_paths

    def relative_folders(folder_name: str) -> list[str]:
        # KeyError for an unregistered kind, as the real function raises
        paths = folder_paths.folder_names_and_paths[folder_paths.map_legacy(folder_name)][0]
        base = os.path.abspath(folder_paths.base_path)
        rel = []
        for path in paths:
            path = os.path.abspath(path)
            # paths outside ComfyUI's base (extra_model_paths.yaml) differ between machines
            with contextlib.suppress(ValueError):  # another drive, on Windows
                if os.path.commonpath([base, path]) == base:
                    rel.append(Path(os.path.relpath(path, base)).as_posix())
        return rel

    with tempfile.TemporaryDirectory() as empty_base, _environ(TORCH_HOME=empty_base):

        def filename_list(folder_name: str) -> list[str]:
            return [FileListing(relative_folders(folder_name))]

        def folder_paths_view(folder_name: str) -> list[str]:
            return [os.path.join(empty_base, rel) for rel in relative_folders(folder_name)]

        folder_paths.get_filename_list = filename_list
        folder_paths.get_folder_paths = folder_paths_view
        try:
            yield
        finally:
            folder_paths.get_filename_list = real_filename_list
            folder_paths.get_folder_paths = real_folder_paths


def node_schemas(pack: ModuleType) -> list:
    """``define_schema()`` of every node, in the order the pack registers them."""
    nodes = importlib.import_module(f"{pack.__name__}.nodes")
    nodes.common.register_model_folders()  # what the pack's entry point does when ComfyUI loads it
    with fresh_install_view():
        return [node_class.define_schema() for node_class in nodes.node_list()]


def _text(text) -> str:
    """Text on one line, with angle brackets that Markdown would take for HTML tags escaped."""
    return " ".join(str(text).split()).replace("<", "&lt;").replace(">", "&gt;")


def _cell(text) -> str:
    """Text safe inside one Markdown table cell."""
    return _text(text).replace("|", "\\|")


def _code(value) -> str:
    """A code span for a table cell (a pipe would end the cell even inside one)."""
    text = str(value).replace("|", "\\|")
    tick = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{tick}{pad}{text}{pad}{tick}"


def _value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return _code("true" if value else "false")
    if isinstance(value, str) and value == "":
        return "*(empty)*"
    return _code(value)


def _option(option) -> str:
    if isinstance(option, FileListing):
        folders = ", ".join(_code(f) for f in option.folders) or "its model folder"
        return f"files in {folders}"
    return _code(option)


def _limits(inp) -> str:
    """Range, step and options of a widget input, as far as its type has them."""
    parts = []
    options = getattr(inp, "options", None)
    if options is not None:
        parts.append("options: " + (", ".join(_option(o) for o in options) or "none"))
    low, high = getattr(inp, "min", None), getattr(inp, "max", None)
    if low is not None or high is not None:
        parts.append(
            f"{_value(low) if low is not None else '…'} to {_value(high) if high is not None else '…'}"
        )
    step = getattr(inp, "step", None)
    if step is not None:
        parts.append(f"step {_value(step)}")
    if getattr(inp, "multiline", None):
        parts.append("multiline")
    return "; ".join(parts)


def _input_name(inp) -> str:
    label = f" ({_cell(inp.display_name)})" if inp.display_name and inp.display_name != inp.id else ""
    return f"`{inp.id}`{label}"


def _output_name(out) -> str:
    return f"`{out.display_name or out.id}`"


def render_node(
    schema,
    heading: str = "##",
    anchor: bool = True,
    picture: tuple[str, str] | None = None,
    tables: bool = True,
) -> list[str]:
    """The reference section of one node: heading, facts, description, optional ``(path, caption)``
    picture, inputs and outputs (as tables, or as lists for a narrow help panel)."""
    lines = [f'<a id="{schema.node_id}"></a>', ""] if anchor else []
    lines += [f"{heading} {schema.display_name or schema.node_id}", ""]
    facts = [f"id `{schema.node_id}`", f"category `{schema.category}`"]
    if schema.is_output_node:
        facts.append("output node (runs even when nothing uses its outputs)")
    if schema.is_experimental:
        facts.append("experimental")
    if schema.is_deprecated:
        facts.append("deprecated")
    lines += ["; ".join(facts), ""]
    if schema.description:
        lines += [_text(schema.description), ""]
    if picture:
        lines += [f"![{_text(picture[1])}]({picture[0]})", ""]
    render = _io_tables if tables else _io_lists
    return lines + render(schema)


def _io_tables(schema) -> list[str]:
    lines = ["**Inputs**", ""]
    if schema.inputs:
        lines += [
            "| Name | Type | Default | Range / options | Required | Description |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for inp in schema.inputs:
            default = _value(getattr(inp, "default", None))
            required = "optional" if inp.optional else "yes"
            lines.append(
                f"| {_input_name(inp)} | `{inp.get_io_type()}` | {default} | {_limits(inp)} | {required} | "
                f"{_cell(inp.tooltip or '')} |"
            )
    else:
        lines.append("None.")
    lines.append("")

    lines += ["**Outputs**", ""]
    if schema.outputs:
        lines += ["| Name | Type | Description |", "| --- | --- | --- |"]
        for out in schema.outputs:
            listed = " (list)" if out.is_output_list else ""
            lines.append(
                f"| {_output_name(out)} | `{out.get_io_type()}`{listed} | {_cell(out.tooltip or '')} |"
            )
    else:
        lines.append("None.")
    lines.append("")
    return lines


def _io_lists(schema) -> list[str]:
    """Inputs and outputs as one bullet each: what the frontend's narrow help panel shows well."""
    lines = ["**Inputs**", ""]
    for inp in schema.inputs:
        facts = [f"`{inp.get_io_type()}`"]
        default = _value(getattr(inp, "default", None))
        if default:
            facts.append(f"default {default}")
        if _limits(inp):
            facts.append(_limits(inp))
        if inp.optional:
            facts.append("optional")
        lines.append(f"- {_input_name(inp)} ({'; '.join(facts)}): {_text(inp.tooltip or '')}")
    lines += (["None."] if not schema.inputs else []) + ["", "**Outputs**", ""]
    for out in schema.outputs:
        listed = ", a list" if out.is_output_list else ""
        lines.append(f"- {_output_name(out)} (`{out.get_io_type()}`{listed}): {_text(out.tooltip or '')}")
    lines += (["None."] if not schema.outputs else []) + [""]
    return lines


PIPELINE = (
    "images/pipeline.png",
    "The DiffSketch pipeline: timesteps, sample & capture, fit conditions, train, distill, extract, with the "
    "nodes of each stage",
)
EXTRACTOR = ("images/extractor_examples.png", "Photos through an extractor trained to imitate XDoG")
# Pictures (in web/docs/images, drawn by tools/make_readme_figures.py) where one helps to see what a node does.
HELP_PICTURES = {
    "DiffSketchSample": PIPELINE,
    "DiffSketchFitConditions": PIPELINE,
    "DiffSketchTrain": PIPELINE,
    "DiffSketchDistill": EXTRACTOR,
    "DiffSketchLoadExtractor": EXTRACTOR,
    "DiffSketchExtract": EXTRACTOR,
    "DiffSketchXDoG": (
        "images/xdog_examples.png",
        "Sample photos and their XDoG sketches with the paper's settings",
    ),
}


def help_extras(node_id: str) -> list[str]:
    """Text a node's help page has beyond its schema: where to get the files a loader needs."""
    if node_id != "DiffSketchLoadClipLoss":
        return []
    from diffsketch.train.losses import ALEXNET_FILENAME, ALEXNET_URL, CLIP_FILENAMES, CLIP_URL

    return [
        "**Files.** Both are downloaded once, by you; the node never downloads anything.",
        "",
        f"- CLIP ViT-B/32 (OpenAI's weights): [open_clip_model.safetensors]({CLIP_URL}), saved as "
        f"`models/diffsketch/clip/{CLIP_FILENAMES[0]}` (or anywhere in `models/clip_vision`).",
        f"- AlexNet for LPIPS (torchvision's ImageNet weights): [{ALEXNET_FILENAME}]({ALEXNET_URL}), saved in "
        "`models/diffsketch/lpips`. If torchvision already keeps a copy in the torch hub cache, it is listed "
        "under the same name.",
        "",
        "With a folder empty the combo shows one `(missing) put ... in ...` entry; running with it stops with "
        "the same words.",
        "",
    ]


def render_help_page(schema) -> str:
    """web/docs/<NodeId>.md: one node's reference with a picture and notes, for the node help panel."""
    picture = HELP_PICTURES.get(schema.node_id)
    if picture and not (HELP_DIR / picture[0]).is_file():
        raise FileNotFoundError(f"{schema.node_id}: help picture web/docs/{picture[0]} does not exist")
    lines = render_node(schema, heading="#", anchor=False, picture=picture, tables=False)
    extras = help_extras(schema.node_id)
    if extras:
        at = lines.index("**Inputs**")
        lines[at:at] = extras
    lines += [
        "---",
        "",
        "DiffSketch for ComfyUI. The DiffSketch templates (Workflow → Browse Templates) show every node in "
        "a working graph, starting with the quick start.",
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def render_help_pages(pack: ModuleType) -> dict[str, str]:
    """Every help page, by file name under web/docs. The frontend asks for <NodeId>/<locale>.md
    first, then <NodeId>.md: English pages are both (no failed request for English users), and
    <NodeId>.md is every other locale's fallback."""
    pages = {}
    for schema in node_schemas(pack):
        page = render_help_page(schema)
        pages[f"{schema.node_id}.md"] = page
        pages[f"{schema.node_id}/en.md"] = page
    return pages


def render_all(pack: ModuleType) -> dict[Path, str]:
    """Every file this tool writes, by path."""
    pages = {HELP_DIR / name: text for name, text in render_help_pages(pack).items()}
    return {OUTPUT: render_reference(pack), **pages}


def render_reference(pack: ModuleType) -> str:
    """The whole of docs/nodes.md for the pack's current node schemas."""
    schemas = node_schemas(pack)
    lines = [
        "# Node reference",
        "",
        "<!-- Generated by tools/make_node_reference.py from the nodes' define_schema(); do not edit by hand.",
        f"     Regenerate with: {REGENERATE} -->",
        "",
        f"All {len(schemas)} nodes of the pack, in the order it registers them. Types in capitals are "
        "ComfyUI socket types; `DIFFSKETCH_*` types connect DiffSketch nodes to each other. Combos that "
        "list model files name the folder under ComfyUI's directory they list.",
        "",
    ]
    lines += [f"- [{schema.display_name or schema.node_id}](#{schema.node_id})" for schema in schemas]
    lines.append("")
    for schema in schemas:
        lines += render_node(schema)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if a page differs from the schemas"
    )
    args = parser.parse_args(argv)
    comfy_path = os.environ.get("COMFYUI_PATH", "")
    if not comfy_path or not Path(comfy_path, "main.py").is_file():
        print(
            "set COMFYUI_PATH to a ComfyUI (v0.8 or later) source tree with its requirements installed; "
            f"got {comfy_path!r}",
            file=sys.stderr,
        )
        return 2
    files = render_all(import_pack(comfy_path))
    # help pages of nodes that no longer exist
    stale = sorted(p for p in [*HELP_DIR.glob("*.md"), *HELP_DIR.glob("*/*.md")] if p not in files)
    if args.check:
        changed = [path for path, text in files.items() if _read(path) != text]
        for path in changed:
            diff = list(
                difflib.unified_diff(
                    _read(path).splitlines(),
                    files[path].splitlines(),
                    str(path.relative_to(REPO)),
                    "from the schemas",
                    lineterm="",
                    n=1,
                )
            )
            print(
                "\n".join(diff[:60] + ([f"... ({len(diff) - 60} more diff lines)"] if len(diff) > 60 else []))
            )
        for path in stale:
            print(f"{path.relative_to(REPO)}: no such node any more")
        if not changed and not stale:
            print(f"docs/nodes.md and {len(files) - 1} help pages are up to date")
            return 0
        print(f"\nthe node reference is stale: run {REGENERATE}", file=sys.stderr)
        return 1
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(text, encoding="utf-8", newline="\n")
        os.replace(tmp, path)
    for path in stale:
        path.unlink()
    print(
        f"wrote docs/nodes.md and {len(files) - 1} help pages in web/docs"
        + (f"; removed {len(stale)}" if stale else "")
    )
    return 0


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


if __name__ == "__main__":
    sys.exit(main())
