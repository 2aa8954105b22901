"""An exporter written only from docs/writing-an-exporter.md: its file and its one registration line are
extracted into a temporary folder and imported; then, with no other edit anywhere, `iggt predict` on the tiny
test photos and checkpoint writes its file, `--dry-run` and the manifest list it, its option is typed, and a
misspelt or wrong-typed option of it is one clear error before anything is written."""
import json
from pathlib import Path

import numpy as np
import pytest

from iggt_lightning.exporters import available_exporters, unregister_exporter
from tests.guide_helpers import guide_code, imported_guide
from tests.test_predict import assets, predict  # noqa: F401  (the tiny checkpoint + synthetic photos fixture)

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-an-exporter.md"
MODULE, NAME = "iggt_xyz_exporter", "xyz"


@pytest.fixture(scope="module")
def exporter_module(tmp_path_factory):
    file, line = guide_code(GUIDE, "register_exporter", "exporter")
    assert NAME not in available_exporters()
    try:
        with imported_guide(tmp_path_factory.mktemp("exporter"), MODULE, file, line) as module:
            yield module
    finally:
        unregister_exporter(NAME)


def test_the_guides_exporter_writes_its_file_listed_by_dry_run_and_manifest(exporter_module, assets, tmp_path,
                                                                              capsys):
    assert available_exporters()[NAME] is exporter_module.XyzCloud
    out = tmp_path / "out"
    capsys.readouterr()
    assert predict(assets, out, "--dry-run", "--export-option", "xyz_precision=3") == 0
    planned = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "points.xyz" in planned and "points.ply" in planned, planned
    assert not out.exists()

    assert predict(assets, out, "--export-option", "xyz_precision=3") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "points.xyz" in manifest["files"] and NAME in manifest["exporters"]
    lines = (out / "points.xyz").read_text().splitlines()
    assert len(lines) == manifest["points"] == manifest["xyz_points"] > 0
    fields = [line.split() for line in lines]
    assert all(len(f) == 6 and len(f[0].partition(".")[2]) == 3 for f in fields)   # the option was applied
    xyz = np.array([[float(v) for v in f[:3]] for f in fields])
    rgb = np.array([[int(v) for v in f[3:]] for f in fields])
    assert np.isfinite(xyz).all() and rgb.min() >= 0 and rgb.max() <= 255


@pytest.mark.parametrize("option, expected", [
    ("xyz_precison=3", "export option 'xyz_precison' is unknown (did you mean xyz_precision?)"),
    ("xyz_precision=3.5", "export option xyz_precision: expected an integer in [0, 12]; got '3.5'"),
    ("xyz_precision=13", "export option xyz_precision: expected an integer in [0, 12]; got '13'"),
])
def test_a_misspelt_or_wrong_option_of_it_is_one_clear_error(exporter_module, assets, tmp_path, capsys, option,
                                                              expected):
    out = tmp_path / "out"
    capsys.readouterr()
    assert predict(assets, out, "--export-option", option) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
