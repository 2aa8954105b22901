"""A long procedural video (hundreds to a thousand frames) through one large room: the test bed of windowed
reconstruction, where a sequence runs through the network in overlapping windows that must then agree.

Layout. The room is a closed box from :func:`synthetic.sample_room` (same textures and light), enlarged to
half extents of 5-7 m in x and z. Its objects stand in 3-5 **groups** (2-5 objects each) whose centres lie on
an ellipse at 62 % of the half extents around the room centre, evenly spaced in angle with a small jitter;
every object lies inside a 1 m disc around its group's centre and no two footprints overlap. The first object
of every group but the first (``copies_per_group`` of them) is an **identical copy** (shape, size, yaw, exact
colour, class) of an object of an *earlier* group: only its position tells the two apart, so an association
of instances across windows that relies on appearance alone confuses them. Instance ids are 1..M over the
whole room (0 = room), numbered group by group.

Path. The camera walks ``laps`` (default 2) times round a closed inner loop, an ellipse at 28 % of the half
extents whose radius swells and shrinks by up to 12 % once over the whole sequence (so the two laps are not
the same frames twice), with the eye at 1.25-1.55 m (a smooth wave) and a small roll. It looks outward, at a
point of the group ellipse: its angle is the camera's own pulled softly towards the nearest groups (so the
view dwells on objects and swings between groups) plus a lead / trail wave of 0.2 rad. The view sweeps round
the room once per lap, so every group leaves the view and re-enters it on the next lap, while consecutive
frames overlap strongly: at 300 frames the centre moves < 0.1 m and the view turns by < 11 degrees (mostly
< 5) per frame, with a horizontal field of view of 64 degrees; 10-20 % of the frames show only walls. Every
quantity is periodic over the sequence, so the path is a closed loop: frame N-1 is followed smoothly by
frame 0. The loop stays > 3 m from the walls and >= 0.5 m from every object's bounding box (checked when the
sequence is built).

Conventions are those of :mod:`iggt_lightning.data.synthetic`: metres, +y up, floor at y = 0, OpenCV cameras,
``extrinsics`` world-to-camera [R|t] [3,4], ``intrinsics`` in pixels with the principal point at (W/2, H/2)
and pixel centres at integer coordinates, ``depth`` camera-frame z. The focal length is fixed over the video.

Everything is a pure function of (seed, parameters) through ``numpy.random.default_rng``; the room, objects
and the path's shape do not depend on ``frames`` (more frames sample the same loop more densely). Frames are
rendered lazily, one per :meth:`LongSequence.frame` call; only the camera arrays [N,3,4] / [N,3,3] are held.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .synthetic import (COLOUR_NAMES, COLOURS, SHAPES, Room, Scene, SceneObject, _check_image_size, _place,
                        _random_size, look_at, render_view, sample_room)

FORMAT = "iggt-long-sequence"
FORMAT_VERSION = 1
# Separates this generator's random stream from SyntheticScenes' ([seed, index]) for the same seed.
_RNG_TAG = 0x1065E0

_HALF_EXTENT = (5.0, 7.0)
_GROUP_RING = 0.62          # group centres on the ellipse at this fraction of the half extents
_GROUP_RADIUS = 1.0         # every object of a group inside this disc around its centre
_PATH_RING = 0.28           # camera loop at this fraction of the half extents ...
_PATH_SWELL = 0.12          # ... times (1 +- this), once over the sequence
_EYE_HEIGHT, _EYE_WAVE = 1.4, 0.15
_GAZE_LEAD = 0.2            # radians the gaze angle leads / trails the camera's polar angle ...
_GAZE_PULL, _GAZE_MIX = 2.0, 0.6   # ... after a soft pull towards the nearest groups (see _camera_path)
_TARGET_HEIGHT = 0.45
_CLEARANCE = 0.5            # minimum camera-to-group-disc distance, checked


@dataclass(frozen=True)
class ObjectGroup:
    index: int
    centre_xz: tuple[float, float]
    instance_ids: tuple[int, ...]
    angle: float                 # parameter of the centre on the group ellipse (x = a cos, z = b sin)


class LongSequence:
    """A long camera path through a large room with several object groups (see the module docstring).

    Args:
        frames: number of frames N (>= 2).
        image_size: (H, W), multiples of 14.
        seed: non-negative int.
        groups: (min, max) number of object groups, inclusive, within 2..5.
        objects_per_group: (min, max) objects per group, inclusive, within 1..5.
        copies_per_group: how many objects of each group after the first are identical copies of objects of
            earlier groups (0 for none).
        laps: times the camera goes round the loop (>= 1; 2 makes every group leave and re-enter the view).
        focal: focal length as a multiple of the image width (the same for every frame).
    """

    def __init__(self, frames: int = 300, image_size: tuple[int, int] = (84, 112), seed: int = 0,
                 groups: tuple[int, int] = (3, 5), objects_per_group: tuple[int, int] = (2, 5),
                 copies_per_group: int = 1, laps: int = 2, focal: float = 0.8) -> None:
        if not isinstance(frames, (int, np.integer)) or frames < 2:
            raise ValueError(f"frames must be an int >= 2; got {frames!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        groups, objects_per_group = tuple(groups), tuple(objects_per_group)
        if len(groups) != 2 or not 2 <= groups[0] <= groups[1] <= 5:
            raise ValueError(f"groups must be (min, max) with 2 <= min <= max <= 5; got {groups!r}")
        if len(objects_per_group) != 2 or not 1 <= objects_per_group[0] <= objects_per_group[1] <= 5:
            raise ValueError(f"objects_per_group must be (min, max) with 1 <= min <= max <= 5; got {objects_per_group!r}")
        if not isinstance(copies_per_group, (int, np.integer)) or copies_per_group < 0:
            raise ValueError(f"copies_per_group must be a non-negative int; got {copies_per_group!r}")
        if not isinstance(laps, (int, np.integer)) or laps < 1:
            raise ValueError(f"laps must be a positive int (a whole number keeps the path closed); got {laps!r}")
        if not focal > 0:
            raise ValueError(f"focal must be positive; got {focal!r}")
        self.num_frames, self.seed = int(frames), int(seed)
        self.image_size = _check_image_size(image_size)
        self.group_range = (int(groups[0]), int(groups[1]))
        self.objects_per_group = (int(objects_per_group[0]), int(objects_per_group[1]))
        self.copies_per_group, self.laps, self.focal = int(copies_per_group), int(laps), float(focal)

        rng = np.random.default_rng([_RNG_TAG, self.seed])
        self.room = _sample_large_room(rng)
        self.groups, self.objects, self.copies = _sample_groups(
            rng, self.room, self.group_range, self.objects_per_group, self.copies_per_group)
        path_shape = rng.uniform(0, 2 * math.pi, 5)    # start angle and the phases of the waves
        group_angles = np.array([g.angle for g in self.groups])
        self.extrinsics, self.intrinsics = _camera_path(self.room, self.num_frames, self.laps, path_shape,
                                                        group_angles, self.image_size, self.focal)
        self._check_cameras()
        self._scene = Scene(f"long-{self.seed}", self.room, self.objects, self.extrinsics, self.intrinsics,
                            self.image_size)

    # ------------------------------------------------------------------------------------- description

    def params(self) -> dict:
        """The constructor arguments: ``LongSequence(**params)`` rebuilds this sequence exactly."""
        return {"frames": self.num_frames, "image_size": list(self.image_size), "seed": self.seed,
                "groups": list(self.group_range), "objects_per_group": list(self.objects_per_group),
                "copies_per_group": self.copies_per_group, "laps": self.laps, "focal": self.focal}

    @classmethod
    def from_json(cls, path: str | Path) -> "LongSequence":
        """The sequence a ``sequence.json`` (from :meth:`write_photos` / :meth:`write_video`) describes."""
        record = json.loads(Path(path).read_text())
        if record.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} record (format {record.get('format')!r})")
        return cls(**record["params"])

    def __len__(self) -> int:
        return self.num_frames

    @property
    def camera_centres(self) -> np.ndarray:
        """[N, 3] world camera centres, -R^T t."""
        R, t = self.extrinsics[:, :, :3].astype(np.float64), self.extrinsics[:, :, 3].astype(np.float64)
        return -np.einsum("nji,nj->ni", R, t)

    def group_of(self, instance_id: int) -> int:
        for group in self.groups:
            if instance_id in group.instance_ids:
                return group.index
        raise KeyError(f"no object with instance id {instance_id}")

    def _check_cameras(self) -> None:
        """Every camera inside the room (>= 0.3 m from its faces) and >= _CLEARANCE outside every object's
        box: the geometry guarantees it; this keeps a future change of constants from breaking it silently."""
        c = self.camera_centres
        room = self.room
        inside = ((np.abs(c[:, 0]) < room.half_x - 0.3) & (np.abs(c[:, 2]) < room.half_z - 0.3)
                  & (c[:, 1] > 0.3) & (c[:, 1] < room.height - 0.3))
        if not inside.all():
            raise AssertionError(f"camera {int(np.argmin(inside))} is outside the room")
        for obj in self.objects:
            lo, hi = obj.aabb()
            gap = np.linalg.norm(np.maximum(np.maximum(lo - c, c - hi), 0.0), axis=1)
            if gap.min() < _CLEARANCE:
                raise AssertionError(f"camera {int(np.argmin(gap))} is within {_CLEARANCE} m of object {obj.instance_id}")

    # ------------------------------------------------------------------------------------- frames

    def frame(self, index: int) -> dict:
        """Render frame ``index`` (only that one): images [3,H,W] in [0,1], depth [H,W], instance_ids [H,W]
        int64 (0 = room), world_points [H,W,3], valid_mask [H,W], extrinsics [3,4], intrinsics [3,3]."""
        index = int(index)
        if index < 0:
            index += self.num_frames
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} out of range for {self.num_frames} frames")
        out = render_view(self._scene, index)
        depth = torch.from_numpy(out["depth"])
        return {
            "images": torch.from_numpy(out["rgb"]),
            "depth": depth,
            "instance_ids": torch.from_numpy(out["ids"]),
            "world_points": torch.from_numpy(out["points"]),
            "valid_mask": depth > 0,
            "extrinsics": torch.from_numpy(self.extrinsics[index].copy()),
            "intrinsics": torch.from_numpy(self.intrinsics[index].copy()),
            "frame_index": index,
            "frame_id": frame_name(index),
        }

    def frames(self, start: int = 0, stop: int | None = None, step: int = 1):
        """Frames start, start + step, ... below stop, rendered one at a time as the iteration asks."""
        for i in range(start, self.num_frames if stop is None else min(stop, self.num_frames), step):
            yield self.frame(i)

    def visibility(self, method: str = "frustum") -> dict[int, list[tuple[int, int]]]:
        """Per instance id, the half-open frame ranges [start, stop) in which the object is visible.

        ``frustum`` (cheap, no rendering): the object's box reaches into the camera's field of view. It ignores
        occlusion, so it is a superset of what is seen: an object absent from it is certainly not in view.
        ``render``: the object owns at least one pixel of the rendered frame (exact; renders every frame).
        """
        return {obj.instance_id: _ranges(column) for obj, column in zip(self.objects, self.visible(method).T)}

    def visible(self, method: str = "frustum") -> np.ndarray:
        """[N, M] bool: frame n shows object m (instance id m + 1); ``method`` as in :meth:`visibility`."""
        if method == "frustum":
            return np.stack([_in_frustum(obj, self.extrinsics, self.intrinsics, self.image_size)
                             for obj in self.objects], axis=1)
        if method == "render":
            seen = np.zeros((self.num_frames, len(self.objects)), bool)
            for i in range(self.num_frames):
                ids = np.unique(render_view(self._scene, i)["ids"])
                seen[i, ids[ids > 0] - 1] = True
            return seen
        raise ValueError(f"visibility method must be 'frustum' or 'render'; got {method!r}")

    # ------------------------------------------------------------------------------------- writers

    def record(self, **extra) -> dict:
        """The JSON record that regenerates the sequence (and so every frame's ground truth)."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "generator": f"{__name__}.LongSequence",
                "params": self.params(), **extra}

    def write_photos(self, folder: str | Path, every: int = 1) -> Path:
        """Write frames 0, every, 2 every, ... as ``frame_00000.png`` ... (8-bit RGB; the number is the frame
        index) and ``sequence.json``, from which :meth:`from_json` regenerates the sequence and its ground
        truth. Returns the folder."""
        from PIL import Image

        if not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be a positive int; got {every!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for i in range(0, self.num_frames, every):
            name = f"{frame_name(i)}.png"
            Image.fromarray(_to_uint8(render_view(self._scene, i)["rgb"])).save(folder / name)
            names.append(name)
        (folder / "sequence.json").write_text(json.dumps(self.record(every=int(every), files=names), indent=1))
        return folder

    def write_video(self, path: str | Path, fps: int = 30, codec: str = "libx264") -> Path:
        """Encode every frame, one at a time, into an mp4 at ``path`` (H.264 with ``libx264``; ``mpeg4`` where
        the PyAV build lacks it) and write ``<path stem>.json`` beside it with the regenerating record.
        Needs PyAV: pip install 'iggt-lightning[video]'."""
        try:
            import av
        except ImportError as error:
            raise ImportError("LongSequence.write_video needs PyAV: pip install 'iggt-lightning[video]'") from error
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if codec not in av.codecs_available:
            codec = "mpeg4"
        H, W = self.image_size
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=int(fps))
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18"}
            for i in range(self.num_frames):
                image = av.VideoFrame.from_ndarray(_to_uint8(render_view(self._scene, i)["rgb"]), format="rgb24")
                for packet in stream.encode(image):
                    container.mux(packet)
            for packet in stream.encode():          # flush the encoder's delayed frames
                container.mux(packet)
        path.with_suffix(".json").write_text(json.dumps(self.record(fps=int(fps), video=path.name), indent=1))
        return path


def frame_name(index: int) -> str:
    return f"frame_{index:05d}"


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    """[3,H,W] float in [0,1] -> [H,W,3] uint8."""
    return np.ascontiguousarray((rgb.transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8))


def _ranges(column: np.ndarray) -> list[tuple[int, int]]:
    """Half-open runs of True in a bool vector."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], column.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


# ----------------------------------------------------------------------------------------- sampling

def _sample_large_room(rng: np.random.Generator) -> Room:
    """synthetic.sample_room's textures and height, with the floor enlarged."""
    room = sample_room(rng)
    room.half_x, room.half_z = (float(v) for v in rng.uniform(*_HALF_EXTENT, 2))
    return room


def _sample_groups(rng: np.random.Generator, room: Room, group_range: tuple[int, int],
                   count_range: tuple[int, int], copies_per_group: int):
    """Groups on the group ellipse; objects placed by synthetic's sampler around each group's centre."""
    n_groups = int(rng.integers(group_range[0], group_range[1] + 1))
    start = rng.uniform(0, 2 * math.pi)
    # Jitter of at most a tenth of the spacing: with 5 groups in the smallest room the centres stay > 2.9 m apart.
    angles = start + 2 * math.pi * (np.arange(n_groups) + rng.uniform(-0.1, 0.1, n_groups)) / n_groups
    centres = [(float(_GROUP_RING * room.half_x * math.cos(a)), float(_GROUP_RING * room.half_z * math.sin(a)))
               for a in angles]
    palette = rng.permutation(len(COLOURS))
    objects: list[SceneObject] = []
    groups: list[ObjectGroup] = []
    copies: list[tuple[int, int]] = []
    placed: list[tuple[float, float, float]] = []
    fresh = 0                                        # palette position of the next fresh object
    for g, centre in enumerate(centres):
        ids = []
        for k in range(int(rng.integers(count_range[0], count_range[1] + 1))):
            obj = None
            if g > 0 and k < copies_per_group:
                source = objects[int(rng.integers(0, len(objects)))]
                obj = SceneObject(source.shape, (0.0, 0.0), source.size, source.yaw, source.colour_name,
                                  source.rgb.copy(), len(objects) + 1, source.class_index)
                pos = _place(rng, obj.footprint(), placed, centre, _GROUP_RADIUS)
                if pos is None:                      # a crowded group: a fresh object instead (never shrink a copy)
                    obj = None
                else:
                    copies.append((obj.instance_id, source.instance_id))
            if obj is None:
                obj, pos = _fresh_object(rng, len(objects) + 1, int(palette[fresh % len(palette)]), placed, centre)
                fresh += 1
                if obj is None:
                    continue
            obj.centre_xz = pos
            placed.append((pos[0], pos[1], obj.footprint()))
            objects.append(obj)
            ids.append(obj.instance_id)
        groups.append(ObjectGroup(g, centre, tuple(ids), float(angles[g])))
    return groups, objects, copies


def _fresh_object(rng: np.random.Generator, instance_id: int, colour_i: int, placed: list, centre):
    """A random object placed in the group's disc, shrunk until it fits (None, None if it never does)."""
    shape_i = int(rng.integers(0, len(SHAPES)))
    shape = SHAPES[shape_i]
    size = _random_size(rng, shape)
    yaw = float(rng.uniform(0, math.pi)) if shape == "box" and rng.random() < 0.7 else 0.0
    # Per-object jitter as in synthetic.sample_objects: palette repeats are not identical copies.
    rgb = np.clip(np.array(COLOURS[COLOUR_NAMES[colour_i]]) + rng.uniform(-0.04, 0.04, 3), 0, 1).astype(np.float32)
    for _ in range(12):
        obj = SceneObject(shape, (0.0, 0.0), size, yaw, COLOUR_NAMES[colour_i], rgb, instance_id,
                          1 + shape_i * len(COLOURS) + colour_i)
        pos = _place(rng, obj.footprint(), placed, centre, _GROUP_RADIUS)
        if pos is not None:
            return obj, pos
        size = tuple(0.85 * v for v in size)
    return None, None


def _camera_path(room: Room, frames: int, laps: int, shape: np.ndarray, group_angles: np.ndarray,
                 image_size: tuple[int, int], focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Extrinsics [N,3,4] and intrinsics [N,3,3] (float32) of the loop. ``phase`` runs over [0, 2 pi laps);
    every wave has a whole number of periods over the sequence, which closes the loop.

    The gaze angle is a soft pull of the camera's polar angle towards the nearby groups' angles (a circular
    mean weighted by exp(kappa cos(difference))), so the view dwells on groups and swings between them
    smoothly instead of showing bare walls for long, plus the lead / trail wave."""
    start, swell_phase, height_phase, gaze_phase, roll_phase = shape
    phase = 2 * math.pi * laps * np.arange(frames) / frames
    angle = start + phase
    along = phase / laps                                # 0 .. 2 pi once over the sequence
    radius = 1.0 + _PATH_SWELL * np.sin(along + swell_phase)
    eye = np.stack([_PATH_RING * room.half_x * radius * np.cos(angle),
                    _EYE_HEIGHT + _EYE_WAVE * np.sin(3 * along + height_phase),
                    _PATH_RING * room.half_z * radius * np.sin(angle)], axis=1)
    weights = np.exp(_GAZE_PULL * np.cos(group_angles[None, :] - angle[:, None]))
    pulled = np.arctan2((weights * np.sin(group_angles)).sum(1), (weights * np.cos(group_angles)).sum(1))
    pulled = angle + np.angle(np.exp(1j * (pulled - angle)))          # the pulled angle nearest the camera's
    gaze = angle + _GAZE_MIX * (pulled - angle) + _GAZE_LEAD * np.sin(3 * along + gaze_phase)
    target = np.stack([_GROUP_RING * room.half_x * np.cos(gaze),
                       np.full(frames, _TARGET_HEIGHT),
                       _GROUP_RING * room.half_z * np.sin(gaze)], axis=1)
    roll = 0.03 * np.sin(2 * along + roll_phase)
    R = np.stack([look_at(e, t, r) for e, t, r in zip(eye, target, roll)])
    E = np.concatenate([R, -np.einsum("nij,nj->ni", R, eye)[:, :, None]], axis=2)
    H, W = image_size
    K = np.array([[focal * W, 0.0, W / 2], [0.0, focal * W, H / 2], [0.0, 0.0, 1.0]])
    return E.astype(np.float32), np.repeat(K[None], frames, axis=0).astype(np.float32)


def _in_frustum(obj: SceneObject, extrinsics: np.ndarray, intrinsics: np.ndarray,
                image_size: tuple[int, int]) -> np.ndarray:
    """[N] bool: the object's box reaches into the image of each camera (conservative: a box that straddles
    the camera plane counts as in view)."""
    H, W = image_size
    lo, hi = obj.aabb()
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    E, K = extrinsics.astype(np.float64), intrinsics.astype(np.float64)
    cam = np.einsum("nij,cj->nci", E[:, :, :3], corners) + E[:, None, :, 3]       # [N, 8, 3]
    z = cam[..., 2]
    front = z > 1e-3
    safe_z = np.where(front, z, 1.0)
    u = K[:, None, 0, 0] * cam[..., 0] / safe_z + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * cam[..., 1] / safe_z + K[:, None, 1, 2]
    inf = np.inf
    u_lo, u_hi = np.where(front, u, inf).min(1), np.where(front, u, -inf).max(1)
    v_lo, v_hi = np.where(front, v, inf).min(1), np.where(front, v, -inf).max(1)
    overlaps = (u_hi >= -0.5) & (u_lo <= W - 0.5) & (v_hi >= -0.5) & (v_lo <= H - 0.5)
    return (front.all(1) & overlaps) | (front.any(1) & ~front.all(1))


class LongSequenceWindows(torch.utils.data.Dataset):
    """Training samples for video: ``num_views`` consecutive frames (every ``step``-th, ``step`` drawn from
    ``steps``) of long sequences, in the batch contract of :func:`~iggt_lightning.data.synthetic.render_scene`.

    Sample ``index`` is a pure function of (seed, index): its sequence is ``LongSequence(frames, seed=seed +
    index % sequences)`` and its start frame is drawn from ``default_rng([seed, index])``. Keep ``seed`` apart from
    the sequences you evaluate on (the benchmarks use seed 0; the config trains from 1000).
    """

    def __init__(self, length: int = 1000, num_views: int = 8, frames: int = 300, sequences: int = 50,
                 steps: tuple[int, int] = (1, 3), image_size: tuple[int, int] = (84, 112), seed: int = 1000,
                 background_id: int = 0) -> None:
        if not isinstance(length, int) or length < 0:
            raise ValueError(f"length must be a non-negative int; got {length!r}")
        if not isinstance(num_views, int) or not 1 <= num_views <= frames:
            raise ValueError(f"num_views must be an int in [1, frames]; got {num_views!r}")
        if not isinstance(sequences, int) or sequences < 1:
            raise ValueError(f"sequences must be a positive int; got {sequences!r}")
        steps = tuple(steps)
        if len(steps) != 2 or not 1 <= steps[0] <= steps[1] or (num_views - 1) * steps[1] >= frames:
            raise ValueError(f"steps must be (min, max) >= 1 with (num_views - 1) * max < frames; got {steps!r}")
        self.length, self.num_views, self.frames, self.sequences = length, num_views, frames, sequences
        self.steps, self.image_size, self.seed = steps, tuple(image_size), int(seed)
        self.background_id = int(background_id)

    def __len__(self) -> int:
        return self.length

    def input_roots(self) -> list:
        return []

    def sample_shape(self, index: int) -> tuple[int, int, int]:
        return self.num_views, *self.image_size

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += self.length
        rng = np.random.default_rng([self.seed, int(index)])
        seq_seed = self.seed + int(index) % self.sequences
        seq = LongSequence(frames=self.frames, image_size=self.image_size, seed=seq_seed)
        step = int(rng.integers(self.steps[0], self.steps[1] + 1))
        start = int(rng.integers(0, self.frames - (self.num_views - 1) * step))
        views = [seq.frame(start + k * step) for k in range(self.num_views)]
        ids = torch.stack([v["instance_ids"] for v in views])
        if self.background_id:
            ids = ids.masked_fill(ids == 0, self.background_id)
        return {
            "images": torch.stack([v["images"] for v in views]),
            "depth": torch.stack([v["depth"] for v in views]),
            "extrinsics": torch.stack([v["extrinsics"] for v in views]).float(),
            "intrinsics": torch.stack([v["intrinsics"] for v in views]).float(),
            "world_points": torch.stack([v["world_points"] for v in views]),
            "valid_mask": torch.stack([v["valid_mask"] for v in views]),
            "instance_ids": ids,
            "scene_id": f"long-{seq_seed}-{start}-{step}",
            "frame_ids": [f"long-{seq_seed}/{v['frame_id']}" for v in views],
            "class_names": [o.class_name for o in seq.objects],
            "instance_classes": torch.tensor([o.class_index for o in seq.objects], dtype=torch.int64),
        }
