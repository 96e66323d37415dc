"""Every node input that names a file to write goes through check_save_name before anything runs."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.comfyui

BAD_NAMES = ["../escape", "/abs/path", "sub/dir", "..", "a\\b", "  "]


def _save_inputs(pack):
    """(node class, input id) of every String input whose id says it names a saved file."""
    from comfy_api.latest import io

    found = []
    for cls in pack.nodes.node_list():
        schema = cls.define_schema()
        for item in schema.inputs:
            if "save" in item.id and isinstance(item, io.String.Input):
                found.append((cls, item.id, [i.id for i in schema.inputs]))
    return found


def test_the_save_inputs_are_the_known_ones(comfy_inprocess):
    names = sorted((cls.__name__, name) for cls, name, _ in _save_inputs(comfy_inprocess))
    # a new node with a save input joins the check below automatically; this list says which exist
    assert names == [
        ("DiffSketchDistill", "save_name"),
        ("DiffSketchFitConditions", "save_name"),
        ("DiffSketchTrain", "save_name"),
    ]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_every_save_input_refuses_a_path_before_running(comfy_inprocess, bad):
    from diffsketch.errors import InvalidInputError

    for cls, name, inputs in _save_inputs(comfy_inprocess):
        if not bad.strip() and cls.__name__ == "DiffSketchFitConditions":
            continue  # an empty name there means "do not save", which is allowed
        # every other input is None: the name must be refused before any of them is touched
        kwargs = {i: None for i in inputs}
        kwargs[name] = bad
        with pytest.raises(InvalidInputError, match=name):
            cls.execute(**kwargs)
