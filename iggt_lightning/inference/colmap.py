"""A COLMAP model of a prediction that downstream tools can optimise: cameras, posed images with 2D points,
and 3D points with tracks.

Every exported 3D point comes from one pixel of one view (its *source*); it is observed there (at that pixel's
centre) and in every other view where it projects inside the image, in front of the camera, and agrees with
that view's own point map (the depth of the view's point at the projected pixel within ``depth_tolerance``,
relative), i.e. where it is visible and not occluded. The cloud is first thinned to ``max_points`` by voxels
(the most confident point of each voxel; the voxel size found by bisection) so that the model stays small.

Files: the classic COLMAP model (``cameras``, ``images``, ``points3D``) as ``.txt`` or ``.bin``; one PINHOLE
camera per view; pixel coordinates with pixel i's centre at i + 0.5 (COLMAP's own convention, and ours for
photo intrinsics). ``bundle_adjust`` refines the written model with pycolmap (an optional extra).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iggt_lightning.fileio import atomic_write

from .export import camera_is_valid, colmap_names, rotation_to_quaternion, to_uint8, write_text

FORMATS = ("txt", "bin")


@dataclass
class Tracks:
    """points [N,3] (world), colours [N,3] uint8, errors [N] (mean reprojection error, px), per view v:
    ``xy[v]`` [M_v,2] observations (photo pixels) and ``point_of[v]`` [M_v] (index into points)."""

    points: np.ndarray
    colours: np.ndarray
    errors: np.ndarray
    xy: list[np.ndarray]
    point_of: list[np.ndarray]

    @property
    def mean_track_length(self) -> float:
        return float(sum(len(p) for p in self.point_of) / max(len(self.points), 1))


def voxel_subsample(xyz: np.ndarray, confidence: np.ndarray, max_points: int, iterations: int = 10) -> np.ndarray:
    """Indices of at most ``max_points`` points: the most confident per voxel, for (about) the smallest voxel size
    that gives no more than ``max_points`` voxels (bisection on a log scale). Deterministic."""
    n = len(xyz)
    if n <= max_points:
        return np.arange(n)
    order = np.argsort(-confidence, kind="stable")   # a voxel's first point in this order is its most confident
    pts = xyz[order] - xyz.min(0)
    extent = np.maximum(pts.max(0), 1e-12)
    guess = float(np.prod(extent) / max_points) ** (1 / 3) or float(extent.max()) / max_points
    lo, hi = guess / 16, max(guess * 16, float(extent.max()))

    def pick(size: float) -> np.ndarray:
        cells = np.floor(pts / size).astype(np.int64)
        dims = cells.max(0) + 1
        if float(np.prod(dims.astype(np.float64))) < 2.0 ** 62:   # one int64 key per voxel: a fast 1-D unique
            key = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
            _, first = np.unique(key, return_index=True)
        else:
            _, first = np.unique(cells, axis=0, return_index=True)
        return order[first]

    best = pick(hi)
    for _ in range(iterations):
        mid = float(np.sqrt(lo * hi))
        chosen = pick(mid)
        if len(chosen) > max_points:
            lo = mid
        else:
            hi, best = mid, chosen
    return np.sort(best)


def _project(X: np.ndarray, E: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = X @ E[:3, :3].T + E[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = (cam[:, :2] / z[:, None]) @ K[:2, :2].T + K[:2, 2]
    return xy, z


def build_tracks(cloud, extrinsics: np.ndarray, intrinsics: np.ndarray, photo_sizes: list[tuple[int, int]],
                 to_model: list[tuple[tuple[float, float], tuple[float, float]]], views: list[int],
                 max_points: int, depth_tolerance: float = 0.03) -> Tracks:
    """Tracks of the ``cloud``'s points (a :class:`~.scene.Cloud`: points with their source view and pixel) over
    the views ``views`` (indices with valid cameras; ``extrinsics``/``intrinsics`` [len(views)] in photo pixels;
    ``to_model[i]``: the (scale, offset) mapping photo pixels of view ``views[i]`` to model-input pixels). A point
    is observed in its own view at its pixel and in every other view where it projects onto that view's own
    surface (within ``depth_tolerance``); each view's surface is read when its turn comes."""
    W, H = cloud.model_size
    src_all = cloud.views
    candidates = np.flatnonzero(np.isin(src_all, views))
    chosen = candidates[voxel_subsample(cloud.points[candidates].astype(np.float64), cloud.confidence[candidates],
                                        max_points)]
    X = cloud.points[chosen].astype(np.float64)
    src_view = src_all[chosen]
    pix = cloud.pixels[chosen]
    u, v = pix % W, pix // W
    xy_of, point_of = [], []
    errors_sum = np.zeros(len(X))
    counts = np.zeros(len(X))
    for i, view in enumerate(views):
        E, K = extrinsics[i], intrinsics[i]
        # the reference depth of the view: its own point map seen from its own camera (inf where not exported)
        z_own = cloud.surface(view) @ E[2, :3] + E[2, 3]
        own_depth = np.where(cloud.kept_in(view), z_own, np.inf).reshape(H, W)
        Wp, Hp = photo_sizes[i]
        (sx, sy), (ox, oy) = to_model[i]
        xy, z = _project(X, E, K)
        source = src_view == view
        # the source pixel's centre, in photo pixels: model-input centre (u + 0.5) back through the transform
        obs = xy.copy()
        obs[source, 0] = (u[source] + 0.5 - ox) / sx
        obs[source, 1] = (v[source] + 0.5 - oy) / sy
        mx, my = xy[:, 0] * sx + ox, xy[:, 1] * sy + oy          # model-input coordinates of the projection
        inside = (z > 0) & np.isfinite(xy).all(1) & (xy[:, 0] >= 0) & (xy[:, 0] < Wp) & (xy[:, 1] >= 0) & \
            (xy[:, 1] < Hp) & (mx >= 0) & (mx < W) & (my >= 0) & (my < H)
        ix = np.clip(np.nan_to_num(np.floor(mx), nan=0.0, posinf=0.0, neginf=0.0), 0, W - 1).astype(np.int64)
        iy = np.clip(np.nan_to_num(np.floor(my), nan=0.0, posinf=0.0, neginf=0.0), 0, H - 1).astype(np.int64)
        ref = own_depth[iy, ix]
        visible = inside & (np.abs(z - ref) <= depth_tolerance * np.abs(ref))
        idx = np.flatnonzero(source | visible)
        xy_of.append(obs[idx])
        point_of.append(idx)
        err = np.linalg.norm(xy[idx] - obs[idx], axis=1)
        np.add.at(errors_sum, idx, np.nan_to_num(err, nan=0.0))
        np.add.at(counts, idx, 1)
    return Tracks(X, to_uint8(cloud.colours[chosen]), errors_sum / np.maximum(counts, 1), xy_of, point_of)


def _check(extrinsics, intrinsics, names) -> None:
    for E, K, name in zip(extrinsics, intrinsics, names):
        if not camera_is_valid(E, K):
            raise ValueError(f"COLMAP model: view {name!r} has a non-finite or non-positive camera")
        if colmap_names([name])[0] != name:
            raise ValueError(f"COLMAP model: image name {name!r} cannot be stored (spaces or non-printable characters)")


def write_model(folder: str | os.PathLike, extrinsics: np.ndarray, intrinsics: np.ndarray,
                sizes: list[tuple[int, int]], names: list[str], ids: list[int], tracks: Tracks,
                fmt: str = "txt") -> None:
    """``cameras``, ``images`` and ``points3D`` in COLMAP's text or binary format.
    IMAGE_ID = CAMERA_ID = ``ids[i]``; POINT3D_ID = 1..N."""
    if fmt not in FORMATS:
        raise ValueError(f"colmap_format must be one of {FORMATS}; got {fmt!r}")
    _check(extrinsics, intrinsics, names)
    if len(tracks.points) and not np.isfinite(tracks.points).all():
        raise ValueError("COLMAP model: non-finite 3D points")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # per point its track: (image id, index of the observation among that image's 2D points)
    track_img, track_idx, track_pt = [], [], []
    for i, pts in enumerate(tracks.point_of):
        track_img.append(np.full(len(pts), ids[i], np.int64))
        track_idx.append(np.arange(len(pts), dtype=np.int64))
        track_pt.append(pts)
    t_img, t_idx, t_pt = (np.concatenate(a) if a else np.zeros(0, np.int64) for a in (track_img, track_idx, track_pt))
    order = np.argsort(t_pt, kind="stable")
    t_img, t_idx, t_pt = t_img[order], t_idx[order], t_pt[order]
    starts = np.searchsorted(t_pt, np.arange(len(tracks.points) + 1))
    writer = _write_text if fmt == "txt" else _write_binary
    writer(folder, extrinsics, intrinsics, sizes, names, ids, tracks, t_img, t_idx, starts)


def _write_text(folder, extrinsics, intrinsics, sizes, names, ids, tracks, t_img, t_idx, starts) -> None:
    n_obs = sum(len(p) for p in tracks.point_of)
    cams = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
            f"# Number of cameras: {len(names)}"]
    imgs = ["# Image list with two lines of data per image:",
            "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)",
            f"# Number of images: {len(names)}, mean observations per image: {n_obs / max(len(names), 1):g}"]
    for i, (E, K, (W, H), name) in enumerate(zip(extrinsics, intrinsics, sizes, names)):
        cams.append(f"{ids[i]} PINHOLE {W} {H} {K[0, 0]:.10g} {K[1, 1]:.10g} {K[0, 2]:.10g} {K[1, 2]:.10g}")
        q, t = rotation_to_quaternion(E[:3, :3]), E[:3, 3]
        imgs.append(f"{ids[i]} {q[0]:.12g} {q[1]:.12g} {q[2]:.12g} {q[3]:.12g} {t[0]:.12g} {t[1]:.12g} {t[2]:.12g} "
                    f"{ids[i]} {name}")
        obs = np.empty((len(tracks.point_of[i]), 3), dtype=object)   # one % over the line: C-speed formatting
        obs[:, 0], obs[:, 1], obs[:, 2] = tracks.xy[i][:, 0], tracks.xy[i][:, 1], tracks.point_of[i] + 1
        imgs.append(" ".join(["%.6f %.6f %d"] * len(obs)) % tuple(obs.ravel().tolist()))
    pts = ["# 3D point list with one line of data per point:",
           "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
           f"# Number of points: {len(tracks.points)}, mean track length: {tracks.mean_track_length:g}"]
    pairs = np.stack([t_img, t_idx], 1).ravel().tolist()
    heads = zip(range(1, len(tracks.points) + 1), *tracks.points.T.tolist(), *tracks.colours.T.tolist(),
                tracks.errors.tolist())
    for j, head in enumerate(heads):
        k0, k1 = int(starts[j]), int(starts[j + 1])
        pts.append("%d %.7g %.7g %.7g %d %d %d %.6g" % head + " %d %d" * (k1 - k0) % tuple(pairs[2 * k0:2 * k1]))
    write_text(folder / "cameras.txt", "\n".join(cams) + "\n")
    write_text(folder / "images.txt", "\n".join(imgs) + "\n")
    write_text(folder / "points3D.txt", "\n".join(pts) + "\n")


def _write_binary(folder, extrinsics, intrinsics, sizes, names, ids, tracks, t_img, t_idx, starts) -> None:
    pinhole = 1    # COLMAP's model id of PINHOLE (fx, fy, cx, cy)

    def cameras(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(names)))
            for i, (K, (W, H)) in enumerate(zip(intrinsics, sizes)):
                f.write(struct.pack("<iiQQdddd", ids[i], pinhole, W, H, K[0, 0], K[1, 1], K[0, 2], K[1, 2]))

    def images(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(names)))
            for i, (E, name) in enumerate(zip(extrinsics, names)):
                q, t = rotation_to_quaternion(E[:3, :3]), E[:3, 3]
                f.write(struct.pack("<I7dI", ids[i], *q, *t, ids[i]))
                f.write(name.encode("utf-8") + b"\0")
                obs = np.zeros(len(tracks.point_of[i]), dtype=[("x", "<f8"), ("y", "<f8"), ("p", "<i8")])
                obs["x"], obs["y"] = tracks.xy[i][:, 0], tracks.xy[i][:, 1]
                obs["p"] = tracks.point_of[i] + 1
                f.write(struct.pack("<Q", len(obs)))
                f.write(obs.tobytes())

    def points(tmp: str) -> None:
        n = len(tracks.points)
        head = np.zeros(n, dtype=[("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("err", "<f8"), ("len", "<u8")])
        head["id"] = np.arange(1, n + 1)
        head["xyz"], head["rgb"], head["err"] = tracks.points, tracks.colours, tracks.errors
        head["len"] = np.diff(starts)
        pairs = np.stack([t_img, t_idx], 1).astype("<u4")
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", n))
            for j in range(n):   # records interleave a fixed head and a variable track
                f.write(head[j].tobytes())
                f.write(pairs[starts[j]:starts[j + 1]].tobytes())

    atomic_write(folder / "cameras.bin", cameras)
    atomic_write(folder / "images.bin", images)
    atomic_write(folder / "points3D.bin", points)


def bundle_adjust(folder: str | os.PathLike, fmt: str, refine_focal: bool = False, robust_scale: float | None = None
                  ) -> dict:
    """Refine the model in ``folder`` with pycolmap's bundle adjustment (poses, points; the focal lengths too
    with ``refine_focal``; a Cauchy loss of scale ``robust_scale`` pixels when given, so that a few wrong
    observations do not pull the cameras) and write it back in place, without the points only one view sees;
    returns the mean reprojection errors before (all points) and after (pixels)."""
    try:
        import pycolmap
    except ImportError as err:
        raise ValueError("--ba needs pycolmap: pip install 'iggt-lightning[colmap]'") from err
    rec = pycolmap.Reconstruction(str(folder))
    rec.update_point_3d_errors()          # the errors stored in the file are whatever its writer put there
    before = float(rec.compute_mean_reprojection_error())
    # COLMAP's adjuster needs every point seen twice; a point seen once constrains nothing and an SfM model
    # never holds one, so the refined model keeps the multi-view points only
    single = [pid for pid, p in rec.points3D.items() if len(p.track.elements) < 2]
    for pid in single:
        rec.delete_point3D(pid)
    if rec.num_points3D() == 0:
        raise ValueError("--ba: no 3D point is seen by two views; nothing to adjust")
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_focal_length = bool(refine_focal)
    options.print_summary = False
    if robust_scale is not None:
        options.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
        options.ceres.loss_function_scale = float(robust_scale)
    pycolmap.logging.minloglevel = max(int(pycolmap.logging.minloglevel), 1)    # its INFO lines are not for users
    options.refine_principal_point = False
    options.refine_extra_params = False
    pycolmap.bundle_adjustment(rec, options)
    rec.update_point_3d_errors()
    after = float(rec.compute_mean_reprojection_error())
    if fmt == "bin":
        rec.write_binary(str(folder))
    else:
        rec.write_text(str(folder))
    return {"reprojection_error_before": before, "reprojection_error_after": after,
            "points_seen_once_removed": len(single), "points": int(rec.num_points3D()),
            "observations": int(rec.compute_num_observations())}
