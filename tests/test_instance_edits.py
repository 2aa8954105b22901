"""Editing a prediction's instances (merge, split, delete): the operations, the edit file checked as data, the new
version written beside the original (which stays byte for byte as it was), read back by the viewer and the dataset
reader, ``iggt edit``, and the viewer's clicks and buttons that make the same edits."""
import hashlib
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from iggt_lightning.cli import main
from iggt_lightning.instance_edits import (Edit, EditError, PredictionIds, apply_operations, check_operations,
                                           manifest_sha256, read_edit, save_version)
from iggt_lightning.viewer_steering import edited_instances, pick_point


def test_operations_merge_split_and_delete_ids():
    ids = np.array([1, 1, 2, 2, 3, 3, 0])
    xyz = np.array([[0, 0, 0], [1, 0, 0], [5, 0, 0], [6, 0, 0], [0, 9, 0], [0, 10, 0], [0, 0, 0]], float)
    ops = [("merge", [1, 2]), ("split", 3, np.array([[0, 9, 0], [0, 10.2, 0]])), ("delete", [1])]
    assert apply_operations(ops, ids, xyz, first_new=4).tolist() == [0, 0, 0, 0, 3, 4, 0]
    # a split without positions leaves the instance as it is; new ids still counted in order
    two = [("split", 3, np.zeros((3, 3))), ("split", 2, np.zeros((2, 3)))]
    assert apply_operations(two, ids, None, 4).tolist() == ids.tolist()


@pytest.mark.parametrize("ops, field", [
    ([{"merge": [1]}], "operations[0].merge"),
    ([{"merge": [1, 9]}], "operations[0].merge[1]: instance 9 is not in the prediction"),
    ([{"merge": [1, 2]}, {"delete": [2]}], "operations[1].delete[0]: instance 2 is not in the prediction"),
    ([{"split": 3, "seeds": [[0, 0, 0]]}], "operations[0].seeds: expected at least 2"),
    ([{"split": 3, "seeds": [[0, 0, 0], [0, "x", 0]]}], "operations[0].seeds[1][1]"),
    ([{"split": 3}], "operations[0]: expected one of"),
    ([{"rename": 3}], "operations[0]: expected one of"),
    ("merge", "operations: expected a list"),
])
def test_bad_operations_are_one_line_naming_the_field(ops, field):
    with pytest.raises(EditError) as err:
        check_operations(ops, "edit.json", {1, 2, 3}, 4)
    assert field in str(err.value) and str(err.value).count("\n") == 0 and str(err.value).startswith("edit.json")
    # a new id from a split may be named afterwards
    assert check_operations([{"split": 3, "seeds": [[0, 0, 0], [1, 1, 1]]}, {"merge": [4, 1]}], "e", {1, 2, 3}, 4)


def test_a_click_ray_picks_the_nearest_shown_point_along_it():
    pts = np.array([[0, 0, 5], [0, 0, 2], [0.5, 0, 1], [0, 0, -3]], float)
    shown = np.array([True, True, True, True])
    assert pick_point([0, 0, 0], [0, 0, 1], pts, shown, 0.05) == 1               # the nearer of two on the ray
    assert pick_point([0, 0, 0], [0, 0, 1], pts, np.array([1, 0, 1, 1], bool), 0.05) == 0     # hidden: skipped
    assert pick_point([0, 0, 0], [0, 1, 0], pts, shown, 0.05) is None                # nothing near


# ------------------------------------------------------------------------------------------ a real prediction
@pytest.fixture(scope="module")
def prediction(tmp_path_factory):
    return write_edit_prediction(tmp_path_factory.mktemp("edits"))


def write_edit_prediction(root: Path) -> Path:
    """A prediction folder of a scene with several objects (the long-sequence test bed's ground truth written
    by the exporters, so the instances are real objects)."""
    from iggt_lightning.benchmarking.oracle import GroundTruthNetwork
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.data.long_sequence import LongSequence
    from iggt_lightning.inference.scene import View, identity_transform
    from iggt_lightning.inference.writer import write_prediction
    from iggt_lightning.model import IGGTModel
    from iggt_lightning.module import IGGTLitModule

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), root / "nano.safetensors")
    module = IGGTLitModule.from_checkpoint_file(root / "nano.safetensors")
    seq = LongSequence(frames=4, seed=3)
    images = torch.stack([torch.as_tensor(seq.frame(i)["images"]) for i in range(4)])
    out = GroundTruthNetwork(seq, 0, depth_noise=0.0)(images[None], 0)
    H, W = images.shape[-2:]
    views = [View(f"f{i}.png", f"f{i}", f"f{i}.png", identity_transform(W, H),
                  (images[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for i in range(4)]
    folder = root / "scene"
    write_prediction(folder, module.plugins(), out, 0, views, images, {"conf_threshold": 0.0})
    return folder


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((folder / "masks").glob("*.png"))}


def test_a_saved_version_is_a_complete_prediction_beside_the_untouched_original(prediction, tmp_path):
    from iggt_lightning.data.scene_folder import SceneFolderScenes
    from iggt_lightning.viewer import load_scene

    known = PredictionIds.read(prediction)
    assert len(known.ids) >= 4, known
    a, b, c, d = sorted(known.ids)[:4]
    before = _digest(prediction)
    original = _masks(prediction)
    objects = {r["id"]: r for r in json.loads((prediction / "instances3d.json").read_text())["instances"]}
    # split c between its box's two ends along its longest axis
    box = objects[c]["box"]
    axis = np.asarray(box["axes"])[int(np.argmax(box["half_extents"]))] * max(box["half_extents"])
    seeds = np.stack([np.asarray(box["centre"]) - axis, np.asarray(box["centre"]) + axis])
    ops = [("merge", [a, b]), ("split", c, seeds), ("delete", [d])]
    out = save_version(prediction, Edit(ops, manifest_sha256(prediction)))
    assert out == prediction.parent / f"{prediction.name}.v2" and _digest(prediction) == before
    edited = _masks(out)
    new = known.first_new
    for name, m in original.items():
        e = edited[name]
        assert (e[m == b] == a).all() and (e[m == a] == a).all() and (e[m == d] == 0).all()
        assert set(np.unique(e[m == c])) <= {c, new}
        assert (e[(m != b) & (m != c) & (m != d)] == m[(m != b) & (m != c) & (m != d)]).all()
    both = np.concatenate([edited[n][original[n] == c] for n in original])
    assert (both == c).mean() > 0.1 and (both == new).mean() > 0.1          # the split cut c into two parts
    manifest = json.loads((out / "manifest.json").read_text())
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == set(manifest["files"]) and "edit.json" in written
    assert manifest["edited"]["base"]["manifest_sha256"] == manifest_sha256(prediction)
    coco = json.loads((out / "masks" / "instances.json").read_text())
    assert {x["track_id"] for x in coco["annotations"]} == (known.ids - {b, d}) | {new}
    ids3d = {r["id"] for r in json.loads((out / "instances3d.json").read_text())["instances"]}
    assert ids3d == (known.ids - {b, d}) | {new}
    # read back as users read it: the viewer, the dataset reader, another edit on the version
    scene = load_scene(out)
    assert set(np.unique(scene.instance_ids)) - {0} == (known.ids - {b, d}) | {new}
    sample = SceneFolderScenes(str(out))[0]            # the reader numbers a scene's instances 1..K itself
    in_masks = set(np.unique(np.concatenate([m.ravel() for m in edited.values()]))) - {0}
    assert len(set(torch.unique(sample["instance_ids"]).tolist()) - {0}) == len(in_masks)
    again = save_version(out, Edit([("merge", [a, new])], manifest_sha256(out)))
    assert again == prediction.parent / f"{prediction.name}.v2.v2" and _digest(prediction) == before


def test_iggt_edit_applies_a_file_and_refuses_what_does_not_match(prediction, tmp_path, capsys):
    known = sorted(PredictionIds.read(prediction).ids)
    edit = {"format": "iggt-instance-edit/1", "base": {"manifest_sha256": manifest_sha256(prediction)},
            "operations": [{"merge": known[:2]}]}
    (tmp_path / "edit.json").write_text(json.dumps(edit))
    out = tmp_path / "merged"
    assert main(["edit", str(prediction), str(tmp_path / "edit.json"), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert json.loads((out / "edit.json").read_text()) == edit
    before = _digest(prediction)
    cases = {
        "another prediction": ({**edit, "base": {"manifest_sha256": "0" * 64}}, None, "base.manifest_sha256"),
        "a missing id": ({**edit, "operations": [{"delete": [999]}]}, None, "operations[0].delete[0]"),
        "into the prediction": (edit, prediction / "edits", "beside the prediction, not inside it"),
        "an existing folder": (edit, out, "exists; a version never overwrites"),
    }
    for name, (payload, target, words) in cases.items():
        (tmp_path / "bad.json").write_text(json.dumps(payload))
        argv = ["edit", str(prediction), str(tmp_path / "bad.json")] + (["-o", str(target)] if target else [])
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, (name, err)
    assert _digest(prediction) == before and not (prediction / "edits").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no partial folder
    with pytest.raises(EditError, match="format"):
        (tmp_path / "old.json").write_text(json.dumps({**edit, "format": "other"}))
        read_edit(tmp_path / "old.json", prediction)


def test_the_instance_list_follows_the_edits():
    from iggt_lightning.prediction_files import Instance

    original = [Instance(1, 0.5, "chair", ["a.png"]), Instance(2, 0.9, None, ["b.png"]), Instance(3, 0.7, None, [])]
    ids = np.array([1, 1, 4, 0])
    got = edited_instances(original, [("merge", [1, 2]), ("split", 1, np.zeros((2, 3))), ("delete", [3])], ids, 4)
    assert [(i.id, i.score, i.label, i.views, i.points) for i in got] == [
        (1, 0.9, "chair", ["a.png", "b.png"], 2), (4, 0.9, "chair", ["a.png", "b.png"], 1)]


@pytest.mark.skipif(__import__("importlib").util.find_spec("viser") is None, reason="viser is not installed")
def test_viewer_clicks_select_merge_split_and_save(prediction):
    """The viewer's steering as viser delivers it: click events (a ray) and button presses."""
    from iggt_lightning import viewer

    scene = viewer.load_scene(prediction)
    v = viewer.Viewer([prediction], scene, port=0)
    try:
        view, steer = v.view, v.view.steering
        ids = scene.instance_ids.copy()
        a, b = [int(k) for k in np.unique(ids) if k][:2]

        def click_on(k, add=False, nth=0):
            i = np.flatnonzero(view.scene.instance_ids == k)[nth]
            target = view.points_viser[i].astype(float)
            origin = target + np.array([0.0, -1e-4, 0.0])      # just before it: nothing in between
            steer.click(SimpleNamespace(ray_origin=origin, ray_direction=target - origin), add)

        click_on(a)
        assert steer.selected == [a] and f"#{a}" in steer.gui["selected"].content
        colours = view.cloud.colors                             # the others fade: fewer distinct bright colours
        assert len(view.cloud.points) == view.keep.sum() and colours.shape[0] == view.keep.sum()
        click_on(b, add=True)
        assert steer.selected == [a, b]
        steer.gui["merge"].value                                # the button exists
        steer.merge()
        assert b not in set(view.scene.instance_ids.tolist()) and steer.selected == [a]
        assert [i.id for i in view.scene.instances if i.id == b] == []
        pts = np.flatnonzero(view.scene.instance_ids == a)
        far = pts[np.argmax(np.linalg.norm(scene.xyz[pts] - scene.xyz[pts[0]], axis=1))]
        click_on(a, nth=0)
        steer.start_split()
        target = view.points_viser[far].astype(float)
        steer.click(SimpleNamespace(ray_origin=target + [0, -1e-4, 0], ray_direction=[0, 1.0, 0]), False)
        new = PredictionIds.read(prediction).first_new
        assert new in set(view.scene.instance_ids.tolist()) and steer.selected == [new]
        steer.undo()
        assert new not in set(view.scene.instance_ids.tolist()) and len(steer.operations) == 1
        before = _digest(prediction)
        out = steer.save()
        assert out is not None and out.is_dir() and _digest(prediction) == before
        saved = json.loads((out / "edit.json").read_text())
        assert saved["operations"] == [{"merge": [a, b]}]
        assert f"saved: {out}" in steer.gui["log"].content
    finally:
        v.stop()


def _glb_meshes(path: Path) -> dict[str, int]:
    """Mesh name -> primitive mode of a GLB (its JSON chunk)."""
    import struct

    data = path.read_bytes()
    length = struct.unpack("<I", data[12:16])[0]
    gltf = json.loads(data[20:20 + length])
    return {m["name"]: m["primitives"][0]["mode"] for m in gltf.get("meshes", [])}


def test_boxes_are_drawn_in_the_instance_layer_and_follow_the_edits(prediction):
    from iggt_lightning import viewer

    records = json.loads((prediction / "instances3d.json").read_text())["instances"]
    boxed = {r["id"] for r in records if "box" in r}
    meshes = _glb_meshes(prediction / "instances.glb")
    assert {n for n, mode in meshes.items() if n.startswith("box_")} == {f"box_{k}" for k in boxed} and boxed
    assert all(mode == 1 for n, mode in meshes.items() if n.startswith("box_"))        # glTF LINES
    assert not any(n.startswith("box_") for n in _glb_meshes(prediction / "scene.glb"))
    scene = viewer.load_scene(prediction)
    assert set(scene.boxes) == boxed
    scene_boxes_before = dict(scene.boxes)
    a, b = sorted(boxed)[:2]
    out = save_version(prediction, Edit([("merge", [a, b])], manifest_sha256(prediction)))
    assert {n for n in _glb_meshes(out / "instances.glb") if n.startswith("box_")} == {f"box_{k}" for k in boxed - {b}}
    if importlib.util.find_spec("viser") is None:
        return
    v = viewer.Viewer([prediction], scene, port=0)
    try:
        view = v.view
        assert view.box_lines is not None and len(view.box_lines.points) == 12 * len(boxed)
        view.steering.selected = [a, b]
        view.steering.merge()
        assert set(view.scene.boxes) == boxed - {b} and len(view.box_lines.points) == 12 * (len(boxed) - 1)
        merged = view.scene.boxes[a]
        pts = view.scene.xyz[view.scene.instance_ids == a]
        from iggt_lightning.inference.instances3d import inside_box
        # refitted to the merged points (2nd-98th percentile extents: a few strays stay out)
        assert inside_box({k: np.asarray(x) for k, x in merged.items()}, pts.astype(float)).mean() > 0.8
        assert not np.allclose(merged["centre"], scene_boxes_before[a]["centre"])
        view.controls["boxes"].value = False
        assert view.box_lines is None
    finally:
        v.stop()


def test_clustering_again_at_another_granularity_from_the_stored_features(prediction, tmp_path, capsys):
    """features/points.npy holds every point's instance feature; an edit (or the viewer's slider) clusters them
    again, and a version holds the new instances, the masks taking their nearest point's id."""
    from iggt_lightning.exporters import FEATURES_FILE
    from iggt_lightning.instance_edits import recluster
    from iggt_lightning.viewer import read_ply

    feats = np.load(prediction / FEATURES_FILE)
    assert feats.dtype == np.float16 and len(feats) == len(read_ply(prediction / "points.ply"))
    assert np.allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1, atol=1e-2)
    fine, _ = recluster(prediction, 0.3)
    coarse, _ = recluster(prediction, 1.5)
    assert len(np.unique(fine)) > len(np.unique(coarse)) >= 1
    assert np.array_equal(recluster(prediction, 0.3)[0], fine)                       # deterministic
    edit = {"format": "iggt-instance-edit/1", "base": {"manifest_sha256": manifest_sha256(prediction)},
            "operations": [{"recluster": {"granularity": 0.3}}, {"merge": [1, 2]}]}
    (tmp_path / "edit.json").write_text(json.dumps(edit))
    out = tmp_path / "regrouped"
    assert main(["edit", str(prediction), str(tmp_path / "edit.json"), "-o", str(out)]) == 0
    ids = np.asarray(read_ply(out / "points.ply")["instance"])
    assert np.array_equal(ids, np.where(fine == 2, 1, fine))
    masks = _masks(out)
    assert all(set(np.unique(m)) - {0} <= set(np.unique(ids)) for m in masks.values())
    assert sum((m > 0).mean() for m in masks.values()) / len(masks) > 0.5           # pixels with a depth
    for ops, words in (([{"recluster": {"granularity": 3}}], "operations[0].recluster.granularity"),
                       ([{"merge": [1, 2]}, {"recluster": {"granularity": 0.5}}], "operations[1].recluster"),
                       ([{"recluster": {"granularity": 0.5, "x": 1}}], "operations[0]: expected")):
        (tmp_path / "bad.json").write_text(json.dumps({**edit, "operations": ops}))
        assert main(["edit", str(prediction), str(tmp_path / "bad.json"), "-o", str(tmp_path / "no")]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    if importlib.util.find_spec("viser") is None:
        return
    from iggt_lightning import viewer

    scene = viewer.load_scene(prediction)
    v = viewer.Viewer([prediction], scene, port=0)
    try:
        steer = v.view.steering
        steer.gui["granularity"].value = 0.3                # the slider
        assert steer.operations == [("recluster", 0.3)]
        assert np.array_equal(v.view.scene.instance_ids, fine if scene.sample is None else fine[scene.sample])
        steer.gui["granularity"].value = 1.5
        assert len(v.view.scene.instances) == len(np.unique(coarse[coarse > 0]))
        saved = steer.save()
        ids = np.asarray(read_ply(saved / "points.ply")["instance"])
        assert np.array_equal(ids, coarse)
        steer.undo()                                          # back to the file's instances
        assert np.array_equal(v.view.scene.instance_ids, steer.file_base["ids"]) and steer.operations == []
    finally:
        v.stop()


def _paths(value, prefix=()):
    """Every field path of a JSON value (dict keys and list indices), the value itself first."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _replace(value, path, new):
    if not path:
        return new
    value = json.loads(json.dumps(value))
    node = value
    for key in path[:-1]:
        node = node[key]
    if new is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = new
    return value


_DELETE = object()


def test_every_field_of_an_edit_file_refuses_hostile_values_in_one_line(prediction, tmp_path):
    """By property, not by list: every field path of a real edit file gets every kind of wrong value; the answer
    is the version or one EditError line naming the file, never another exception or a partial folder."""
    from iggt_lightning.prediction_files import ViewerError

    known = sorted(PredictionIds.read(prediction).ids)
    box = json.loads((prediction / "instances3d.json").read_text())["instances"][0]["box"]
    edit = {"format": "iggt-instance-edit/1", "base": {"manifest_sha256": manifest_sha256(prediction)},
            "operations": [{"merge": known[:2]}, {"split": known[2], "seeds": [box["centre"], [0.0, 0.0, 0.0]]},
                           {"delete": [known[3]]}]}
    hostile = [_DELETE, None, True, -1, 0, 2 ** 70, 1e308, float("nan"), "x", "../../etc", [], {}, [[[]]],
               {"merge": [1, 2]}]
    before = _digest(prediction)
    tried = refused = 0
    for path in _paths(edit):
        for bad in hostile:
            if not path and bad is _DELETE:
                continue
            payload = _replace(edit, path, bad)
            (tmp_path / "e.json").write_text(json.dumps(payload))       # NaN is written as the token NaN
            out = tmp_path / f"v{tried}"
            tried += 1
            try:
                save_version(prediction, read_edit(tmp_path / "e.json", prediction), out)
            except ViewerError as err:
                refused += 1
                assert str(err).count("\n") == 0 and str(tmp_path) in str(err) or "manifest" in str(err), err
                assert not out.exists()
            else:
                assert (out / "manifest.json").is_file()
    assert _digest(prediction) == before and tried > 200 and refused > tried // 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]                  # no partial folder
