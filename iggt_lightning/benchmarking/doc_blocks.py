"""Benchmark tables live in the docs between an HTML-comment pair; a benchmark script refills its own block.

A block sits in README.md (the main job's) or in the docs page of its benchmark (docs/*.md). The scripts and the
tests find it by its begin marker, so moving a block to another page needs no code change; exactly one file may
hold a marker, so a copy left behind is an error rather than a stale table. Every function takes the repository
root from its caller: the package may be installed far from the checkout whose docs are refilled."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def block_files(root: Path) -> list[Path]:
    """The files a block may live in: README.md and the docs pages."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def holder(begin: str, root: Path) -> Path:
    """The one file among ``block_files`` that holds ``begin``; an error naming the marker otherwise."""
    found = [path for path in block_files(root) if path.is_file() and begin in path.read_text()]
    if len(found) != 1:
        where = ", ".join(str(p.relative_to(root)) for p in found) or "none of README.md, docs/*.md"
        raise SystemExit(f"block {begin}: expected in exactly one of README.md, docs/*.md; found in {where}")
    return found[0]


def text_holding(begin: str, root: Path) -> str:
    """The text of the file that holds the block starting with ``begin`` (what the tests compare against)."""
    return holder(begin, root).read_text()


def fill_block(begin: str, end: str, block: str, root: Path, readme: Path | None = None) -> None:
    """Replace ``begin ... end`` by ``block`` (which starts with ``begin`` and ends with ``end``) in ``readme``, or
    in whichever of ``root``'s README.md and docs/*.md holds ``begin``."""
    path = readme if readme is not None else holder(begin, root)
    text = path.read_text()
    if begin not in text or end not in text.split(begin, 1)[1]:
        raise SystemExit(f"{path}: no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    path.write_text(head + block + rest.split(end, 1)[1])


def fill_block_from_json(begin: str, end: str, render: Callable[[dict], str], json_path: str | Path,
                         root: Path) -> None:
    """``fill_block`` with ``render`` applied to the benchmark JSON at ``json_path`` (the scripts' ``--readme``)."""
    fill_block(begin, end, render(json.loads(Path(json_path).read_text())), root)
