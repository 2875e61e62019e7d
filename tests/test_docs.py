"""The README is read in one sitting and leads to every reference page; no link in the docs is broken."""

import re
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def headings(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings (those outside code blocks)."""
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"#{1,6} (.+)", line)):
            anchors.add(re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-"))
    return anchors


def local_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_local_link_reaches_a_file_and_its_heading(page):
    for target in local_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in headings(resolved), f"{page.name}: no heading #{anchor} in {resolved.name}"


def test_the_readme_is_one_sitting_and_links_every_reference_page():
    readme = ROOT / "README.md"
    assert len(readme.read_bytes()) < 15_000
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in local_links(readme)}
    pages = {page.resolve() for page in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, sorted(p.name for p in pages - linked)
