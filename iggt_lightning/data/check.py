"""``iggt data check PATH``: read every frame of a dataset folder and report what is wrong, file by file.

Checks: the layout is recognised (every layout of :mod:`.registry`, by its markers); every frame's image, depth,
camera and id map is present and readable (a cameras-only layout: its images and cameras, and only the checks
that apply to cameras); sizes agree within a frame (maps of another aspect ratio are an error) and image sizes
within a scene; rotations are orthonormal with det +1 (the readers refuse anything else); depth is plausibly
in metres, and per frame: the fractions of NaN/inf, of negative and of valid (> 0) depth pixels (a problem when
NaN/inf and negative pixels together exceed ``max_invalid_depth``, default 1 %, or when a frame has no valid
depth at all; a warning when under ``min_valid_depth``, default 10 %, is valid: zero is the usual "no
measurement" code);
ids are consistent (instances seen in several views of a scene); and the views of a scene agree
geometrically: points unprojected from one view's depth must not land in front of another view's surface
(free space), on the view pairs expected to overlap most (smallest relative rotation, not just consecutive
frames). Both pose hypotheses are scored on the same pairs; when the views agree clearly better with every
pose inverted (:func:`inverted_fits`), the poses are camera-to-world where world-to-camera is expected (or
the reverse), and the check says so, naming the pose file and both fractions, even when the views disagree
by less than ``violation_threshold`` as given; when the views disagree past the threshold and agree with
both depth maps in another unit (millimetres, centimetres, inches, feet where metres are expected), the
depth's unit is named instead.

Depth units are also checked per file (a median outside 0.05..200 m, or whole numbers only with a median of 20
or more: centimetres or millimetres stored as floats), and id maps as stored: float ids that are not whole
numbers (the readers truncate them, merging instances) and the signature of lossy compression (a JPEG saved as
``.png``: isolated pixels and in-between values along the id boundaries). A ``pixel_center`` that is not a
finite number is named as such (its NaN intrinsics would otherwise read as a pose problem).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .frames import DatasetError, DepthStats, Frame, collect_depth_stats, collect_map_reads, pct
from .registry import detection_order, get_layout

DEPTH_METRES = (0.05, 200.0)       # plausible median depth of a frame in metres
WHOLE_DEPTH_MEDIAN = 20.0          # whole-number depth with a median this large: centimetres / millimetres
UNIT_SCALES = ((0.001, "millimetres"), (0.01, "centimetres"), (0.0254, "inches"), (0.3048, "feet"))
LOSSY_IDS = (0.04, 20)             # suspicious fraction of an id map's boundary pixels, and their least number
INVERTED_MARGIN = (3.0, 0.02)      # inverted poses: violations cut by this factor and by this fraction at least


def detect_layout(root: Path) -> str:
    """The layout of a dataset folder, from the files that mark each registered one (the most specific first)."""
    if not root.is_dir():
        raise DatasetError(f"{root} does not exist or is not a folder")
    for record in detection_order():
        if record.found_in(root):
            return record.name
    looked = "; ".join(f"{r.name}: {r.describe_markers()}" for r in detection_order())
    raise DatasetError(f"{root}: no known dataset layout found (looked for {looked}; a + b: both)")


def invert(E: np.ndarray) -> np.ndarray:
    R, t = E[:3, :3], E[:3, 3]
    return np.concatenate([R.T, (-R.T @ t)[:, None]], 1)


def free_space_violations(fa: Frame, fb: Frame, Ea: np.ndarray, Eb: np.ndarray, tol: float = 0.05,
                          max_points: int = 20000) -> tuple[float, int]:
    """Fraction of view a's depth points that, seen from view b, lie clearly *in front of* b's surface:
    impossible for consistent geometry. "In front" means closer than (1 - tol) x the nearest surface among
    the 3x3 pixels around the projection, so rounding at depth edges and grazing angles is not counted.
    Returns (fraction, points compared)."""
    violation, _, n = view_agreement(fa, fb, Ea, Eb, tol=tol, max_points=max_points)
    return violation, n


def view_agreement(fa: Frame, fb: Frame, Ea: np.ndarray, Eb: np.ndarray, depth_scale: float = 1.0,
                   tol: float = 0.05, max_points: int = 20000) -> tuple[float, float, int]:
    """View a's depth points seen from view b, both depth maps times ``depth_scale``: (fraction clearly in front
    of b's surface (:func:`free_space_violations`), fraction on it (within ``tol`` of the 3x3 pixels around the
    projection), points compared). Points behind the surface are neither: occlusion, or depth too large."""
    from ..geometry import project_points, unproject_depth

    da = torch.from_numpy(fa.depth).double() * depth_scale
    pts = unproject_depth(da, torch.from_numpy(Ea), torch.from_numpy(fa.intrinsics))[da > 0]
    if len(pts) > max_points:
        pts = pts[torch.linspace(0, len(pts) - 1, max_points).long()]
    uv, z = project_points(pts, torch.from_numpy(Eb), torch.from_numpy(fb.intrinsics))
    H, W = fb.depth.shape
    j, i = uv[:, 0].round().long(), uv[:, 1].round().long()
    inside = (z > 0) & (j >= 0) & (j < W) & (i >= 0) & (i < H)
    db = torch.from_numpy(fb.depth).double()[None, None] * depth_scale
    pool = torch.nn.functional.max_pool2d
    nearest = -pool(-torch.where(db > 0, db, torch.full_like(db, float("inf"))), 3, stride=1, padding=1)[0, 0]
    farthest = pool(db, 3, stride=1, padding=1)[0, 0]                   # 3x3 minimum and maximum
    near, far = nearest[i[inside], j[inside]], farthest[i[inside], j[inside]]
    zi = z[inside]
    seen = torch.isfinite(near)
    n = int(seen.sum())
    if n == 0:
        return float("nan"), float("nan"), 0
    zs, near, far = zi[seen], near[seen], far[seen]
    on = (zs >= (1 - tol) * near) & (zs <= (1 + tol) * far)
    return float((zs < (1 - tol) * near).double().mean()), float(on.double().mean()), n


@dataclass
class SceneReport:
    name: str
    frames: int = 0
    sizes: set = field(default_factory=set)
    depth_medians: list = field(default_factory=list)
    depth_valid: list = field(default_factory=list)
    depth_frames: list = field(default_factory=list)     # per frame with depth: {name, file, nonfinite, negative, valid}
    ids_per_frame: list = field(default_factory=list)
    views_per_id: dict = field(default_factory=dict)
    violation: float = float("nan")
    violation_inverted: float = float("nan")


@dataclass
class CheckReport:
    root: str
    layout: str
    scenes: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    inputs: list = field(default_factory=list)      # every folder and file the reader reads (input_roots)
    note: str = ""                                  # what was not checked, and why (a cameras-only layout)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(root: str | os.PathLike, layout: str = "auto", max_scenes: int | None = None,
                  max_frames: int | None = None, pairs: int = 8, violation_threshold: float = 0.05,
                  reader_kwargs: dict | None = None, max_invalid_depth: float = 0.01,
                  min_valid_depth: float = 0.1) -> CheckReport:
    """Read (up to ``max_frames`` frames of up to ``max_scenes`` scenes of) a dataset; collect problems.

    ``max_invalid_depth``: the largest fraction of a frame's depth pixels that may be NaN/inf or negative
    (the readers read them as invalid, 0); more is a problem. ``min_valid_depth``: frames with a smaller
    fraction of valid (> 0) depth get a warning; none at all is a problem."""
    if not 0 <= max_invalid_depth <= 1:
        raise ValueError(f"max_invalid_depth must be a fraction in [0, 1]; got {max_invalid_depth}")
    root = Path(root)
    layout = detect_layout(root) if layout == "auto" else layout
    record = get_layout(layout)
    report = CheckReport(str(root), layout)
    if record.cameras_only:     # every frame is still read: files, rotations and intrinsics are checked
        report.note = (f"layout {layout} holds cameras only: images and cameras checked (files present and "
                       "readable, rotations proper, intrinsics finite with positive focal lengths); no depth or "
                       "instance ids, so no depth, id or view-agreement checks")
    try:
        ds = record.reader_class()(root, split="all", num_views=1, min_views=1, **(reader_kwargs or {}))
    except DatasetError as err:
        report.problems.append(str(err))
        return report
    report.skipped = list(ds.skipped)
    report.inputs = [str(p) for p in ds.input_roots()]
    for record in ds.scenes[:max_scenes]:
        sr = SceneReport(record.name)
        report.scenes.append(sr)
        for pattern, n in ds.companions(record).items():
            if n != len(record.frames):
                report.problems.append(f"scene {record.name}: {len(record.frames)} frame(s) but {n} file(s) match "
                                       f"{pattern}; every frame needs exactly one")
        try:
            ds.prepare(record)
        except DatasetError as err:
            report.problems.append(str(err))
            continue
        keys = record.frames if max_frames is None else record.frames[:: max(1, len(record.frames) // max_frames)]
        frames: list[Frame] = []
        cameras_ok = _pixel_center_check(report, ds, record)
        for key in keys:
            try:
                with collect_depth_stats() as depth_stats, collect_map_reads() as maps:
                    f = ds._conform(ds.read_frame(record, key), record)
            except DatasetError as err:
                report.problems.append(str(err))
                continue
            frames.append(f)
            sr.frames += 1
            sr.sizes.add(f.size)
            if f.depth is not None:
                valid = f.depth[f.depth > 0]
                sr.depth_valid.append(valid.size / f.depth.size)
                if valid.size:
                    sr.depth_medians.append(float(np.median(valid)))
                _depth_check(report, sr, record.name, key, f, depth_stats, max_invalid_depth, min_valid_depth)
            if f.instance_ids is not None:
                _ids_check(report, record.name, key, f, maps)
                ids = np.unique(f.instance_ids)
                ids = ids[ids != 0]
                sr.ids_per_frame.append(len(ids))
                for k in ids.tolist():
                    sr.views_per_id[k] = sr.views_per_id.get(k, 0) + 1
        where = f"scene {record.name}"
        if len(sr.sizes) > 1:
            report.problems.append(f"{where}: images differ in size {sorted(sr.sizes)} (H, W); the co-transforms "
                                   "handle it, but one camera per scene is expected; check the files")
        _depth_unit_check(report, sr)
        if sr.views_per_id and len(frames) > 1 and max(sr.views_per_id.values()) < 2:
            report.problems.append(f"{where}: no instance id appears in more than one view; ids must be shared "
                                   "by the views of a scene (per-frame ids cannot train 3D-consistent features)")
        if cameras_ok:
            _geometry_check(report, sr, frames, pairs, violation_threshold, pose_files(layout, ds, record))
    if not report.scenes:
        report.problems.append(f"{root}: no usable scene ({len(report.skipped)} skipped: "
                               f"{report.skipped[:3]})")
    return report


def _depth_check(report: CheckReport, sr: SceneReport, scene: str, key: str, f: Frame, stats: list[DepthStats],
                 max_invalid: float, min_valid: float) -> None:
    """Per-frame depth fractions: NaN/inf and negative pixels (what the reader found in the file), valid ones."""
    s = stats[-1] if stats else None       # the depth map the reader checked (one per frame)
    file = s.path if s else "?"
    valid = float((f.depth > 0).mean()) if f.depth.size else 0.0
    nonfinite, negative = (s.nonfinite, s.negative) if s else (0.0, 0.0)
    good = f.depth[f.depth > 0]
    median = float(np.median(good)) if good.size else None
    whole = bool(good.size) and bool((good == np.round(good)).all())     # e.g. centimetres saved as floats
    sr.depth_frames.append({"name": key, "file": file, "nonfinite": nonfinite, "negative": negative, "valid": valid,
                            "median": median, "whole_numbers": whole})
    where = f"scene {scene}, frame {key}: depth {file}"
    fractions = f"{pct(nonfinite)} NaN/inf, {pct(negative)} negative, {pct(valid)} valid pixels"
    if nonfinite + negative > max_invalid:
        report.problems.append(f"{where}: {fractions}; NaN/inf + negative {pct(nonfinite + negative)} exceeds "
                               f"--max-invalid-depth {max_invalid:g} ({pct(max_invalid)}); the readers read them "
                               "as invalid (0)")
    elif valid == 0:
        report.problems.append(f"{where}: no valid depth at all ({fractions}; 0 = no measurement); drop the frame "
                               "or its depth file")
    elif valid < min_valid:
        report.warnings.append(f"{where}: only {pct(valid)} of the pixels have valid depth ({fractions})")


def _depth_unit_check(report: CheckReport, sr: SceneReport) -> None:
    """Frames whose depth median is implausible for metres, named with their file and median (one problem per
    scene, the worst files first)."""
    lo, hi = DEPTH_METRES
    bad = [d for d in sr.depth_frames if d["median"] is not None
           and (not lo <= d["median"] <= hi or (d["whole_numbers"] and d["median"] >= WHOLE_DEPTH_MEDIAN))]
    if not bad:
        return
    bad.sort(key=lambda d: -abs(math.log(d["median"] / math.sqrt(lo * hi))))
    named = "; ".join(f"{d['file']} (median {d['median']:.4g}{', whole numbers only' if d['whole_numbers'] else ''})"
                      for d in bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
    report.problems.append(f"scene {sr.name}: depth implausible for metres (a frame's median is expected in "
                           f"{lo:g}..{hi:g} m) in {len(bad)} of {len(sr.depth_frames)} frame(s): {named}; wrong "
                           "depth_scale / unit (centimetres, millimetres)?")


def _pixel_center_check(report: CheckReport, ds, record) -> bool:
    """The pixel_center a scene's intrinsics are shifted by must be a number: NaN would make every intrinsic NaN
    (and the geometry check blame the poses). -> whether the scene's cameras can be used."""
    own = record.info.get("pixel_center") if isinstance(record.info, dict) else None
    value = own if own is not None else getattr(ds, "pixel_center", 0.0)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return True
    folder = record.info.get("dir") if own is not None else None
    where = f"{Path(folder) / 'cameras.json'}: pixel_center" if folder else ("pixel_center" if own is not None
                                                                             else "the reader's pixel_center")
    report.problems.append(f"scene {record.name}: {where} is {value!r}; expected a finite number (0.5: pixel j's "
                           "centre at j + 0.5, OpenCV/COLMAP; 0: at j); the views' geometry is not checked")
    return False


def _is_id_map(what: str) -> bool:
    return "instance" in what or "segmentation" in what


def _ids_check(report: CheckReport, scene: str, key: str, f: Frame, maps: list) -> None:
    """The frame's id map as stored (what the reader read, before its cast to integers): float ids that are not
    whole numbers, and the signature of lossy compression."""
    stored = [(path, arr) for path, what, arr in maps if _is_id_map(what)]
    path, arr = stored[-1] if stored else ("", f.instance_ids)
    where = f"scene {scene}, frame {key}: instance ids {path}".rstrip()
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        odd = ~finite | (finite & (arr != np.round(np.where(finite, arr, 0))))
        if odd.any():
            examples = ", ".join(f"{v:g}" for v in np.unique(arr[odd])[:3])
            report.problems.append(f"{where}: {pct(float(odd.mean()))} of the pixels are not whole numbers (e.g. "
                                   f"{examples}); readers truncate ids to integers, so instances merge; store "
                                   "integer ids (a uint16 PNG or an integer .npy)")
        return
    if arr.ndim == 2:
        lossy = lossy_id_signature(arr)
        if lossy is not None:
            share, count, edge_only = lossy
            report.problems.append(f"{where}: looks lossily compressed (a JPEG saved as .png?): {pct(share)} of the "
                                   f"pixels along id boundaries ({count:,}) are isolated or hold an in-between "
                                   f"value, {edge_only} id(s) appear only along edges (a clean id map has almost "
                                   "none); those ids are compression noise: store ids losslessly (PNG/NPY written "
                                   "from the integer map)")


def lossy_id_signature(ids: np.ndarray) -> tuple[float, int, int] | None:
    """(share of boundary pixels that are isolated or between their neighbours' values, their number, ids seen
    only on boundaries) when that share exceeds :data:`LOSSY_IDS`; None for a clean-looking map. Lossy codecs
    smear a step between two ids into a ramp of other values and leave speckles; exact id maps have neither."""
    a = ids.astype(np.int64)
    p = np.pad(a, 1, mode="edge")
    c, left, right, up, down = p[1:-1, 1:-1], p[1:-1, :-2], p[1:-1, 2:], p[:-2, 1:-1], p[2:, 1:-1]
    boundary = (c != left) | (c != right) | (c != up) | (c != down)
    isolated = (c != left) & (c != right) & (c != up) & (c != down)
    ramp = (((np.minimum(left, right) < c) & (c < np.maximum(left, right)))
            | ((np.minimum(up, down) < c) & (c < np.maximum(up, down))))
    odd = int((isolated | ramp).sum())
    share = odd / max(int(boundary.sum()), 1)
    if share < LOSSY_IDS[0] or odd < LOSSY_IDS[1]:
        return None
    inside = np.unique(c[~boundary])
    edge_only = int(np.setdiff1d(np.unique(c[boundary]), inside).size)
    return share, odd, edge_only


def rotation_angle(Ea: np.ndarray, Eb: np.ndarray) -> float:
    """Angle (radians) of the relative rotation between two views: the same whichever way the poses go
    (world-to-camera or camera-to-world), so it ranks pairs before the convention is known."""
    R = Ea[:3, :3] @ Eb[:3, :3].T
    return float(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)))


def overlap_pairs(frames: list[Frame], pairs: int, max_candidates: int = 64) -> list[tuple[int, int]]:
    """Up to ``pairs`` view pairs expected to overlap most: the smallest relative rotations (ties: nearer in the
    sequence), each view in at most two pairs, among up to ``max_candidates`` views spread over the sequence."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), max_candidates)).round().astype(int))
    cand = sorted(((rotation_angle(frames[a].extrinsics, frames[b].extrinsics), b - a, a, b)
                   for i, a in enumerate(idx) for b in idx[i + 1:]))
    chosen, used = [], {}
    for _, _, a, b in cand:
        if used.get(a, 0) < 2 and used.get(b, 0) < 2:
            chosen.append((int(a), int(b)))
            used[a], used[b] = used.get(a, 0) + 1, used.get(b, 0) + 1
            if len(chosen) == pairs:
                break
    return chosen


def pose_files(layout: str, ds, record) -> tuple[str, str]:
    """(the files a scene's poses are read from, the convention the reader expects in them), for messages: the
    reader's own answer for this scene (a layout whose scenes keep poses in more than one form), else what the
    layout registered."""
    d = ds.scene_dir(record)
    own = ds.pose_source(record)
    if own is not None:
        return own
    poses = get_layout(layout).poses
    return (f"{d / poses.where}", poses.convention) if poses else (str(d), "world-to-camera")


def inverted_fits(given: tuple[float, float], inverted: tuple[float, float] | None) -> bool:
    """Whether the views agree clearly better with every pose inverted. ``given`` / ``inverted``: (mean
    free-space violation, mean share of points on the other view's surface) over the same pairs.

    The rule (margin :data:`INVERTED_MARGIN` = (3, 0.02)): inverted, the violations are at most a third of
    those as given, and at least 2 points of percentage fewer, and no fewer points land on the other view's
    surface (a wrong hypothesis can also violate little by putting points behind every surface). It is
    relative, not a threshold on the violations as given: stored the wrong way round, slowly moving views
    can disagree by only a few %, as little as noisy correct poses do in another sequence.

    Why those numbers, measured on a real camera path (tests/test_data_check_real.py: the TUM RGB-D fr2/desk
    ground truth, 8-view windows of 0.5 s to 98 s; the depth rendered from an office model with Kinect-like
    noise and holes, each pose off by ~7 mm / 0.5 deg; no registry ships the sequence's own depth, so real
    depth was not available):

    - correct poses, 44 windows: violations median 0.38 %, max 1.39 %; none named. The inverted hypothesis
      came closest in a 0.5 s window, 0.86 % as given vs 0.30 % inverted (a factor 2.9, but 0.56 points):
      with little motion the two hypotheses barely differ and noise decides, hence the 2-point gap;
    - the same windows stored camera-to-world: 41 of 44 named, the smallest ratio among them 8.6; the 3 missed
      are 0.5 s windows whose two fractions are within 1.5 points of each other. The test's ``slow`` window
      gives 4.2 % as given vs 0.9 % inverted (the red team's real 8-view sequence: 4.6 vs 1.0 %), which the
      former rule (a problem only past 5 %) reported as "no problems found";
    - noisier poses (1.5 cm / 1 deg, 2 cm / 1.5 deg: correct poses then disagree by 4 / 9 % median): the
      smallest ratio among the swapped windows named is 3.0; one 0.5 s window of 44 with correct poses was
      named inverted (8.3 vs 1.6 %), as the former rule (inverted under half, past 5 %) named it too;
    - synthetic fixtures (tests/test_data_check_poses.py, fixtures.write_fixture): 0 % correct vs 33-77 %
      inverted.
    """
    if inverted is None:
        return False
    ratio, gap = INVERTED_MARGIN
    return inverted[0] * ratio <= given[0] and given[0] - inverted[0] >= gap and inverted[1] >= given[1]


def _geometry_check(report: CheckReport, sr: SceneReport, frames: list[Frame], pairs: int, threshold: float,
                    poses: tuple[str, str] = ("the pose files", "world-to-camera")) -> None:
    """Both pose hypotheses (as given, inverted) scored on the same view pairs, chosen by pose proximity; a pair
    counts for a hypothesis where its views see each other's points under it (a pair that shares no pixels under
    one hypothesis says nothing about it). The poses are named as inverted when :func:`inverted_fits`, whether
    or not the views disagree by more than ``threshold`` as given; past ``threshold``, depth in another unit
    (:data:`UNIT_SCALES`) is scored too, so that the message names what is wrong."""
    with_depth = [f for f in frames if f.depth is not None and (f.depth > 0).any()]
    if len(with_depth) < 2:
        return
    chosen = [(with_depth[a], with_depth[b]) for a, b in overlap_pairs(with_depth, pairs)]
    given = _score(chosen, invert_poses=False)
    inverted = _score(chosen, invert_poses=True)
    files, expected = poses
    other = "camera-to-world" if expected == "world-to-camera" else "world-to-camera"
    if given is None:
        hint = (f"; with the poses inverted they do ({100 * inverted[0]:.1f} % disagreeing): the poses look like "
                f"{other} where {expected} is expected" if inverted else "")
        report.problems.append(f"scene {sr.name}: {files}: no pair of nearby views sees the other's points with the "
                               f"given poses; check the pose convention ({expected} expected){hint}")
        return
    sr.violation = given[0]
    sr.violation_inverted = inverted[0] if inverted else float("nan")
    fits = inverted_fits(given, inverted)
    if fits:
        report.problems.append(
            f"scene {sr.name}: {files}: the poses look {other} where {expected} is expected: "
            f"{100 * given[0]:.1f} % of one view's depth points land in front of another view's surface with the "
            f"poses as given, {100 * inverted[0]:.1f} % with every pose inverted ({100 * given[1]:.0f} % vs "
            f"{100 * inverted[1]:.0f} % on the other view's surface); store the inverse of each pose")
        return
    if sr.violation <= threshold:
        return
    what, score = _best_explanation(chosen, given)
    where = (f"scene {sr.name}: the views disagree: {100 * sr.violation:.1f} % of one view's depth points land in "
             "front of another view's surface")
    if what is not None:
        scale, unit = what
        hint = (f"; with every depth map x {scale:g} only {100 * score[0]:.1f} % ({100 * score[1]:.0f} % on the "
                f"other view's surface): the depth looks like {unit} where metres are expected (the poses' "
                "unit); set the reader's depth_scale or convert the depth files")
    else:
        inv = f" ({100 * inverted[0]:.1f} % with every pose inverted)" if inverted else ""
        hint = f"{inv}; check poses ({files}), intrinsics and depth units"
    report.problems.append(where + hint)


def _score(pairs: list[tuple[Frame, Frame]], invert_poses: bool = False,
           depth_scale: float = 1.0) -> tuple[float, float] | None:
    """(mean violation, mean on-surface fraction) over the pairs that see each other's points under the
    hypothesis; None when none does."""
    got = []
    for fa, fb in pairs:
        Ea, Eb = (invert(fa.extrinsics), invert(fb.extrinsics)) if invert_poses else (fa.extrinsics, fb.extrinsics)
        v, on, n = view_agreement(fa, fb, Ea, Eb, depth_scale)
        if n:
            got.append((v, on))
    return (float(np.mean([g[0] for g in got])), float(np.mean([g[1] for g in got]))) if got else None


def _best_explanation(pairs, given: tuple[float, float]):
    """Among depth maps in another unit, the one under which the views agree best: far fewer violations than as
    given, then the most points on the other view's surface (depth scaled too far puts points behind every
    surface, which violates nothing but agrees with nothing). -> ((scale, unit), score) or (None, None)."""
    candidates = [((s, unit), _score(pairs, depth_scale=s)) for s, unit in UNIT_SCALES]
    fits = [(what, sc) for what, sc in candidates if sc is not None and sc[0] < given[0] / 2]
    return max(fits, key=lambda c: c[1][1]) if fits else (None, None)


def format_report(r: CheckReport) -> str:
    lines = [f"{r.root}: layout {r.layout}, {len(r.scenes)} scene(s), {sum(s.frames for s in r.scenes)} frame(s)"]
    if r.note:
        lines.append(r.note)
    if r.skipped:
        lines.append(f"skipped {len(r.skipped)} scene(s): " + "; ".join(f"{n} ({why})" for n, why in r.skipped[:5]))
    head = f"{'scene':<28}{'frames':>7}{'size HxW':>12}{'depth med m':>13}{'valid % (min)':>15}" \
           f"{'NaN/neg % max':>15}{'ids/frame':>10}{'ids>=2 views':>13}{'free-space viol. %':>20}"
    lines.append(head)
    for s in r.scenes:
        size = "/".join(f"{h}x{w}" for h, w in sorted(s.sizes)) or "-"
        med = f"{np.median(s.depth_medians):.3f}" if s.depth_medians else "-"
        valid = f"{100 * np.mean(s.depth_valid):.1f} ({100 * np.min(s.depth_valid):.1f})" if s.depth_valid else "-"
        bad = f"{100 * max(d['nonfinite'] + d['negative'] for d in s.depth_frames):.2f}" if s.depth_frames else "-"
        ids = f"{np.mean(s.ids_per_frame):.1f}" if s.ids_per_frame else "-"
        shared = f"{sum(v >= 2 for v in s.views_per_id.values())}/{len(s.views_per_id)}" if s.views_per_id else "-"
        viol = "-" if np.isnan(s.violation) else f"{100 * s.violation:.2f} (inv {100 * s.violation_inverted:.0f})"
        lines.append(f"{s.name[:27]:<28}{s.frames:>7}{size:>12}{med:>13}{valid:>15}{bad:>15}{ids:>10}{shared:>13}"
                     f"{viol:>20}")
    if r.warnings:
        lines.append(f"\n{len(r.warnings)} warning(s):")
        lines += [f"  - {w}" for w in r.warnings]
    if r.problems:
        lines.append(f"\n{len(r.problems)} problem(s):")
        lines += [f"  - {p}" for p in r.problems]
    else:
        lines.append("\nno problems found")
    return "\n".join(lines)
