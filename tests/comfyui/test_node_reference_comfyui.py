"""docs/nodes.md is generated from the node schemas (tools/make_node_reference.py); it must match them."""

from __future__ import annotations

import importlib.util

import pytest
from comfy_harness import REPO

pytestmark = pytest.mark.comfyui

REGENERATE = "COMFYUI_PATH=/path/to/ComfyUI python tools/make_node_reference.py"


@pytest.fixture(scope="module")
def reference_tool():
    spec = importlib.util.spec_from_file_location(
        "make_node_reference", REPO / "tools" / "make_node_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_nodes_md_matches_the_schemas(comfy_inprocess, reference_tool):
    expected = reference_tool.render_reference(comfy_inprocess)
    path = REPO / "docs" / "nodes.md"
    current = path.read_text(encoding="utf-8") if path.is_file() else ""
    assert current == expected, f"docs/nodes.md is stale or missing: run {REGENERATE}"


def test_reference_lists_every_input_and_output_of_every_node(comfy_inprocess, reference_tool):
    text = reference_tool.render_reference(comfy_inprocess)
    schemas = [cls.define_schema() for cls in comfy_inprocess.nodes.node_list()]
    anchors = [f'<a id="{schema.node_id}"></a>' for schema in schemas]
    positions = [text.find(anchor) for anchor in anchors]
    assert -1 not in positions, "a registered node is missing from the reference"
    assert positions == sorted(positions), "nodes are not in registration order"
    for schema, start, end in zip(schemas, positions, positions[1:] + [len(text)]):
        section = text[start:end]
        for inp in schema.inputs:
            assert f"| `{inp.id}`" in section, f"{schema.node_id}: input {inp.id} missing"
            assert f"`{inp.get_io_type()}`" in section
        for out in schema.outputs:
            assert f"| `{out.display_name or out.id}` | `{out.get_io_type()}`" in section


def test_reference_does_not_depend_on_local_model_files(comfy_inprocess, reference_tool, tmp_path):
    import folder_paths

    baseline = reference_tool.render_reference(comfy_inprocess)
    folder = tmp_path / "extractors"
    folder.mkdir()
    (folder / "someone_elses_style.safetensors").write_bytes(b"")
    paths = folder_paths.folder_names_and_paths["diffsketch_extractors"][0]
    paths.append(str(folder))
    try:
        assert reference_tool.render_reference(comfy_inprocess) == baseline
        # folder_paths is shared by the whole process: the real listing is back after rendering
        assert "someone_elses_style.safetensors" in folder_paths.get_filename_list("diffsketch_extractors")
    finally:
        paths.remove(str(folder))
