"""README.md is a doorway and docs/ the house: every relative link in them leads to a file of this repository (and
to a heading there, when it names one), nothing points outside the repository, and the README stays short."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """The page without code blocks and code spans: a ``[x](y)`` inside code is an example, not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(page: Path) -> list[str]:
    return LINK.findall(_prose(page.read_text()))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    plain = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", plain).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", page.read_text()).splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            slug = anchor(m.group(1))
            # a repeated heading gets -1, -2, ... as on GitHub
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def _is_external(target: str) -> bool:
    return re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) is not None     # https:, mailto:, ...


def test_the_anchor_rule_matches_github():
    assert anchor("Evaluation protocols: the paper's tables as configs") == \
        "evaluation-protocols-the-papers-tables-as-configs"
    assert anchor("What `iggt data check` then does") == "what-iggt-data-check-then-does"
    assert anchor("Official checkpoints: what is mapped, what is dropped") == \
        "official-checkpoints-what-is-mapped-what-is-dropped"


def test_the_link_finder_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("see [a](a.md#x) and ![img](../b.png)\n`[not](code.md)`\n```\n[no](fence.md)\n```\n")
    assert links(page) == ["a.md#x", "../b.png"]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if _is_external(target):
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_relative_to(ROOT):
            broken.append(f"{target}: leads outside the repository")
        elif not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_no_page_points_outside_the_repository(page):
    text = page.read_text()
    outside = [m.group(0) for m in re.finditer(r"\.\./shared\b|(?<![\w.])/work/\S*|file://\S*", text)]
    assert not outside, f"{page.relative_to(ROOT)} points outside the repository: {outside}"


def test_the_readme_is_a_doorway():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"
    linked = {Path(t.partition("#")[0]).name for t in links(ROOT / "README.md") if t.startswith("docs/")}
    missing = sorted(p.name for p in PAGES[1:] if p.name not in linked)
    assert not missing, f"README.md's docs table does not link {missing}"
