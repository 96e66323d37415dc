"""Every relative link and image in README.md and docs/*.md points at a file that exists (and, for
``#anchor`` links into a markdown file, at a heading or an explicit ``<a id>``/``<a name>`` anchor of
it), inside the files the Registry zip keeps; and the README states the test command CI runs.

Anchors follow GitHub's rule for headings: the rendered heading text, lower-cased, with every
character that is not a letter, digit, space, ``-`` or ``_`` removed and spaces turned into ``-``;
a repeated heading gets ``-1``, ``-2``, ... .
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
EXPLICIT_ANCHOR = re.compile(r"""<a\s+(?:[^>]*\s)?(?:id|name)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
# [text](target) and ![alt](target); the text may hold one level of brackets (an image inside a link)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+[\"'(][^)]*)?\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_TARGET = re.compile(r"""<(?:img|a)\s[^>]*?(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def rendered_heading_text(markdown: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", markdown)  # links and images keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    return text.replace("`", "").replace("*", "")


def github_slug(heading: str) -> str:
    text = rendered_heading_text(heading).strip().lower()
    kept = "".join(
        c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN" or unicodedata.category(c) == "Mn"
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(EXPLICIT_ANCHOR.findall(line))
        m = HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def link_targets(path: Path) -> list[str]:
    targets = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("", line)
        targets += INLINE_LINK.findall(line)
        targets += REFERENCE_DEFINITION.findall(line)
        targets += HTML_TARGET.findall(line)
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in targets]


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """'target: why' for each relative link of ``path`` that does not resolve."""
    problems = []
    for target in link_targets(path):
        if not target or EXTERNAL.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        file_part, fragment = unquote(file_part), unquote(fragment)
        resolved = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{target}: {resolved.name} has no heading or anchor '{fragment}'")
    return problems


def registry_excluded(path: Path) -> bool:
    """Whether .comfyignore (anchored folders only, see test_packaging) leaves ``path`` out of the zip."""
    patterns = [
        line.strip()
        for line in (REPO / ".comfyignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    rel = "/" + path.resolve().relative_to(REPO).as_posix() + ("/" if path.is_dir() else "")
    return any(rel.startswith(p) for p in patterns)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_and_image_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_point_at_files_the_registry_zip_keeps(page):
    """README and docs/ ship in the Registry zip; a link into a folder it leaves out would break there."""
    assert not registry_excluded(page)
    left_out = []
    for target in link_targets(page):
        file_part = unquote(target.partition("#")[0])
        if target and not EXTERNAL.match(target) and file_part:
            resolved = (page.parent / file_part).resolve()
            if resolved.exists() and registry_excluded(resolved):
                left_out.append(target)
    assert left_out == []


def test_the_checker_finds_broken_files_and_anchors_and_accepts_github_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# Backbones: SD 1.x, SD 2.x, SDXL\n\n## What CI runs: `.ci/run`\n\n## Notes\n\n## Notes\n\n"
        '<a id="NodeId"></a>\n\n```\n# not a heading\n```\n',
        encoding="utf-8",
    )
    (tmp_path / "my file.png").write_bytes(b"")
    readme = tmp_path / "README.md"
    good = [
        "docs/page.md#backbones-sd-1x-sd-2x-sdxl",
        "docs/page.md#what-ci-runs-cirun",
        "docs/page.md#notes-1",
        "docs/page.md#NodeId",
        "my%20file.png",
        "docs",
        "#readme-heading",
    ]
    bad = ["docs/missing.md", "docs/page.md#not-a-heading", "docs/page.md#notes-2", "../outside.md"]
    readme.write_text(
        "# README heading\n\n"
        + "\n".join(f"[{i}]({t})" for i, t in enumerate(good + bad))
        + "\n\n`[in code](docs/nowhere.md)`\n\n```\n[in a block](docs/nowhere.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(readme, root=tmp_path)
    assert [p.split(":")[0] for p in problems] == bad


def test_the_readme_states_the_test_command_ci_runs():
    """.ci/run runs exactly the README's test command (the one-line block under 'Running the tests')."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Running the tests\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash)?\n(.*?)\n```", section, re.DOTALL)
    assert block and "\n" not in block.group(1), "the README's 'Running the tests' needs a one-line command"
    command = block.group(1).strip()
    run_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert any(line == command or line.startswith(command + " ||") for line in run_lines), command
