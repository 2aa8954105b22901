"""The ``iggt`` command.

Helper subcommands: ``iggt convert SRC DST``, ``iggt parity FIXTURE [--fp64] [--strict]`` and
``iggt heads list``. Training subcommands (fit/validate/test/predict) are LightningCLI's, served by
``iggt_lightning.lightning_cli`` when that module is present.
"""
from __future__ import annotations

import argparse
import sys

HELPERS = ("convert", "parity", "heads")


def _convert(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="iggt convert", description="Convert an official IGGT/VGGT checkpoint "
                                "(.pt/.pth/.safetensors) to iggt-lightning's format (strict key accounting).")
    p.add_argument("src")
    p.add_argument("dst", help="output path; .safetensors or .pt")
    p.add_argument("--preset", default=None, help="model preset (default: detected from the keys)")
    a = p.parse_args(argv)
    from .checkpoints import CheckpointError, convert

    try:
        model = convert(a.src, a.dst, a.preset)
    except (CheckpointError, FileNotFoundError) as err:
        print(f"iggt convert: {err}", file=sys.stderr)
        return 2
    n = sum(t.numel() for t in model.state_dict().values())
    print(f"wrote {a.dst} ({n:,} values, heads: {', '.join(model.head_order)})")
    return 0


def _parity(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="iggt parity", description="Compare this framework's forward with a "
                                "fixture made from the official IGGT forward (see shared/reference/PARITY.md).")
    p.add_argument("fixture")
    p.add_argument("--fp64", action="store_true", help="run in float64 and compare track/vis/conf/pose_enc "
                   "with the fixture's float64 reference")
    p.add_argument("--strict", action="store_true", help="hold well-conditioned tensors to 2e-5 instead of 1e-4")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    import torch

    from . import parity

    if a.threads:
        torch.set_num_threads(a.threads)
    fx = parity.load_fixture(a.fixture)
    print(fx.get("description", a.fixture))
    rows = parity.run_parity(fx, fp64=a.fp64, strict=a.strict)
    print(parity.format_rows(rows))
    failed = [r.name for r in rows if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    print(f"worst well-conditioned max|d|/max|ref|: {parity.worst_well_conditioned(rows):.3e}")
    return 1 if failed else 0


def _heads(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="iggt heads", description="List the registered plugin heads.")
    p.add_argument("action", choices=["list"])
    p.parse_args(argv)
    from .registry import available_heads, head_source

    rows = [("name", "source", "requires", "outputs", "loss terms", "trains")]
    for name, cls in available_heads().items():
        rows.append((name, head_source(name), ",".join(getattr(cls, "requires", ())) or "-",
                     ",".join(getattr(cls, "outputs", ())), ",".join(getattr(cls, "loss_terms", ())) or "-",
                     "yes" if getattr(cls, "trainable", True) else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in HELPERS:
        return {"convert": _convert, "parity": _parity, "heads": _heads}[argv[0]](argv[1:])
    import importlib.util

    has_training = importlib.util.find_spec("iggt_lightning.lightning_cli") is not None
    training = ("fit", "validate", "test", "predict") if has_training else ()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nsubcommands: " + ", ".join(HELPERS + training))
        return 0
    if argv[0] not in training:
        print(f"iggt: unknown subcommand {argv[0]!r}; expected one of {', '.join(HELPERS + training)}",
              file=sys.stderr)
        return 2
    import os

    from .lightning_cli import run_lightning_cli

    try:
        run_lightning_cli(argv)
    except ValueError as err:  # configuration and data errors: the message names the field; no traceback
        if os.environ.get("IGGT_DEBUG"):
            raise
        print(f"iggt {argv[0]}: error: {err}\n(set IGGT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
