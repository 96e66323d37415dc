"""docs/nodes.md and the help pages in web/docs are generated from the node schemas
(tools/make_node_reference.py); they must match them, and the server must serve the help pages."""

from __future__ import annotations

import importlib.util
import re
import urllib.parse
import urllib.request

import pytest
from comfy_harness import PACK_NAME, REPO

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


def test_every_node_taking_a_model_or_clip_names_the_families_and_that_dits_are_experimental(
    comfy_inprocess, reference_tool
):
    from comfy_api.latest import io

    from diffsketch.capture.spec import DIT_EXPERIMENTAL_NOTE, SUPPORTED_MODELS

    schemas = reference_tool.node_schemas(comfy_inprocess)
    takers = [s for s in schemas if any(isinstance(i, (io.Model.Input, io.Clip.Input)) for i in s.inputs)]
    assert len(takers) >= 7  # Sample, Capture from Image, Timesteps, Fit Conditions, Train, Generate, Distill
    for schema in takers:
        assert SUPPORTED_MODELS in schema.description, schema.node_id
        assert DIT_EXPERIMENTAL_NOTE in schema.description, schema.node_id


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


def test_help_pages_match_the_schemas(comfy_inprocess, reference_tool):
    expected = reference_tool.render_help_pages(comfy_inprocess)
    node_ids = [cls.define_schema().node_id for cls in comfy_inprocess.nodes.node_list()]
    assert sorted(expected) == sorted([f"{n}.md" for n in node_ids] + [f"{n}/en.md" for n in node_ids])
    folder = REPO / "web" / "docs"
    on_disk = {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8") for p in folder.rglob("*.md")}
    assert on_disk == expected, f"web/docs help pages are stale or missing: run {REGENERATE}"
    for text in expected.values():  # every picture a page shows exists
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            assert (folder / target).is_file(), target


def test_server_serves_the_help_pages_where_the_frontend_asks(comfy_server):
    """The frontend fetches /extensions/<pack folder>/docs/<NodeId>.md (the folder from the node's
    python_module) and refuses HTML answers (the SPA fallback)."""
    object_info = comfy_server.get("/object_info")
    ours = {k: v for k, v in object_info.items() if v.get("python_module", "").endswith(PACK_NAME)}
    assert ours
    for node_id, info in ours.items():
        folder = info["python_module"].split(".")[1].split("@")[0]
        docs = f"{comfy_server.url}/extensions/{urllib.parse.quote(folder)}/docs"
        # first the page for the user's locale (English here), then the one for every locale
        for url in (f"{docs}/{node_id}/en.md", f"{docs}/{node_id}.md"):
            with urllib.request.urlopen(url, timeout=30) as r:
                assert r.status == 200 and "text/html" not in r.headers.get("Content-Type", ""), url
                assert r.read().decode().startswith(f"# {info['display_name']}\n")
    # the pictures the pages show come from the same place
    with urllib.request.urlopen(f"{comfy_server.url}/extensions/{PACK_NAME}/docs/images/pipeline.png") as r:
        assert r.headers["Content-Type"] == "image/png"
    # and the web folder holds no script the frontend would load as an extension
    extensions = comfy_server.get("/extensions")
    assert not [e for e in extensions if f"/extensions/{PACK_NAME}/" in e]
