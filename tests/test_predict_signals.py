"""SIGTERM / SIGINT during `iggt predict` (photos): a non-zero exit (143 / 130) with one line saying so, and nothing
left behind (no output folder, no temporary folder, an output being replaced unchanged); a signal that arrives
once the output is in place does not undo the finished run.

One subprocess (imports are the slow part) runs three predictions in turn: ``done``, which signals itself right
after its output is renamed into place; ``held_old``, replacing a copy of ``done`` with --overwrite, held in its
export until the test sends SIGINT; ``held_new``, held the same way until SIGTERM, whose exit ends the process. A
held run waits after writing points.ply into its temporary folder, so the signal's moment is certain."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("trimesh")

DRIVER = r"""
import os, shutil, signal, sys, time
from iggt_lightning.inference import export
from iggt_lightning.cli import main

write_ply, replace = export.write_ply, os.replace

def held(path, *args, **kwargs):
    write_ply(path, *args, **kwargs)
    if ".held" in str(path):                # in .held_*.partial-*: wait here to be signalled
        time.sleep(300)

def replace_then_signal(src, dst, *args, **kwargs):
    replace(src, dst, *args, **kwargs)
    if os.path.basename(str(dst)) == "done":
        os.kill(os.getpid(), signal.SIGTERM)

export.write_ply, os.replace = held, replace_then_signal
where, args = sys.argv[1], sys.argv[2:]
print("done", main(["predict", *args, "-o", os.path.join(where, "done")]), flush=True)
shutil.copytree(os.path.join(where, "done"), os.path.join(where, "held_old"))
try:
    main(["predict", *args, "-o", os.path.join(where, "held_old"), "--overwrite"])
except SystemExit as stop:
    print("held_old", stop.code, flush=True)
main(["predict", *args, "-o", os.path.join(where, "held_new")])
"""


def wait_for(proc: subprocess.Popen, condition, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the driver ended early ({proc.returncode}): {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the driver never reached a held export")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, nano_model):
    """(folder, the driver's exit status, stdout, stderr)."""
    from iggt_lightning.checkpoints import save_model

    root = tmp_path_factory.mktemp("signals")
    save_model(nano_model, root / "nano.safetensors")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (42, 56, 3), dtype=np.uint8)).save(photos / f"view_{i}.png")
    where = root / "runs"
    where.mkdir()
    args = [str(photos), "-c", str(root / "nano.safetensors"), "--size", "56", "42", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(where), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    for name, signum in (("held_old", signal.SIGINT), ("held_new", signal.SIGTERM)):
        wait_for(proc, lambda: any(where.glob(f".{name}.partial-*/points.ply")))   # half-written, in its temp folder
        proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return where, proc.returncode, out, err


def leftovers(where: Path) -> list[str]:
    return sorted(p.name for p in where.iterdir() if p.name.startswith("."))


def files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sigterm_during_export_exits_143_and_leaves_nothing(runs):
    where, status, out, err = runs
    assert status == 143, err
    assert "iggt predict: interrupted by SIGTERM" in err and "Traceback" not in err, err
    assert not (where / "held_new").exists() and leftovers(where) == []


def test_sigint_while_replacing_exits_130_and_leaves_the_previous_output_as_it_was(runs):
    where, _, out, err = runs
    assert "held_old 130" in out.splitlines(), out
    assert sum("interrupted by SIGINT" in line for line in err.splitlines()) == 1, err
    assert files(where / "held_old") == files(where / "done")


def test_a_signal_after_the_output_is_in_place_lets_the_run_finish(runs):
    where, _, out, err = runs
    assert "done 0" in out.splitlines(), out
    assert "SIGTERM arrived after the output" in err, err
    assert (where / "done" / "manifest.json").is_file()
    assert len([line for line in err.splitlines() if "interrupted" in line]) == 2, err   # the two held runs only
