"""Edits of a prediction's instances (merge, split, delete), saved as a new prediction folder beside the original.

A clustering merges two chairs or splits a table; the user who sees it in the viewer fixes it there (select,
merge, split by a click, delete) or writes the same operations in a file, and ``iggt edit PREDICTION EDIT.json``
applies them. Either way the result is a **new version** of the folder, ``<prediction>.v2`` (then ``.v3``, ...),
written beside the original under a temporary name and renamed into place: the original is never touched, and
the version is a complete prediction folder that the viewer, the dataset reader (``scene_folder``: its
``masks/``) and every tool opening a prediction read as they read the original.

The edit file (``iggt-instance-edit/1``, also saved in the version as ``edit.json``)::

    {"format": "iggt-instance-edit/1",
     "base": {"manifest_sha256": "<sha256 of the original manifest.json>"},
     "operations": [{"merge": [3, 5]},                       # 5 becomes 3 (the smallest id keeps its id)
                    {"split": 4, "seeds": [[x, y, z], ...]},  # 4's elements nearest the 1st seed keep id 4,
                                                             # those nearest each further seed get a new id
                    {"delete": [7]}]}                        # 7 becomes 0 (no instance)

Ids are those of the prediction (``masks/``, the PLY's ``instance``); seeds are points in its world frame (OpenCV,
camera 0, model units, as ``points.ply``). A split needs a 3D position for every element: the cloud's points
have one, a mask pixel gets its own from ``depth/<view>.png`` and the view's camera; a pixel without a valid
depth keeps the instance's id. New ids follow the largest id of the prediction, one per further seed, in the
order of the operations.

What a version rewrites: ``masks/`` (PNG ids and ``instances.json``), the PLY's instance property, the instance
colour layer (``instances.glb``), ``instances3d.json`` and ``grounding/``; every other file is the original's
(a hard link, or a copy where links cannot be made). Its ``manifest.json`` is the original's with ``files``
updated and ``edited`` added (the original folder, its manifest's hash, the operations).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iggt_lightning.fileio import atomic_write, write_json
from iggt_lightning.prediction_files import (ViewerError, _integer, _list, _number, _object, _read_json, _text,
                                             check_inside, check_scene_folder, instance_layer, read_cameras,
                                             read_ply)

EDIT_FORMAT = "iggt-instance-edit/1"
OPERATIONS = ("merge", "split", "delete")
MAX_COORDINATE = 1e9        # a seed's coordinates (the scene is in model units of order 1)


class EditError(ViewerError):
    """An edit that cannot apply to the prediction; the message names the file and the field."""


@dataclass
class Edit:
    """Checked operations, each ``("merge", [ids])``, ``("split", id, seeds [k,3])`` or ``("delete", [ids])``,
    and the hash of the manifest of the prediction they were made on."""

    operations: list[tuple]
    base_manifest_sha256: str

    def to_json(self) -> dict:
        ops = []
        for op in self.operations:
            if op[0] == "split":
                ops.append({"split": op[1], "seeds": [[float(x) for x in s] for s in op[2]]})
            elif op[0] == "recluster":
                ops.append({"recluster": {"granularity": float(op[1])}})
            else:
                ops.append({op[0]: list(op[1])})
        return {"format": EDIT_FORMAT, "base": {"manifest_sha256": self.base_manifest_sha256}, "operations": ops}


def manifest_sha256(folder: Path) -> str:
    return hashlib.sha256((Path(folder) / "manifest.json").read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- the ids
def recluster(folder: Path, granularity: float) -> tuple[np.ndarray, np.ndarray]:
    """Every point of ``points.ply`` clustered again at ``granularity`` from ``features/points.npy`` (the
    default clusterer, on the stored unit features): (ids [N] 1..K, scores [K]). The same file and granularity
    give the same ids, in the viewer and in a saved version."""
    import torch

    from iggt_lightning.exporters import FEATURES_FILE
    from iggt_lightning.inference.clustering import TorchClusterer

    folder = Path(folder)
    path = folder / FEATURES_FILE
    if not path.is_file():
        raise EditError(f"{folder}: no {FEATURES_FILE}; clustering again needs the instance features the "
                        "point_features exporter writes (a one-pass prediction of a model with the instance head)")
    check_inside(folder, path, str(path))
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise EditError(f"{path}: not readable as a .npy array ({err})") from err
    n = len(read_ply(folder / "points.ply"))
    if x.ndim != 2 or len(x) != n or not x.shape[1]:
        raise EditError(f"{path}: shape {list(x.shape)}; expected one feature row per point of points.ply ({n})")
    feats = torch.from_numpy(np.asarray(x, dtype=np.float32))
    if not torch.isfinite(feats).all():
        raise EditError(f"{path}: non-finite features")
    feats = torch.nn.functional.normalize(feats, dim=1)
    try:
        labels, scores = TorchClusterer(granularity=float(granularity)).cluster(feats, None)
    except ValueError as err:
        raise EditError(f"recluster: {err}") from None
    return labels.numpy().astype(np.int64), scores.numpy()



def apply_operations(operations: list[tuple], ids: np.ndarray, xyz: np.ndarray | None, first_new: int) -> np.ndarray:
    """``ids`` [N] after ``operations`` (new ids from ``first_new``, one per further seed of each split, in
    order); ``xyz`` [N,3] the elements' positions (a split leaves an element with a non-finite position, or all
    of them without ``xyz``, in the instance)."""
    out = np.array(ids, dtype=np.int64, copy=True)
    next_id = first_new
    for op in operations:
        if op[0] == "merge":
            out[np.isin(out, op[1])] = min(op[1])
        elif op[0] == "delete":
            out[np.isin(out, op[1])] = 0
        elif op[0] == "recluster":        # the caller's base ids are the new clustering already
            continue
        else:
            _, k, seeds = op
            new = list(range(next_id, next_id + len(seeds) - 1))
            next_id += len(seeds) - 1
            mine = np.flatnonzero(out == k)
            if xyz is None or not len(mine):
                continue
            p = np.asarray(xyz[mine], dtype=np.float64)
            ok = np.isfinite(p).all(1)
            d = np.linalg.norm(p[ok][:, None, :] - np.asarray(seeds, dtype=np.float64)[None], axis=2)
            nearest = d.argmin(1)
            lut = np.array([k, *new], dtype=np.int64)
            out[mine[ok]] = lut[nearest]
    return out


def check_operations(operations, where: str, known: set[int], first_new: int, offset: int = 0) -> list[tuple]:
    """The operations of an edit file (``where`` names it in errors; ``offset``: the index of the first in the
    file) against the ids ``known`` to exist before them; every id an operation names must exist at that point
    of the sequence. A ``recluster`` is :func:`read_edit`'s (it comes first)."""
    try:
        return _check_operations(operations, where, known, first_new, offset)
    except EditError:
        raise
    except ViewerError as err:              # a field's type or range: the same line, as an edit's error
        raise EditError(str(err)) from None


def _check_operations(operations, where: str, known: set[int], first_new: int, offset: int) -> list[tuple]:
    path = Path(where)
    alive, next_id, checked = set(known), first_new, []
    for i, raw in enumerate(_list(operations, path, "operations"), start=offset):
        at = f"operations[{i}]"
        op = _object(raw, path, at)
        if "recluster" in op:
            raise EditError(f"{where}: {at}.recluster: a new clustering comes first (operations[0]) or not at all")
        kinds = [k for k in op if k in OPERATIONS]
        extra = [k for k in op if k not in (*OPERATIONS, "seeds")]
        if len(kinds) != 1 or extra or ("seeds" in op) != (kinds == ["split"]):
            raise EditError(f"{where}: {at}: expected one of {{\"merge\": [ids]}}, {{\"split\": id, \"seeds\": "
                            f"[[x, y, z], ...]}}, {{\"delete\": [ids]}}; found keys {sorted(op)}")
        kind = kinds[0]

        def existing(value, field: str) -> int:
            k = _integer(value, path, field, 1)
            if k not in alive:
                raise EditError(f"{where}: {field}: instance {k} is not in the prediction at this point (ids "
                                f"{_id_list(alive)})")
            return k

        if kind == "split":
            k = existing(op["split"], f"{at}.split")
            seeds = _list(op["seeds"], path, f"{at}.seeds")
            if len(seeds) < 2:
                raise EditError(f"{where}: {at}.seeds: expected at least 2 points (the first keeps id {k}); "
                                f"found {len(seeds)}")
            pts = []
            for j, s in enumerate(seeds):
                s = _list(s, path, f"{at}.seeds[{j}]")
                if len(s) != 3:
                    raise EditError(f"{where}: {at}.seeds[{j}]: expected [x, y, z]; found {len(s)} numbers")
                xyz = [_number(x, path, f"{at}.seeds[{j}][{c}]") for c, x in enumerate(s)]
                if max(map(abs, xyz)) > MAX_COORDINATE:      # a distance to it would overflow
                    raise EditError(f"{where}: {at}.seeds[{j}]: expected coordinates within +-{MAX_COORDINATE:g}; "
                                    f"found {xyz}")
                pts.append(xyz)
            checked.append(("split", k, np.asarray(pts)))
            alive |= set(range(next_id, next_id + len(seeds) - 1))
            next_id += len(seeds) - 1
        else:
            ids = [existing(x, f"{at}.{kind}[{j}]") for j, x in enumerate(_list(op[kind], path, f"{at}.{kind}"))]
            if len(set(ids)) != len(ids) or not ids or (kind == "merge" and len(ids) < 2):
                raise EditError(f"{where}: {at}.{kind}: expected {'2 or more' if kind == 'merge' else '1 or more'} "
                                f"different ids; found {ids}")
            checked.append((kind, sorted(ids)))
            alive -= set(ids) - ({min(ids)} if kind == "merge" else set())
    return checked


def _id_list(ids) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:20])) + (f", ... ({len(ids)} in all)" if len(ids) > 20 else "") or "none"


def read_edit(path: Path, prediction: Path) -> Edit:
    """An edit file checked as data against ``prediction``: its format, the hash of the prediction's manifest it
    was made on, every operation's ids and seeds. One :class:`EditError` naming the file and field."""
    path = Path(path)
    data = _read_json(path)
    if data.get("format") != EDIT_FORMAT:
        raise EditError(f"{path}: format: expected {EDIT_FORMAT!r}; found {data.get('format')!r}")
    base = _object(data.get("base"), path, "base")
    sha = _text(base.get("manifest_sha256"), path, "base.manifest_sha256")
    actual = manifest_sha256(prediction)
    if sha != actual:
        raise EditError(f"{path}: base.manifest_sha256: the edit was made on another prediction (its manifest "
                        f"hash {sha[:12]}..., {prediction}/manifest.json has {actual[:12]}...)")
    ops = _list(data.get("operations"), path, "operations")
    first = ops[0] if ops else None
    if isinstance(first, dict) and "recluster" in first:        # a new clustering, then edits of its ids
        g = _recluster_field(first, path)
        labels, scores = recluster(prediction, g)
        rest = check_operations(ops[1:], str(path), set(range(1, len(scores) + 1)), len(scores) + 1, offset=1)
        return Edit([("recluster", g), *rest], sha)
    known = PredictionIds.read(prediction)
    return Edit(check_operations(ops, str(path), known.ids, known.first_new), sha)


def _recluster_field(op: dict, path: Path) -> float:
    spec = _object(op["recluster"], path, "operations[0].recluster")
    if set(op) != {"recluster"} or set(spec) != {"granularity"}:
        raise EditError(f"{path}: operations[0]: expected {{\"recluster\": {{\"granularity\": G}}}}; found keys "
                        f"{sorted(op)}")
    g = _number(spec["granularity"], path, "operations[0].recluster.granularity")
    if not 0 < g < 2:
        raise EditError(f"{path}: operations[0].recluster.granularity: expected a feature distance in (0, 2); "
                        f"found {g}")
    return g


@dataclass
class PredictionIds:
    """The instance ids a prediction holds (in its masks' COCO file and its PLY) and the first id free."""

    ids: set[int]
    first_new: int

    @classmethod
    def read(cls, folder: Path) -> "PredictionIds":
        folder = Path(folder)
        layer = instance_layer(folder)
        if layer is None or not (folder / layer.file).is_file():
            raise EditError(f"{folder}: no instances to edit (no {layer.file if layer else 'instances file'}); "
                            "expected a prediction of a model with the instance head")
        coco = _read_json(folder / layer.file)
        ids = {int(a["track_id"]) for a in coco.get("annotations", []) if isinstance(a, dict)
               and isinstance(a.get("track_id"), int)}
        vertex = read_ply(folder / "points.ply")
        if layer.attribute in (vertex.dtype.names or ()):
            ply_ids = np.unique(np.asarray(vertex[layer.attribute]))
            ids |= {int(k) for k in ply_ids if k > 0}
        return cls(ids, max(ids, default=0) + 1)


# ---------------------------------------------------------------------------------------------- the version
def next_version(prediction: Path) -> Path:
    """``<prediction>.v2``, or the next number not taken."""
    prediction = Path(prediction)
    n = 2
    while (prediction.parent / f"{prediction.name}.v{n}").exists():
        n += 1
    return prediction.parent / f"{prediction.name}.v{n}"


def save_version(prediction: Path, edit: Edit, out: Path | None = None) -> Path:
    """The prediction with ``edit`` applied, as the new folder ``out`` (default :func:`next_version`), written
    under a temporary sibling and renamed into place. Refuses an ``out`` that exists or lies inside the
    prediction, and an edit made on another prediction."""
    prediction = Path(prediction).resolve()
    check_scene_folder(prediction)
    if manifest_sha256(prediction) != edit.base_manifest_sha256:
        raise EditError(f"{prediction}/manifest.json: the edit was made on another prediction (base.manifest_sha256 "
                        "differs); open this folder and edit it again")
    out = Path(out).resolve() if out is not None else next_version(prediction)
    if out == prediction or prediction in out.parents:
        raise EditError(f"{out}: a version is written beside the prediction, not inside it; choose a folder "
                        f"outside {prediction}")
    if out.exists():
        raise EditError(f"{out}: exists; a version never overwrites a folder (choose another)")
    manifest = _read_json(prediction / "manifest.json")
    files = [_text(f, prediction / "manifest.json", f"files[{i}]")
             for i, f in enumerate(_list(manifest.get("files"), prediction / "manifest.json", "files"))]
    for f in files:
        check_inside(prediction, prediction / f, f"{prediction / 'manifest.json'}: files entry {f!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        changed, replaced = _write_edited(prediction, tmp, edit)
        for f in files:                            # the rest: the original's bytes
            if f in changed or f == "manifest.json" or not (prediction / f).is_file() \
                    or any(f.startswith(r) for r in replaced):      # a folder made anew (e.g. the crops)
                continue
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(prediction / f, tmp / f)
            except OSError:
                shutil.copy2(prediction / f, tmp / f)
        written = sorted({*[f for f in files if f != "manifest.json" and (tmp / f).is_file()], *changed})
        manifest["files"] = [*written, "manifest.json"]
        manifest["edited"] = {"from": os.path.relpath(prediction, out.parent), **edit.to_json()}
        write_json(tmp / "manifest.json", manifest, strict=True)
        write_json(tmp / "edit.json", edit.to_json(), strict=True)
        manifest["files"].insert(-1, "edit.json")
        write_json(tmp / "manifest.json", manifest, strict=True)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_edited(src: Path, dst: Path, edit: Edit) -> tuple[set[str], set[str]]:
    """Write the files the edit changes into ``dst``; returns their relative paths and the folders (prefixes)
    written anew, whose other original files are not carried over."""
    from PIL import Image

    from iggt_lightning.inference import export

    layer = instance_layer(src)
    manifest = _read_json(src / "manifest.json")
    coco = _read_json(src / layer.file)
    changed: set[str] = set()
    ply = src / "points.ply"
    vertex = np.array(read_ply(ply))
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], 1).astype(np.float64)
    scores, labels = _instance_table(coco)
    ops, reclustered = edit.operations, None
    if ops and ops[0][0] == "recluster":       # the base ids are a new clustering of the stored features
        reclustered, scores = recluster(src, ops[0][1])
        labels, first_new, ops = None, len(scores) + 1, ops[1:]
        if layer.attribute not in vertex.dtype.names:
            raise EditError(f"{ply}: no {layer.attribute!r} property to hold the new clustering")
    else:
        first_new = PredictionIds.read(src).first_new
    # the cloud: the PLY with its instance property rewritten
    point_ids = None
    if layer.attribute in vertex.dtype.names:
        base = reclustered if reclustered is not None else vertex[layer.attribute]
        point_ids = apply_operations(ops, base, xyz, first_new)
        vertex[layer.attribute] = point_ids
        with open(ply, "rb") as f:                 # the header as it was (read_ply checked it), then the rows
            head = f.read(1 << 16)
        header = head[: head.index(b"\n", head.index(b"end_header")) + 1]
        atomic_write(dst / "points.ply", lambda tmp: Path(tmp).write_bytes(header + vertex.tobytes()))
        changed.add("points.ply")
    # the masks: per view, with a 3D position per pixel for splits (and a new clustering: the id of the nearest
    # point of the cloud, the features being known only there)
    cameras = {Path(c.name).stem: c for c in read_cameras(src)}
    scale = float((manifest.get("depth_png") or {}).get("scale") or 0) or None
    images = {im["id"]: im for im in coco.get("images", [])}
    tree = None
    if reclustered is not None:
        from scipy.spatial import cKDTree

        tree = cKDTree(xyz)
    photo_ids, names, inputs = [], [], []
    for image_id in sorted(images):
        im = images[image_id]
        stem = Path(str(im.get("input_name") or im["file_name"])).stem
        mask_rel = f"masks/{Path(str(im['file_name'])).stem}.png"
        if not (src / mask_rel).is_file():
            mask_rel = f"masks/{stem}.png"
        check_inside(src, src / mask_rel, f"{src / layer.file}: images[{image_id}]")
        ids = np.asarray(Image.open(src / mask_rel)).astype(np.int64)
        needs_3d = tree is not None or any(op[0] == "split" for op in ops)
        pos = _pixel_positions(src, mask_rel, ids.shape, cameras, scale) if needs_3d else None
        if tree is not None:
            base = np.zeros(ids.size, np.int64)
            if pos is not None:
                ok = np.isfinite(pos).all(1)
                base[ok] = reclustered[tree.query(pos[ok])[1]]
            ids = base.reshape(ids.shape)
        new = apply_operations(ops, ids.reshape(-1), pos, first_new).reshape(ids.shape)
        export.write_png16(dst / mask_rel, new)
        changed.add(mask_rel)
        photo_ids.append(new)
        names.append(im["file_name"])
        inputs.append(im.get("input_name", im["file_name"]))
    new_scores, new_labels = _carry(ops, scores, labels, first_new)
    root = (coco.get("info") or {}).get("image_root")
    out_coco = export.coco_instances(photo_ids, new_scores, names, new_labels, root, inputs)
    write_json(dst / layer.file, out_coco, strict=True)
    changed.add(layer.file)
    replaced, records = set(), []
    if (src / "instances3d.json").is_file() and point_ids is not None:
        written, records = _write_objects(src, dst, photo_ids, names, point_ids, xyz, new_scores, new_labels)
        changed |= written
        if any(f.startswith("grounding/") for f in changed):
            replaced.add("grounding/")
    if point_ids is not None and layer.colour_layer and (src / f"{layer.colour_layer}.glb").is_file():
        from iggt_lightning.inference.instances3d import box_edges

        cams = read_cameras(src)
        palette = export.instance_colours(int(max(point_ids.max(initial=0), len(new_scores))))
        export.write_glb(dst / f"{layer.colour_layer}.glb", xyz.astype(np.float32), palette[point_ids],
                         np.stack([c.extrinsic for c in cams]) if cams else None,
                         np.stack([c.intrinsic for c in cams]) if cams else None,
                         [(c.width, c.height) for c in cams] if cams else None,
                         boxes=[(f"box_{r['id']}", box_edges(r["box"]), palette[r["id"]])
                                for r in records if "box" in r])
        changed.add(f"{layer.colour_layer}.glb")
    return changed, replaced


def _instance_table(coco: dict) -> tuple[np.ndarray, dict | None]:
    """Per instance id (index id-1) its score, and the open-vocabulary labels (names, label index, score)."""
    anns = [a for a in coco.get("annotations", []) if isinstance(a, dict)]
    K = max((int(a["track_id"]) for a in anns), default=0)
    scores = np.zeros(K)
    vocab = [c["name"] for c in coco.get("categories", []) if c.get("id", 0) >= 2]
    labels = {"names": vocab, "labels": [-1] * K, "scores": [0.0] * K} if vocab else None
    for a in anns:
        k = int(a["track_id"])
        scores[k - 1] = float(a.get("score") or 0.0)
        if labels is not None and a.get("category_id", 1) >= 2:
            labels["labels"][k - 1] = int(a["category_id"]) - 2
            labels["scores"][k - 1] = float(a.get("label_score") or 0.0)
    return scores, labels


def _carry(operations, scores: np.ndarray, labels: dict | None, first_new: int) -> tuple[np.ndarray, dict | None]:
    """Scores and labels of the edited ids: a merge keeps the best score under the kept id's label, the parts of
    a split inherit the instance's."""
    last = first_new - 1 + sum(len(op[2]) - 1 for op in operations if op[0] == "split")
    s = np.zeros(max(last, len(scores)))
    s[: len(scores)] = scores
    lab = None if labels is None else {"names": labels["names"],
                                       "labels": [*labels["labels"], *[-1] * (len(s) - len(labels["labels"]))],
                                       "scores": [*labels["scores"], *[0.0] * (len(s) - len(labels["scores"]))]}
    next_id = first_new
    for op in operations:
        if op[0] == "merge":
            s[min(op[1]) - 1] = max(s[k - 1] for k in op[1])
        elif op[0] == "split":
            for k in range(next_id, next_id + len(op[2]) - 1):
                s[k - 1] = s[op[1] - 1]
                if lab is not None:
                    lab["labels"][k - 1], lab["scores"][k - 1] = lab["labels"][op[1] - 1], lab["scores"][op[1] - 1]
            next_id += len(op[2]) - 1
    return s, lab


def _pixel_positions(src: Path, mask_rel: str, shape: tuple, cameras: dict, scale: float | None) -> np.ndarray | None:
    """[H*W,3] world positions of a view's photo pixels from ``depth/<stem>.png`` and its camera (NaN where the
    depth is 0 or missing); None when the view has no camera or depth."""
    from PIL import Image

    stem = Path(mask_rel).stem
    cam, depth_png = cameras.get(stem), src / "depth" / f"{stem}.png"
    if cam is None or scale is None or not depth_png.is_file():
        return None
    check_inside(src, depth_png, str(depth_png))
    d = np.asarray(Image.open(depth_png)).astype(np.float64) / scale
    if d.shape != tuple(shape):
        return None
    H, W = d.shape
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)       # pixel centres at i + 0.5 (COLMAP's)
    K, E = cam.intrinsic, cam.extrinsic
    x = (u - K[0, 2]) / K[0, 0] * d
    y = (v - K[1, 2]) / K[1, 1] * d
    cam_pts = np.stack([x, y, d], -1).reshape(-1, 3)
    world = (cam_pts - E[:, 3]) @ E[:, :3]                            # R^T (X - t), row vectors
    world[(d.reshape(-1) <= 0)] = np.nan
    return world


def _write_objects(src, dst, photo_ids, names, point_ids, xyz, scores, labels) -> tuple[set[str], list[dict]]:
    """``instances3d.json`` (and ``grounding/`` when the original has it) of the edited instances; returns the
    files and the records."""
    from iggt_lightning.inference.instances3d import InstanceTally

    tally = InstanceTally()
    for v, ids in enumerate(photo_ids):          # masks at photo resolution: boxes in photo pixels already
        tally.add_view(v, ids)
    records = tally.records(point_ids, xyz, scores)
    for r in records:
        r["best_view"] = names[r["best_view"]]
        for entry in r["views"]:
            entry["view"] = names[entry["view"]]
        if labels is not None and r["id"] - 1 < len(labels["labels"]):
            lab = labels["labels"][r["id"] - 1]
            r["label"] = labels["names"][lab] if lab >= 0 else None
    old = json.loads((src / "instances3d.json").read_text())
    write_json(dst / "instances3d.json", {**old, "instances": records}, strict=True)
    changed = {"instances3d.json"}
    if (src / "grounding" / "scene.json").is_file():
        changed |= _write_grounding(src, dst, records, labels is not None)
    return changed, records


def _write_grounding(src: Path, dst: Path, records: list[dict], labelled: bool) -> set[str]:
    from iggt_lightning.exporters.instances3d import CROP_MARGIN
    from iggt_lightning.inference import export
    from iggt_lightning.inference.grounding import grounding_record, render_prompt
    from PIL import Image

    cams = read_cameras(src)
    changed, crops = set(), {}
    for r in records:
        image = src / "images" / r["best_view"]
        if not image.is_file():
            continue
        check_inside(src, image, str(image))
        photo = np.asarray(Image.open(image).convert("RGB"))
        x0, y0, x1, y1 = r["best_view_box"]
        mx, my = int(round((x1 - x0) * CROP_MARGIN)), int(round((y1 - y0) * CROP_MARGIN))
        Hp, Wp = photo.shape[:2]
        x0, y0, x1, y1 = max(x0 - mx, 0), max(y0 - my, 0), min(x1 + mx, Wp), min(y1 + my, Hp)
        if x1 > x0 and y1 > y0:
            export.write_png_rgb(dst / "grounding" / "crops" / f"{r['id']}.png", photo[y0:y1, x0:x1])
            crops[r["id"]] = f"crops/{r['id']}.png"
            changed.add(f"grounding/crops/{r['id']}.png")
    if cams:
        record = grounding_record(records, np.stack([c.extrinsic for c in cams]), [c.name for c in cams],
                                  crops=crops, labels_available=labelled)
        write_json(dst / "grounding" / "scene.json", record, strict=True)
        export.write_text(dst / "grounding" / "prompt.txt", render_prompt(record, "{question}"))
        changed |= {"grounding/scene.json", "grounding/prompt.txt"}
    return changed


def edit_from_file(prediction: Path, edit_file: Path, out: Path | None = None) -> Path:
    """``iggt edit``: check ``edit_file`` against ``prediction`` and save the version."""
    return save_version(prediction, read_edit(edit_file, prediction), out)


__all__ = ["EDIT_FORMAT", "Edit", "EditError", "PredictionIds", "apply_operations", "check_operations",
           "edit_from_file", "manifest_sha256", "next_version", "read_edit", "save_version"]
