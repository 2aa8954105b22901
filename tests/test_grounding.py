"""The grounding record for language models (iggt_lightning/inference/grounding.py): up from the cameras,
relations from the boxes (the same after rotating or scaling the whole scene), the record and the prompt."""
import json

import numpy as np
import pytest

from iggt_lightning.inference.grounding import (PROMPT_TEMPLATE, grounding_record, render_prompt, spatial_relations,
                                                up_direction)
from iggt_lightning.inference.instances3d import oriented_box

# A room in metres, described as (east, north, height above the floor) centre and full size per object; ids in
# the order listed. Every object has three different extents so that its box axes are well defined.
SCENE = {
    1: ("table", (0.0, 0.0, 0.375), (1.6, 0.9, 0.75)),
    2: ("cup", (0.3, 0.1, 0.81), (0.08, 0.1, 0.12)),           # resting on the table's top (0.75)
    3: ("lamp", (-0.3, -0.2, 1.3), (0.3, 0.25, 0.4)),          # hovering 0.35 above the table
    4: ("chair", (-0.5, 1.0, 0.45), (0.45, 0.5, 0.9)),         # two chairs side by side, 0.15 apart,
    5: ("chair", (0.1, 1.0, 0.45), (0.45, 0.5, 0.9)),          # 0.3 from the table's long side
    6: ("shelf", (4.0, 5.0, 1.0), (1.0, 0.4, 2.0)),            # far away from everything
}
EXPECTED = {
    (2, "on", 1),
    (3, "above", 1), (1, "below", 3),
    (4, "next_to", 5), (5, "next_to", 4), (1, "next_to", 4), (4, "next_to", 1), (1, "next_to", 5), (5, "next_to", 1),
    (4, "left_of", 5), (5, "right_of", 4),
}
NAMES = ["IMG_0.jpg", "IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg", "IMG_4.jpg"]


def to_world(local: np.ndarray) -> np.ndarray:
    """Room coordinates -> camera 0's OpenCV frame: camera 0 stands 1.2 above the floor, 3 south of the table,
    looking north; x = east, y = down, z = north."""
    e, n, h = np.moveaxis(local, -1, 0)
    return np.stack([e, 1.2 - h, n + 3.0], -1)


def rotation(axis, angle_deg: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(angle_deg)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def upright_camera(yaw: float, pitch: float = 0.0, roll: float = 0.0, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """World-to-camera [3,4] of a camera at ``centre`` turned ``yaw`` degrees about up (world -y), then pitched
    about its x axis and rolled about its z axis."""
    cam_to_world = rotation([0, -1, 0], yaw) @ rotation([1, 0, 0], pitch) @ rotation([0, 0, 1], roll)
    R = cam_to_world.T
    return np.hstack([R, (-R @ np.asarray(centre, float))[:, None]])


def cameras() -> np.ndarray:
    """Five roughly upright cameras, a few degrees of pitch and roll each; camera 0 is the world frame."""
    poses = [(0, 0, 0), (-40, 8, 2), (-20, -8, -2), (20, 5, 1), (40, -5, -1)]
    return np.stack([upright_camera(y, p, r, centre=(0.5 * np.sin(np.deg2rad(y)), 0, 0)) for y, p, r in poses])


def scene_points(seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: to_world(np.asarray(c) + rng.uniform(-0.5, 0.5, size=(3000, 3)) * np.asarray(s))
            for k, (_, c, s) in SCENE.items()}


def records_from(points: dict[int, np.ndarray], with_labels: bool = True) -> list[dict]:
    out = []
    for k, pts in points.items():
        out.append({"id": k, "score": 0.9 - 0.05 * k, "points": len(pts),
                    "views": [{"view": 0, "pixels": 400, "fraction": 1.0}, {"view": k % 4 + 1, "pixels": 100,
                                                                             "fraction": 0.25}],
                    "best_view": 0, "best_view_box": [10 * k, 20, 10 * k + 30, 60],
                    "centroid": pts.mean(0).tolist(), "box": oriented_box(pts),
                    "label": SCENE[k][0] if with_labels else None})
    return out


def moved(points: dict[int, np.ndarray], ext: np.ndarray, Q: np.ndarray = np.eye(3), scale: float = 1.0):
    """The same scene and cameras after rotating the world by Q and scaling it: x' = s Q x, and a camera
    x_cam = R x + t becomes x_cam = (R Q^T) x' + s t (the camera frame is scaled along with everything)."""
    new_points = {k: scale * p @ Q.T for k, p in points.items()}
    new_ext = np.concatenate([ext[:, :, :3] @ Q.T, scale * ext[:, :, 3:]], axis=2)
    return new_points, new_ext


def triples(relations) -> set[tuple]:
    return {(r["subject"], r["relation"], r["object"]) for r in relations}


def relations_of(points, ext) -> list[dict]:
    return spatial_relations(records_from(points), up_direction(ext), ext[0])


# ---------------------------------------------------------------------------------------------------------------


def test_up_comes_from_roughly_upright_cameras():
    ext = cameras()
    up = up_direction(ext)
    assert np.isclose(np.linalg.norm(up), 1.0)
    assert np.degrees(np.arccos(up @ np.array([0.0, -1.0, 0.0]))) < 3.0
    Q = rotation([0.3, -0.5, 0.8], 50)                       # the same cameras in a tilted world frame
    _, tilted = moved({}, ext, Q)
    assert np.allclose(up_direction(tilted), Q @ up, atol=1e-9)
    # one camera upright, one upside down: no consensus, so camera 0's own up (world -y)
    flipped = np.stack([upright_camera(0), upright_camera(0, roll=180)])
    assert np.allclose(up_direction(flipped), [0.0, -1.0, 0.0])


def test_relations_of_the_room_are_exactly_the_expected_ones():
    rel = relations_of(scene_points(), cameras())
    assert triples(rel) == EXPECTED
    keys = [(r["subject"], r["relation"], r["object"]) for r in rel]
    assert keys == sorted(keys)
    on = next(r for r in rel if r["relation"] == "on")
    assert abs(on["gap"]) < 0.03 and on["distance"] > 0          # boxes stood upright: no lean in the gap
    above = next(r for r in rel if r["relation"] == "above")
    assert above["gap"] == pytest.approx(0.35, abs=0.05)          # lamp bottom 1.1, table top 0.75
    assert all(r["viewpoint"] == "viewpoint" for r in rel if r["relation"] in ("left_of", "right_of"))
    assert all("viewpoint" not in r for r in rel if r["relation"] not in ("left_of", "right_of"))
    # the shelf is related to nothing, and nothing stacked is also "next to" or "left of" its support
    assert not any(6 in (r["subject"], r["object"]) for r in rel)


def test_without_a_viewpoint_there_is_no_left_or_right():
    ext = cameras()
    rel = spatial_relations(records_from(scene_points()), up_direction(ext))
    assert triples(rel) == {t for t in EXPECTED if t[1] not in ("left_of", "right_of")}


@pytest.mark.parametrize("axis, angle", [([1, 0, 0], 90), ([0.3, -0.5, 0.8], 50), ([0, 0, 1], 180)])
def test_relations_do_not_change_when_the_world_frame_is_rotated(axis, angle):
    Q = rotation(axis, angle)
    points, ext = moved(scene_points(), cameras(), Q)
    assert triples(relations_of(points, ext)) == EXPECTED


def test_relations_are_scale_free():
    base = relations_of(scene_points(), cameras())
    points, ext = moved(scene_points(), cameras(), scale=37.0)
    scaled = relations_of(points, ext)
    assert triples(scaled) == EXPECTED
    for a, b in zip(base, scaled):
        assert b["distance"] == pytest.approx(37 * a["distance"], rel=1e-4)
        assert b["gap"] == pytest.approx(37 * a["gap"], rel=1e-4, abs=1e-6)


def test_turning_the_viewpoint_around_swaps_left_and_right():
    ext = cameras()
    points = scene_points()
    behind = upright_camera(180, centre=to_world(np.array([0.0, 3.0, 1.2])))     # north of the room, facing south
    rel = spatial_relations(records_from(points), up_direction(ext), behind, viewpoint_name="behind")
    swapped = {(s, {"left_of": "right_of", "right_of": "left_of"}.get(n, n), o) for s, n, o in EXPECTED}
    assert triples(rel) == swapped
    assert {r["viewpoint"] for r in rel if "viewpoint" in r} == {"behind"}


def test_a_cup_lifted_off_the_table_is_above_it_and_one_moved_away_is_related_to_nothing():
    points = scene_points()
    up = np.array([0.0, -1.0, 0.0])
    lifted = {**points, 2: points[2] + 0.3 * up}
    assert {t for t in triples(spatial_relations(records_from(lifted), up)) if 2 in t} == \
        {(2, "above", 1), (1, "below", 2)}
    moved_off = {**points, 2: points[2] + np.array([1.3, 0.0, 0.0])}     # beyond the table's east edge
    assert {t for t in triples(spatial_relations(records_from(moved_off), up)) if 2 in t} == set()


def test_the_record_is_json_ready_and_complete():
    ext = cameras()
    recs = records_from(scene_points())
    recs.append({"id": 7, "score": 0.2, "points": 2, "views": [{"view": 3, "pixels": 5, "fraction": 1.0}],
                 "best_view": 3, "best_view_box": [0, 0, 4, 4], "label": None})        # too few points: no box
    crops = {k: f"crops/instance_{k:03d}.png" for k in (1, 2, 7)}
    rec = grounding_record(recs, ext, NAMES, crops=crops, labels_available=True, viewpoint_index=0)
    assert json.loads(json.dumps(rec, allow_nan=False)) == rec           # plain types only, no NaN
    assert rec["format"] == "iggt-grounding/1" and rec["viewpoint"] == "IMG_0.jpg"
    assert np.allclose(rec["up"], up_direction(ext), atol=1e-5)
    assert "camera 0" in rec["convention"] and "up" in rec["convention"]
    assert [o["id"] for o in rec["objects"]] == [1, 2, 3, 4, 5, 6, 7]
    assert rec["counts"] == {"objects": 7, "with_boxes": 6, "relations": len(EXPECTED)}
    assert triples(rec["relations"]) == EXPECTED
    assert {r["viewpoint"] for r in rec["relations"] if "viewpoint" in r} == {"IMG_0.jpg"}
    table, cup, shelf, lone = rec["objects"][0], rec["objects"][1], rec["objects"][5], rec["objects"][6]
    assert table["label"] == "table" and table["crop"] == "crops/instance_001.png" and shelf["crop"] is None
    assert sorted(table["box"]["size"]) == pytest.approx([0.72, 0.864, 1.536], rel=0.03)     # 96 % of each side
    assert table["box"]["size"] == pytest.approx([2 * h for h in table["box"]["half_extents"]], rel=1e-5)
    # sizes relative to the largest extent of any object (the shelf's 2.0 height, 96 % of it)
    assert max(shelf["dimensions_relative"]) == 1.0
    assert max(cup["dimensions_relative"]) == pytest.approx(0.12 / 2.0, rel=0.05)
    assert table["visible_in"] == [{"image": "IMG_0.jpg", "fraction": 1.0}, {"image": "IMG_2.jpg", "fraction": 0.25}]
    assert table["best_view"] == "IMG_0.jpg" and table["best_view_box"] == [10, 20, 40, 60]
    assert lone["box"] is None and lone["dimensions_relative"] is None and lone["centroid"] is None
    assert lone["best_view"] == "IMG_3.jpg" and lone["crop"] == "crops/instance_007.png"
    assert not any(7 in (r["subject"], r["object"]) for r in rec["relations"])
    # labels are withheld unless the caller says they are real
    assert all(o["label"] is None for o in grounding_record(recs, ext, NAMES)["objects"])


def test_views_given_as_image_names_as_the_exporter_writes_them():
    ext = cameras()
    recs = records_from(scene_points())
    for r in recs:
        r["best_view"] = NAMES[r["best_view"]]
        r["views"] = [dict(v, view=NAMES[v["view"]]) for v in r["views"]]
    from_names = grounding_record({"instances": recs}, ext, NAMES)
    assert from_names == grounding_record(records_from(scene_points()), ext, NAMES)


def test_the_prompt_is_deterministic_and_lists_objects_relations_and_the_question():
    ext = cameras()
    recs = records_from(scene_points())
    crops = {k: f"crops/{k}.png" for k in SCENE}
    rec = grounding_record(recs, ext, NAMES, crops=crops, labels_available=True)
    shuffled = grounding_record(recs[::-1], ext, NAMES, crops=crops, labels_available=True)
    question = "Which object is the cup standing on?"
    text = render_prompt(rec, question)
    assert text == render_prompt(shuffled, question) == render_prompt(json.loads(json.dumps(rec)), question)
    lines = text.splitlines()
    assert any(line.startswith("[2] cup at (") and "seen in 2 views" in line and line.endswith("crop: crops/2.png")
               for line in lines)
    assert "object 2 is on object 1" in lines and "object 4 is left of object 5" in lines
    assert "object 1 is below object 3" in lines
    assert f"Question: {question}" in text and "object ids" in text and "camera 0" in text
    assert "(" + ", ".join(f"{x:.3g}" for x in rec["up"]) + ")" in text
    assert text.index("Objects:") < text.index("Spatial relations") < text.index("Question:")
    unlabelled = render_prompt(grounding_record(recs, ext, NAMES), question)
    assert "[2] object at (" in unlabelled
    assert "{" not in PROMPT_TEMPLATE.format(n_images=1, up="0, -1, 0", labels_note="", objects="", viewpoint="v",
                                             relations="", question="q")


def _box_record(k, half):
    return {"id": k, "box": {"centre": [0.0, 0.0, 0.0], "axes": np.eye(3).tolist(), "half_extents": half}}


@pytest.mark.parametrize("make, field", [
    (lambda: grounding_record([_box_record(1, [1, 1, 1]), _box_record(1, [1, 1, 1])], cameras(), NAMES),
     r"^instances\[1\]\.id: duplicate id 1"),
    (lambda: grounding_record([_box_record(1, [1, 1, 1]), _box_record(2, [1, 1, 1]),
                               _box_record(3, [1.0, float("nan"), 1])], cameras(), NAMES),
     r"^instances\[2\]\.box\.half_extents: expected 3 finite numbers"),
    (lambda: spatial_relations([_box_record(1, [1, 1, float("inf")])], [0, -1, 0]),
     r"^instances\[0\]\.box\.half_extents: expected 3 finite numbers"),
    (lambda: grounding_record([dict(_box_record(1, [1, 1, 1]), box={"centre": [0, 0], "axes": np.eye(3).tolist(),
                                                                   "half_extents": [1, 1, 1]})], cameras(), NAMES),
     r"^instances\[0\]\.box\.centre: expected 3 finite numbers"),
    (lambda: grounding_record([_box_record(1, [1, 1, 1])], cameras()[:, :, :3], NAMES),
     r"^extrinsics: expected shape \[S,3,4\]"),
    (lambda: up_direction(np.zeros((3, 4))), r"^extrinsics: expected shape \[S,3,4\]"),
    (lambda: grounding_record([_box_record(1, [1, 1, 1])], cameras(), NAMES[:3]), r"^image_names: expected 5"),
    (lambda: grounding_record([_box_record(1, [1, 1, 1])], cameras(), NAMES, viewpoint_index=9),
     r"^viewpoint_index: "),
    (lambda: grounding_record([_box_record(1, [1, 1, 1])], cameras(), NAMES, crops={4: "c.png"}), r"^crops\[4\]: "),
    (lambda: render_prompt({"format": "something else"}, "q"), r"^record\.format: "),
])
def test_bad_input_names_the_field_in_one_line(make, field):
    with pytest.raises(ValueError, match=field) as info:
        make()
    assert "\n" not in str(info.value)


def test_predict_writes_the_grounding_record_crops_and_prompt(tmp_path):
    """As a user gets it: ``iggt predict`` on photos writes grounding/ beside instances3d.json, the same objects."""
    import torch
    from PIL import Image

    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.cli import main
    from iggt_lightning.data.long_sequence import LongSequence
    from iggt_lightning.model import IGGTModel

    LongSequence(frames=4, seed=5).write_photos(tmp_path / "photos")
    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), tmp_path / "nano.safetensors")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "photos"), "-c", str(tmp_path / "nano.safetensors"), "-o", str(out),
                 "--size", "112", "84", "--quiet", "--points-from", "point"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    objects3d = json.loads((out / "instances3d.json").read_text())["instances"]
    assert "grounding" in manifest["exporters"]
    record = json.loads((out / "grounding" / "scene.json").read_text())
    assert [o["id"] for o in record["objects"]] == [r["id"] for r in objects3d] and objects3d
    for o, r in zip(record["objects"], objects3d):
        assert o["best_view"] == r["best_view"] and o["best_view_box"] == r["best_view_box"]
        crop = Image.open(out / "grounding" / o["crop"])
        x0, y0, x1, y1 = r["best_view_box"]
        assert crop.size[0] >= x1 - x0 and crop.size[1] >= y1 - y0
    prompt = (out / "grounding" / "prompt.txt").read_text()
    assert "Question: {question}" in prompt and all(f"[{o['id']}]" in prompt for o in record["objects"])
    assert manifest["grounding"]["objects"] == len(objects3d)
