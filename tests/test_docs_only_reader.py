"""A dataset reader written only from docs/writing-a-reader.md: its file and its one registration line are
extracted into a temporary folder and imported; then, with no other edit anywhere, the layout is in the
registry, its fixture is written and read back through the registry with the checks tests/test_datasets.py
runs on every layout, and `iggt data check` detects it by its markers and checks it (in process by name, and
as a fresh command line process, which must not import the test-fixture module to find the reader)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from iggt_lightning.cli import main
from iggt_lightning.data.check import check_dataset
from iggt_lightning.data.fixtures import write_fixture
from iggt_lightning.data.registry import get_layout, layout_names, reader_class, unregister_layout
from tests.guide_helpers import guide_code, imported_guide
from tests.test_datasets import SIZE, assert_augmented_samples_aligned, assert_checks_clean, assert_reads_back

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-a-reader.md"
MODULE, LAYOUT = "iggt_npz_frames", "npz_frames"


@pytest.fixture(scope="module")
def reader_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reader")
    file, line = guide_code(GUIDE, "register_layout", "reader")
    assert LAYOUT not in layout_names()
    try:
        with imported_guide(folder, MODULE, file, line) as module:
            yield module, folder
    finally:
        if LAYOUT in layout_names():
            unregister_layout(LAYOUT)


def test_the_guides_reader_is_registered_written_read_and_checked(reader_module, tmp_path, capsys):
    module, _ = reader_module
    record = get_layout(LAYOUT)
    assert reader_class(LAYOUT) is module.NpzFrameScenes and record.fixture_writer() is module.write_npz_frames_scene
    assert record.poses.convention == "camera-to-world" and not record.cameras_only
    root = tmp_path / "data"
    gt = {s["scene_id"]: s for s in write_fixture(LAYOUT, root, num_scenes=2, num_views=3, image_size=SIZE, seed=5)}
    assert sorted(p.name for p in (root / "scene0001" / "frames").iterdir()) == ["0000.npz", "0001.npz", "0002.npz"]
    assert_reads_back(LAYOUT, root, gt)                     # the checks every registered layout gets
    assert_augmented_samples_aligned(LAYOUT, root, gt)
    assert_checks_clean(LAYOUT, root, capsys)               # detected by its markers, checked by name too

    # and the check finds what is wrong, naming the file: a pose that is no rigid motion, a frame's .npz missing
    bad = root / "scene0000" / "frames" / "0001.npz"
    data = dict(np.load(bad))
    data["cam_to_world"][:3, :3] *= 2.0
    np.savez(bad, **data)
    (root / "scene0001" / "frames" / "0002.npz").unlink()
    problems = check_dataset(root).problems
    assert any(str(bad) in p and "not a proper rotation" in p for p in problems), problems
    assert any("3 frame(s) but 2 file(s) match frames/*.npz" in p for p in problems), problems
    assert main(["data", "check", str(root), "--layout", LAYOUT]) == 1


def test_the_command_line_detects_and_checks_the_guides_layout(reader_module, tmp_path):
    _, folder = reader_module
    root = tmp_path / "data"
    write_fixture(LAYOUT, root, num_scenes=1, num_views=2, image_size=SIZE)
    script = ("import sys, iggt_npz_frames\n"
              "from iggt_lightning.cli import main\n"
              "rc = main(['data', 'check', sys.argv[1]])\n"
              "print('fixtures imported:', 'iggt_lightning.data.fixtures' in sys.modules)\n"
              "sys.exit(rc)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=os.pathsep.join([str(folder), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-c", script, str(root)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"layout {LAYOUT}, 1 scene(s), 2 frame(s)" in proc.stdout and "no problems found" in proc.stdout
    assert "fixtures imported: False" in proc.stdout
