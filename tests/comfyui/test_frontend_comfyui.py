"""Tier 2: the templates opened in the real ComfyUI web frontend in headless Chromium as a user meets
them, once per frontend: the ``comfyui_frontend_package`` ComfyUI v0.8 pins (1.35.9, what the server
serves), and the one users have today (1.58.1, served with ``--front-end-root`` from the folder
``DIFFSKETCH_CURRENT_FRONTEND_ROOT`` names; skipped with that reason when it is unset).

- The template browser lists every template of the pack under its title; clicking one opens it.
- First run (none of the model files there): each template, fetched from the route the template
  browser uses and loaded as it loads templates, names no missing node type, and the frontend lists
  every file the template needs (``properties.models``) with its download URL in its missing-models
  dialog (1.35) or Issues panel (1.58); the files on Hugging Face get a download button.
- Layout: at the frontend's own fit-to-view on a 1920x1080 window every node is drawn with its text
  (the zoom is above the frontend's low-detail threshold) and no two nodes or groups overlap.
- With the files there, the checker below finds nothing wrong: node types the frontend does not know
  (its missing-nodes report and dialog or error overlay), widget values the widgets do not accept (a
  combo value not among the options, a number outside min/max, a value count that does not match
  the node's widgets, which shifts every later value), dropped or mistyped links, validation toasts,
  console and page errors. The prompt the frontend would queue (``app.graphToPrompt``) must equal
  the API twin. Where the two frontends differ (how toasts are cleared and shown, how missing nodes
  and models are reported, node ids), the page-side code reads both ways and checks the same thing.

Screenshots of each template at fit-to-view go to ``test_artifacts/frontend/<frontend version>/``
(``first_run-<template>.png`` and ``<template>.png``).

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
from make_workflows import template_files  # noqa: E402
from workflow_format import api_equal  # noqa: E402

TEMPLATES = template_files()  # key -> file stem (the title the template browser shows)
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
    "models/checkpoints/sd_xl_base_1.0.safetensors",
    "models/diffsketch/clip/clip_vit_b_32.safetensors",
    "models/diffsketch/lpips/alexnet-owt-7be5be79.pth",
    "models/diffsketch/generators/my_style.safetensors",
    "models/diffsketch/conditions/default_conditions.safetensors",
    "models/diffsketch/extractors/my_style_extractor.safetensors",
    "models/diffusion_models/z_image_turbo_bf16.safetensors",
    "models/text_encoders/qwen_3_4b.safetensors",
    "models/vae/ae.safetensors",
    "models/diffusion_models/flux1-dev.safetensors",
    "models/text_encoders/clip_l.safetensors",
    "models/text_encoders/t5xxl_fp16.safetensors",
)
PLACEHOLDER_IMAGES = (
    "input/example.png",
    "input/diffsketch_sketch.png",
    "input/diffsketch_picture.png",
    "input/diffsketch_drawing.png",
)
CHECKPOINT = "models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors"

# Where folder_paths keys of properties.models live under ComfyUI's base directory.
MODEL_DIRS = {
    "checkpoints": "models/checkpoints",
    "diffsketch_clip": "models/diffsketch/clip",
    "diffsketch_lpips": "models/diffsketch/lpips",
    # the Z-Image and Flux.1 quick starts' files, as ComfyUI's own Z-Image and Flux templates load them
    "diffusion_models": "models/diffusion_models",
    "text_encoders": "models/text_encoders",
    "vae": "models/vae",
}
# The download button of the missing-models list takes these hosts only (both frontends).
DOWNLOAD_HOSTS = ("https://huggingface.co/",)

# Console output that is not about the workflow, each with why it is ignored. Anything else the
# console logs as an error, and every uncaught page error, fails the test it happens in.
_OUTSIDE_HOSTS = (
    "the frontend looks node packs up on api.comfy.org, and the start-up template's models and the size "
    "of missing model files up on their hosts; ComfyUI's CSP blocks outside hosts (and the tests run offline)"
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
    (
        re.compile(r"^Error fetching file size: TypeError: Failed to fetch"),
        "frontend 1.35 asks the model host for the size of each missing file; blocked as above",
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
    // frontend 1.35 hands the missing models it found to its dialog through this method
    const showModels = app.showMissingModelsError;
    if (showModels)
      app.showMissingModelsError = function (models, paths) {
        window.__diffsketchMissingModels = models;
        return showModels.call(this, models, paths);
      };
    window.__diffsketchProbe = true;
  }
  window.__diffsketchMissing = null;
  window.__diffsketchMissingModels = null;
  const toast = app.extensionManager.toast;
  (toast.removeAll ?? toast.dismissAll).call(toast);  // 1.35: removeAll; 1.58: dismissAll
  // as the template browser opens a template: the tab is named after it and the view is fitted
  await app.loadGraphData(wf, true, true, name, { openSource: 'template' });
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

# The view the frontend itself chose (its fit-to-view for templates) and what it draws there: the zoom
# against the low-detail threshold (below it LiteGraph draws nodes as blank boxes, no text), and
# overlapping nodes or groups. Run after the page settles: nodes grow when image previews arrive.
LAYOUT_JS = """
async () => {
  // frontend 1.58 fits the view in an animation frame after the load
  await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
  const app = window.app, canvas = app.canvas, title = window.LiteGraph.NODE_TITLE_HEIGHT;
  const box = (r, label) => ({ label, x: r[0], y: r[1], w: r[2], h: r[3] });
  const nodes = app.rootGraph.nodes.map((n) =>
    box([n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title], `node ${n.id} (${n.title || n.type})`)
  );
  const groups = (app.rootGraph._groups ?? []).map((g) => box([...g.boundingRect], `group ${g.title}`));
  const hit = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
  const overlaps = [];
  for (const list of [nodes, groups])
    for (let i = 0; i < list.length; i++)
      for (let j = i + 1; j < list.length; j++)
        if (hit(list[i], list[j])) overlaps.push(`${list[i].label} overlaps ${list[j].label}`);
  const [ox, oy] = canvas.ds.offset, scale = canvas.ds.scale;
  const width = canvas.canvas.width / devicePixelRatio, height = canvas.canvas.height / devicePixelRatio;
  const offscreen = nodes
    .filter((n) => (n.x + ox) * scale < 0 || (n.y + oy) * scale < 0 ||
      (n.x + n.w + ox) * scale > width || (n.y + n.h + oy) * scale > height)
    .map((n) => n.label);
  return {
    scale, lowQuality: canvas.low_quality, minFontSize: canvas.min_font_size_for_lod,
    // LiteGraph's threshold: below this zoom the node text would be smaller than minFontSize px
    threshold: canvas.min_font_size_for_lod / (window.LiteGraph.NODE_TEXT_SIZE * Math.sqrt(devicePixelRatio || 1)),
    overlaps, offscreen,
  };
}
"""

# The missing models the frontend lists after a load, with what its list offers for each: the URL and
# whether there is a download button. Frontend 1.35 shows a dialog (rows "directory / name" with a
# Download button titled with the URL, disabled when the host is not allowed); 1.58 finds them after
# the load (its missingModel store) and lists them in its Issues panel, opened from the toast.
MISSING_MODELS_JS = """
async () => {
  const pinia = document.querySelector('#vue-app')?.__vue_app__?.config?.globalProperties?.$pinia;
  const store = pinia?._s?.get('missingModel');
  if (!store) {  // 1.35
    const rows = [...document.querySelectorAll('.comfy-missing-models li')];
    return (window.__diffsketchMissingModels ?? []).map((m) => {
      const row = rows.find((r) => r.innerText.includes(`${m.directory} / ${m.name}`));
      const button = row && [...row.querySelectorAll('button')].find((b) => b.title === m.url);
      return { name: m.name, directory: m.directory, url: m.url, listed: !!row,
               download: !!button && !button.disabled, note: row ? row.innerText.replace(/\\s+/g, ' ') : '' };
    });
  }
  for (let i = 0; i < 40 && !store.missingModelCandidates?.length; i++)
    await new Promise((done) => setTimeout(done, 100));
  const candidates = store.missingModelCandidates ?? [];
  if (candidates.length) {
    const details = [...document.querySelectorAll('button')].find((b) => b.innerText.trim() === 'View details');
    if (details) details.click();
    await new Promise((done) => setTimeout(done, 1000));
  }
  return candidates.map((c) => {
    const label = [...document.querySelectorAll('[title]')].find((e) => e.title === c.name && e.closest('.flex-col'));
    const row = label?.closest('.flex.w-full.flex-col');
    return { name: c.name, directory: c.directory, url: c.url, listed: !!row,
             download: !!row?.querySelector('[data-testid="missing-model-download"]'),
             note: row ? row.innerText.replace(/\\s+/g, ' ') : '' };
  });
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

    def fetch_template(self, stem: str) -> dict:
        """A template as the template browser fetches it: /api/workflow_templates/<pack>/<file>.json."""
        return self.page.evaluate(
            "async ([pack, stem]) => (await fetch(`/api/workflow_templates/${pack}/${encodeURIComponent(stem)}.json`))"
            ".json()",
            [PACK_NAME, stem],
        )

    def check(self, name: str, workflow: dict, api_twin: dict | None = None):
        """Load ``workflow`` as file ``name``, as the template browser loads templates; return
        (problems, visible dialog texts)."""
        self.close_overlays()
        self.take_events()
        self.result = self.page.evaluate(CHECK_JS, [workflow, name])
        # images (LoadImage previews) load and toasts render after the loader returns
        self.page.wait_for_timeout(800)
        overlays = self.page.evaluate(OVERLAYS_JS)
        problems = list(self.result["problems"])
        problems += [f"dialog shown: {text[:400]}" for text in overlays["dialogs"]]
        problems += [f"toast shown: {text[:400]}" for text in overlays["toasts"]]
        problems += self.errors(self.take_events())
        if api_twin is not None:
            problems += [
                f"frontend prompt vs API twin: {d}" for d in api_equal(self.result["prompt"], api_twin)
            ]
        return problems, overlays["dialogs"]

    def layout_problems(self) -> tuple[list[str], dict]:
        """What is wrong with the view the frontend chose for the graph loaded last (see LAYOUT_JS)."""
        layout = self.page.evaluate(LAYOUT_JS)
        problems = [f"overlap: {o}" for o in layout["overlaps"]]
        problems += [f"outside the window at fit-to-view: {n}" for n in layout["offscreen"]]
        if layout["lowQuality"] or layout["scale"] < layout["threshold"]:
            problems.append(
                f"fit-to-view zoom {layout['scale']:.3f} is below the low-detail threshold "
                f"{layout['threshold']:.3f}: nodes are drawn as blank boxes, without text"
            )
        return problems, layout

    def screenshot(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))


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


def declared_models(workflow: dict) -> set[tuple[str, str, str]]:
    """(directory, name, url) of every properties.models entry a node's widget values select: what
    both frontends take from a workflow when they look for missing models."""
    found = set()
    for node in workflow["nodes"]:
        values = {v for v in node.get("widgets_values") or [] if isinstance(v, str)}
        for model in node.get("properties", {}).get("models", []):
            if model["name"] in values:
                found.add((model["directory"], model["name"], model["url"]))
    return found


@pytest.fixture(scope="class")
def first_run(browser, frontend_name, frontend_server):
    """A page on a server where none of the model files the templates declare exists (any there
    are moved aside while the class of tests using it runs), as a new user has it."""
    hidden = []
    for stem in TEMPLATES.values():
        workflow = json.loads((REPO / "workflows" / f"{stem}.json").read_text(encoding="utf-8"))
        for directory, name, _ in declared_models(workflow):
            path = frontend_server.base / MODEL_DIRS[directory] / name
            if path.exists() or path.is_symlink():
                aside = path.with_name(f".{name}.hidden-by-test")
                path.rename(aside)
                hidden.append((aside, path))
    frontend_server.post("/settings/Comfy.TutorialCompleted", True)
    page = browser.new_page(viewport=VIEWPORT)
    try:
        yield Frontend(page, frontend_server.url, frontend_name)
    finally:
        page.close()
        for aside, path in hidden:
            aside.rename(path)


class TestFirstRun:
    """None of the model files there yet."""

    def test_template_browser_lists_every_template_by_title(self, first_run, frontend_server):
        """The server lists the templates (the browser asks /api/workflow_templates); the browser shows
        the pack's category with one card per template, titled with its file name, and opens one."""
        assert sorted(frontend_server.get("/workflow_templates")[PACK_NAME]) == sorted(TEMPLATES.values())
        page = first_run.page
        page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.get_by_text(PACK_NAME, exact=True).first.click(timeout=30_000)
        for title in TEMPLATES.values():
            page.get_by_text(title, exact=True).first.wait_for(timeout=30_000)
        quick = TEMPLATES["quick_start"]
        page.get_by_text(quick, exact=True).first.click()
        page.wait_for_function(
            "(name) => window.app.extensionManager.workflow.activeWorkflow?.filename === name", arg=quick
        )
        workflow = json.loads((REPO / "workflows" / f"{quick}.json").read_text(encoding="utf-8"))
        assert page.evaluate("window.app.rootGraph.nodes.length") == len(workflow["nodes"])
        first_run.close_overlays()
        first_run.take_events()

    @pytest.mark.parametrize("key", list(TEMPLATES))
    def test_template_lists_its_model_files_and_is_readable(self, first_run, artifacts_dir, key):
        """A new user opens the template: no missing node; every file it needs is listed with its
        download URL (a download button for the files on Hugging Face; torchvision's AlexNet is hosted
        on download.pytorch.org, which the frontend lists but does not download from); the graph is
        drawn readable at the frontend's fit-to-view, nothing overlapping."""
        stem = TEMPLATES[key]
        workflow = first_run.fetch_template(stem)
        problems, _ = first_run.check(stem, workflow)
        problems = [p for p in problems if "missing node" in p or "not registered" in p or "configuring" in p]
        layout_problems, layout = first_run.layout_problems()
        listed = first_run.page.evaluate(MISSING_MODELS_JS)
        first_run.screenshot(artifacts_dir / "frontend" / first_run.version / f"first_run-{stem}.png")
        first_run.close_overlays()
        first_run.take_events()

        expected = declared_models(workflow)
        assert {(m["directory"], m["name"], m["url"]) for m in listed} == expected, listed
        for m in listed:
            assert m["listed"], f"{m['name']} is not shown in the frontend's missing-models list"
            offered = m["url"].startswith(DOWNLOAD_HOSTS)
            assert m["download"] == offered, (
                f"{m['name']}: download button {m['download']}, expected {offered}"
            )
        assert problems + layout_problems == [], f"{stem} at zoom {layout['scale']:.3f}:\n" + "\n".join(
            problems + layout_problems
        )


@pytest.mark.parametrize("key", list(TEMPLATES))
def test_workflow_loads_cleanly_in_frontend(frontend, artifacts_dir, key):
    stem = TEMPLATES[key]
    workflow = frontend.fetch_template(stem)
    api_twin = json.loads((REPO / "workflows" / "api" / f"{key}.json").read_text(encoding="utf-8"))
    problems, _ = frontend.check(stem, workflow, api_twin)
    layout_problems, layout = frontend.layout_problems()
    frontend.screenshot(artifacts_dir / "frontend" / frontend.version / f"{stem}.png")
    assert problems + layout_problems == [], (
        f"{stem} in the ComfyUI frontend (zoom {layout['scale']:.3f}):\n"
        + ("\n".join(problems + layout_problems))
    )


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
    # {given}: the Extract node's widget values less the dropped one
    "missing_widget_value": (_dropped_value, "the workflow gives {given} widget values but"),
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
    stem = TEMPLATES["extract"]
    workflow = json.loads((REPO / "workflows" / f"{stem}.json").read_text(encoding="utf-8"))
    api_twin = json.loads((REPO / "workflows" / "api" / "extract.json").read_text(encoding="utf-8"))
    expected = expected.format(given=len(_node(workflow, "DiffSketchExtract")["widgets_values"]) - 1)
    mutate(workflow)
    problems, dialogs = frontend.check(f"mutated_{mutation}", workflow, api_twin)
    assert any(expected in p for p in problems), "\n".join(problems)
    if mutation == "renamed_node_type":  # the user-facing missing-nodes dialog names it too
        assert any("DiffSketchExtractRenamed" in d for d in dialogs), dialogs
    frontend.close_overlays()
