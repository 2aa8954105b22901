"""The built-in plugins: the repository's ``heads/`` (one head per file, the post-processors under
``postprocessors/``), installed as ``iggt_lightning.heads``. Importing them registers them.

The package hands :func:`import_builtins` to the registry when it is imported (``iggt_lightning/__init__.py``)
and the registry runs it on its first lookup: the plugins import the registry for their decorators, so the
registry importing them back would be a circle, and importing them here at once would load every head (and
torchmetrics) for commands that never look one up."""
from .registry import add_plugin_loader


def import_builtins() -> None:
    # Only ever by the package's name: a bare ``heads`` would be whichever ``heads`` comes first on sys.path (the
    # current folder's, with ``python -m``). In a clone with no install, registry.py's import hook finds it.
    from . import heads  # noqa: F401


add_plugin_loader(import_builtins)
