"""Geometry conventions: pose encoding round trips, rotations, SE(3) inverse, (un)projection."""
import math

import pytest
import torch

from iggt_lightning.geometry import (
    closed_form_inverse_se3,
    extri_intri_to_pose_encoding,
    mat_to_quat,
    pose_encoding_to_extri_intri,
    project_points,
    quat_to_mat,
    unproject_depth,
)

DTYPE = torch.float64


def axis_angle_to_mat(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, an independent construction of rotations for the tests."""
    axis = axis / axis.norm(dim=-1, keepdim=True)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    Kx = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*axis.shape[:-1], 3, 3)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    eye = torch.eye(3, dtype=axis.dtype).expand_as(Kx)
    return eye + s * Kx + (1 - c) * Kx @ Kx


def random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=g, dtype=DTYPE)
    angle = torch.rand(n, generator=g, dtype=DTYPE) * math.pi
    return axis_angle_to_mat(axis, angle)


def near_half_turns() -> torch.Tensor:
    """Rotations at and within 1e-6..1e-3 rad of 180 degrees, about generic and coordinate axes: the
    cases where w ~ 0 and a naive w-first conversion divides by ~0."""
    axes = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -2, 3], [-0.3, 0.2, -0.9]], dtype=DTYPE)
    angles = torch.tensor([math.pi, math.pi - 1e-6, math.pi - 1e-3], dtype=DTYPE)
    return axis_angle_to_mat(axes.repeat_interleave(3, 0), angles.repeat(axes.shape[0]))


def random_cameras(shape=(2, 3), H=48, W=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    R = random_rotations(n, seed)
    t = torch.randn(n, 3, 1, generator=g, dtype=DTYPE)
    E = torch.cat([R, t], -1).reshape(*shape, 3, 4)
    fx = 40 + 30 * torch.rand(n, generator=g, dtype=DTYPE)
    fy = 40 + 30 * torch.rand(n, generator=g, dtype=DTYPE)
    K = torch.zeros(n, 3, 3, dtype=DTYPE)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx, fy, W / 2, H / 2, 1
    return E, K.reshape(*shape, 3, 3)


# ----------------------------------------------------------------------------- rotations
def test_quat_to_mat_known_rotation_and_scale_invariance():
    # 90 degrees about z: (x, y, z, w) = (0, 0, sin 45, cos 45) maps x -> y
    q = torch.tensor([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)], dtype=DTYPE)
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=DTYPE)
    torch.testing.assert_close(quat_to_mat(q), expected)
    torch.testing.assert_close(quat_to_mat(3.7 * q), expected)  # unnormalised q
    torch.testing.assert_close(quat_to_mat(-q), expected)


@pytest.mark.parametrize("rotations", [random_rotations(500), near_half_turns()], ids=["random", "near-180"])
def test_mat_quat_round_trip(rotations):
    q = mat_to_quat(rotations)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(q.shape[0], dtype=DTYPE))
    assert (q[..., 3] >= 0).all()
    torch.testing.assert_close(quat_to_mat(q), rotations, atol=1e-10, rtol=0)


def test_mat_to_quat_standardises_sign_and_identity():
    q = mat_to_quat(torch.eye(3, dtype=DTYPE))
    torch.testing.assert_close(q, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=DTYPE))
    g = torch.Generator().manual_seed(1)
    q0 = torch.nn.functional.normalize(torch.randn(100, 4, generator=g, dtype=DTYPE), dim=-1)
    q1 = mat_to_quat(quat_to_mat(q0))
    torch.testing.assert_close(q1, torch.where(q0[:, 3:] < 0, -q0, q0))


def test_mat_to_quat_gradient_is_finite():
    R = torch.cat([torch.eye(3, dtype=DTYPE)[None], near_half_turns()]).requires_grad_(True)
    mat_to_quat(R).sum().backward()
    assert torch.isfinite(R.grad).all()


# ----------------------------------------------------------------------------- pose encoding
def test_pose_encoding_values():
    H, W = 48, 64
    E = torch.cat([torch.eye(3, dtype=DTYPE), torch.tensor([[1.0], [2.0], [3.0]], dtype=DTYPE)], -1)
    K = torch.tensor([[32.0, 0, 32], [0, 24.0, 24], [0, 0, 1]], dtype=DTYPE)
    enc = extri_intri_to_pose_encoding(E, K, (H, W))
    # fov = 2 atan((size/2)/f) = 2 atan(1) = 90 degrees for both axes here
    expected = torch.tensor([1, 2, 3, 0, 0, 0, 1, math.pi / 2, math.pi / 2], dtype=DTYPE)
    torch.testing.assert_close(enc, expected)


def test_pose_encoding_round_trips():
    H, W = 48, 64
    E, K = random_cameras((2, 3), H, W)
    enc = extri_intri_to_pose_encoding(E, K, (H, W))
    assert enc.shape == (2, 3, 9)
    E2, K2 = pose_encoding_to_extri_intri(enc, (H, W))
    torch.testing.assert_close(E2, E)
    torch.testing.assert_close(K2, K)  # principal point at the centre by construction
    torch.testing.assert_close(extri_intri_to_pose_encoding(E2, K2, (H, W)), enc)


def test_pose_encoding_to_extri_intri_unnormalised_quaternion():
    enc = torch.tensor([0.5, -1, 2, 0, 0, 2 * math.sin(math.pi / 4), 2 * math.cos(math.pi / 4), 1.0, 1.2],
                       dtype=DTYPE)
    E, K = pose_encoding_to_extri_intri(enc, (30, 40))
    torch.testing.assert_close(E[:, :3], torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=DTYPE))
    torch.testing.assert_close(K[1, 1], torch.tensor(15 / math.tan(0.5), dtype=DTYPE))
    torch.testing.assert_close(K[0, 0], torch.tensor(20 / math.tan(0.6), dtype=DTYPE))
    torch.testing.assert_close(K[:2, 2], torch.tensor([20.0, 15.0], dtype=DTYPE))


# ----------------------------------------------------------------------------- SE(3)
def test_closed_form_inverse_composes_to_identity():
    E, _ = random_cameras((4,))
    inv = closed_form_inverse_se3(E)
    assert inv.shape == E.shape
    bottom = torch.tensor([[0, 0, 0, 1]], dtype=DTYPE).expand(4, 1, 4)
    E4 = torch.cat([E, bottom], -2)
    inv4 = closed_form_inverse_se3(E4)
    assert inv4.shape == (4, 4, 4)
    torch.testing.assert_close(inv4[:, :3], inv)
    torch.testing.assert_close(inv4[:, 3], bottom[:, 0])
    eye = torch.eye(4, dtype=DTYPE).expand(4, 4, 4)
    torch.testing.assert_close(E4 @ inv4, eye)
    torch.testing.assert_close(inv4 @ E4, eye)
    torch.testing.assert_close(closed_form_inverse_se3(inv), E)


def test_closed_form_inverse_rejects_bad_shape():
    with pytest.raises(ValueError):
        closed_form_inverse_se3(torch.zeros(3, 3))


# ----------------------------------------------------------------------------- (un)projection
def test_unproject_then_project_returns_pixel_grid_and_depth():
    H, W = 6, 8
    E, K = random_cameras((2, 3), H, W)
    g = torch.Generator().manual_seed(3)
    depth = 0.5 + 4 * torch.rand(2, 3, H, W, generator=g, dtype=DTYPE)
    world = unproject_depth(depth, E, K)
    assert world.shape == (2, 3, H, W, 3)
    uv, z = project_points(world.reshape(2, 3, H * W, 3), E, K)
    v, u = torch.meshgrid(torch.arange(H, dtype=DTYPE), torch.arange(W, dtype=DTYPE), indexing="ij")
    grid = torch.stack([u, v], -1).reshape(H * W, 2).expand(2, 3, H * W, 2)
    torch.testing.assert_close(uv, grid)
    torch.testing.assert_close(z, depth.reshape(2, 3, H * W))


def test_unproject_identity_camera_by_hand():
    # identity pose, f = 2, c = (1, 1): pixel (u=3, v=0) at depth 4 -> ((3-1)/2*4, (0-1)/2*4, 4) = (4, -2, 4)
    E = torch.cat([torch.eye(3, dtype=DTYPE), torch.zeros(3, 1, dtype=DTYPE)], -1)
    K = torch.tensor([[2.0, 0, 1], [0, 2.0, 1], [0, 0, 1]], dtype=DTYPE)
    depth = torch.full((2, 4), 4.0, dtype=DTYPE)
    world = unproject_depth(depth, E, K)
    torch.testing.assert_close(world[0, 3], torch.tensor([4.0, -2.0, 4.0], dtype=DTYPE))
    # a translated camera (camera centre at world x = -1) sees the same pixel at world x = 4 - 1
    E_shift = E.clone()
    E_shift[0, 3] = 1.0
    torch.testing.assert_close(unproject_depth(depth, E_shift, K)[0, 3], torch.tensor([3.0, -2.0, 4.0], dtype=DTYPE))
