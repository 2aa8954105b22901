"""A checkpoint written by ``iggt fit`` is data in every field: a property test, not a list of cases.

Every field path of a real ``last.ckpt`` (hyper-parameters, model config, loop and callback state, optimizer and
scheduler state, RNG and logger state; one concrete path per schema path, list items and per-parameter entries
collapsed) gets four injections: a code payload, a path escape, an oversized value and a wrong type. The file then
goes through what ``iggt fit/test --ckpt_path`` does with it before Lightning restores anything
(:func:`~iggt_lightning.lightning_cli.stored_state_check`, :func:`~iggt_lightning.lightning_cli.module_arguments`,
the module built from those arguments, the ModelCheckpoint paths re-rooted). The property: no injected code runs
(marker file), and each injection is refused with one line naming the file and the field, except a path escape
in a path field, which must be neutralised (re-rooted or dropped). A few injections run through the real CLI to
show it takes exactly this route.
"""
from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path

import pytest
import torch

from iggt_lightning.checkpoints import CheckpointError, check_stored_config, size_check_stored_config
from iggt_lightning.lightning_cli import module_arguments, stored_state_check
from iggt_lightning.module import IGGTLitModule
from iggt_lightning.stored_state import MAX_DEPTH, MAX_STRING, reroot_checkpoint_paths
from tests.test_cli_training import run_iggt

ROOT = Path(__file__).resolve().parents[1]
FILE = "evil.ckpt"

CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_steps: 2
  num_sanity_val_steps: 0
  limit_val_batches: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: run
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {save_dir: run, name: tensorboard}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, save_top_k: 0, every_n_train_steps: 1}
model:
  preset: nano
  drop_heads: [track]
  backbone_lr: 1.0e-4
  freeze: [heads.camera.trunk]
  loss_weights: {camera: 1.0, depth: 1.0}
  loss_options:
    contrastive: {num_samples: 64, lambda_pull: 0.5}
  metric_options:
    depth: {clip_range: [0.1, 100.0]}
  postprocess:
    tracking: {ignore_ids: [100]}
data:
  class_path: iggt_lightning.data.SyntheticDataModule
  init_args: {num_train: 4, num_val: 2, num_test: 2, num_views: 2, image_size: [56, 56], batch_size: 2,
              num_workers: 0}
"""

# fields whose value is a path: a path escape there must be neutralised, not necessarily refused
PATH_FIELDS = re.compile(r"^(callbacks\.ModelCheckpoint[^.]*\.(best_model_path|kth_best_model_path|last_model_path|"
                         r"dirpath)|hyper_parameters\.init_checkpoint)$")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A real run: ``iggt fit`` from an empty folder, its last.ckpt loaded."""
    folder = tmp_path_factory.mktemp("fit")
    (folder / "fit.yaml").write_text(CONFIG)
    done = run_iggt(["fit", "--config", "fit.yaml"], cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    path = folder / "run" / "checkpoints" / "last.ckpt"
    return folder, path, torch.load(path, map_location="cpu", weights_only=True)


def _collapse(path: tuple) -> tuple:
    """The schema path of a concrete one: list items, per-parameter optimizer state, weights and RNG words
    collapsed to ``*`` (one rule covers them all)."""
    out = []
    for i, key in enumerate(path):
        parent = path[i - 1] if i else None
        if isinstance(key, int) or parent in ("state_dict", "state", "best_k_models"):
            out.append("*")
        else:
            out.append(key)
    return tuple(out)


def field_paths(ckpt: dict) -> list[tuple]:
    """One concrete path per schema path: every mapping, list and leaf below the top level."""
    seen, paths = set(), []

    def walk(value, path):
        if path:
            key = _collapse(path)
            if key in seen:
                return
            seen.add(key)
            paths.append(path)
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*path, k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, (*path, i))
    walk(ckpt, ())
    return paths


def dotted(path: tuple) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


def _set(ckpt: dict, path: tuple, value) -> dict:
    ckpt = copy.copy(ckpt)
    node, parents = ckpt, []
    for key in path[:-1]:
        child = node[key]
        child = list(child) if isinstance(child, tuple) else copy.copy(child)
        parents.append((node, key, child))
        node = child
    node[path[-1]] = value
    # put rebuilt children back (tuples stay tuples)
    for parent, key, child in reversed(parents):
        original = parent[key]
        parent[key] = tuple(child) if isinstance(original, tuple) else child
    return ckpt


def payloads(original, marker: Path) -> dict[str, object]:
    code = {"class_path": "subprocess.Popen", "init_args": {"args": f"touch {marker}", "shell": True}}
    deep: object = 1
    for _ in range(MAX_DEPTH + 8):
        deep = [deep]
    wrong = {dict: "not a mapping", list: 7, tuple: 7, str: 12345, bool: "true", int: [1], float: "0.5",
             type(None): b"bytes"}.get(type(original), "a string, not a tensor")
    return {
        "code": code,
        "code-string": f"{{class_path: subprocess.Popen, init_args: {{args: 'touch {marker}', shell: true}}}}",
        "escape": "../../../../escaped",
        "oversized": deep if isinstance(original, (dict, list, tuple)) else "x" * (MAX_STRING + 1),
        "wrong-type": wrong,
    }


def load_like_the_cli(ckpt: dict, run_dir: Path) -> dict:
    """What the CLI does with a ``--ckpt_path`` file before Lightning restores it (see the module docstring);
    -> the state Lightning would restore."""
    stored_state_check()(ckpt, FILE)
    # `iggt predict -c FILE` / load_model build the network from the stored model config
    config = check_stored_config(ckpt["iggt_model_config"], FILE)
    size_check_stored_config(config, {k[len("model."):]: v for k, v in ckpt["state_dict"].items()}, FILE)
    args = module_arguments(ckpt, FILE)
    try:
        IGGTLitModule(**args)
    except (ValueError, TypeError) as err:   # as IGGTCLI.instantiate_classes reports it
        raise CheckpointError(f"--ckpt_path {FILE}: its hyper-parameters do not build the module: {err}") from err
    ckpt = {**ckpt, "callbacks": copy.deepcopy(ckpt["callbacks"])}
    key = next(k for k in ckpt["callbacks"] if k.startswith("ModelCheckpoint"))
    reroot_checkpoint_paths(ckpt, {key: str(run_dir / "checkpoints")})
    return ckpt


def _names_field(message: str, path: tuple) -> bool:
    """The message names the field: its dotted path, or (for an owner's check of an option) its last name."""
    names = [k for k in path if isinstance(k, str)]
    return dotted(path) in message or (names and names[-1] in message)


def test_every_field_path_of_a_real_checkpoint_is_checked(written, tmp_path):
    folder, path, ckpt = written
    load_like_the_cli(copy.deepcopy(ckpt), folder / "run")      # the genuine file passes
    marker = tmp_path / "PWNED"
    paths = field_paths(ckpt)
    sections = {p[0] for p in paths}
    assert {"hyper_parameters", "iggt_model_config", "loops", "callbacks", "optimizer_states", "lr_schedulers",
            "iggt_resume", "state_dict", "epoch", "global_step"} <= sections
    failures, refused, neutralised = [], 0, 0
    for p in paths:
        original = ckpt
        for k in p:
            original = original[k]
        for kind, value in payloads(original, marker).items():
            bad = _set(ckpt, p, value)
            try:
                restored = load_like_the_cli(bad, folder / "run")
            except (CheckpointError, ValueError) as err:
                message = str(err)
                if "\n" in message or FILE not in message or not _names_field(message, p):
                    failures.append(f"{dotted(p)} <- {kind}: unclear message {message[:200]!r}")
                refused += 1
                continue
            except Exception as err:  # noqa: BLE001 (any other exception is a traceback for the user)
                failures.append(f"{dotted(p)} <- {kind}: {type(err).__name__}: {str(err)[:200]}")
                continue
            if kind == "escape" and PATH_FIELDS.match(dotted(p)):
                if dotted(p) != "hyper_parameters.init_checkpoint":     # module_arguments drops that one
                    state = restored
                    for k in p:
                        state = state[k]
                    assert state in ("", None), f"{dotted(p)} kept {state!r}"
                neutralised += 1
                continue
            failures.append(f"{dotted(p)} <- {kind}: accepted")
    assert not marker.exists(), "an injected command ran"
    assert not failures, f"{len(failures)} of {len(paths) * 5} injections:\n" + "\n".join(failures[:40])
    print(f"\n{len(paths)} field paths x 5 injections: {refused} refused, {neutralised} path escapes neutralised")
    assert len(paths) > 150


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if "run" not in p.relative_to(folder).parts[:1]}


def _workplace(tmp_path: Path, steps: int) -> Path:
    """A user's folder: the run's config (``steps`` steps) and a Documents folder nothing may touch."""
    work = tmp_path / "work"
    (work / "Documents").mkdir(parents=True)
    (work / "Documents" / "thesis.txt").write_text("four years")
    (work / "fit.yaml").write_text(CONFIG.replace("max_steps: 2", f"max_steps: {steps}"))
    return work


@pytest.mark.parametrize("field, value, command", [
    # the red team's exec: a class_path in an Any-typed option, under test and fit
    (("hyper_parameters", "metric_options"), {"depth": {"clip_range": {
        "class_path": "subprocess.Popen", "init_args": {"args": "touch PWNED", "shell": True}}}}, "test"),
    (("hyper_parameters", "loss_options", "contrastive", "num_samples"),
     "{class_path: subprocess.Popen, init_args: {args: 'touch PWNED', shell: true}}", "fit"),
    # a regex that takes forever on a parameter name
    (("hyper_parameters", "freeze"), ["^([a-z_.0-9]+)+X$"], "fit"),
    # a logger version used as a folder name
    (("iggt_resume", "loggers", 0, "version"), "../../outside", "fit"),
    # Lightning's loop state, read by Lightning itself
    (("loops", "fit_loop", "epoch_loop.batch_progress", "total", "ready"), "12", "fit"),
])
def test_the_cli_refuses_through_the_same_check(written, tmp_path, field, value, command):
    folder, path, ckpt = written
    work = _workplace(tmp_path, steps=3)
    torch.save(_set(ckpt, field, value), work / FILE)
    before = _tree(work)
    args = ["--trainer.logger", "false"] if command == "test" else []
    done = run_iggt([command, "--config", "fit.yaml", "--ckpt_path", FILE, *args], cwd=work, timeout=120)
    assert done.returncode != 0
    lines = [ln for ln in done.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1 and FILE in lines[0] and str(field[-1]) in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (work / "PWNED").exists() and not (tmp_path / "outside").exists()
    assert _tree(work) == before


def test_a_stored_last_model_path_outside_the_run_deletes_nothing(written, tmp_path):
    """The red team's recursive delete: a genuine last.ckpt whose ModelCheckpoint state points at ../Documents."""
    folder, path, ckpt = written
    work = _workplace(tmp_path, steps=4)
    key = next(k for k in ckpt["callbacks"] if k.startswith("ModelCheckpoint"))
    bad = copy.deepcopy(ckpt)
    bad["callbacks"][key]["last_model_path"] = "run/checkpoints/../../Documents"
    bad["callbacks"][key]["best_k_models"] = {"run/checkpoints/../../Documents/thesis.txt": torch.tensor(0.0)}
    torch.save(bad, work / FILE)
    done = run_iggt(["fit", "--config", "fit.yaml", "--ckpt_path", FILE], cwd=work, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (work / "Documents" / "thesis.txt").read_text() == "four years"
    resumed = torch.load(work / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 4
    assert (work / resumed["callbacks"][key]["last_model_path"]).resolve() == (work / "run/checkpoints/last.ckpt").resolve()


def test_the_safe_remover_deletes_only_checkpoint_files_in_the_run(tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from iggt_lightning.lightning_cli import SafeCheckpointIO

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "old.ckpt").write_bytes(b"x")
    (ckpts / "sub").mkdir()
    (tmp_path / "keep.txt").write_text("mine")
    (ckpts / "link.ckpt").symlink_to(tmp_path / "keep.txt")
    io = SafeCheckpointIO(trainer=SimpleNamespace(callbacks=[ModelCheckpoint(dirpath=str(ckpts))]))
    for victim in (ckpts / "sub", ckpts / "link.ckpt", tmp_path / "keep.txt", ckpts / ".." / ".." / "keep.txt"):
        with pytest.warns(UserWarning, match="not removing"):
            io.remove_checkpoint(str(victim))
    assert (ckpts / "sub").is_dir() and (tmp_path / "keep.txt").read_text() == "mine"
    io.remove_checkpoint(str(ckpts / "old.ckpt"))
    assert not (ckpts / "old.ckpt").exists()
