"""`iggt data check` on a cameras.json with a wrong-typed field: one problem line naming the file, the view and the
field, and what was expected; never a traceback. Every field path of a cameras.json written by the fixture writer
is walked (the file itself, pixel_center, views, each view, each of its fields, each row and entry of its
matrices), and at each one in turn a value of the wrong kind is put: a string, an object, a list, a number, a
matrix of another shape, null, NaN, Infinity, or the field is removed."""
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest

from iggt_lightning.data.check import check_dataset
from iggt_lightning.data.fixtures import write_fixture

SIZE = (28, 42)
OPTIONAL = ("pixel_center", "width", "height")        # may be left out (or null, for width and height)


def write_base(root: Path) -> Path:
    write_fixture("scene_folder", root, num_scenes=1, num_views=2, image_size=SIZE)
    return root / "scene0000" / "cameras.json"


def field_paths(node, path=()):
    yield path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from field_paths(value, path + (key,))


def template() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(write_base(Path(tmp)).read_text())


def name(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "<file>"


PATHS = list(field_paths(template()))


def wrong_values(path, value) -> list:
    """Values of the wrong kind for the field at ``path`` holding ``value`` ('MISSING': remove the field)."""
    field = next((p for p in reversed(path) if isinstance(p, str)), "")
    if not path:
        return [[], "views"]
    if isinstance(value, dict):                                            # a view
        return ["view_00.png", [], 7, None]
    if isinstance(value, list) and value and isinstance(value[0], list):   # a matrix
        other = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] if field == "extrinsic" else [[1.0, 0.0]] * 2
        return ["[[1, 0], [0, 1]]", {"rows": 3}, other, 7, None, "MISSING"]
    if isinstance(value, list):                                            # views, or a matrix row
        return ["x", {"0": 1}, 7, None, "MISSING"]
    if isinstance(value, str):                                             # file_name
        return [7, {"name": value}, [value], None, "MISSING"]
    return ["1", {"value": 1}, [1], None, math.nan, math.inf, "MISSING"]   # a number


def put(data, path, value):
    if not path:
        return value
    parent = data
    for p in path[:-1]:
        parent = parent[p]
    if value == "MISSING":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


def valid(path, value) -> bool:
    """Left out, a field listed in OPTIONAL is fine; so are null width and height (= not given)."""
    last = path[-1] if path else None
    return last in OPTIONAL and (value == "MISSING" or (value is None and last != "pixel_center"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fields") / "data"
    write_base(root)
    return root


@pytest.mark.parametrize("path", PATHS, ids=[name(p) for p in PATHS])
def test_a_wrong_typed_field_is_one_line_naming_file_view_and_field(base, tmp_path, path):
    root = tmp_path / "data"
    shutil.copytree(base, root)
    cameras = root / "scene0000" / "cameras.json"
    original = json.loads(cameras.read_text())
    field = next((p for p in reversed(path) if isinstance(p, str)), None)
    view = path[1] if len(path) > 1 and path[0] == "views" else None
    value_here = original
    for p in path:
        value_here = value_here[p]
    for wrong in wrong_values(path, value_here):
        data = put(json.loads(json.dumps(original)), path, wrong)
        cameras.write_text(json.dumps(data))                  # Python's json writes NaN / Infinity, and reads them
        problems = check_dataset(root, "scene_folder").problems
        if valid(path, wrong):
            assert problems == [], (name(path), wrong, problems)
            continue
        assert len(problems) == 1, (name(path), wrong, problems)
        line = problems[0]
        assert "\n" not in line and str(cameras) in line and "expected" in line, (name(path), wrong, line)
        if field is not None:
            assert field in line, (name(path), wrong, line)
        if view is not None:
            assert f"views[{view}]" in line, (name(path), wrong, line)
            if field != "file_name" and len(path) > 2:
                assert original["views"][view]["file_name"] in line, (name(path), wrong, line)
