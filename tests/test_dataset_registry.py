"""The dataset registry (iggt_lightning.data.registry): the built-ins, detection by priority, the command line's
--layout choices, and register_layout's refusals (one line naming the layout, the field and what was expected)."""
import pytest

from iggt_lightning.cli import main
from iggt_lightning.data import DatasetError, RE10KScenes
from iggt_lightning.data.check import detect_layout
from iggt_lightning.data.fixtures import write_fixture
from iggt_lightning.data.multiview import MultiViewScenes
from iggt_lightning.data.registry import (CAMERAS_ONLY, detection_order, get_layout, layout_names, layouts,
                                          register_layout, unregister_layout)

BUILTINS = ("scannetpp", "infinigen", "re10k", "scannet", "scene_folder", "co3d", "pose_list")


def test_builtins_resolve_and_detect_most_specific_first():
    assert layout_names()[:len(BUILTINS)] == BUILTINS
    for record in layouts():
        assert issubclass(record.reader_class(), MultiViewScenes) and callable(record.fixture_writer())
    assert {r.name for r in layouts() if r.cameras_only} >= {"co3d", "pose_list"}
    assert get_layout("co3d").holds == CAMERAS_ONLY and "depth" not in get_layout("re10k").holds
    # the order detection used before the registry, the cameras-only layouts before the catch-all scene folder
    order = [r.name for r in detection_order() if r.name in BUILTINS]
    assert order == ["scannetpp", "infinigen", "scannet", "re10k", "co3d", "pose_list", "scene_folder"]


def test_a_higher_priority_wins_detection(tmp_path):
    for sub in ("rgb", "cam"):
        (tmp_path / "clip" / sub).mkdir(parents=True)
    assert detect_layout(tmp_path) == "re10k"
    register_layout("rgb_first", RE10KScenes, markers=("*/rgb",), writer=print, priority=100)
    try:
        assert detect_layout(tmp_path) == "rgb_first"
        unregister_layout("rgb_first")
        register_layout("rgb_first", RE10KScenes, markers=("*/rgb",), writer=print)     # default priority 0: last
        assert detect_layout(tmp_path) == "re10k"
    finally:
        unregister_layout("rgb_first")
    (tmp_path / "clip" / "cam").rmdir()
    with pytest.raises(DatasetError, match=r"no known dataset layout found .*re10k: \*/rgb \+ \*/cam;.*co3d: "
                                           r"annotations/\*\.jgz"):
        detect_layout(tmp_path)


def test_the_command_line_offers_every_registered_layout(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["data", "check", str(tmp_path), "--layout", "nope"])
    err = capsys.readouterr().err
    assert "invalid choice" in err and "nope" in err and all(name in err for name in ("auto", *layout_names()))
    with pytest.raises(ValueError, match="unknown dataset layout 'nope'; registered: scannetpp, infinigen"):
        write_fixture("nope", tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"name": "Bad-Name"}, r"register_layout\('Bad-Name'\): the name is 'Bad-Name'; expected lower-case"),
    ({"name": "auto"}, r"the name is 'auto'"),
    ({"reader": dict}, r"reader is <class 'dict'>; expected a subclass of .*MultiViewScenes"),
    ({"reader": "os.path:join"}, r"reader is 'os.path:join'; expected the class itself"),
    ({"writer": "not callable"}, r"writer is 'not callable'; expected a function writer\(root, scene_name, arrays\)"),
    ({"markers": ()}, r"markers is \(\); expected a non-empty tuple"),
    ({"markers": ("../elsewhere/*",)}, r"a marker is '../elsewhere/\*'; expected a glob relative to the dataset"),
    ({"markers": (("*/rgb", "/abs"),)}, r"a marker is '/abs'"),
    ({"poses": ("pose/*.txt", "c2w")}, r"poses is PoseFiles\(where='pose/\*.txt', convention='c2w'\); expected"),
    ({"holds": {"depth"}}, r"holds is \['depth'\]; expected a subset of .* with 'images' and 'cameras'"),
    ({"name": "scannet"}, r"register_layout\('scannet'\): a layout of that name is registered already"),
])
def test_register_layout_refuses_bad_records_in_one_line(change, message):
    args = {"name": "fresh", "reader": RE10KScenes, "markers": ("*/rgb",), "writer": print, **change}
    before = layout_names()
    with pytest.raises(ValueError, match=message) as info:
        register_layout(args.pop("name"), args.pop("reader"), **args)
    assert "\n" not in str(info.value) and layout_names() == before


def test_registering_the_same_record_again_changes_nothing():
    r = get_layout("re10k")
    again = register_layout(r.name, r.reader, markers=r.markers, writer=r.writer, priority=r.priority, poses=r.poses,
                            holds=r.holds, shared_intrinsics=r.shared_intrinsics)
    assert again == r and layout_names()[:len(BUILTINS)] == BUILTINS
