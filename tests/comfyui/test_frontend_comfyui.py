"""Tier 2: every UI workflow opened in the real ComfyUI web frontend in headless Chromium, once per
frontend: the ``comfyui_frontend_package`` ComfyUI v0.8 pins (1.35.9, what the server serves), and
the one users have today (1.58.1, served with ``--front-end-root`` from the folder
``DIFFSKETCH_CURRENT_FRONTEND_ROOT`` names; skipped with that reason when it is unset).

For each ``workflows/*.json`` the frontend's own ``app.loadGraphData`` loads the file, then the page
is checked for what a user would see go wrong: node types the frontend does not know (its
missing-nodes report and dialog or error overlay), widget values the widgets do not accept (a combo
value not among the options, a number outside min/max, a value count that does not match the
node's widgets, which shifts every later value), dropped or mistyped links, validation toasts,
console and page errors. The prompt the frontend would queue (``app.graphToPrompt``) must equal the
API twin in ``workflows/api``. A screenshot of each fitted graph goes to
``test_artifacts/frontend/<frontend version>/<stem>.png``. Where the two frontends differ (how
toasts are cleared and shown, how missing nodes are reported, node ids), the page-side code reads
both ways and checks the same thing.

Needs the ``playwright`` Python package and a Chromium binary (``DIFFSKETCH_CHROMIUM`` or
``chromium`` / ``chromium-browser`` / ``google-chrome`` on PATH); skipped with a reason otherwise.
Playwright's own browser download is not used.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from comfy_harness import COMFYUI_PATH, PACK_NAME, REPO, running_server

sys.path.insert(0, str(REPO / "tools"))
from workflow_format import api_equal  # noqa: E402

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
STEMS = [p.stem for p in WORKFLOWS]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
VIEWPORT = {"width": 1920, "height": 1080}

# Each test runs once per frontend: "pinned", the comfyui-frontend-package ComfyUI's
# requirements.txt pins (1.35.9 for v0.8.0; installed with those requirements, the server serves
# it), and "current", the one users have today, served with --front-end-root from the static
# folder CURRENT_FRONTEND_ENV names.
FRONTENDS = ("pinned", "current")
CURRENT_FRONTEND_VERSION = "1.58.1"
CURRENT_FRONTEND_ENV = "DIFFSKETCH_CURRENT_FRONTEND_ROOT"


def expected_frontend_version(name: str) -> str:
    if name == "current":
        return CURRENT_FRONTEND_VERSION
    pins = re.findall(
        r"^comfyui-frontend-package==(\S+)", Path(COMFYUI_PATH, "requirements.txt").read_text(), re.M
    )
    assert len(pins) == 1, f"{COMFYUI_PATH}/requirements.txt pins no single comfyui-frontend-package"
    return pins[0]


# Files the workflows name in their combos. The frontend only lists names (from /object_info), so
# placeholders are enough: the checkpoint is the tiny test checkpoint, the images tiny PNGs (the
# LoadImage preview fetches them), the DiffSketch model files empty.
PLACEHOLDER_MODELS = (
    "models/diffsketch/clip/clip_vit_b_32.safetensors",
    "models/diffsketch/generators/my_style.safetensors",
    "models/diffsketch/conditions/default_conditions.safetensors",
    "models/diffsketch/extractors/my_style_extractor.safetensors",
)
PLACEHOLDER_IMAGES = ("input/example.png", "input/diffsketch_sketch.png")
CHECKPOINT = "models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors"

# Console output that is not about the workflow, each with why it is ignored. Anything else the
# console logs as an error, and every uncaught page error, fails the test it happens in.
_OUTSIDE_HOSTS = (
    "the frontend looks node packs up on api.comfy.org and the start-up template's models up on "
    "huggingface.co; ComfyUI's CSP blocks outside hosts (and the tests run offline)"
)
_JOBS_STATUS = (
    "frontend 1.58 asks ComfyUI's /api/jobs for status 'cancelled', which ComfyUI v0.8.0 does not "
    "know (400): the queue panel's job history, not the pack"
)
IGNORED_ERRORS = (
    (
        re.compile(r"violates the following Content Security Policy directive: \"connect-src 'self'\""),
        _OUTSIDE_HOSTS,
    ),
    (
        re.compile(r"^Fetch API cannot load https?://(?!127\.0\.0\.1[:/]).* Content Security Policy"),
        _OUTSIDE_HOSTS,
    ),
    (
        re.compile(r"^\[Jobs API\] Error fetching jobs: JobsApiError: Failed to fetch jobs: 400\b"),
        _JOBS_STATUS,
    ),
)
# Server resources that answer with an error by design: (path, HTTP status) -> why.
IGNORED_RESOURCES = {
    # a fresh ComfyUI user directory does not have these (404 at start-up)
    ("/user.css", 404): "optional user stylesheet",
    ("/api/userdata/user.css", 404): "optional user stylesheet",
    ("/favicon.ico", 404): "ComfyUI serves no favicon",
    ("/api/userdata/comfy.templates.json", 404): "no saved node templates yet",
    ("/api/userdata", 404): "no saved workflows/subgraphs folder yet (?dir=workflows, ?dir=subgraphs)",
    ("/api/jobs", 400): _JOBS_STATUS,
}

# Runs in the page: loads the workflow with the frontend's own loader and reports every problem
# as a sentence. Returns {problems, prompt}; the prompt is what "Run" would send to /prompt.
CHECK_JS = """
async ([wf, name]) => {
  const app = window.app, LiteGraph = window.LiteGraph;
  const problems = [];
  const label = (n) => `node ${n.id} (${n.type})`;
  for (const n of wf.nodes) {
    if (!(n.type in LiteGraph.registered_node_types))
      problems.push(`${label(n)}: node type is not registered in the frontend (missing node)`);
  }
  if (!window.__diffsketchProbe) {
    // the frontend passes its list of missing node types to this extension hook after loading
    app.registerExtension({
      name: 'diffsketch.tests.probe',
      afterConfigureGraph(missing) {
        window.__diffsketchMissing = missing.map((m) => (typeof m === 'string' ? m : m.type));
      },
    });
    window.__diffsketchProbe = true;
  }
  window.__diffsketchMissing = null;
  const toast = app.extensionManager.toast;
  (toast.removeAll ?? toast.dismissAll).call(toast);  // 1.35: removeAll; 1.58: dismissAll
  // as opening the file in the UI does (the tab is named after it); keep the view to fit it below
  await app.loadGraphData(wf, true, false, name);
  if (window.__diffsketchMissing === null)
    problems.push('loadGraphData did not finish configuring the graph (load error)');
  else
    for (const t of window.__diffsketchMissing)
      problems.push(`the frontend reports missing node type ${t}`);

  const graph = app.rootGraph;
  if (graph.nodes.length !== wf.nodes.length)
    problems.push(`${graph.nodes.length} nodes loaded, the workflow has ${wf.nodes.length}`);
  // ids as strings: the file has numbers, frontend 1.58 keeps loaded node ids as strings
  const fileNodes = new Map(wf.nodes.map((n) => [String(n.id), n]));
  for (const node of graph.nodes) {
    const where = label(node);
    if (!fileNodes.has(String(node.id))) problems.push(`${where}: loaded, but the workflow has no node ${node.id}`);
    if (node.has_errors) problems.push(`${where}: marked has_errors by the frontend`);
    const widgets = node.widgets ?? [];
    const valued = widgets.filter((w) => w.serialize !== false);
    let required = valued.length;  // trailing buttons (LoadImage's upload) may be left out
    while (required > 0 && valued[required - 1].type === 'button') required--;
    const given = fileNodes.get(String(node.id))?.widgets_values;
    if (Array.isArray(given) && (given.length < required || given.length > valued.length))
      problems.push(
        `${where}: the workflow gives ${given.length} widget values but the node's widgets are ` +
          `[${valued.map((w) => w.name).join(', ')}], so values land on the wrong widgets`
      );
    for (const w of widgets) {
      const opts = w.options ?? {};
      const what = `${where} widget ${w.name} = ${JSON.stringify(w.value)}`;
      if (w.type === 'combo') {
        const values = typeof opts.values === 'function' ? opts.values(w, node) : opts.values;
        if (!Array.isArray(values) || !values.includes(w.value))
          problems.push(`${what}: not among the options ${JSON.stringify(values)}`);
      } else if (w.type === 'number') {
        if (typeof w.value !== 'number' || !Number.isFinite(w.value))
          problems.push(`${what}: not a number`);
        else if ((opts.min != null && w.value < opts.min) || (opts.max != null && w.value > opts.max))
          problems.push(`${what}: outside [${opts.min}, ${opts.max}]`);
        else if (opts.precision === 0 && !Number.isInteger(w.value))
          problems.push(`${what}: not an integer`);
      } else if (w.type === 'toggle') {
        if (typeof w.value !== 'boolean') problems.push(`${what}: not a boolean`);
      } else if (w.type === 'text' || w.type === 'customtext') {
        if (typeof w.value !== 'string') problems.push(`${what}: not a string`);
      }
    }
  }

  const links = graph.links instanceof Map ? [...graph.links.values()] : Object.values(graph.links);
  if (links.length !== wf.links.length)
    problems.push(`${links.length} links loaded, the workflow has ${wf.links.length}`);
  for (const l of links) {
    const out = graph.getNodeById(l.origin_id)?.outputs?.[l.origin_slot];
    const inp = graph.getNodeById(l.target_id)?.inputs?.[l.target_slot];
    if (!out || !inp) problems.push(`link ${l.id}: an end slot does not exist`);
    else if (!LiteGraph.isValidConnection(out.type, inp.type))
      problems.push(`link ${l.id}: ${out.name} (${out.type}) cannot feed ${inp.name} (${inp.type})`);
  }

  const prompt = (await app.graphToPrompt()).output;
  return { problems, prompt };
}
"""

# Fits the whole graph into the view for the screenshot. Run after the page settles: nodes grow when
# their image previews arrive. Bounds come from pos/size (boundingRect is filled in only by drawing).
FIT_JS = """
async () => {
  const app = window.app, title = window.LiteGraph.NODE_TITLE_HEIGHT;
  const rects = app.rootGraph.nodes.map((n) => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]);
  if (!rects.length) return;
  const x0 = Math.min(...rects.map((r) => r[0])), y0 = Math.min(...rects.map((r) => r[1]));
  const x1 = Math.max(...rects.map((r) => r[0] + r[2])), y1 = Math.max(...rects.map((r) => r[1] + r[3]));
  // padded at the top, where the workflow name and the Run bar float over the canvas
  app.canvas.ds.fitToBounds([x0 - 20, y0 - 90, x1 - x0 + 40, y1 - y0 + 110], { zoom: 0.92 });
  app.canvas.min_font_size_for_lod = 0;  // draw text even when zoomed out (this page only)
  app.canvas.setDirty(true, true);
  await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
}
"""

# Visible dialogs, error overlays and warning/error toasts, as text.
OVERLAYS_JS = """
() => ({
  // 1.35: PrimeVue dialogs (the missing-nodes report is one); 1.58: reka-ui dialogs, and the error
  // overlay on the canvas that reports missing nodes
  dialogs: [...document.querySelectorAll(
      '.p-dialog, [data-reka-dialog-content][data-state="open"], [data-testid="error-overlay"]'
    )]
    .filter((d) => d.offsetParent !== null || d.getClientRects().length)
    .map((d) => d.innerText.trim().replace(/\\s+/g, ' ')),
  // 1.35: PrimeVue toasts; 1.58: reka-ui toasts marked with their kind
  toasts: [...document.querySelectorAll(
      '.p-toast-message-warn, .p-toast-message-error, ' +
        '[data-testid="toast"][data-toast-kind="warning"], [data-testid="toast"][data-toast-kind="error"]'
    )]
    .map((t) => t.innerText.trim().replace(/\\s+/g, ' ')),
})
"""


def find_chromium() -> str | None:
    explicit = os.environ.get("DIFFSKETCH_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _is_ignored(event: dict, origin: str) -> bool:
    if any(pattern.search(event["text"]) for pattern, _ in IGNORED_ERRORS):
        return True
    url = event.get("url") or ""
    if event["text"].startswith("Failed to load resource"):
        if url and not url.startswith(origin):
            return True  # outside hosts are unreachable here by design (see IGNORED_ERRORS)
        status = re.match(
            r"Failed to load resource: the server responded with a status of (\d+)", event["text"]
        )
        return status is not None and (urlsplit(url).path, int(status.group(1))) in IGNORED_RESOURCES
    return False


class Frontend:
    """One page of the ComfyUI frontend; console and page errors are collected as events."""

    def __init__(self, page, server_url: str, name: str):
        self.page = page
        self.origin = server_url
        self.name = name  # a key of FRONTENDS
        self.events: list[dict] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda err: self.events.append({"kind": "pageerror", "text": str(err)}))
        page.goto(server_url)
        page.wait_for_function(
            # window.app is set once the app is set up; an active workflow once the start-up
            # graph is loaded (a load of ours must not race it)
            "window.app && window.app.graph && window.app.canvas && window.LiteGraph "
            "&& window.app.extensionManager?.workflow?.activeWorkflow",
            timeout=120_000,
        )
        page.wait_for_timeout(1000)  # let start-up requests (settings, templates, ...) finish
        self.startup_events = self.take_events()
        self.version = page.evaluate("window.__COMFYUI_FRONTEND_VERSION__")

    def _on_console(self, msg):
        if msg.type == "error":
            self.events.append({"kind": "console", "text": msg.text, "url": msg.location.get("url", "")})

    def take_events(self) -> list[dict]:
        events, self.events = self.events, []
        return events

    def errors(self, events: list[dict]) -> list[str]:
        return [
            f"{e['kind']} error: {e['text']}" + (f" ({e['url']})" if e.get("url") else "")
            for e in events
            if not _is_ignored(e, self.origin)
        ]

    def close_overlays(self):
        for _ in range(3):
            if not self.page.evaluate(OVERLAYS_JS)["dialogs"]:
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(200)

    def check(self, name: str, workflow: dict, api_twin: dict | None = None, screenshot: Path | None = None):
        """Load ``workflow`` as file ``name``; return (problems, visible dialog texts)."""
        self.close_overlays()
        self.take_events()
        result = self.page.evaluate(CHECK_JS, [workflow, name])
        # images (LoadImage previews) load and toasts render after the loader returns
        self.page.wait_for_timeout(800)
        overlays = self.page.evaluate(OVERLAYS_JS)
        problems = list(result["problems"])
        problems += [f"dialog shown: {text[:400]}" for text in overlays["dialogs"]]
        problems += [f"toast shown: {text[:400]}" for text in overlays["toasts"]]
        problems += self.errors(self.take_events())
        if api_twin is not None:
            problems += [f"frontend prompt vs API twin: {d}" for d in api_equal(result["prompt"], api_twin)]
        if screenshot is not None:
            self.page.evaluate(FIT_JS)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(screenshot), full_page=True)
        return problems, overlays["dialogs"]


def _missing_tool() -> str | None:
    """Why this module cannot run here (checked before any fixture starts a server), or None."""
    if not COMFYUI_PATH:
        return None  # the whole tier is skipped, and the tier's reason (conftest.py) is the one to show
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright); the frontend test needs it"
    if find_chromium() is None:
        return (
            "no Chromium binary: set DIFFSKETCH_CHROMIUM or put chromium / chromium-browser / "
            "google-chrome on PATH (e.g. apt-get install chromium)"
        )
    return None


pytestmark = pytest.mark.skipif(_missing_tool() is not None, reason=_missing_tool() or "")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module", params=FRONTENDS)
def frontend_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def frontend_server(request, frontend_name, tiny_checkpoint, artifacts_dir, tmp_path_factory):
    """The server whose frontend the module's tests load: the session's server with the pinned
    frontend, or a second server started with ``--front-end-root`` for the current one."""
    if frontend_name == "pinned":
        yield request.getfixturevalue("comfy_server")
        return
    root = os.environ.get(CURRENT_FRONTEND_ENV)
    if not root:
        pytest.skip(
            f"{CURRENT_FRONTEND_ENV} is not set: the frontend test also runs against the frontend users "
            f"have today when it names that frontend's static folder, e.g. "
            f"pip install --target DIR comfyui-frontend-package=={CURRENT_FRONTEND_VERSION}; "
            f"{CURRENT_FRONTEND_ENV}=DIR/comfyui_frontend_package/static (.ci/run does this)"
        )
    if not Path(root, "index.html").is_file():
        pytest.fail(f"{CURRENT_FRONTEND_ENV}={root} is not a frontend's static folder (no index.html)")
    base = tmp_path_factory.mktemp("comfy_base_current_frontend")
    with running_server(base, tiny_checkpoint, artifacts_dir, front_end_root=root) as server:
        yield server


@pytest.fixture(scope="module")
def frontend_files(frontend_server, tiny_checkpoint):
    """Create the files the workflows' combos name (only those missing); the files are removed
    again afterwards so modules sharing the server find its base directory as they left it. Folders
    stay: ComfyUI's file-list cache fails (FileNotFoundError) on a listed folder that disappears."""
    from PIL import Image

    base = frontend_server.base
    created: list[Path] = []
    for rel in (CHECKPOINT, *PLACEHOLDER_MODELS, *PLACEHOLDER_IMAGES):
        path = base / rel
        if path.exists() or path.is_symlink():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel == CHECKPOINT:
            path.symlink_to(tiny_checkpoint)
        elif rel in PLACEHOLDER_IMAGES:
            Image.new("RGB", (64, 48), (250, 250, 250)).save(path)
        else:
            path.write_bytes(b"")
        created.append(path)
    yield base
    for path in created:
        path.unlink()


@pytest.fixture(scope="module")
def frontend(browser, frontend_name, frontend_server, frontend_files):
    # a fresh user directory counts as a new user, whose first page opens the template browser
    # over the canvas; mark the onboarding done as a returning user would have it
    frontend_server.post("/settings/Comfy.TutorialCompleted", True)
    page = browser.new_page(viewport=VIEWPORT)
    yield Frontend(page, frontend_server.url, frontend_name)
    page.close()


def test_frontend_starts_and_knows_every_pack_node(frontend, frontend_server):
    assert frontend.version == expected_frontend_version(frontend.name), (
        f"the {frontend.name} frontend should be {expected_frontend_version(frontend.name)}, "
        f"the server serves {frontend.version}"
    )
    assert frontend.errors(frontend.startup_events) == []
    object_info = frontend_server.get("/object_info")
    ours = sorted(k for k, v in object_info.items() if v.get("python_module") == f"custom_nodes.{PACK_NAME}")
    assert ours, "the pack registered no nodes with the server"
    registered = set(frontend.page.evaluate("Object.keys(window.LiteGraph.registered_node_types)"))
    assert [t for t in ours if t not in registered] == []


@pytest.mark.parametrize("stem", STEMS)
def test_workflow_loads_cleanly_in_frontend(frontend, artifacts_dir, stem):
    workflow = json.loads((REPO / "workflows" / f"{stem}.json").read_text())
    api_twin = json.loads((REPO / "workflows" / "api" / f"{stem}.json").read_text())
    problems, _ = frontend.check(
        stem, workflow, api_twin, screenshot=artifacts_dir / "frontend" / frontend.version / f"{stem}.png"
    )
    assert problems == [], f"{stem} in the ComfyUI frontend:\n" + "\n".join(problems)


def _node(workflow: dict, node_type: str) -> dict:
    return next(n for n in workflow["nodes"] if n["type"] == node_type)


def _rename_node(wf):
    _node(wf, "DiffSketchExtract")["type"] = "DiffSketchExtractRenamed"


def _bad_combo(wf):
    _node(wf, "DiffSketchLoadExtractor")["widgets_values"][0] = "no_such_extractor.safetensors"


def _out_of_range(wf):
    _node(wf, "DiffSketchExtract")["widgets_values"][2] = 100_000  # tile, max 8192


def _dropped_value(wf):
    del _node(wf, "DiffSketchExtract")["widgets_values"][0]  # every later value shifts


def _dangling_link(wf):
    wf["links"].append([99, 1, 0, 42, 0, "DIFFSKETCH_EXTRACTOR"])  # to a node that does not exist


def _changed_value(wf):
    _node(wf, "SaveImage")["widgets_values"][0] = "elsewhere/extracted"  # valid, but not the twin's


# mutation -> (how to break the workflow, what the report must say: one text, or one per frontend)
MUTATIONS = {
    "renamed_node_type": (_rename_node, "missing node type DiffSketchExtractRenamed"),
    "invalid_combo_value": (_bad_combo, '"no_such_extractor.safetensors": not among the options'),
    "number_out_of_range": (_out_of_range, "widget tile = 100000: outside [128, 8192]"),
    "missing_widget_value": (_dropped_value, "the workflow gives 2 widget values"),
    # 1.35 validates workflows on load (removes the link, warns in a toast); 1.58 does not by
    # default (Comfy.Validation.Workflows), so the link stays and the link check names it
    "dangling_link": (
        _dangling_link,
        {"pinned": "toast shown: Workflow Validation", "current": "link 99: an end slot does not exist"},
    ),
    "value_differs_from_api_twin": (_changed_value, "input filename_prefix: 'elsewhere/extracted'"),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_checker_reports_a_broken_workflow(frontend, mutation):
    """The check above can fail: a workflow broken on purpose is reported, naming the problem."""
    mutate, expected = MUTATIONS[mutation]
    if isinstance(expected, dict):
        expected = expected[frontend.name]
    stem = "diffsketch_4_extract"
    workflow = json.loads((REPO / "workflows" / f"{stem}.json").read_text())
    api_twin = json.loads((REPO / "workflows" / "api" / f"{stem}.json").read_text())
    mutate(workflow)
    problems, dialogs = frontend.check(f"mutated_{mutation}", workflow, api_twin)
    assert any(expected in p for p in problems), "\n".join(problems)
    if mutation == "renamed_node_type":  # the user-facing missing-nodes dialog names it too
        assert any("DiffSketchExtractRenamed" in d for d in dialogs), dialogs
    frontend.close_overlays()
