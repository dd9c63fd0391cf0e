"""README's links into BENCHMARKS.md and the docs land on a heading that exists, its Benchmarks section fits one
screen, and every figure there and in the "What it does for you" table links to where it was measured."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
LINK = re.compile(r"\]\(((?:BENCHMARKS\.md|docs/[\w/.-]+\.md)(?:#[\w-]+)?)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_every_link_into_the_benchmarks_and_docs_lands_on_a_heading():
    links = LINK.findall(README)
    assert len(links) >= 20
    for link in links:
        file, _, anchor = link.partition("#")
        assert (ROOT / file).is_file(), link
        if anchor:
            assert anchor in anchors(ROOT / file), f"{link}: no such heading"


def test_the_benchmarks_section_fits_one_screen_and_each_bullet_links_its_source():
    text = section("Benchmarks")
    assert len(text.strip().splitlines()) <= 30
    bullets = [b for b in text.split("\n- ")[1:]]
    assert bullets and all("](BENCHMARKS.md#" in b for b in bullets)


def test_each_row_of_the_what_it_does_table_with_a_figure_links_where_it_was_measured():
    rows = [line for line in section("What it does for you").splitlines() if line.startswith("| `")]
    assert len(rows) >= 8
    for row in rows:
        effect = row.split(" | ")[2]
        if re.search(r"\d\.\d", effect):
            assert LINK.search(effect), row
