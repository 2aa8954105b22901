"""``iggt data check PATH``: read every frame of a dataset folder and report what is wrong, file by file.

Checks: the layout is recognised; every frame's image, depth, camera and id map is present and readable;
sizes agree within a frame (maps of another aspect ratio are an error) and image sizes within a scene;
rotations are orthonormal with det +1 (the readers refuse anything else); depth is plausibly in metres, and
per frame: the fractions of NaN/inf, of negative and of valid (> 0) depth pixels (a problem when NaN/inf and
negative pixels together exceed ``max_invalid_depth``, default 1 %, or when a frame has no valid depth at all;
a warning when under ``min_valid_depth``, default 10 %, is valid: zero is the usual "no measurement" code);
ids are consistent (instances seen in several views of a scene); and the views of a scene agree
geometrically: points unprojected from one view's depth must not land in front of another view's surface
(free space), on the view pairs expected to overlap most (smallest relative rotation, not just consecutive
frames). Both pose hypotheses are scored on the same pairs; when the views disagree with the poses as given
but not with the poses inverted, the poses are camera-to-world where world-to-camera is expected (or the
reverse), and the check says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .frames import DatasetError, DepthStats, Frame, collect_depth_stats, pct

AUTO_MARKERS = (  # (layout, glob patterns any of which marks it), most specific first
    ("scannetpp", ("*/scene_iphone_metadata.npz",)),
    ("infinigen", ("*/*/frames/Image",)),
    ("scannet", ("*/color", "*/pose")),
    ("re10k", ("*/rgb", "*/cam")),
    ("scene_folder", ("cameras.json", "cam", "*/cameras.json", "*/cam")),
)


def detect_layout(root: Path) -> str:
    """The layout of a dataset folder, from the files that mark each one."""
    if not root.is_dir():
        raise DatasetError(f"{root} does not exist or is not a folder")
    for layout, patterns in AUTO_MARKERS:
        if layout in ("scannet", "re10k"):
            if all(any(root.glob(p)) for p in patterns):
                return layout
        elif any(any(root.glob(p)) for p in patterns):
            return layout
    raise DatasetError(f"{root}: no known dataset layout found (looked for ScanNet++ scene_iphone_metadata.npz, "
                       "Infinigen frames/Image, ScanNet color/+pose/, RE10K rgb/+cam/, a scene folder with "
                       "cameras.json or cam/)")


def invert(E: np.ndarray) -> np.ndarray:
    R, t = E[:3, :3], E[:3, 3]
    return np.concatenate([R.T, (-R.T @ t)[:, None]], 1)


def free_space_violations(fa: Frame, fb: Frame, Ea: np.ndarray, Eb: np.ndarray, tol: float = 0.05,
                          max_points: int = 20000) -> tuple[float, int]:
    """Fraction of view a's depth points that, seen from view b, lie clearly *in front of* b's surface:
    impossible for consistent geometry. "In front" means closer than (1 - tol) x the nearest surface among
    the 3x3 pixels around the projection, so rounding at depth edges and grazing angles is not counted.
    Returns (fraction, points compared)."""
    from ..geometry import project_points, unproject_depth

    da = torch.from_numpy(fa.depth).double()
    pts = unproject_depth(da, torch.from_numpy(Ea), torch.from_numpy(fa.intrinsics))[da > 0]
    if len(pts) > max_points:
        pts = pts[torch.linspace(0, len(pts) - 1, max_points).long()]
    uv, z = project_points(pts, torch.from_numpy(Eb), torch.from_numpy(fb.intrinsics))
    H, W = fb.depth.shape
    j, i = uv[:, 0].round().long(), uv[:, 1].round().long()
    inside = (z > 0) & (j >= 0) & (j < W) & (i >= 0) & (i < H)
    db = torch.from_numpy(fb.depth).double()
    db = torch.where(db > 0, db, torch.full_like(db, float("inf")))
    nearest = -torch.nn.functional.max_pool2d(-db[None, None], 3, stride=1, padding=1)[0, 0]   # 3x3 minimum
    surface = nearest[i[inside], j[inside]]
    zi = z[inside]
    seen = torch.isfinite(surface)
    n = int(seen.sum())
    if n == 0:
        return float("nan"), 0
    return float((zi[seen] < (1 - tol) * surface[seen]).double().mean()), n


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
    from .fixtures import reader_class

    root = Path(root)
    layout = detect_layout(root) if layout == "auto" else layout
    report = CheckReport(str(root), layout)
    try:
        ds = reader_class(layout)(root, split="all", num_views=1, min_views=1, **(reader_kwargs or {}))
    except DatasetError as err:
        report.problems.append(str(err))
        return report
    report.skipped = list(ds.skipped)
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
        for key in keys:
            try:
                with collect_depth_stats() as depth_stats:
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
                ids = np.unique(f.instance_ids)
                ids = ids[ids != 0]
                sr.ids_per_frame.append(len(ids))
                for k in ids.tolist():
                    sr.views_per_id[k] = sr.views_per_id.get(k, 0) + 1
        where = f"scene {record.name}"
        if len(sr.sizes) > 1:
            report.problems.append(f"{where}: images differ in size {sorted(sr.sizes)} (H, W); the co-transforms "
                                   "handle it, but one camera per scene is expected; check the files")
        if sr.depth_medians:
            med = float(np.median(sr.depth_medians))
            if not 0.05 <= med <= 200:
                report.problems.append(f"{where}: median depth {med:.4g} is implausible for metres (expected "
                                       "0.05..200); wrong depth_scale / unit?")
        if sr.views_per_id and len(frames) > 1 and max(sr.views_per_id.values()) < 2:
            report.problems.append(f"{where}: no instance id appears in more than one view; ids must be shared "
                                   "by the views of a scene (per-frame ids cannot train 3D-consistent features)")
        _geometry_check(report, sr, frames, pairs, violation_threshold)
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
    sr.depth_frames.append({"name": key, "file": file, "nonfinite": nonfinite, "negative": negative, "valid": valid})
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


def _geometry_check(report: CheckReport, sr: SceneReport, frames: list[Frame], pairs: int, threshold: float) -> None:
    """Both pose hypotheses (as given = world-to-camera, inverted = camera-to-world) scored on the same view
    pairs, chosen by pose proximity; a pair counts for a hypothesis where its views see each other's points
    under it (a pair that shares no pixels under one hypothesis says nothing about it)."""
    with_depth = [f for f in frames if f.depth is not None and (f.depth > 0).any()]
    if len(with_depth) < 2:
        return
    given, inverted = [], []
    for a, b in overlap_pairs(with_depth, pairs):
        fa, fb = with_depth[a], with_depth[b]
        v, n = free_space_violations(fa, fb, fa.extrinsics, fb.extrinsics)
        vi, ni = free_space_violations(fa, fb, invert(fa.extrinsics), invert(fb.extrinsics))
        if n:
            given.append(v)
        if ni:
            inverted.append(vi)
    if not given:
        hint = (f"; with the poses inverted they do ({100 * float(np.mean(inverted)):.1f} % disagreeing): the poses "
                "look like camera-to-world where world-to-camera is expected" if inverted else "")
        report.problems.append(f"scene {sr.name}: no pair of nearby views sees the other's points with the given "
                               f"poses; check the pose convention (world-to-camera expected){hint}")
        return
    sr.violation = float(np.mean(given))
    sr.violation_inverted = float(np.mean(inverted)) if inverted else float("nan")
    if sr.violation > threshold:
        flips = bool(inverted) and sr.violation_inverted < sr.violation / 2
        hint = (f"; with the poses inverted only {100 * sr.violation_inverted:.1f} %: the poses look like "
                "camera-to-world where world-to-camera is expected (or the reverse)"
                if flips else "; check poses, intrinsics and depth units")
        report.problems.append(f"scene {sr.name}: the views disagree: {100 * sr.violation:.1f} % of one view's "
                               f"depth points land in front of another view's surface{hint}")


def format_report(r: CheckReport) -> str:
    lines = [f"{r.root}: layout {r.layout}, {len(r.scenes)} scene(s), {sum(s.frames for s in r.scenes)} frame(s)"]
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
