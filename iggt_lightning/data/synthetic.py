"""Procedurally generated multi-view instance scenes, rendered by vectorised ray casting (no downloads).

World convention (metres, right-handed): **+y is up**, the floor is the plane y = 0, and the room is the
closed box x in [-half_x, half_x], y in [0, height], z in [-half_z, half_z] centred on the origin. The room
is closed (floor, ceiling and four walls), so every camera ray hits something and depth is valid everywhere.
Objects (boxes, optionally yaw-rotated; spheres; vertical cylinders) rest on the floor near the origin.

Camera convention (OpenCV): camera x right, y down, z forward. ``extrinsics`` [R|t] map world to camera
(X_cam = R X_world + t); ``intrinsics`` K are in pixels with the principal point at the image centre
(W/2, H/2). Pixel centres sit at integer coordinates, as in VGGT and ``iggt_lightning.geometry``: pixel
(row i, column j) is the ray through u = j, v = i, so projecting ``world_points[s, i, j]`` with K [R|t]
gives back (j, i), ``depth`` is camera-frame z, and ``geometry.unproject_depth(depth, E, K)`` reproduces
``world_points``.

Every scene is a pure function of (seed, index) through ``numpy.random.default_rng([seed, index])``, so
DataLoader workers need no seeding and a scene can be regenerated anywhere. Batch with ``collate_scenes``
(the number of objects, hence ``instance_classes``, differs between scenes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

PATCH_SIZE = 14
PIXEL_CENTER_OFFSET = 0.0   # pixel (i, j) is at (u, v) = (j, i) + offset; 0 matches geometry.py / VGGT

# A small fixed palette; names double as the colour part of the class names.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10), "green": (0.15, 0.70, 0.20), "blue": (0.12, 0.25, 0.85),
    "yellow": (0.92, 0.85, 0.15), "orange": (0.95, 0.50, 0.08), "purple": (0.55, 0.18, 0.70),
    "cyan": (0.10, 0.80, 0.85), "pink": (0.95, 0.45, 0.70), "white": (0.93, 0.93, 0.93),
    "black": (0.08, 0.08, 0.08),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("box", "sphere", "cylinder")
# Class 0 is the room (background); object class index = 1 + shape * len(COLOURS) + colour.
CLASS_NAMES = ("room",) + tuple(f"{c} {s}" for s in SHAPES for c in COLOUR_NAMES)

_PLACE_RADIUS = 1.6      # objects lie entirely inside this disc around the origin
_CAMERA_MIN_DIST = 2.2   # horizontal camera-to-target distance; > _PLACE_RADIUS + target jitter, so no
_CAMERA_MAX_DIST = 3.4   # camera ever sits inside an object
_WALL_MARGIN = 0.3
_AMBIENT = 0.3


@dataclass
class Room:
    """Closed box room. Faces: 0 x-min wall, 1 x-max wall, 2 floor, 3 ceiling, 4 z-min wall, 5 z-max wall."""

    half_x: float
    half_z: float
    height: float
    colours: np.ndarray        # [6, 2, 3] two tones per face
    tile: np.ndarray           # [6] checker tile / stripe width in metres
    weights: np.ndarray        # [6, 2] int: pattern bit = (wa * floor(a / tile) + wb * floor(b / tile)) % 2

    @property
    def light(self) -> tuple[float, float, float]:
        """A point light just under the ceiling centre: every face gets some direct light."""
        return (0.0, self.height - 0.2, 0.0)


@dataclass
class SceneObject:
    """One object on the floor. ``size``: box half extents (x, y, z); sphere (r,); cylinder (r, height)."""

    shape: str
    centre_xz: tuple[float, float]
    size: tuple[float, ...]
    yaw: float
    colour_name: str
    rgb: np.ndarray
    instance_id: int
    class_index: int

    @property
    def class_name(self) -> str:
        return f"{self.colour_name} {self.shape}"

    def footprint(self) -> float:
        """Radius of a floor disc around the centre that contains the object."""
        if self.shape == "box":
            return math.hypot(self.size[0], self.size[2])
        return self.size[0]

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        """World-space axis-aligned bounding box (lo, hi)."""
        x, z = self.centre_xz
        if self.shape == "box":
            c, s = abs(math.cos(self.yaw)), abs(math.sin(self.yaw))
            hx, hy, hz = self.size
            ex, ey, ez = c * hx + s * hz, hy, s * hx + c * hz
            return np.array([x - ex, 0.0, z - ez]), np.array([x + ex, 2 * ey, z + ez])
        if self.shape == "sphere":
            r = self.size[0]
            return np.array([x - r, 0.0, z - r]), np.array([x + r, 2 * r, z + r])
        r, h = self.size
        return np.array([x - r, 0.0, z - r]), np.array([x + r, h, z + r])


@dataclass
class Scene:
    """Everything needed to render (and to check) one scene."""

    scene_id: str
    room: Room
    objects: list[SceneObject]
    extrinsics: np.ndarray     # [S, 3, 4] float32 world-to-camera
    intrinsics: np.ndarray     # [S, 3, 3] float32 pixels
    image_size: tuple[int, int]
    frame_ids: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- sampling

def _distinct_hues(rng: np.random.Generator, n: int) -> np.ndarray:
    """Hues spread by the golden ratio from a random start, so the room faces never share a colour."""
    return (rng.random() + 0.618034 * np.arange(n)) % 1.0


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def sample_room(rng: np.random.Generator) -> Room:
    """Random room size, muted per-face colours and checker / stripe textures (texture makes depth learnable)."""
    half_x, half_z, height = rng.uniform(3.0, 5.0), rng.uniform(3.0, 5.0), rng.uniform(2.6, 3.5)
    hue = _distinct_hues(rng, 6)
    base = _hsv_to_rgb(hue, rng.uniform(0.15, 0.45, 6), rng.uniform(0.45, 0.85, 6))
    # The second tone is the same hue, darker: the pattern reads as texture, not as a separate object.
    second = base * rng.uniform(0.55, 0.8, (6, 1))
    colours = np.stack([base, second], axis=1)
    tile = rng.uniform(0.25, 0.8, 6)
    patterns = np.array([[1, 1], [1, 0], [0, 1]])               # checker, vertical stripes, horizontal stripes
    weights = patterns[rng.integers(0, 3, 6)]
    weights[[2, 3]] = 1                                          # floor and ceiling: always a checker
    return Room(half_x, half_z, height, colours.astype(np.float32), tile.astype(np.float32), weights)


def _random_size(rng: np.random.Generator, shape: str) -> tuple[float, ...]:
    if shape == "box":
        return (rng.uniform(0.12, 0.4), rng.uniform(0.1, 0.45), rng.uniform(0.12, 0.4))
    if shape == "sphere":
        return (rng.uniform(0.12, 0.4),)
    return (rng.uniform(0.1, 0.3), rng.uniform(0.3, 1.1))


def _place(rng: np.random.Generator, radius: float, placed: list[tuple[float, float, float]],
           centre: tuple[float, float] = (0.0, 0.0), place_radius: float = _PLACE_RADIUS):
    """Rejection-sample a floor position with no footprint overlap, the object entirely inside the disc
    ``place_radius`` around ``centre``; None after too many tries. (The centre is added after the draw, so
    the default draws exactly what it always drew.)"""
    reach = place_radius - radius
    if reach < 0:
        return None
    for _ in range(60):
        x, z = rng.uniform(-reach, reach, 2)
        if math.hypot(x, z) > reach:
            continue
        x, z = x + centre[0], z + centre[1]
        if all(math.hypot(x - px, z - pz) > radius + pr + 0.05 for px, pz, pr in placed):
            return float(x), float(z)
    return None


def sample_objects(rng: np.random.Generator, count: int, repeat_prob: float = 0.0) -> list[SceneObject]:
    """``count`` objects with ids 1..count, distinct palette colours while the palette lasts.

    With ``repeat_prob`` > 0 each object after the first is, with that probability, an identical copy
    (shape, size, yaw, exact colour) of a random earlier one: like a room's matching chairs, copies can be
    told apart only by where they are. (No random number is drawn for it when ``repeat_prob`` is 0, so the
    scenes of a seed stay what they were.)"""
    colour_idx = rng.permutation(len(COLOURS))
    if count > len(COLOURS):
        colour_idx = np.concatenate([colour_idx, rng.integers(0, len(COLOURS), count - len(COLOURS))])
    objects, placed = [], []
    for k in range(count):
        source = objects[int(rng.integers(0, k))] if k and repeat_prob > 0 and rng.random() < repeat_prob else None
        if source is not None:
            shape_i, colour_i = SHAPES.index(source.shape), COLOUR_NAMES.index(source.colour_name)
            shape, size, yaw = source.shape, source.size, source.yaw
        else:
            shape_i = int(rng.integers(0, len(SHAPES)))
            shape, colour_i = SHAPES[shape_i], int(colour_idx[k])
            size = _random_size(rng, shape)
            yaw = float(rng.uniform(0, math.pi)) if shape == "box" and rng.random() < 0.7 else 0.0
        while True:
            obj = SceneObject(shape, (0.0, 0.0), size, yaw, COLOUR_NAMES[colour_i], np.zeros(3), k + 1,
                              1 + shape_i * len(COLOURS) + colour_i)
            pos = _place(rng, obj.footprint(), placed)
            if pos is not None:
                break
            size = tuple(0.85 * v for v in size)   # a crowded floor: shrink rather than overlap
        obj.centre_xz = pos
        # Small per-object jitter keeps repeated palette colours apart without changing the class.
        obj.rgb = np.clip(np.array(COLOURS[obj.colour_name]) + rng.uniform(-0.04, 0.04, 3), 0, 1).astype(np.float32)
        if source is not None:
            obj.rgb = source.rgb.copy()
        placed.append((pos[0], pos[1], obj.footprint()))
        objects.append(obj)
    return objects


def look_at(eye: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """World-to-camera rotation (OpenCV axes) of a camera at ``eye`` looking at ``target`` with world +y up."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.array([0.0, 1.0, 0.0]))                   # right = forward x up (y down completes it)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    c, s = math.cos(roll), math.sin(roll)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ R


def _wall_distance(room: Room, origin: np.ndarray, direction: np.ndarray) -> float:
    """Horizontal distance from ``origin`` to the room wall along a unit xz ``direction``."""
    out = math.inf
    for axis, half in ((0, room.half_x), (2, room.half_z)):
        d = direction[axis]
        if abs(d) > 1e-9:
            out = min(out, ((half if d > 0 else -half) - origin[axis]) / d)
    return out


def sample_cameras(rng: np.random.Generator, num_views: int, image_size: tuple[int, int],
                   focal_range: tuple[float, float], room: Room) -> tuple[np.ndarray, np.ndarray]:
    """Cameras on an arc around the scene centre looking at it, with jitter. Returns float32 (E [S,3,4], K [S,3,3])."""
    H, W = image_size
    base, span = rng.uniform(0, 2 * math.pi), rng.uniform(math.pi / 6, math.pi)
    steps = np.linspace(0.0, 1.0, num_views) if num_views > 1 else np.zeros(1)
    azimuths = base + span * steps + rng.uniform(-0.3, 0.3, num_views) * span / max(num_views, 1)
    extrinsics, intrinsics = [], []
    for az in azimuths:
        target = np.array([rng.uniform(-0.3, 0.3), rng.uniform(0.1, 0.6), rng.uniform(-0.3, 0.3)])
        direction = np.array([math.cos(az), 0.0, math.sin(az)])
        dist = min(rng.uniform(_CAMERA_MIN_DIST, _CAMERA_MAX_DIST), _wall_distance(room, target, direction) - _WALL_MARGIN)
        eye = target + dist * direction
        eye[1] = rng.uniform(0.6, min(2.0, room.height - _WALL_MARGIN))
        R = look_at(eye, target, roll=rng.uniform(-0.05, 0.05))
        f = rng.uniform(*focal_range) * W
        extrinsics.append(np.concatenate([R, (-R @ eye)[:, None]], axis=1))
        intrinsics.append(np.array([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]]))
    return np.stack(extrinsics).astype(np.float32), np.stack(intrinsics).astype(np.float32)


# ----------------------------------------------------------------------------------------- ray casting
# Arrays are kept planar (a tuple of three [h, w] arrays per vector field): numpy is several times faster
# on contiguous planes than on a trailing axis of size 3. All routines share one ray origin ``o`` (the
# camera centre, as Python floats so float32 arrays stay float32) and directions whose camera-frame z is 1,
# so the ray parameter t *is* the depth. Object routines return (t, normal planes), t = inf on a miss.

Planes = tuple  # (x, y, z) float32 arrays of one shape


def _hit_room(o: tuple[float, float, float], d: Planes, room: Room):
    """Exit of the room box from inside: per axis the wall the ray heads to; the nearest axis wins."""
    lo = (-room.half_x, 0.0, -room.half_z)
    hi = (room.half_x, room.height, room.half_z)
    ts = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in range(3):
            # The camera is inside, so one wall of the pair is behind (t < 0) and the max picks the other;
            # d = 0 gives +-inf for both and the max is +inf (never that pair), with no masking needed.
            inv = np.float32(1) / d[a]
            ts.append(np.maximum(np.float32(hi[a] - o[a]) * inv, np.float32(lo[a] - o[a]) * inv))
    t = np.minimum(np.minimum(ts[0], ts[1]), ts[2])
    face = np.where(t == ts[0], d[0] > 0, np.where(t == ts[1], 2 + (d[1] > 0), 4 + (d[2] > 0))).astype(np.intp)
    normal = tuple(_ROOM_NORMALS[:, k][face] for k in range(3))
    return t, normal, face


# Inward normals of faces 0..5 (x-min, x-max, floor, ceiling, z-min, z-max).
_ROOM_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float32)


def _stable_near_root(b: np.ndarray, c: float, disc: np.ndarray) -> np.ndarray:
    """Near root of a t^2 + 2 b t + c = 0 as c / (-b + sqrt(disc)): no cancellation when the hit is close.
    Only rays heading towards the shape (b < 0) from outside it (c > 0) can hit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.float32(c) / (np.sqrt(np.maximum(disc, 0)) - b)
    return np.where((disc >= 0) & (b < 0), t, np.float32(np.inf))


def _hit_sphere(o, d: Planes, obj: SceneObject):
    r = obj.size[0]
    oc = (o[0] - obj.centre_xz[0], o[1] - r, o[2] - obj.centre_xz[1])
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = d[0] * oc[0] + d[1] * oc[1] + d[2] * oc[2]
    c = oc[0] ** 2 + oc[1] ** 2 + oc[2] ** 2 - r * r
    t = _stable_near_root(b, c, b * b - a * c)
    ts = np.where(np.isfinite(t), t, np.float32(0))
    return t, tuple((oc[k] + ts * d[k]) / r for k in range(3))


def _hit_cylinder(o, d: Planes, obj: SceneObject):
    """Vertical cylinder standing on the floor: side wall plus the top cap (the bottom one rests on the floor)."""
    r, h = obj.size
    ox, oz = o[0] - obj.centre_xz[0], o[2] - obj.centre_xz[1]
    dx, dy, dz = d
    a = dx * dx + dz * dz
    b = dx * ox + dz * oz
    c = ox * ox + oz * oz - r * r
    t_side = _stable_near_root(b, c, b * b - a * c)
    with np.errstate(invalid="ignore"):          # inf * 0 for a miss seen exactly level: NaN, then a miss below
        y = o[1] + t_side * dy
    t_side = np.where((y >= 0) & (y <= h), t_side, np.float32(np.inf))
    t = t_side
    on_cap = np.zeros(dx.shape, bool)
    if o[1] > h:                                                  # the top is only visible from above
        with np.errstate(divide="ignore", invalid="ignore"):
            tc = np.float32(h - o[1]) / dy
            inside = (ox + tc * dx) ** 2 + (oz + tc * dz) ** 2 <= r * r
        on_cap = (tc > 0) & inside & (tc < t_side)
        t = np.where(on_cap, tc, t_side)
    ts = np.where(np.isfinite(t), t, np.float32(0))
    zero = np.zeros_like(ts)
    nx = np.where(on_cap, zero, (ox + ts * dx) / r)
    nz = np.where(on_cap, zero, (oz + ts * dz) / r)
    return t, (nx, on_cap.astype(np.float32), nz)


def _hit_box(o, d: Planes, obj: SceneObject):
    """Slab test in the box frame (world rotated by -yaw about y); the entering slab's normal rotated back."""
    half = obj.size
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    px, py, pz = o[0] - obj.centre_xz[0], o[1] - half[1], o[2] - obj.centre_xz[1]
    lo = (c * px - s * pz, py, s * px + c * pz)                   # ray origin in the box frame (scalars)
    ld = (c * d[0] - s * d[2], d[1], s * d[0] + c * d[2])
    near, far = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in range(3):
            inv = np.float32(1) / ld[a]
            t1, t2 = np.float32(-half[a] - lo[a]) * inv, np.float32(half[a] - lo[a]) * inv
            near.append(np.minimum(t1, t2))
            far.append(np.maximum(t1, t2))
    t_near = np.maximum(np.maximum(near[0], near[1]), near[2])
    t_far = np.minimum(np.minimum(far[0], far[1]), far[2])
    t = np.where((t_near <= t_far) & (t_near > 0), t_near, np.float32(np.inf))
    # The face a ray enters through is the slab whose entry is last; its outward normal opposes the ray.
    nl = [np.where(t_near == near[a], -np.sign(ld[a]), np.float32(0)) for a in range(3)]
    return t, (c * nl[0] + s * nl[2], nl[1], c * nl[2] - s * nl[0])


_HITS = {"sphere": _hit_sphere, "cylinder": _hit_cylinder, "box": _hit_box}


def _pixel_rays(K: np.ndarray, R: np.ndarray, H: int, W: int) -> Planes:
    """World ray directions through pixel centres as planes [H, W], scaled so that camera-frame z = 1."""
    u = ((np.arange(W, dtype=np.float32) + np.float32(PIXEL_CENTER_OFFSET) - K[0, 2]) / K[0, 0])[None, :]
    v = ((np.arange(H, dtype=np.float32) + np.float32(PIXEL_CENTER_OFFSET) - K[1, 2]) / K[1, 1])[:, None]
    # d_world = R^T (u, v, 1): component k is u R[0, k] + v R[1, k] + R[2, k].
    return tuple(u * R[0, k] + v * R[1, k] + R[2, k] for k in range(3))


def _screen_rect(obj: SceneObject, K: np.ndarray, E: np.ndarray, H: int, W: int):
    """Pixel window (r0, r1, c0, c1) containing the object's projection; the full image if it reaches behind us.
    Ray casting only inside it is what makes many objects cheap."""
    lo, hi = obj.aabb()
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    E = E.astype(np.float64)
    cam = corners @ E[:, :3].T + E[:, 3]
    if (cam[:, 2] < 1e-3).any():
        return 0, H, 0, W
    u = K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2]
    v = K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]
    c0, c1 = max(int(math.floor(u.min())) - 1, 0), min(int(math.ceil(u.max())) + 1, W)
    r0, r1 = max(int(math.floor(v.min())) - 1, 0), min(int(math.ceil(v.max())) + 1, H)
    return r0, r1, c0, c1


def _room_albedo(room: Room, face: np.ndarray, points: Planes) -> Planes:
    """Checker / stripe texture, branch-free: each face's axes, tile size and pattern weights are gathered."""
    x, y, z = points
    a = np.where(face < 2, z, x)                                  # x-walls run along z, the rest along x
    b = np.where((face == 2) | (face == 3), z, y)                 # walls go up in y, floor / ceiling along z
    inv_tile = (1.0 / room.tile).astype(np.float32)[face]
    wa, wb = room.weights[:, 0].astype(np.int32)[face], room.weights[:, 1].astype(np.int32)[face]
    cell_a = np.floor(a * inv_tile).astype(np.int32)
    cell_b = np.floor(b * inv_tile).astype(np.int32)
    idx = 2 * face + ((wa * cell_a + wb * cell_b) & 1)
    table = room.colours.reshape(12, 3)
    return tuple(table[:, k][idx] for k in range(3))


def _shade(room: Room, points: Planes, normal: Planes) -> np.ndarray:
    """Lambertian shading from the room's point light plus ambient (no shadows: not needed to learn geometry).
    Normals are unit already; only the light direction needs normalising."""
    L = [np.float32(room.light[k]) - points[k] for k in range(3)]
    dot = L[0] * normal[0] + L[1] * normal[1] + L[2] * normal[2]
    lam = np.clip(dot / (np.sqrt(L[0] * L[0] + L[1] * L[1] + L[2] * L[2]) + np.float32(1e-6)), 0, 1)
    return np.float32(_AMBIENT) + np.float32(1 - _AMBIENT) * lam


def render_view(scene: Scene, view: int, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Ray-cast one view: rgb [3,H,W], depth [H,W], ids [H,W] (0 = room, k = object k), points [H,W,3].
    With ``out`` (arrays of those shapes) the results are written there, e.g. into the scene's output tensors."""
    H, W = scene.image_size
    if out is None:
        out = {"rgb": np.empty((3, H, W), np.float32), "depth": np.empty((H, W), np.float32),
               "ids": np.empty((H, W), np.int64), "points": np.empty((H, W, 3), np.float32)}
    E, K = scene.extrinsics[view], scene.intrinsics[view]
    R = E[:, :3]
    # The centre comes from the stored float32 [R|t], so the points reproject exactly with the stored cameras.
    o = tuple(float(v) for v in -R.astype(np.float64).T @ E[:, 3].astype(np.float64))
    d = _pixel_rays(K, R, H, W)
    depth, normal, face = _hit_room(o, d, scene.room)
    normal = list(normal)
    ids = np.zeros((H, W), np.int64)
    for obj in scene.objects:
        r0, r1, c0, c1 = _screen_rect(obj, K, E, H, W)
        if r0 >= r1 or c0 >= c1:
            continue
        win = (slice(r0, r1), slice(c0, c1))
        t, n = _HITS[obj.shape](o, tuple(p[win] for p in d), obj)
        closer = t < depth[win]
        depth[win] = np.where(closer, t, depth[win])
        ids[win] = np.where(closer, obj.instance_id, ids[win])
        for k in range(3):
            normal[k][win] = np.where(closer, n[k], normal[k][win])
    points = tuple(np.float32(o[k]) + depth * d[k] for k in range(3))
    albedo = _room_albedo(scene.room, face, points)
    if scene.objects:
        table = np.concatenate([np.zeros((1, 3), np.float32), np.stack([ob.rgb for ob in scene.objects])])
        hit = ids > 0
        albedo = tuple(np.where(hit, table[:, k][ids], albedo[k]) for k in range(3))
    shade = _shade(scene.room, points, normal)
    for k in range(3):
        np.multiply(albedo[k], shade, out=out["rgb"][k])
    np.clip(out["rgb"], 0, 1, out=out["rgb"])
    out["depth"][...] = depth
    out["ids"][...] = ids
    np.stack(points, -1, out=out["points"])
    return out


# ----------------------------------------------------------------------------------------- dataset

def _check_range(name: str, value, lo_bound: float, integer: bool) -> tuple:
    """Normalise an int / (min, max) argument, raising a ValueError that names the field."""
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or (integer and not all(isinstance(v, (int, np.integer)) for v in pair)):
        raise ValueError(f"{name} must be {'an int or ' if integer else ''}a (min, max) pair; got {value!r}")
    if pair[0] < lo_bound or pair[0] > pair[1]:
        raise ValueError(f"{name} must satisfy {lo_bound} <= min <= max; got {value!r}")
    return pair


def _check_image_size(image_size) -> tuple[int, int]:
    size = tuple(image_size) if not isinstance(image_size, int) else (image_size, image_size)
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise ValueError(f"image_size must be two positive ints (H, W); got {image_size!r}")
    if any(v % PATCH_SIZE for v in size):
        raise ValueError(f"image_size sides must be multiples of {PATCH_SIZE} (the patch size); got {image_size!r}")
    return int(size[0]), int(size[1])


class SyntheticScenes(Dataset):
    """Procedural multi-view rooms with objects; sample ``index`` is a pure function of (seed, index).

    Args:
        length: number of scenes.
        num_views: views per scene, or (min, max) to draw the count per scene (then batches need equal
            counts, e.g. batch_size=1 or a sampler grouping by count).
        image_size: (H, W), both multiples of 14.
        num_objects: (min, max) objects per scene, inclusive; at most 16.
        seed: dataset seed (>= 0).
        background_id: instance id of the room pixels (objects are 1..N).
        focal_range: focal length range as a multiple of the image width.
        repeat_prob: probability that an object is an identical copy of an earlier one in its scene (see
            :func:`sample_objects`): instances that only their 3D position tells apart.
    """

    def __init__(self, length: int = 1000, num_views: int | tuple[int, int] = 8,
                 image_size: tuple[int, int] = (224, 224), num_objects: tuple[int, int] = (2, 6), seed: int = 0,
                 background_id: int = 0, focal_range: tuple[float, float] = (0.8, 1.3),
                 repeat_prob: float = 0.0) -> None:
        if not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"length must be a non-negative int; got {length!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        self.length, self.seed = int(length), int(seed)
        self.num_views = _check_range("num_views", num_views, 1, integer=True)
        self.image_size = _check_image_size(image_size)
        self.num_objects = _check_range("num_objects", num_objects, 0, integer=True)
        if self.num_objects[1] > 16:
            raise ValueError(f"num_objects max must be <= 16 (they must fit on the floor); got {num_objects!r}")
        self.focal_range = _check_range("focal_range", focal_range, 1e-6, integer=False)
        if not isinstance(background_id, (int, np.integer)) or 1 <= background_id <= self.num_objects[1]:
            raise ValueError(f"background_id must be an int outside the object ids 1..{self.num_objects[1]}; "
                             f"got {background_id!r}")
        self.background_id = int(background_id)
        if not isinstance(repeat_prob, (int, float)) or not 0.0 <= repeat_prob <= 1.0:
            raise ValueError(f"repeat_prob must be a probability in [0, 1]; got {repeat_prob!r}")
        self.repeat_prob = float(repeat_prob)

    def __len__(self) -> int:
        return self.length

    def input_roots(self) -> list:
        """None: the scenes are rendered, no file is read."""
        return []

    def sample_shape(self, index: int) -> tuple[int, int, int]:
        """(views, H, W) of sample ``index`` without rendering it (batch samplers group by it)."""
        rng = np.random.default_rng([self.seed, int(index)])
        return int(rng.integers(self.num_views[0], self.num_views[1] + 1)), *self.image_size

    def scene(self, index: int) -> Scene:
        """The scene description (room, objects, cameras) of sample ``index``, without rendering."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        rng = np.random.default_rng([self.seed, int(index)])
        views = int(rng.integers(self.num_views[0], self.num_views[1] + 1))
        room = sample_room(rng)
        objects = sample_objects(rng, int(rng.integers(self.num_objects[0], self.num_objects[1] + 1)),
                                 self.repeat_prob)
        E, K = sample_cameras(rng, views, self.image_size, self.focal_range, room)
        scene_id = f"synthetic-{self.seed}-{index:07d}"
        return Scene(scene_id, room, objects, E, K, self.image_size, [f"{scene_id}/view{s:02d}" for s in range(views)])

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += self.length
        return render_scene(self.scene(index), self.background_id)


def render_scene(scene: Scene, background_id: int = 0, shared: bool = False) -> dict:
    """Render all views of ``scene`` into the batch-contract dict of torch tensors.

    ``shared`` allocates the big tensors in shared memory. It is off by default on purpose: in a DataLoader
    worker, rendering into ordinary memory and copying once into shared memory in ``collate_scenes``
    measured faster than writing every view straight into (page-faulting) shared memory.
    """
    S, (H, W) = len(scene.extrinsics), scene.image_size
    images = _new_tensor((S, 3, H, W), torch.float32, shared)
    depth = _new_tensor((S, H, W), torch.float32, shared)
    ids = _new_tensor((S, H, W), torch.int64, shared)
    points = _new_tensor((S, H, W, 3), torch.float32, shared)
    valid = _new_tensor((S, H, W), torch.bool, shared)
    for s in range(S):
        render_view(scene, s, {"rgb": images[s].numpy(), "depth": depth[s].numpy(), "ids": ids[s].numpy(),
                               "points": points[s].numpy()})
    torch.gt(depth, 0, out=valid)
    if background_id != 0:
        ids.masked_fill_(ids == 0, background_id)
    return {
        "images": images,
        "depth": depth,
        "extrinsics": torch.from_numpy(scene.extrinsics.copy()),
        "intrinsics": torch.from_numpy(scene.intrinsics.copy()),
        "world_points": points,
        "valid_mask": valid,
        "instance_ids": ids,
        "scene_id": scene.scene_id,
        "frame_ids": list(scene.frame_ids),
        "class_names": [o.class_name for o in scene.objects],
        "instance_classes": torch.tensor([o.class_index for o in scene.objects], dtype=torch.int64),
    }


def _new_tensor(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """Uninitialised tensor, optionally backed by shared memory (as torch's default collate does in workers)."""
    if not shared:
        return torch.empty(shape, dtype=dtype)
    numel = math.prod(shape)
    storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
    return torch.empty((), dtype=dtype).set_(storage, 0, shape)


def collate_scenes(samples: list[dict]) -> dict:
    """Stack tensors whose shapes agree across samples ([B, ...]); keep the rest (strings, per-scene lists,
    ``instance_classes`` of differing lengths) as lists, where torch's default collate would fail."""
    shared = torch.utils.data.get_worker_info() is not None
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            out[key] = _stack(values, shared)
        else:
            out[key] = values
    return out


def _stack(values: list[torch.Tensor], shared: bool) -> torch.Tensor:
    """torch.stack; in a DataLoader worker into shared memory, which saves the copy the worker would otherwise
    make when it sends the batch (tens of MB per scene). A single tensor already in shared memory is just viewed."""
    if not shared:
        return torch.stack(values)
    if len(values) == 1 and values[0].is_shared():
        return values[0].unsqueeze(0)
    buffer = _new_tensor((len(values), *values[0].shape), values[0].dtype, shared=True)
    return torch.stack(values, out=buffer)
