"""A grounding record: a scene's instances, their boxes and their spatial relations, ready for a language model.

A multimodal language model asked "which cup is on the table?" about a set of photos cannot measure anything in
3D. The reconstruction can: :mod:`iggt_lightning.inference.instances3d` gives every instance an oriented box.
This module turns those boxes into what a language model can use directly: a list of objects with ids, positions
and sizes, short relations between them ("object 3 is on object 1"), and a prompt that asks for object ids as the
answer, so that the answer points back at masks, boxes and crops. No model is bundled or called here.

Conventions (the ``convention`` text of every record repeats them):

* coordinates are the prediction's world frame: OpenCV axes of camera 0 (x right, y down, z forward), in the
  model's own units, whose scale is unknown; only ratios of lengths mean anything;
* a box is ``{centre [3], axes [3x3] (rows: unit axes, right-handed), half_extents [3]}``; ``size`` is twice the
  half extents, in the order of the axes;
* ``up`` is estimated from the cameras (:func:`up_direction`), assuming the photos were taken roughly upright;
* relations are computed from the boxes alone, with every threshold a fraction of the objects' own sizes, so they
  do not change when the whole scene is scaled or rotated (:func:`spatial_relations` defines each one).

Pure functions on plain records and arrays: no file is read or written.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from iggt_lightning.inference.instances3d import box_corners

FORMAT = "iggt-grounding/1"

# Relation names, and how each one reads in a sentence of the prompt.
RELATION_PHRASES = {"on": "is on", "above": "is above", "below": "is below", "next_to": "is next to",
                    "left_of": "is left of", "right_of": "is right of"}

_EPS = 1e-9


# ----------------------------------------------------------------------------------------------------------------
# checking the input: every error is one line that names the offending field


def _finite_vector(value, field: str, length: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (length,) or not np.isfinite(arr).all():
        raise ValueError(f"{field}: expected {length} finite numbers")
    return arr


def _check_box(box, field: str) -> dict:
    if not isinstance(box, Mapping):
        raise ValueError(f"{field}: expected a dict with centre, axes and half_extents")
    centre = _finite_vector(box.get("centre"), f"{field}.centre", 3)
    try:
        axes = np.asarray(box.get("axes"), dtype=np.float64)
    except (TypeError, ValueError):
        axes = None
    if axes is None or axes.shape != (3, 3) or not np.isfinite(axes).all():
        raise ValueError(f"{field}.axes: expected 3x3 finite numbers")
    # box_corners and every relation assume unit, perpendicular axes; a sheared box would silently mislead
    if not np.allclose(axes @ axes.T, np.eye(3), atol=1e-4):
        raise ValueError(f"{field}.axes: expected 3 orthonormal rows")
    half = _finite_vector(box.get("half_extents"), f"{field}.half_extents", 3)
    if (half < 0).any():
        raise ValueError(f"{field}.half_extents: expected 3 finite numbers >= 0")
    return {"centre": centre, "axes": axes, "half_extents": half}


def _check_records(records) -> list[dict]:
    """The instance list (or an ``instances3d.json`` dict holding one), with unique integer ids."""
    if isinstance(records, Mapping) and "instances" in records:
        records = records["instances"]
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise ValueError("instances: expected a list of instance records")
    seen: dict[int, int] = {}
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ValueError(f"instances[{i}]: expected a dict")
        k = r.get("id")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"instances[{i}].id: expected an integer")
        if int(k) in seen:
            raise ValueError(f"instances[{i}].id: duplicate id {int(k)} (also instances[{seen[int(k)]}])")
        seen[int(k)] = i
        if r.get("box") is not None:
            _check_box(r["box"], f"instances[{i}].box")
        if r.get("centroid") is not None:
            _finite_vector(r["centroid"], f"instances[{i}].centroid", 3)
    return list(records)


def _check_extrinsics(extrinsics) -> np.ndarray:
    try:
        ext = np.asarray(extrinsics, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("extrinsics: expected an array [S,3,4] of finite numbers") from None
    if ext.ndim != 3 or ext.shape[1:] != (3, 4) or ext.shape[0] < 1:
        raise ValueError(f"extrinsics: expected shape [S,3,4] with S >= 1, got {list(ext.shape)}")
    if not np.isfinite(ext).all():
        raise ValueError("extrinsics: expected finite numbers")
    return ext


def _check_up(up) -> np.ndarray:
    vec = _finite_vector(up, "up", 3)
    norm = np.linalg.norm(vec)
    if norm < _EPS:
        raise ValueError("up: expected 3 finite numbers, not all zero")
    return vec / norm


# ----------------------------------------------------------------------------------------------------------------
# the up direction


def up_direction(extrinsics: np.ndarray) -> np.ndarray:
    """The scene's up [3] as a unit vector in world coordinates, estimated from the cameras.

    Assumes the photos were taken roughly upright: then each camera's up (its -y axis, which is ``-R[1, :]`` in
    world coordinates for a world-to-camera ``[R|t]``) points roughly up, and their mean points up with the
    cameras' individual tilts partly cancelled. Cameras all pitched the same way bias it by that pitch. If the
    mean vanishes (cameras pointing every way), it falls back to world -y, i.e. camera 0's up."""
    ext = _check_extrinsics(extrinsics)
    mean_up = -ext[:, 1, :3].mean(0)
    norm = np.linalg.norm(mean_up)
    if norm < 1e-6:
        return np.array([0.0, -1.0, 0.0])
    return mean_up / norm


# ----------------------------------------------------------------------------------------------------------------
# 2D helpers for footprints: a footprint is the convex hull of a box's corners projected on the ground plane


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull [K,2] of 2D points (Andrew's monotone chain)."""
    pts = sorted(set(map(tuple, np.round(points, 12))))
    if len(pts) <= 2:
        return np.asarray(pts, dtype=np.float64).reshape(-1, 2)

    def half(chain):
        out: list = []
        for p in chain:
            while len(out) >= 2 and _cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(reversed(pts))
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _area(poly: np.ndarray) -> float:
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _clip(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """The intersection of two convex counter-clockwise polygons (Sutherland-Hodgman)."""
    out = [tuple(p) for p in subject]
    for i in range(len(clip)):
        a, b = clip[i], clip[(i + 1) % len(clip)]
        inp, out = out, []
        if not inp:
            break
        for j in range(len(inp)):
            p, q = inp[j - 1], inp[j]
            p_in, q_in = _cross(a, b, p) >= 0, _cross(a, b, q) >= 0
            if q_in != p_in:
                out.append(_segment_line_crossing(p, q, a, b))
            if q_in:
                out.append(q)
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def _segment_line_crossing(p, q, a, b):
    dp, dq = _cross(a, b, p), _cross(a, b, q)
    t = dp / (dp - dq)
    return (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]))


def _point_segment_distance(p, a, b) -> float:
    ab, ap = b - a, p - a
    length2 = float(ab @ ab)
    t = 0.0 if length2 < _EPS else min(1.0, max(0.0, float(ap @ ab) / length2))
    return float(np.linalg.norm(ap - t * ab))


def _inside_polygon(p, poly: np.ndarray) -> bool:
    if len(poly) < 3:
        return False
    return all(_cross(poly[i], poly[(i + 1) % len(poly)], p) >= -_EPS for i in range(len(poly)))


def _polygon_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance between two convex polygons (0 when they touch or overlap). For disjoint convex shapes
    the closest pair is a vertex of one and an edge of the other, so those distances are all that is needed."""
    if any(_inside_polygon(p, b) for p in a) or any(_inside_polygon(p, a) for p in b):
        return 0.0
    best = math.inf
    for poly, other in ((a, b), (b, a)):
        edges = [(other[i], other[(i + 1) % len(other)]) for i in range(len(other))] if len(other) > 1 \
            else [(other[0], other[0])]
        for p in poly:
            for s, e in edges:
                best = min(best, _point_segment_distance(p, s, e))
    if best > 0 and _area(_clip(a, b)) > 0:    # crossing edges with no vertex inside the other
        return 0.0
    return best


# ----------------------------------------------------------------------------------------------------------------
# spatial relations


@dataclass
class _Solid:
    """One boxed instance seen in the up / ground-plane frame."""
    id: int
    centre: np.ndarray         # [3] world
    corners: np.ndarray        # [8,3] world
    bottom: float              # lowest corner along up
    top: float                 # highest corner along up
    size: float                # largest full extent of the box
    footprint: np.ndarray      # [K,2] convex hull on the ground plane
    area: float

    @property
    def height(self) -> float:
        return self.top - self.bottom


def _ground_basis(up: np.ndarray) -> np.ndarray:
    """Two unit vectors [2,3] spanning the plane normal to ``up``. Which two does not matter: footprint areas and
    gaps do not change under a rotation within the plane."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    first = helper - (helper @ up) * up
    first /= np.linalg.norm(first)
    return np.stack([first, np.cross(up, first)])


def _stand_upright(box: dict, up: np.ndarray, tolerance_deg: float) -> dict:
    """The box turned about its centre so that its axis nearest to ``up`` is exactly ``up``, if that axis is
    within ``tolerance_deg`` of it (else unchanged). A box fitted to a noisy point cloud leans by a few degrees;
    the corners of a leaning table top rise above the real top by its half width times the lean, enough to sink
    a cup into it or to lift it off."""
    axes, half = box["axes"], box["half_extents"]
    k = int(np.argmax(np.abs(axes @ up)))
    if abs(axes[k] @ up) < np.cos(np.deg2rad(tolerance_deg)):
        return box
    i, j = [n for n in range(3) if n != k]
    new = np.empty((3, 3))
    new[k] = up if axes[k] @ up > 0 else -up
    first = axes[i] - (axes[i] @ new[k]) * new[k]
    new[i] = first / np.linalg.norm(first)
    new[j] = np.cross(new[k], new[i])
    if np.linalg.det(new) < 0:                    # keep the axes right-handed, as box records are
        new[j] *= -1
    return {"centre": box["centre"], "axes": new, "half_extents": half}


def _solids(records: list[dict], up: np.ndarray, upright_tolerance_deg: float) -> list[_Solid]:
    ground = _ground_basis(up)
    solids = []
    for i, r in enumerate(records):
        if r.get("box") is None:
            continue
        box = _stand_upright(_check_box(r["box"], f"instances[{i}].box"), up, upright_tolerance_deg)
        corners = box_corners(box)
        heights = corners @ up
        footprint = _convex_hull(corners @ ground.T)
        solids.append(_Solid(int(r["id"]), box["centre"], corners, float(heights.min()), float(heights.max()),
                             2.0 * float(box["half_extents"].max()), footprint, _area(footprint)))
    return sorted(solids, key=lambda s: s.id)


def _interval(values: np.ndarray) -> tuple[float, float]:
    return float(values.min()), float(values.max())


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Length shared by two intervals (negative: the gap between them)."""
    return min(a[1], b[1]) - max(a[0], b[0])


def _num(x: float) -> float:
    """Six significant digits: short, stable JSON and prompts, and still scale-free (unlike fixed decimals)."""
    return float(f"{x:.6g}")


def _viewpoint_axes(viewpoint, up: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The viewpoint camera's right and forward directions, both flattened onto the ground plane, or None if its
    x axis points along up (a camera on its side has no left and right on the ground)."""
    ext = np.asarray(viewpoint, dtype=np.float64)
    if ext.ndim == 3 and ext.shape[1:] == (3, 4) and len(ext):
        ext = ext[0]                              # a camera list: its first camera
    if ext.shape != (3, 4) or not np.isfinite(ext).all():
        raise ValueError(f"viewpoint: expected a finite world-to-camera extrinsic [3,4], got {list(ext.shape)}")
    right = ext[0, :3] - (ext[0, :3] @ up) * up
    norm = np.linalg.norm(right)
    if norm < 1e-6:
        return None
    right /= norm
    # OpenCV: x right, y down, z forward, so forward = x cross y = right cross (-up) = up cross right
    return right, np.cross(up, right)


def spatial_relations(records, up, viewpoint=None, *, viewpoint_name: str = "viewpoint",
                      contact_tolerance: float = 0.1, footprint_overlap: float = 0.3, next_to_gap: float = 0.5,
                      vertical_overlap: float = 0.25, lateral_overlap: float = 0.5,
                      upright_tolerance_deg: float = 20.0) -> list[dict]:
    """Pairwise relations between the instances that have a ``box``, from the boxes alone.

    A box with an axis within ``upright_tolerance_deg`` of ``up`` is first turned about its centre to stand
    exactly upright (a fitted box leans a little, and a leaning box's corners overstate its top). Heights are
    then measured along ``up``; a footprint is the box projected on the plane normal to ``up``. For a
    pair A, B, with ``size`` an object's largest full extent and ``tol = contact_tolerance * max(height A,
    height B)`` (box fits shrink or grow the faces by a few percent of the object's height, so contact can only
    be judged to within a fraction of it):

    * ``on``: A's bottom is within ``tol`` of B's top, A's top is above B's top, and the footprints overlap by
      at least ``footprint_overlap`` of the smaller footprint's area. ``gap`` = A's bottom - B's top.
    * ``above`` / ``below``: A's bottom is more than ``tol`` above B's top (not touching) and the footprints
      overlap as for ``on``; emitted as the pair A above B and B below A. ``gap`` = the vertical free space.
    * ``next_to`` (symmetric, both orders): the footprints are at most ``next_to_gap * min(size A, size B)``
      apart, their height ranges share at least ``vertical_overlap`` of the shorter one's height, and neither is
      on the other. ``gap`` = the horizontal gap between the footprints (0 if they overlap).
    * ``left_of`` / ``right_of``, only if ``viewpoint`` is given (a world-to-camera extrinsic [3,4], or a list
      [S,3,4] whose first camera is used): along the camera's x axis flattened onto the ground plane, the boxes'
      ranges overlap by at most ``lateral_overlap`` of the narrower one, and the two are side by side: next to
      each other, or at a comparable depth (their ranges along the camera's flattened forward axis overlap),
      and neither on, above nor below the other. Emitted as the pair A left_of B and B right_of A, carrying
      ``viewpoint`` = ``viewpoint_name``. ``gap`` = the free space between them along that axis.

    Every relation also has ``distance``, between the box centres. All lengths are in model units; all
    thresholds are relative, so scaling or rotating the whole scene (up and viewpoint included) changes no
    relation. Sorted by (subject, relation, object)."""
    up = _check_up(up)
    solids = _solids(_check_records(records), up, upright_tolerance_deg)
    axes = _viewpoint_axes(viewpoint, up) if viewpoint is not None else None
    relations: list[dict] = []

    def add(subject: _Solid, name: str, obj: _Solid, gap: float, **extra) -> None:
        relations.append({"subject": subject.id, "relation": name, "object": obj.id, "gap": _num(gap),
                          "distance": _num(float(np.linalg.norm(subject.centre - obj.centre))), **extra})

    for i, a in enumerate(solids):
        for b in solids[i + 1:]:
            tol = contact_tolerance * max(a.height, b.height)
            # the footprints' bounding rectangles bound the gap from below: far pairs skip the polygon work
            rough_gap = float(np.linalg.norm(np.maximum(0.0, np.maximum(a.footprint.min(0) - b.footprint.max(0),
                                                                        b.footprint.min(0) - a.footprint.max(0)))))
            overlapping = rough_gap == 0 and a.area > 0 and b.area > 0
            shared = _area(_clip(a.footprint, b.footprint)) if overlapping else 0.0
            stacked_footprints = shared >= footprint_overlap * min(a.area, b.area) and shared > 0
            vertical = on_pair = False
            for upper, lower in ((a, b), (b, a)):
                gap = upper.bottom - lower.top
                if not stacked_footprints or upper.top <= lower.top:
                    continue
                if abs(gap) <= tol:
                    add(upper, "on", lower, gap)
                    vertical = on_pair = True
                elif gap > tol:
                    add(upper, "above", lower, gap)
                    add(lower, "below", upper, gap)
                    vertical = True

            reach = next_to_gap * min(a.size, b.size)
            gap = _polygon_gap(a.footprint, b.footprint) if rough_gap <= reach else rough_gap
            shared_height = _overlap((a.bottom, a.top), (b.bottom, b.top))
            beside = (not on_pair and gap <= reach
                      and shared_height >= vertical_overlap * min(a.height, b.height))
            if beside:
                add(a, "next_to", b, gap)
                add(b, "next_to", a, gap)

            if axes is None or vertical:
                continue
            right, forward = axes
            across_a, across_b = _interval(a.corners @ right), _interval(b.corners @ right)
            depth_shared = _overlap(_interval(a.corners @ forward), _interval(b.corners @ forward))
            narrower = min(across_a[1] - across_a[0], across_b[1] - across_b[0])
            if not (beside or depth_shared > 0) or _overlap(across_a, across_b) > lateral_overlap * narrower:
                continue
            left, rightmost = (a, b) if a.centre @ right < b.centre @ right else (b, a)
            lateral_gap = -_overlap(across_a, across_b)
            add(left, "left_of", rightmost, lateral_gap, viewpoint=viewpoint_name)
            add(rightmost, "right_of", left, lateral_gap, viewpoint=viewpoint_name)

    return sorted(relations, key=lambda r: (r["subject"], r["relation"], r["object"]))


# ----------------------------------------------------------------------------------------------------------------
# the record


def _image_name(view, image_names: list[str], field: str) -> str:
    """A view given as an index (instance_records) or already as an image name (the instances3d exporter)."""
    if isinstance(view, str):
        return view
    if isinstance(view, bool) or not isinstance(view, (int, np.integer)):
        raise ValueError(f"{field}: expected a view index or an image name")
    if not 0 <= int(view) < len(image_names):
        raise ValueError(f"{field}: view {int(view)} out of range for {len(image_names)} image names")
    return image_names[int(view)]


def _optional_number(value, field: str):
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x):
        raise ValueError(f"{field}: expected a finite number or null")
    return _num(x)


def _crop_paths(crops, ids: set[int]) -> dict[int, str]:
    if crops is None:
        return {}
    if not isinstance(crops, Mapping):
        raise ValueError("crops: expected a dict from instance id to a relative file path")
    paths = {}
    for key, path in crops.items():
        try:
            k = int(key)                              # JSON turns integer keys into strings
        except (TypeError, ValueError):
            raise ValueError(f"crops[{key!r}]: expected an instance id as key") from None
        if k not in ids:
            raise ValueError(f"crops[{key!r}]: no instance has id {k}")
        if not isinstance(path, str) and not hasattr(path, "__fspath__"):
            raise ValueError(f"crops[{key!r}]: expected a file path")
        paths[k] = str(path).replace("\\", "/")
    return paths


def _object_entry(i: int, r: Mapping, image_names: list[str], labels_available: bool, crop: str | None) -> dict:
    field = f"instances[{i}]"
    box = _check_box(r["box"], f"{field}.box") if r.get("box") is not None else None
    centroid = r.get("centroid")
    centroid = _finite_vector(centroid, f"{field}.centroid", 3) if centroid is not None else \
        (box["centre"] if box is not None else None)
    label = r.get("label") if labels_available else None
    if label is not None and not isinstance(label, str):
        raise ValueError(f"{field}.label: expected a string or null")
    visible = []
    for j, v in enumerate(r.get("views") or []):
        where = f"{field}.views[{j}]"
        if not isinstance(v, Mapping):
            raise ValueError(f"{where}: expected a dict with view and fraction")
        visible.append({"image": _image_name(v.get("view"), image_names, f"{where}.view"),
                        "fraction": _optional_number(v.get("fraction"), f"{where}.fraction")})
    best = r.get("best_view")
    rect = r.get("best_view_box")
    if rect is not None:
        try:
            rect = [int(x) for x in rect]
        except (TypeError, ValueError):
            rect = None
        if rect is None or len(rect) != 4:
            raise ValueError(f"{field}.best_view_box: expected 4 integers [x0, y0, x1, y1)")
    return {
        "id": int(r["id"]), "label": label, "score": _optional_number(r.get("score"), f"{field}.score"),
        "centroid": [_num(x) for x in centroid] if centroid is not None else None,
        "box": None if box is None else {
            "centre": [_num(x) for x in box["centre"]], "axes": [[_num(x) for x in row] for row in box["axes"]],
            "half_extents": [_num(x) for x in box["half_extents"]],
            "size": [_num(2.0 * x) for x in box["half_extents"]]},
        "dimensions_relative": None,                  # filled once the largest object is known
        "visible_in": visible,
        "best_view": None if best is None else _image_name(best, image_names, f"{field}.best_view"),
        "best_view_box": rect,
        "crop": crop,
    }


def _convention(up: np.ndarray) -> str:
    return ("World frame: OpenCV axes of camera 0 (x right, y down, z forward), in the model's own units (scale "
            "unknown; only ratios of lengths are meaningful). Boxes: centre, axes (rows: unit vectors, "
            "right-handed), half_extents along them; size = 2 * half_extents in the same order; "
            "dimensions_relative = size / the largest extent of any object. up = ["
            + ", ".join(f"{x:.4g}" for x in up) + "], the cameras' mean up direction (photos assumed roughly "
            "upright). Relations come from the boxes alone, with thresholds relative to the objects' sizes: "
            "heights along up, footprints on the plane normal to up, left/right along the viewpoint camera's x "
            "axis flattened onto that plane.")


def grounding_record(records, extrinsics, image_names, crops=None, labels_available=False, viewpoint_index=0, *,
                     up=None, relation_options: Mapping | None = None) -> dict:
    """One JSON-ready dict (plain Python types, no NaN) describing the scene's instances for a language model.

    ``records``: instance records of :mod:`~iggt_lightning.inference.instances3d` (views as indices or image
    names). ``extrinsics`` [S,3,4] world-to-camera, ``image_names`` one per camera. ``crops``: instance id ->
    crop file path, relative to wherever the record is saved. ``labels_available``: whether the records'
    ``label`` (open-vocabulary names) should be passed on; if False every label is null. ``viewpoint_index``: the
    camera whose left and right the relations use. ``up`` overrides :func:`up_direction` (e.g. from a gravity
    sensor); ``relation_options`` are keyword arguments for :func:`spatial_relations`."""
    records = _check_records(records)
    ext = _check_extrinsics(extrinsics)
    if isinstance(image_names, (str, bytes)) or not isinstance(image_names, Sequence) or \
            not all(isinstance(n, str) for n in image_names):
        raise ValueError("image_names: expected a list of strings, one per camera")
    image_names = list(image_names)
    if len(image_names) != len(ext):
        raise ValueError(f"image_names: expected {len(ext)} names (one per camera), got {len(image_names)}")
    if isinstance(viewpoint_index, bool) or not isinstance(viewpoint_index, (int, np.integer)) or \
            not 0 <= int(viewpoint_index) < len(ext):
        raise ValueError(f"viewpoint_index: expected a camera index in 0..{len(ext) - 1}, got {viewpoint_index!r}")
    up_vec = up_direction(ext) if up is None else _check_up(up)
    crop_paths = _crop_paths(crops, {int(r["id"]) for r in records})

    objects = sorted((_object_entry(i, r, image_names, bool(labels_available), crop_paths.get(int(r["id"])))
                      for i, r in enumerate(records)), key=lambda o: o["id"])
    # the unit is unknown, so sizes are also given as fractions of the largest object's largest extent
    largest = max((max(o["box"]["size"]) for o in objects if o["box"] is not None), default=0.0)
    for o in objects:
        if o["box"] is not None and largest > 0:
            o["dimensions_relative"] = [_num(x / largest) for x in o["box"]["size"]]

    viewpoint = image_names[int(viewpoint_index)]
    relations = spatial_relations(records, up_vec, ext[int(viewpoint_index)], viewpoint_name=viewpoint,
                                  **dict(relation_options or {}))
    return {
        "format": FORMAT,
        "convention": _convention(up_vec),
        "up": [_num(x) for x in up_vec],
        "viewpoint": viewpoint,
        "images": image_names,
        "labels_available": bool(labels_available),
        "objects": objects,
        "relations": relations,
        "counts": {"objects": len(objects), "with_boxes": sum(o["box"] is not None for o in objects),
                   "relations": len(relations)},
    }


# ----------------------------------------------------------------------------------------------------------------
# the prompt


PROMPT_TEMPLATE = """\
You are given a 3D scene reconstructed from {n_images} photos, and a list of the objects found in it. Each \
object has an id in square brackets; its crop image (a cut-out of the photo that shows it best) is attached \
under the file name given after "crop:".

Coordinates are in arbitrary units of camera 0's frame (x right, y down, z forward); the scene's up direction \
in that frame is ({up}). Only ratios of lengths are meaningful. A position is the centre of the object's box \
(or of its points, if it has no box); a size is its box's full extents, then in parentheses the same as \
fractions of the largest object in the scene.
{labels_note}

Objects:
{objects}

Spatial relations, computed from the 3D boxes (left and right as seen from photo {viewpoint}):
{relations}

Question: {question}
Answer by naming the object ids in square brackets, e.g. [3], then explain briefly using the relations, \
positions and crops above. If no object fits, say so.
"""


def _short(x: float) -> str:
    return f"{x:.3g}"


def _object_line(o: Mapping) -> str:
    name = o.get("label") or "object"
    # the box centre where there is a box, as the template says; the points' centroid otherwise
    position = o["box"]["centre"] if o.get("box") else o.get("centroid")
    where = "at (" + ", ".join(_short(x) for x in position) + ")" if position else "position unknown"
    if o.get("box"):
        size = "size " + " x ".join(_short(x) for x in o["box"]["size"])
        if o.get("dimensions_relative"):
            size += " (" + " x ".join(_short(x) for x in o["dimensions_relative"]) + ")"
    else:
        size = "size unknown (no relations)"
    n = len(o.get("visible_in") or [])
    crop = o.get("crop") or "none"
    return f"[{o['id']}] {name} {where}, {size}, seen in {n} view{'s' if n != 1 else ''}, crop: {crop}"


def _relation_sentence(r: Mapping) -> str:
    phrase = RELATION_PHRASES.get(r["relation"], "is " + str(r["relation"]).replace("_", " "))
    return f"object {r['subject']} {phrase} object {r['object']}"


def render_prompt(record: dict, question: str) -> str:
    """The text to give a multimodal language model together with the crop images: the objects one per line,
    the relations as sentences, the coordinate convention, then ``question`` and the instruction to answer with
    object ids. The same record and question always give the same text."""
    if not isinstance(record, Mapping) or record.get("format") != FORMAT:
        raise ValueError(f"record.format: expected {FORMAT!r} (a dict made by grounding_record)")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question: expected a non-empty string")
    labels_note = ("Object names come from an open-vocabulary classifier and may be wrong; trust the crops."
                   if record.get("labels_available") else
                   "No class names are available: every object is called \"object\"; tell them apart by their crops.")
    objects = [_object_line(o) for o in sorted(record["objects"], key=lambda o: o["id"])]
    relations = [_relation_sentence(r) for r in record["relations"]]
    return PROMPT_TEMPLATE.format(
        n_images=len(record.get("images") or []), up=", ".join(_short(x) for x in record["up"]),
        labels_note=labels_note, objects="\n".join(objects) or "(none)",
        viewpoint=record.get("viewpoint"), relations="\n".join(relations) or "(none)",
        question=question.strip())
