"""Packaging without building a wheel (.ci/run's wheel job builds and installs one): setup.cfg installs every
package under the one top-level name iggt_lightning, the built-in plugins are imported only as
iggt_lightning.heads (never a bare `heads` from sys.path or the current folder), and configs resolve by name."""
import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iggt_lightning import config_files, registry
from iggt_lightning.cli import main
from iggt_lightning.config_files import ConfigNameError, packaged_configs, resolve_config

ROOT = Path(__file__).resolve().parents[1]
MARKER = "import pathlib; pathlib.Path(__file__).with_name('IMPORTED').touch()\n"


def _options() -> configparser.SectionProxy:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return cfg["options"]


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.strip().splitlines() if line.strip()]


def test_setup_cfg_installs_every_package_under_iggt_lightning():
    opts = _options()
    packages = set(_lines(opts["packages"]))
    mapping = dict(line.replace(" ", "").split("=") for line in _lines(opts["package_dir"]))
    assert mapping == {"iggt_lightning.heads": "heads", "iggt_lightning.configs": "configs"}
    on_disk = set()
    for top, name in (("iggt_lightning", "iggt_lightning"), ("heads", "iggt_lightning.heads")):
        for init in (ROOT / top).rglob("__init__.py"):
            on_disk.add(".".join([name, *init.parent.relative_to(ROOT / top).parts]))
    # every folder with an __init__.py is installed, and under iggt_lightning only
    assert packages - {"iggt_lightning.configs"} == on_disk
    assert all(p == "iggt_lightning" or p.startswith("iggt_lightning.") for p in packages)
    # a real iggt_lightning/heads folder would clash with the mapping in the wheel
    assert not (ROOT / "iggt_lightning" / "heads").exists()
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    assert cfg["options.package_data"]["iggt_lightning.configs"].strip() == "**/*.yaml"


def test_builtins_registered_under_the_package_name_and_old_names_still_resolve():
    heads = registry.available_heads()
    assert heads["depth"].__module__ == "iggt_lightning.heads.depth"
    assert "heads" not in sys.modules      # nothing imported a bare `heads`
    # configs and checkpoints written before the move name the classes heads.x.Class: same class, nothing imported
    assert registry.registered_head("heads.depth.DepthHead") is heads["depth"]
    assert registry.POSTPROCESSORS.registered("heads.postprocessors.tracking.InstanceTracking") \
        is registry.available_postprocessors()["tracking"]
    assert "heads" not in sys.modules


def _hostile(folder: Path) -> Path:
    """A folder holding a `heads.py` and a `heads/` package that leave a marker file when imported."""
    (folder / "heads").mkdir(parents=True)
    (folder / "heads.py").write_text(MARKER)
    (folder / "heads" / "__init__.py").write_text(MARKER)
    return folder


def _markers(folder: Path) -> list[Path]:
    return [p for p in (folder / "IMPORTED", folder / "heads" / "IMPORTED") if p.exists()]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    return env


def test_heads_list_in_a_folder_with_a_hostile_heads_package(tmp_path):
    """`python -m` puts the current folder first on sys.path; its heads.py / heads/ must never be imported."""
    cwd = _hostile(tmp_path / "work")
    env = _env(PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "iggt_lightning", "heads", "list"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not _markers(cwd)
    rows = {line.split()[0]: line.split()[2] for line in proc.stdout.splitlines()[1:] if line.strip()}
    for name in ("camera", "depth", "point", "instance", "track"):
        assert rows[name] == f"iggt_lightning.heads.{name}", proc.stdout
    assert rows["tracking"] == "iggt_lightning.heads.postprocessors.tracking"


def test_clone_without_any_install_imports_its_own_heads(tmp_path):
    """A clone on sys.path with no install mapping iggt_lightning.heads (the editable finder removed): the
    registry's import hook finds the clone's heads/, from a hostile current folder too."""
    cwd = _hostile(tmp_path / "work")
    script = ("import sys\n"
              "sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in getattr(f, '__name__', '')]\n"
              f"sys.path[:0] = ['', {str(ROOT)!r}]\n"
              "from iggt_lightning.heads.postprocessors.tracking import InstanceTracking\n"
              "import iggt_lightning.heads as h\n"
              "print(h.__file__)\n"
              "print('bare heads imported:', 'heads' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(ROOT / "heads" / "__init__.py"), "bare heads imported: False"]
    assert not _markers(cwd)


def test_config_names_resolve_to_the_packaged_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = packaged_configs()
    assert {"synthetic_tiny", "iggt_large", "eval/scannet_table1", "strategies/ddp"} <= set(names)
    assert resolve_config("synthetic_tiny") == str(ROOT / "configs" / "synthetic_tiny.yaml")
    assert resolve_config("eval/scannet_table1") == str(ROOT / "configs" / "eval" / "scannet_table1.yaml")
    # a path that exists is that path, even where it is also a name
    (tmp_path / "synthetic_tiny").write_text("trainer: {max_steps: 1}\n")
    assert resolve_config("synthetic_tiny") == "synthetic_tiny"
    assert resolve_config(str(ROOT / "configs" / "iggt_large.yaml")) == str(ROOT / "configs" / "iggt_large.yaml")
    # config text is jsonargparse's business
    assert resolve_config("{trainer: {max_steps: 3}}") == "{trainer: {max_steps: 3}}"


def test_unknown_config_name_lists_the_packaged_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigNameError) as err:
        resolve_config("eval/nope")
    assert "--config eval/nope: not a file, nor the name of a packaged config" in str(err.value)
    assert "synthetic_tiny" in str(err.value) and "eval/scannet_table1" in str(err.value)
    with pytest.raises(ConfigNameError, match=r"without folder and \.yaml: synthetic_tiny\)"):
        resolve_config("configs/synthetic_tiny.yaml")   # no configs/ here
    # through the CLI: one line, exit 2, no traceback
    assert main(["fit", "--config", "nope"]) == 2
    err_out = capsys.readouterr().err
    assert err_out.startswith("iggt fit: error: --config nope: not a file") and "Traceback" not in err_out
    assert "packaged configs: " in err_out and "strategies/ddp" in err_out


def _print_config(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main(["fit", *args, "--print_config"])
    assert done.value.code in (0, None)
    return capsys.readouterr().out


def test_fit_takes_config_names_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = _print_config(["--config", "synthetic_tiny", "--config", "strategies/ddp"], capsys)
    assert "preset: mini" in out and "strategy: ddp" in out and "max_steps: 520" in out


def test_relative_references_inside_a_config_resolved_by_name(tmp_path, monkeypatch, capsys):
    """A packaged config that names other files by relative path reads them beside itself, not in the cwd."""
    folder = tmp_path / "configs"
    (folder / "sub").mkdir(parents=True)
    (folder / "main.yaml").write_text("config: sub/steps.yaml\ndata: sub/data.yaml\n")
    (folder / "sub" / "steps.yaml").write_text("trainer:\n  max_steps: 7\n")
    (folder / "sub" / "data.yaml").write_text("class_path: iggt_lightning.data.SyntheticDataModule\n"
                                              "init_args:\n  num_train: 11\n")
    monkeypatch.setattr(config_files, "packaged_configs_dir", lambda: folder)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    out = _print_config(["--config", "main"], capsys)
    assert "max_steps: 7" in out and "num_train: 11" in out
