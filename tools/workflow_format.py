"""Convert between ComfyUI's two graph formats with the node schemas from ``/object_info``.

- :func:`build_ui` lays out a small graph description as a UI-format workflow (what the template
  browser opens: nodes with positions, socket links and positional ``widgets_values``).
- :func:`ui_to_api` converts a UI workflow back to the API format ``/prompt`` accepts, the way the
  frontend's graphToPrompt does for plain graphs (no reroutes, primitives or subgraphs), so tests
  can check that each API twin matches its UI file.

- :func:`node_size` is the size the frontend's ``computeSize`` gives a node (LiteGraph's rules:
  slot rows, then each widget's height plus 4), so layouts can be planned without a browser.

A graph description is ``{"nodes": {id: {"type": T, "widgets": {name: value}, "inputs": {name: [src_id,
slot]}, "pos": [x, y], "size": [w, h]?, "title": str?, "models": [{name, url, directory}]?}},
"groups": [{"title", "bounding": [x, y, w, h], "color"}]?}``. ``properties.models`` lists the files a
node's combo names that the frontend's missing-models dialog can offer to download. Nodes of a
:data:`UI_ONLY_TYPES` type (notes) have ``{"type": "MarkdownNote", "text": str}`` and exist only in the
UI file.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Nodes the frontend itself defines (not in /object_info): notes. They are never sent to the server.
UI_ONLY_TYPES = {"Note", "MarkdownNote"}
# LiteGraph's layout constants (litegraph LiteGraph.NODE_*), the same in frontends 1.35 and 1.58.
TITLE_HEIGHT = 30
SLOT_HEIGHT = 20
WIDGET_HEIGHT = 20
MULTILINE_HEIGHT = 50  # a DOM text widget's minimum height


def _input_specs(info: dict) -> list[tuple[str, list]]:
    specs = []
    for group in ("required", "optional"):
        section = info["input"].get(group, {})
        order = info.get("input_order", {}).get(group, list(section))
        specs.extend((name, section[name]) for name in order if name in section)
    return specs


def is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def has_control_widget(name: str, spec: list) -> bool:
    """Inputs followed by a control_after_generate widget, whose value ('fixed', 'randomize', ...) takes
    a slot in widgets_values: those that ask for one, and, as the frontend does unless told otherwise,
    every INT input named seed or noise_seed."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def node_size(node: dict, object_info: dict) -> tuple[int, int]:
    """The smallest body size (below the title bar) the frontend gives ``node``: what LGraphNode's
    computeSize returns, except the width, which depends on text measurement (it is at least
    210 for any node with widgets). Heights: one 20-px row per slot (input sockets or outputs,
    whichever are more), then each widget's height plus 4 and 8 more, then 6."""
    if node["type"] in UI_ONLY_TYPES:
        return 210, 6 + (MULTILINE_HEIGHT + 4 + 8)
    info = object_info[node["type"]]
    linked = node.get("inputs", {})
    sockets = 0
    widgets: list[int] = []
    for name, spec in _input_specs(info):
        if is_widget(spec) and name not in linked:
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            widgets.append(MULTILINE_HEIGHT if opts.get("multiline") else WIDGET_HEIGHT)
            if has_control_widget(name, spec):
                widgets.append(WIDGET_HEIGHT)
            if opts.get("image_upload"):
                widgets.append(WIDGET_HEIGHT)  # the upload button
        elif not name.startswith("_"):
            sockets += 1
    rows = max(sockets, len(info["output"]), 1)
    height = rows * SLOT_HEIGHT + (sum(h + 4 for h in widgets) + 8 if widgets else 0) + 6
    return 210 if widgets else 140, height


def build_ui(graph: dict, object_info: dict) -> dict:
    nodes_out, links = [], []
    link_id = 0
    outgoing: dict[tuple[int, int], list[int]] = {}
    ids = {str(k): int(k) for k in graph["nodes"]}
    for order, (nid, node) in enumerate(graph["nodes"].items()):
        if node["type"] in UI_ONLY_TYPES:
            nodes_out.append(_ui_only_node(ids[nid], order, node))
            continue
        info = object_info[node["type"]]
        inputs, widgets = [], []
        for name, spec in _input_specs(info):
            if name in node.get("inputs", {}):
                src, slot = node["inputs"][name]
                link_id += 1
                src_type = object_info[graph["nodes"][str(src)]["type"]]["output"][slot]
                links.append([link_id, ids[str(src)], slot, ids[nid], len(inputs), src_type])
                outgoing.setdefault((ids[str(src)], slot), []).append(link_id)
                inputs.append(
                    {
                        "name": name,
                        "type": spec[0] if not isinstance(spec[0], list) else "COMBO",
                        "link": link_id,
                    }
                )
            elif is_widget(spec):
                if name not in node.get("widgets", {}):
                    default = spec[1].get("default") if len(spec) > 1 and isinstance(spec[1], dict) else None
                    if default is None and spec[0] == "COMBO":
                        default = spec[1]["options"][0] if spec[1].get("options") else ""
                    value = default
                else:
                    value = node["widgets"][name]
                widgets.append(value)
                if has_control_widget(name, spec):
                    widgets.append("fixed")
            elif not name.startswith("_") and name not in node.get("inputs", {}):
                # unconnected socket: shown as an empty input slot
                inputs.append({"name": name, "type": spec[0], "link": None})
        outputs = [
            {"name": oname, "type": otype, "links": [], "slot_index": i}
            for i, (oname, otype) in enumerate(zip(info["output_name"], info["output"]))
        ]
        entry = {
            "id": ids[nid],
            "type": node["type"],
            "pos": list(node.get("pos", [40 + 360 * order, 80])),
            "size": list(node.get("size") or node_size(node, object_info)),
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": {"Node name for S&R": node["type"]},
            "widgets_values": widgets,
        }
        if node.get("models"):
            entry["properties"]["models"] = [dict(m) for m in node["models"]]
        if "title" in node:
            entry["title"] = node["title"]
        nodes_out.append(entry)
    by_id = {n["id"]: n for n in nodes_out}
    for (src, slot), lids in outgoing.items():
        by_id[src]["outputs"][slot]["links"] = lids
    groups = [
        {
            "title": g["title"],
            "bounding": list(g["bounding"]),
            "color": g["color"],
            "font_size": 24,
            "flags": {},
        }
        for g in graph.get("groups", [])
    ]
    # No saved view (extra.ds): every frontend then fits the graph to the window when it opens it
    # (1.58 always does for templates; 1.35 restores a saved view instead when there is one).
    return {
        "last_node_id": max(by_id),
        "last_link_id": link_id,
        "nodes": nodes_out,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def _ui_only_node(node_id: int, order: int, node: dict) -> dict:
    entry = {
        "id": node_id,
        "type": node["type"],
        "pos": list(node["pos"]),
        "size": list(node["size"]),
        "flags": {},
        "order": order,
        "mode": 0,
        "inputs": [],
        "outputs": [],
        "properties": {},
        "widgets_values": [node["text"]],
    }
    if "color" in node:
        entry["color"], entry["bgcolor"] = node["color"], node["bgcolor"]
    return entry


def graph_to_api(graph: dict, object_info: dict) -> dict:
    """The API form of a graph description: every widget (given or default) and every link."""
    api = {}
    for nid, node in graph["nodes"].items():
        if node["type"] in UI_ONLY_TYPES:
            continue
        info = object_info[node["type"]]
        inputs = {}
        for name, spec in _input_specs(info):
            if name in node.get("inputs", {}):
                src, slot = node["inputs"][name]
                inputs[name] = [str(src), slot]
            elif is_widget(spec):
                if name in node.get("widgets", {}):
                    inputs[name] = node["widgets"][name]
                else:
                    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                    default = opts.get("default")
                    if default is None and spec[0] == "COMBO" and opts.get("options"):
                        default = opts["options"][0]
                    if default is not None:
                        inputs[name] = default
        entry = {"class_type": node["type"], "inputs": inputs}
        if "title" in node:
            entry["_meta"] = {"title": node["title"]}
        api[str(nid)] = entry
    return api


def ui_to_api(ui: dict, object_info: dict) -> dict:
    link_src = {link[0]: (str(link[1]), link[2]) for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) != 0 or node["type"] in UI_ONLY_TYPES:
            continue
        info = object_info[node["type"]]
        values = list(node.get("widgets_values", []))
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        inputs = {}
        pos = 0
        for name, spec in _input_specs(info):
            if is_widget(spec):
                value = values[pos] if pos < len(values) else None
                pos += 1 + int(has_control_widget(name, spec))
                if name in linked:
                    src, slot = link_src[linked[name]]
                    inputs[name] = [src, slot]
                elif value is not None:
                    inputs[name] = value
            elif name in linked:
                src, slot = link_src[linked[name]]
                inputs[name] = [src, slot]
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        api[str(node["id"])] = entry
    return api


def api_equal(a: dict, b: dict) -> list[str]:
    """Differences between two API graphs, ignoring ``_meta`` (empty list: equal)."""
    diffs = []
    for nid in sorted(set(a) | set(b), key=str):
        if nid not in a or nid not in b:
            diffs.append(f"node {nid} only in {'first' if nid in a else 'second'}")
            continue
        if a[nid]["class_type"] != b[nid]["class_type"]:
            diffs.append(f"node {nid}: {a[nid]['class_type']} != {b[nid]['class_type']}")
        ia, ib = a[nid]["inputs"], b[nid]["inputs"]
        for k in sorted(set(ia) | set(ib)):
            if ia.get(k) != ib.get(k):
                diffs.append(f"node {nid} ({a[nid]['class_type']}) input {k}: {ia.get(k)!r} != {ib.get(k)!r}")
    return diffs
