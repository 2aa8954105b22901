"""The docs-only examples' plumbing: a guide's code blocks are one plugin file plus one registration line,
imported from a temporary folder the way a user's own module would be."""
from __future__ import annotations

import ast
import importlib
import re
import sys
from contextlib import contextmanager
from pathlib import Path


def guide_code(guide: Path, register: str, what: str) -> tuple[str, str]:
    """(the plugin file, the registration line) from ``guide``'s python blocks; the line must be one call of
    ``register``."""
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), re.S)
    assert len(blocks) == 2, f"the guide should hold the {what} file and the registration line, nothing else"
    file, line = blocks
    statements = ast.parse(line).body
    assert len(statements) == 1 and isinstance(statements[0].value, ast.Call), "one registration call"
    assert statements[0].value.func.id == register
    return file, line


@contextmanager
def imported_guide(folder: Path, module: str, file: str, line: str):
    """The guide's file and registration line as ``folder/module.py``, imported; removed from sys.path and
    sys.modules afterwards (the caller unregisters what it registered)."""
    (folder / f"{module}.py").write_text(f"{file}\n{line}")
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(module)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(module, None)
