"""Camera geometry shared by the losses, the data pipeline and the evaluation.

Conventions (the official IGGT / VGGT ones, ARCHITECTURE.md §1.2):

* extrinsics ``E`` are OpenCV **world-to-camera** ``[R|t]`` of shape ``[...,3,4]`` (x right, y down, z forward);
* intrinsics ``K`` are ``[...,3,3]`` in pixels;
* quaternions are scalar-last ``(x, y, z, w)``;
* the 9-d pose encoding ``absT_quaR_FoV`` is ``[t(3), q(4), fov_h, fov_w]`` with the principal point at the
  image centre;
* pixel ``(u, v)`` = (column index, row index): pixel centres sit at integer coordinates, as in VGGT.
"""
from __future__ import annotations

import torch

__all__ = [
    "quat_to_mat",
    "mat_to_quat",
    "extri_intri_to_pose_encoding",
    "pose_encoding_to_extri_intri",
    "closed_form_inverse_se3",
    "unproject_depth",
    "project_points",
]


# ----------------------------------------------------------------------------- rotations
def quat_to_mat(q: torch.Tensor) -> torch.Tensor:
    """XYZW quaternions ``[...,4]`` -> rotation matrices ``[...,3,3]``.

    Uses ``2/|q|^2`` instead of 2, so an unnormalised ``q`` gives the rotation of ``q/|q|``: the camera
    head predicts the quaternion with a linear activation and never normalises it.
    """
    x, y, z, w = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    rows = (
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    )
    return torch.stack(rows, -1).reshape(*q.shape[:-1], 3, 3)


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not infinite) gradient at 0, so that unused branches cannot leak NaN."""
    pos = x > 0
    return torch.where(pos, x.clamp_min(torch.finfo(x.dtype).tiny).sqrt(), torch.zeros_like(x))


def mat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[...,3,3]`` -> unit XYZW quaternions ``[...,4]`` with ``w >= 0``.

    Every component can be recovered from the diagonal (``4 q_i^2``) and the remaining ones from the
    off-diagonal terms divided by ``4 q_i``. Dividing by a small ``q_i`` loses precision (e.g. ``w`` near a
    180-degree rotation), so each of the four candidate solutions is computed and the one with the largest
    divisor is kept; since ``sum_i 4 q_i^2 = 4`` that divisor is always >= 1.
    """
    m = R.reshape(*R.shape[:-2], 9).unbind(-1)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m
    # 2|q_i| for i = w, x, y, z
    two_abs = _safe_sqrt(torch.stack([
        1 + m00 + m11 + m22,
        1 + m00 - m11 - m22,
        1 - m00 + m11 - m22,
        1 - m00 - m11 + m22,
    ], -1))
    # candidate (x, y, z, w) for each branch, scaled by 2|q_i| * 2; rows: branch w, x, y, z
    cand = torch.stack([
        torch.stack([m21 - m12, m02 - m20, m10 - m01, two_abs[..., 0] ** 2], -1),
        torch.stack([two_abs[..., 1] ** 2, m01 + m10, m02 + m20, m21 - m12], -1),
        torch.stack([m01 + m10, two_abs[..., 2] ** 2, m12 + m21, m02 - m20], -1),
        torch.stack([m02 + m20, m12 + m21, two_abs[..., 3] ** 2, m10 - m01], -1),
    ], -2)
    # the clamp only protects the branches that are not selected (their divisor may be ~0)
    cand = cand / (2.0 * two_abs[..., None].clamp_min(0.1))
    best = two_abs.argmax(-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = torch.nn.functional.normalize(q, dim=-1)  # absorbs slightly non-orthonormal inputs
    # q and -q are the same rotation; a canonical sign makes the encoding (and its loss) unique
    return torch.where(q[..., 3:] < 0, -q, q)


# ----------------------------------------------------------------------------- pose encoding
def extri_intri_to_pose_encoding(extrinsics: torch.Tensor, intrinsics: torch.Tensor,
                                 image_hw: tuple[int, int]) -> torch.Tensor:
    """``E [...,3,4]`` (w2c), ``K [...,3,3]`` -> ``[...,9]`` = ``[t, q_xyzw, fov_h, fov_w]``.

    ``fov_h = 2 atan((H/2) / f_y)``, ``fov_w = 2 atan((W/2) / f_x)``; the principal point is dropped (the
    encoding assumes it at the image centre).
    """
    H, W = image_hw
    t = extrinsics[..., :3, 3]
    q = mat_to_quat(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((H / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / intrinsics[..., 0, 0])
    return torch.cat([t, q, fov_h[..., None], fov_w[..., None]], -1)


def pose_encoding_to_extri_intri(pose_enc: torch.Tensor,
                                 image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[...,9]`` -> ``(E [...,3,4], K [...,3,3])`` with ``f_y = (H/2)/tan(fov_h/2)``,
    ``f_x = (W/2)/tan(fov_w/2)``, ``c_x = W/2``, ``c_y = H/2`` and no skew."""
    H, W = image_hw
    t, q, fov = pose_enc[..., :3], pose_enc[..., 3:7], pose_enc[..., 7:9]
    extrinsics = torch.cat([quat_to_mat(q), t[..., None]], -1)
    fy = (H / 2) / torch.tan(fov[..., 0] / 2)
    fx = (W / 2) / torch.tan(fov[..., 1] / 2)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    intrinsics = torch.stack([
        fx, zero, zero + W / 2,
        zero, fy, zero + H / 2,
        zero, zero, one,
    ], -1).reshape(*fx.shape, 3, 3)
    return extrinsics, intrinsics


# ----------------------------------------------------------------------------- rigid transforms
def closed_form_inverse_se3(se3: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms ``[R|t]`` -> ``[R^T | -R^T t]`` (w2c <-> c2w).

    Accepts ``[...,3,4]`` or ``[...,4,4]`` and returns the same size. The closed form is exact and cheaper
    than a general matrix inverse, and keeps ``R^T`` orthonormal.
    """
    if se3.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"expected [...,3,4] or [...,4,4] transforms, got {tuple(se3.shape)}")
    R, t = se3[..., :3, :3], se3[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    top = torch.cat([Rt, -Rt @ t], -1)
    if se3.shape[-2] == 3:
        return top
    bottom = torch.zeros_like(se3[..., 3:, :])
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], -2)


def _pixel_grid(H: int, W: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) = (column, row) index grids ``[H,W]``; pixel centres at integer coordinates (VGGT)."""
    v, u = torch.meshgrid(torch.arange(H, device=like.device, dtype=like.dtype),
                          torch.arange(W, device=like.device, dtype=like.dtype), indexing="ij")
    return u, v


def unproject_depth(depth: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Depth maps ``[...,H,W]`` -> world points ``[...,H,W,3]``.

    ``X_cam = d * ((u - c_x)/f_x, (v - c_y)/f_y, 1)``, ``X_world = R^T (X_cam - t)`` with ``E = [R|t]``
    world-to-camera. Batch dims of ``depth`` are those of ``E`` / ``K`` (broadcast).
    """
    H, W = depth.shape[-2:]
    u, v = _pixel_grid(H, W, depth)
    K = intrinsics[..., None, None, :, :]  # broadcast over the pixel grid
    x = (u - K[..., 0, 2]) / K[..., 0, 0] * depth
    y = (v - K[..., 1, 2]) / K[..., 1, 1] * depth
    cam = torch.stack([x, y, depth], -1)
    R, t = extrinsics[..., None, None, :3, :3], extrinsics[..., None, None, :3, 3]
    # R^T (X - t), written as a row-vector product to avoid materialising R^T per pixel
    return ((cam - t)[..., None, :] @ R)[..., 0, :]


def project_points(points: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor,
                   eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``[...,N,3]`` -> ``(uv [...,N,2], z [...,N])`` in pixels / camera depth.

    ``X_cam = R X + t``; ``(u, v) = (f_x x/z + c_x, f_y y/z + c_y)``. Points with ``|z| < eps`` are divided
    by ``eps`` instead of 0 so the output stays finite; callers mask on ``z > 0``.
    """
    R, t = extrinsics[..., None, :3, :3], extrinsics[..., None, :3, 3]
    cam = (R @ points[..., None])[..., 0] + t
    z = cam[..., 2]
    z_safe = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
    K = intrinsics[..., None, :, :]
    u = K[..., 0, 0] * cam[..., 0] / z_safe + K[..., 0, 2]
    v = K[..., 1, 1] * cam[..., 1] / z_safe + K[..., 1, 2]
    return torch.stack([u, v], -1), z


def umeyama_alignment(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity ``dst ≈ s * R @ src + t`` for corresponding points [N,3] (Umeyama 1991).

    Returns (s scalar, R [3,3] proper rotation, t [3]); apply as ``s * src @ R.T + t``.
    """
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / src.shape[0]
    U, D, Vh = torch.linalg.svd(cov)
    sign = torch.ones(3, dtype=src.dtype, device=src.device)
    if torch.det(U) * torch.det(Vh) < 0:
        sign[-1] = -1
    R = U @ torch.diag(sign) @ Vh
    var = (xs * xs).sum(1).mean()
    s = (D * sign).sum() / var.clamp(min=torch.finfo(src.dtype).tiny)
    return s, R, mu_d - s * R @ mu_s
