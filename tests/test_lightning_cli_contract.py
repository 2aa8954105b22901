"""What IGGTCLI's overrides of *private* LightningCLI methods rely on; each test fails naming the override when a
Lightning release changes it (the reason setup.cfg caps lightning below the next minor version).

IGGTCLI overrides one: ``_parse_ckpt_path``, where LightningCLI merges a ``--ckpt_path`` file's hyper-parameters into
the config by parsing them (which imports any class path the file names) before any public hook runs. Everything
else IGGTCLI changes goes through public hooks (init_parser, parse_arguments, add_arguments_to_parser,
before_instantiate_classes, instantiate_classes, instantiate_trainer, before_/after_<subcommand>). A new private
override must come with a test here: the first test fails until it does."""
import ast
import inspect
import re
import textwrap

import pytest
from lightning.pytorch.cli import LightningCLI

from iggt_lightning.lightning_cli import IGGTCLI

PINNED = {"_parse_ckpt_path"}       # private LightningCLI methods IGGTCLI overrides, each tested below


def test_only_the_pinned_private_methods_are_overridden():
    private = {n for n in vars(IGGTCLI) if n.startswith("_") and not n.startswith("__") and hasattr(LightningCLI, n)}
    assert private == PINNED, (f"IGGTCLI overrides private LightningCLI method(s) {sorted(private - PINNED)} with no "
                               f"contract test in tests/test_lightning_cli_contract.py (or no longer overrides "
                               f"{sorted(PINNED - private)}: unpin it)")


def _self_calls(fn) -> list[str]:
    """The ``self.<name>(...)`` calls of a function's source, in source order."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "self"]
    return [c.func.attr for c in sorted(calls, key=lambda c: (c.lineno, c.col_offset))]


def test_parse_ckpt_path_is_still_lightnings_one_checkpoint_merge_between_parsing_and_the_hooks():
    name = "IGGTCLI._parse_ckpt_path"
    params = list(inspect.signature(LightningCLI._parse_ckpt_path).parameters)
    assert params == ["self"], f"{name}: LightningCLI._parse_ckpt_path now takes {params}; the override takes (self)"
    calls = _self_calls(LightningCLI.__init__)
    assert calls.count("_parse_ckpt_path") == 1, (
        f"{name}: LightningCLI.__init__ no longer calls _parse_ckpt_path once ({calls}): the override would not run "
        "where Lightning merges a checkpoint's hyper-parameters")
    order = ["parse_arguments", "_parse_ckpt_path", "before_instantiate_classes", "instantiate_classes"]
    assert all(step in calls for step in order) and [calls.index(s) for s in order] == sorted(
        calls.index(s) for s in order), (f"{name}: LightningCLI.__init__ no longer runs {' -> '.join(order)} in that "
                                         f"order ({calls}): the checked merge must follow parsing and precede "
                                         "instantiation")
    # the override replaces the only place LightningCLI reads a checkpoint: another would bypass the check
    reads = re.compile(r"(?<!\w)ckpt_path|torch\.load|hyper_parameters")      # not the call _parse_ckpt_path()
    readers = sorted(n for n, f in vars(LightningCLI).items() if inspect.isfunction(f)
                     and reads.search(inspect.getsource(f)))
    assert readers == ["_parse_ckpt_path"], (f"{name}: LightningCLI methods {readers} now read checkpoints or "
                                             "their path; each must go through the stored-state check")


class _Stop(Exception):
    pass


def test_parse_ckpt_path_sees_the_parsed_subcommand_config_it_edits():
    """The override reads config.subcommand and config[sub].ckpt_path and sets config[sub].model[key] directly;
    Lightning must call it with that config parsed (here stopped right there: nothing is built)."""
    seen = {}

    class Spy(IGGTCLI):
        def _parse_ckpt_path(self):
            sub = self.config.get("subcommand")
            seen.update(sub=sub, ckpt=self.config[sub].get("ckpt_path"))
            model = self.config[sub]["model"]
            model["lr"] = 0.5
            seen["lr"] = self.config[sub].model.lr
            raise _Stop

    with pytest.raises(_Stop):
        Spy(args=["validate", "--config", "synthetic_tiny", "--ckpt_path", "some.ckpt"])
    assert seen == {"sub": "validate", "ckpt": "some.ckpt", "lr": 0.5}, (
        f"IGGTCLI._parse_ckpt_path: LightningCLI calls it with a config it no longer shapes as expected: {seen}")
