"""Tier 2: loaders whose folders are empty show one entry saying what to put where, and running
with that entry fails with the same words -- except Load Extractor, whose first entry is the
built-in extractor (ComfyUI imported in-process, folders pointed at empty temporary directories)."""

from __future__ import annotations

import importlib

import pytest

from diffsketch.errors import WeightsNotFoundError

# node id -> (its file combo, the other inputs execute() needs)
LOADERS = {
    "DiffSketchLoadGenerator": ("generator_name", {}),
    "DiffSketchLoadConditions": ("conditions_name", {}),
    "DiffSketchLoadClipLoss": (
        "clip_name",
        {"lpips_weights": "alexnet-owt-7be5be79.pth", "quick_gelu": True},
    ),
}


@pytest.fixture
def empty_folders(comfy_inprocess, tmp_path, monkeypatch):
    """Every folder kind the loaders read points at an empty directory; so does the torch hub."""
    import folder_paths

    nodes = importlib.import_module(f"{comfy_inprocess.__name__}.nodes")
    nodes.common.register_model_folders()
    keys = [*nodes.common.MODEL_FOLDERS, "clip_vision"]
    table = dict(folder_paths.folder_names_and_paths)
    for key in keys:
        exts = table[key][1] if key in table else {".safetensors"}
        table[key] = ([str(tmp_path / key)], set(exts))
        (tmp_path / key).mkdir()
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", table)
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return nodes, tmp_path


def _node(nodes, node_id):
    return next(n for n in nodes.node_list() if n.define_schema().node_id == node_id)


def _options(node_class, input_id):
    schema = node_class.define_schema()
    return next(i for i in schema.inputs if i.id == input_id).options


def test_empty_loaders_show_one_entry_and_fail_with_it(empty_folders):
    nodes, _ = empty_folders
    entries = {}
    for node_id, (input_id, others) in LOADERS.items():
        node_class = _node(nodes, node_id)
        options = _options(node_class, input_id)
        assert len(options) == 1 and options[0].startswith("(missing) put "), (node_id, options)
        entry = entries[node_id] = options[0]
        assert " in models/diffsketch/" in entry, entry
        with pytest.raises(WeightsNotFoundError) as caught:
            node_class.execute(**{input_id: entry, **others})
        assert str(caught.value) == entry
    # the loss loader's second folder: AlexNet, same form
    lpips = _options(_node(nodes, "DiffSketchLoadClipLoss"), "lpips_weights")
    assert lpips == [
        "(missing) put alexnet-owt-7be5be79.pth (torchvision's AlexNet) in models/diffsketch/lpips"
    ]
    assert entries["DiffSketchLoadClipLoss"] == (
        "(missing) put clip_vit_b_32.safetensors (OpenAI CLIP ViT-B/32) in models/diffsketch/clip or "
        "models/clip_vision"
    )


def test_load_extractor_offers_the_built_in_extractor_first_and_loads_it(empty_folders):
    from diffsketch.distill.extractor import DEFAULT_EXTRACTOR_FILE, SketchExtractor

    nodes, base = empty_folders
    node_class = _node(nodes, "DiffSketchLoadExtractor")
    built_in = nodes.extract.BUILT_IN
    assert _options(node_class, "extractor_name") == [built_in]  # no "missing" entry: it is always there
    (base / "diffsketch_extractors" / "mine.safetensors").write_bytes(b"")
    import folder_paths

    folder_paths.filename_list_cache.clear()  # ComfyUI caches listings; a new file would wait for it
    assert _options(node_class, "extractor_name") == [built_in, "mine.safetensors"]
    if not DEFAULT_EXTRACTOR_FILE.is_file():
        pytest.skip(
            f"{DEFAULT_EXTRACTOR_FILE.name} is not in this checkout (tools/train_default_extractor.py)"
        )
    patcher = node_class.execute(extractor_name=built_in).result[0]
    assert isinstance(patcher.model, SketchExtractor) and "HED" in patcher.model.meta["description"]


def test_a_file_replaces_the_entry(empty_folders):
    nodes, base = empty_folders
    (base / "diffsketch_lpips" / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    # never listed: torch.load reads only the documented file
    (base / "diffsketch_lpips" / "some_other_pickle.pth").write_bytes(b"")
    assert _options(_node(nodes, "DiffSketchLoadClipLoss"), "lpips_weights") == ["alexnet-owt-7be5be79.pth"]


def test_torchvision_hub_copy_of_alexnet_is_offered(empty_folders):
    nodes, base = empty_folders
    hub = base / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    assert _options(_node(nodes, "DiffSketchLoadClipLoss"), "lpips_weights") == ["alexnet-owt-7be5be79.pth"]


SEARCHED_FOR = ("DiffSketchExtract", "DiffSketchLoadExtractor", "DiffSketchXDoG", "DiffSketchTrain")


def test_search_aliases_where_the_schema_has_them(comfy_inprocess, monkeypatch):
    """ComfyUI v0.8's Schema has no search_aliases field (the nodes load without it); a Schema that
    has it (later ComfyUI) gets the line-art words people search for."""
    import dataclasses

    from comfy_api.latest import io

    nodes = importlib.import_module(f"{comfy_inprocess.__name__}.nodes")
    plain = {f.name for f in dataclasses.fields(io.Schema)}
    if "search_aliases" not in plain:  # as in v0.8: every node still defines its schema
        assert all(n.define_schema().node_id for n in nodes.node_list())

    @dataclasses.dataclass
    class SchemaWithAliases(io.Schema):
        search_aliases: list[str] = dataclasses.field(default_factory=list)

    monkeypatch.setattr(io, "Schema", SchemaWithAliases)
    aliases = {n.define_schema().node_id: n.define_schema().search_aliases for n in nodes.node_list()}
    for node_id in SEARCHED_FOR:
        assert {"lineart", "line art", "sketch", "edge"} <= set(aliases[node_id]), node_id
    assert aliases["DiffSketchLoadConditions"] == []  # not a node anyone looks for by these words
