"""The README's benchmark tables live between an HTML-comment pair; a benchmark script refills its own block."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def fill_block(begin: str, end: str, block: str, readme: Path = README) -> None:
    """Replace ``begin ... end`` in ``readme`` by ``block`` (which starts with ``begin`` and ends with ``end``)."""
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{readme}: no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    readme.write_text(head + block + rest.split(end, 1)[1])
