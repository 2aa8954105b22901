"""Checks that a sample honours the batch contract (docs/batch-contract.md), with errors that name the field.

A reader bug (a view of another size, NaN or negative depth, an id map of the wrong shape) otherwise
surfaces as a shape error deep in a head or as a NaN loss hours into training.
"""
from __future__ import annotations

import torch


class SampleError(ValueError):
    """A sample breaks the batch contract; the message names the scene, the field and what was expected."""


def _where(sample: dict) -> str:
    return f"scene {sample.get('scene_id', '?')!r}"


def _views_of(sample: dict, key: str) -> torch.Tensor:
    """Stack a per-view list (a reader may hand views separately) after checking the sizes agree."""
    value = sample[key]
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, torch.Tensor) for v in value):
            raise SampleError(f"{_where(sample)}: {key} must be a tensor or a non-empty list of per-view tensors")
        sizes = [tuple(v.shape) for v in value]
        if len(set(sizes)) > 1:
            odd = next(i for i, sz in enumerate(sizes) if sz != sizes[0])
            raise SampleError(f"{_where(sample)}: the views of {key} differ in size: view 0 is {sizes[0]}, view {odd} "
                              f"is {sizes[odd]}; every view of a scene must have the same H x W (resize or crop them "
                              "in the dataset's transform)")
        return torch.stack(value)
    if not isinstance(value, torch.Tensor):
        raise SampleError(f"{_where(sample)}: {key} must be a torch.Tensor; got {type(value).__name__}")
    return value


def _expect_shape(sample: dict, key: str, t: torch.Tensor, shape: tuple, meaning: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise SampleError(f"{_where(sample)}: {key} has shape {tuple(t.shape)}; expected {tuple(shape)} ({meaning})")


def check_sample(sample: dict, require: tuple[str, ...] = ("images",)) -> dict:
    """Validate one scene (unbatched, [S, ...] tensors); return it with per-view lists stacked.

    Keys in ``require`` must be present; the others are checked when present. Raises :class:`SampleError`.
    """
    if not isinstance(sample, dict):
        raise SampleError(f"a sample must be a dict of the batch contract; got {type(sample).__name__}")
    missing = [k for k in require if k not in sample]
    if missing:
        raise SampleError(f"{_where(sample)}: missing key(s) {missing}; present: {sorted(sample)}")
    sample = dict(sample)
    images = sample["images"] = _views_of(sample, "images")
    if images.ndim != 4 or images.shape[1] != 3:
        raise SampleError(f"{_where(sample)}: images has shape {tuple(images.shape)}; expected [S,3,H,W] RGB")
    if not images.is_floating_point():
        raise SampleError(f"{_where(sample)}: images has dtype {images.dtype}; expected floats in [0,1]")
    if not bool(torch.isfinite(images).all()):
        raise SampleError(f"{_where(sample)}: images contain NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise SampleError(f"{_where(sample)}: images range over [{lo:.3g}, {hi:.3g}]; expected RGB in [0, 1] "
                          "(divide uint8 images by 255)")
    S, _, H, W = images.shape
    if "depth" in sample:
        depth = sample["depth"] = _views_of(sample, "depth")
        _expect_shape(sample, "depth", depth, (S, H, W), "one depth map per view at the image size")
        bad = ~torch.isfinite(depth)
        if bool(bad.any()):
            view = int(bad.nonzero()[0, 0])
            raise SampleError(f"{_where(sample)}: depth has {int(bad.sum())} NaN/inf value(s) (first in view {view}); "
                              "mark missing depth with 0 instead")
        if bool((depth < 0).any()):
            view = int((depth < 0).nonzero()[0, 0])
            raise SampleError(f"{_where(sample)}: depth has {int((depth < 0).sum())} negative value(s) (first in view "
                              f"{view}, min {float(depth.min()):.3g}); depth is the z of the point in the camera "
                              "frame, >= 0, with 0 marking invalid pixels")
    if "extrinsics" in sample:
        ext = sample["extrinsics"] = _views_of(sample, "extrinsics")
        _expect_shape(sample, "extrinsics", ext, (S, 3, 4), "world-to-camera [R|t] per view, OpenCV")
        if not bool(torch.isfinite(ext).all()):
            raise SampleError(f"{_where(sample)}: extrinsics contain NaN or inf")
        R = ext[..., :3].double()
        err = (R @ R.transpose(-1, -2) - torch.eye(3, dtype=R.dtype)).abs().amax().item()
        det = torch.linalg.det(R)
        if err > 1e-3 or bool((det < 0).any()):
            raise SampleError(f"{_where(sample)}: extrinsics rotations are not proper rotations (|R R^T - I| = {err:.2g},"
                              f" det min {float(det.min()):.3g}); expected world-to-camera [R|t] with R orthonormal")
    if "intrinsics" in sample:
        K = sample["intrinsics"] = _views_of(sample, "intrinsics")
        _expect_shape(sample, "intrinsics", K, (S, 3, 3), "pixel intrinsics per view")
        if not bool(torch.isfinite(K).all()) or bool((K[:, 0, 0] <= 0).any()) or bool((K[:, 1, 1] <= 0).any()):
            raise SampleError(f"{_where(sample)}: intrinsics need finite, positive focal lengths; got fx "
                              f"{K[:, 0, 0].tolist()}, fy {K[:, 1, 1].tolist()}")
    if "valid_mask" in sample:
        valid = sample["valid_mask"] = _views_of(sample, "valid_mask")
        _expect_shape(sample, "valid_mask", valid, (S, H, W), "bool per pixel")
        if valid.dtype != torch.bool:
            raise SampleError(f"{_where(sample)}: valid_mask has dtype {valid.dtype}; expected torch.bool")
        if "depth" in sample and bool((valid & (sample["depth"] <= 0)).any()):
            raise SampleError(f"{_where(sample)}: valid_mask marks pixels whose depth is 0 as valid")
    if "world_points" in sample:
        pts = sample["world_points"] = _views_of(sample, "world_points")
        _expect_shape(sample, "world_points", pts, (S, H, W, 3), "a world point per pixel")
        mask = sample.get("valid_mask")
        check = pts[mask] if mask is not None else pts
        if not bool(torch.isfinite(check).all()):
            raise SampleError(f"{_where(sample)}: world_points contain NaN or inf at valid pixels")
    if "instance_ids" in sample:
        ids = sample["instance_ids"] = _views_of(sample, "instance_ids")
        _expect_shape(sample, "instance_ids", ids, (S, H, W), "an instance id per pixel, shared across views, 0 = none")
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise SampleError(f"{_where(sample)}: instance_ids has dtype {ids.dtype}; expected an integer type")
        if bool((ids < 0).any()):
            raise SampleError(f"{_where(sample)}: instance_ids has negative values; ids are >= 0 with 0 = no instance")
        sample["instance_ids"] = ids.long()
        names = sample.get("class_names")
        if names is not None:
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                raise SampleError(f"{_where(sample)}: class_names must be a list of strings (class_names[i] names "
                                  "instance id i + 1)")
    return sample
