"""The README's benchmark tables live between an HTML-comment pair; a benchmark script refills its own block."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

README = Path(__file__).resolve().parents[1] / "README.md"


def fill_block(begin: str, end: str, block: str, readme: Path = README) -> None:
    """Replace ``begin ... end`` in ``readme`` by ``block`` (which starts with ``begin`` and ends with ``end``)."""
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{readme}: no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    readme.write_text(head + block + rest.split(end, 1)[1])


def fill_block_from_json(begin: str, end: str, render: Callable[[dict], str], json_path: str | Path) -> None:
    """``fill_block`` with ``render`` applied to the benchmark JSON at ``json_path`` (the scripts' ``--readme``)."""
    fill_block(begin, end, render(json.loads(Path(json_path).read_text())))
