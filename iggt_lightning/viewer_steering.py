"""The viewer's instance editing: click a point to select its instance, shift-click to add one, merge, split by a
second click, delete, undo, and save the result as a new prediction folder beside the one shown
(:mod:`iggt_lightning.instance_edits` writes it; the folder shown is never changed).

What a click means: viser sends the click as a ray in its world; the picked point is the nearest shown point
along the ray among those within a few point sizes of it (:func:`pick_point`). The edits are kept as the
operations of an edit file and re-applied to the shown points' original ids after every change, so the view
shows exactly what Save writes (the points shown are a subsample; Save applies the same operations to every
point and every mask pixel).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from iggt_lightning.inference.export import instance_colours
from iggt_lightning.instance_edits import Edit, PredictionIds, apply_operations, manifest_sha256, save_version
from iggt_lightning.prediction_files import Instance, ViewerError

DIM = 0.3        # how much of a colour an unselected point keeps while something is selected (the rest: grey)


def pick_point(origin: np.ndarray, direction: np.ndarray, points: np.ndarray, shown: np.ndarray,
               point_size: float) -> int | None:
    """Index of the point a click ray (``origin``, ``direction``, the viewer's world) hits: among the ``shown``
    points whose drawn square (``point_size`` a side) the ray passes through, give or take half a size, the
    nearest along the ray (or, when it passes through none, among those within 1 % of their distance along it:
    a far view, where points are specks); None when nothing is near."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / max(np.linalg.norm(d), 1e-12)
    idx = np.flatnonzero(shown)
    if not len(idx):
        return None
    rel = points[idx].astype(np.float64) - np.asarray(origin, dtype=np.float64)
    t = rel @ d
    off = np.linalg.norm(rel - t[:, None] * d, axis=1)
    ahead = t > 0
    for near in (ahead & (off <= point_size), ahead & (off <= 0.01 * t)):
        if near.any():
            cand = np.flatnonzero(near)
            return int(idx[cand[np.argmin(t[cand])]])
    return None


def edited_instances(original: list[Instance], operations: list[tuple], ids: np.ndarray,
                     first_new: int) -> list[Instance]:
    """The instance list after ``operations``: a merge keeps the smallest id with the views of all and the best
    score, a split's parts inherit the instance's label, score and views, a deleted id is gone. ``ids``: the
    shown points' ids after the edits (for the point counts)."""
    table = {i.id: Instance(i.id, i.score, i.label, list(i.views)) for i in original}
    next_id = first_new
    for op in operations:
        if op[0] == "merge":
            keep = table.setdefault(min(op[1]), Instance(min(op[1]), None, None, []))
            for k in op[1]:
                other = table.pop(k, None) if k != keep.id else None
                if other is not None:
                    keep.views += [v for v in other.views if v not in keep.views]
                    if other.score is not None and (keep.score is None or other.score > keep.score):
                        keep.score = other.score
        elif op[0] == "delete":
            for k in op[1]:
                table.pop(k, None)
        else:
            parent = table.get(op[1], Instance(op[1], None, None, []))
            for k in range(next_id, next_id + len(op[2]) - 1):
                table[k] = Instance(k, parent.score, parent.label, list(parent.views))
            next_id += len(op[2]) - 1
    counts = np.bincount(ids[ids > 0]) if (ids > 0).any() else np.zeros(0, int)
    for inst in table.values():
        inst.points = int(counts[inst.id]) if inst.id < len(counts) else 0
    return [table[k] for k in sorted(table)]


class InstanceSteering:
    """Selection and edits of the instances of one :class:`~iggt_lightning.viewer.SceneView`."""

    def __init__(self, view) -> None:
        self.view, self.scene = view, view.scene
        # what the edits start from: the file's instances, or after the slider a new clustering of its features
        self.file_base = {"ids": self.scene.instance_ids.copy(), "instances": list(self.scene.instances),
                          "first_new": PredictionIds.read(self.scene.folder).first_new,
                          "boxes": dict(self.scene.boxes)}
        self.regrouped: dict | None = None
        from iggt_lightning.exporters import FEATURES_FILE

        self.can_regroup = (self.scene.folder / FEATURES_FILE).is_file()
        self.granularity = 0.5
        self.base = manifest_sha256(self.scene.folder)
        self.operations: list[tuple] = []
        self.selected: list[int] = []
        self.anchor: np.ndarray | None = None        # where the last selecting click hit (a split's first seed)
        self.splitting = False
        self.saved: list[Path] = []
        self.gui: dict = {}
        server = view.server
        server.scene.on_click()(lambda event: self.click(event, add=False))
        server.scene.on_click(modifier="shift")(lambda event: self.click(event, add=True))

    # -- GUI (made again with the scene's panel)
    def add_gui(self) -> None:
        gui = self.view.server.gui
        with gui.add_folder("Edit instances"):
            self.gui["selected"] = gui.add_markdown(self._selection_text())
            merge, split = gui.add_button("Merge selected"), gui.add_button("Split selected")
            delete, undo = gui.add_button("Delete selected"), gui.add_button("Undo")
            save = gui.add_button("Save as new version")
            if self.can_regroup:
                slider = gui.add_slider("Granularity", min=0.1, max=1.9, step=0.05, initial_value=self.granularity,
                                        hint="cluster the stored instance features again: smaller, finer "
                                             "(starts the edits anew)")
                slider.on_update(lambda _: self.regroup(slider.value))
                self.gui["granularity"] = slider
            self.gui["log"] = gui.add_markdown(self._log_text())
        merge.on_click(lambda _: self.merge())
        split.on_click(lambda _: self.start_split())
        delete.on_click(lambda _: self.delete())
        undo.on_click(lambda _: self.undo())
        save.on_click(lambda _: self.save())
        self.gui.update(merge=merge, split=split, delete=delete, undo=undo, save=save)

    def _selection_text(self) -> str:
        if self.splitting:
            return f"**Split #{self.selected[0]}**: click a point of the part to cut off"
        if not self.selected:
            return "Click a point to select its instance (shift-click: add one)"
        by_id = {i.id: i for i in self.scene.instances}
        rows = []
        for k in self.selected:
            inst = by_id.get(k)
            views = ", ".join(inst.views) if inst and inst.views else "no view"
            rows.append(f"**#{k}**{' ' + inst.label if inst and inst.label else ''}: {views}"
                        + (f"; {inst.points:,} points shown" if inst else ""))
        return "Selected:  \n" + "  \n".join(rows)

    def _log_text(self) -> str:
        lines = [f"{len(self.operations)} edit(s)" + ("" if not self.operations else ": " + "; ".join(
            f"merge {op[1]}" if op[0] == "merge" else f"delete {op[1]}" if op[0] == "delete" else
            f"granularity {op[1]:.2f}" if op[0] == "recluster" else f"split #{op[1]}" for op in self.operations))]
        lines += [f"saved: {p}" for p in self.saved]
        if self.gui.get("error"):
            lines.append(f"**{self.gui['error']}**")
        return "  \n".join(lines)

    def _refresh_text(self) -> None:
        if "selected" in self.gui:
            self.gui["selected"].content = self._selection_text()
            self.gui["log"].content = self._log_text()

    # -- clicks and buttons
    def click(self, event, add: bool) -> None:
        view = self.view
        with view.lock:
            hit = pick_point(event.ray_origin, event.ray_direction, view.points_viser, view.keep, view.point_size)
            ids = self.scene.instance_ids
            if hit is None or ids[hit] == 0:
                if not add and not self.splitting:
                    self.selected, self.anchor = [], None
                self._changed(redraw_only=True)
                return
            k, where = int(ids[hit]), self.scene.xyz[hit].astype(np.float64)
            if self.splitting:
                self.splitting = False
                if k == self.selected[0] and self.anchor is not None and np.linalg.norm(where - self.anchor) > 0:
                    self._apply(("split", k, np.stack([self.anchor, where])))
                    self.selected, self.anchor = [self.first_new + self._splits_before() - 1], where
                else:
                    self.gui["error"] = f"the second click must hit #{self.selected[0]} elsewhere; split cancelled"
                self._changed()
                return
            if add:
                self.selected = [s for s in self.selected if s != k] if k in self.selected else [*self.selected, k]
            else:
                self.selected = [k]
            self.anchor = where
            self._changed(redraw_only=True)

    def _splits_before(self) -> int:
        return sum(len(op[2]) - 1 for op in self.operations if op[0] == "split")

    @property
    def first_new(self) -> int:
        return self._base()["first_new"]

    def _base(self) -> dict:
        regrouped = self.operations and self.operations[0][0] == "recluster"
        return self.regrouped if regrouped else self.file_base

    def regroup(self, granularity: float) -> None:
        """Cluster every point's stored feature again at ``granularity`` (what Save then writes); the edits
        start anew from it."""
        from iggt_lightning.inference.instances3d import oriented_box
        from iggt_lightning.instance_edits import recluster

        with self.view.lock:
            try:
                labels, scores = recluster(self.scene.folder, granularity)
            except ViewerError as err:
                self.gui["error"] = str(err)
                self._changed(redraw_only=True)
                return
            ids = labels if self.scene.sample is None else labels[self.scene.sample]
            boxes = {}
            for k in np.unique(ids[ids > 0]):
                pts = self.scene.xyz[ids == k].astype(np.float64)
                if len(pts) >= 10:
                    boxes[int(k)] = {key: np.asarray(v) for key, v in oriented_box(pts).items()}
            self.granularity = float(granularity)
            self.regrouped = {"ids": ids, "first_new": len(scores) + 1, "boxes": boxes,
                              "instances": [Instance(k, float(scores[k - 1]), None, []) for k in range(1, len(scores) + 1)]}
            self.operations = [("recluster", self.granularity)]
            self.selected, self.splitting = [], False
            self._recompute()
            self._changed()

    def merge(self) -> None:
        with self.view.lock:
            if len(self.selected) < 2:
                self.gui["error"] = "select two or more instances to merge (shift-click adds one)"
            else:
                self._apply(("merge", sorted(self.selected)))
                self.selected = [min(self.selected)]
            self._changed()

    def delete(self) -> None:
        with self.view.lock:
            if not self.selected:
                self.gui["error"] = "select an instance to delete"
            else:
                self._apply(("delete", sorted(self.selected)))
                self.selected = []
            self._changed()

    def start_split(self) -> None:
        with self.view.lock:
            if len(self.selected) != 1 or self.anchor is None:
                self.gui["error"] = "select one instance (a click on the part that keeps its id) to split"
            else:
                self.splitting = True
            self._changed(redraw_only=True)

    def undo(self) -> None:
        with self.view.lock:
            if self.operations:
                self.operations.pop()
                self.selected, self.splitting = [], False
                self._recompute()
            self._changed()

    def save(self) -> Path | None:
        with self.view.lock:
            try:
                out = save_version(self.scene.folder, Edit(list(self.operations), self.base))
            except (ViewerError, OSError) as err:
                self.gui["error"] = f"not saved: {err}"
                self._changed(redraw_only=True)
                return None
            self.saved.append(out)
            self._changed(redraw_only=True)
            return out

    # -- state
    def _apply(self, op: tuple) -> None:
        self.operations.append(op)
        self._recompute()

    def _recompute(self) -> None:
        """The shown points' ids, the instance list and the instance colours after the operations."""
        scene, base = self.scene, self._base()
        ops = [op for op in self.operations if op[0] != "recluster"]
        ids = apply_operations(ops, base["ids"], scene.xyz, base["first_new"])
        self._refit_boxes(ids, base)
        scene.attributes[scene.id_attribute] = ids
        scene.instances = edited_instances(base["instances"], ops, ids, base["first_new"])
        if "instances" in scene.layers:           # the instance colour layer follows the new ids
            scene.layers["instances"] = instance_colours(int(max(ids.max(initial=0), 1)))[ids]
        self.view.shown = {k: True for k in self.view.shown}
        self.view.rebuild = True

    def _refit_boxes(self, ids: np.ndarray, base: dict) -> None:
        """Boxes of the instances an edit changed, fitted to their shown points (the saved version fits them to
        every point); the others keep the base's."""
        from iggt_lightning.inference.instances3d import oriented_box

        moved = ids != base["ids"]
        touched = set(np.unique(ids[moved]).tolist()) | set(np.unique(base["ids"][moved]).tolist())
        boxes = {k: b for k, b in base["boxes"].items() if k not in touched}
        for k in touched - {0}:
            pts = self.scene.xyz[ids == k].astype(np.float64)
            if len(pts) >= 10:
                b = oriented_box(pts)
                boxes[k] = {key: np.asarray(v) for key, v in b.items()}
        self.scene.boxes = boxes

    def _changed(self, redraw_only: bool = False) -> None:
        if not redraw_only or getattr(self.view, "rebuild", False):
            self.view.rebuild_panel()
        self.view._redraw()
        self._refresh_text()
        self.gui.pop("error", None)

    def highlight(self, colours: np.ndarray) -> np.ndarray:
        """``colours`` [N,3] uint8 of every point with the unselected ones faded to grey (as they are when
        nothing is selected)."""
        if not self.selected:
            return colours
        mine = np.isin(self.scene.instance_ids, self.selected)
        out = colours.astype(np.float32)
        out[~mine] = out[~mine] * DIM + 200 * (1 - DIM)
        return out.astype(np.uint8)

    def remove(self) -> None:
        self.view.server.scene.remove_click_callback("all")


__all__ = ["InstanceSteering", "edited_instances", "pick_point"]
