"""Instances as 3D objects (iggt_lightning/inference/instances3d.py) and the instances3d.json a prediction holds."""
import json

import numpy as np

from iggt_lightning.inference.instances3d import box_iou, instance_records, oriented_box


def test_an_oriented_box_fits_a_rotated_cuboid_and_ignores_a_few_strays():
    rng = np.random.default_rng(0)
    local = rng.uniform(-1, 1, size=(5000, 3)) * np.array([2.0, 1.0, 0.5])
    c, s = np.cos(0.7), np.sin(0.7)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    pts = local @ R.T + np.array([3.0, -1.0, 2.0])
    pts[:20] += 50                                                      # 0.4 % strays
    box = oriented_box(pts)
    assert np.allclose(sorted(box["half_extents"]), [0.5, 1.0, 2.0], atol=0.1)
    assert np.allclose(box["centre"], [3.0, -1.0, 2.0], atol=0.1)
    truth = {"centre": [3.0, -1.0, 2.0], "axes": R.T.tolist(), "half_extents": [2.0, 1.0, 0.5]}
    assert box_iou(box, truth) > 0.85
    moved = dict(truth, centre=[5.0, -1.0, 2.0])                        # shifted by one half extent along x'
    shifted = dict(truth, centre=(np.asarray(truth["centre"]) + 2.0 * R[:, 0]).tolist())
    assert abs(box_iou(truth, shifted) - 1 / 3) < 0.02
    assert box_iou(truth, dict(truth, centre=[30.0, 0, 0])) == 0.0 and moved


def test_records_give_every_instance_its_views_and_box():
    ids = np.zeros((3, 10, 10), int)
    ids[0, 2:6, 2:6] = 1                       # 16 px in view 0
    ids[1, 2:4, 2:4] = 1                       # 4 px in view 1
    ids[2, 5:10, 5:10] = 2
    pts = np.random.default_rng(1).normal(size=(3, 10, 10, 3))
    rec = instance_records(ids, pts, np.ones((3, 10, 10), bool), np.array([0.9, 0.5]))
    assert [r["id"] for r in rec] == [1, 2]
    assert rec[0]["views"] == [{"view": 0, "pixels": 16, "fraction": 1.0}, {"view": 1, "pixels": 4, "fraction": 0.25}]
    assert rec[0]["best_view"] == 0 and rec[0]["best_view_box"] == [2, 2, 6, 6] and rec[0]["points"] == 20
    assert rec[1]["score"] == 0.5 and "box" in rec[1]
    json.dumps(rec, allow_nan=False)
