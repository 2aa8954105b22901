"""The built-in exporters of the scene as a whole, in the order they write: the cloud as ``points.ply`` and GLBs,
the input views under ``images/`` (and downscaled), ``cameras.json``, the COLMAP model ``sparse/0/`` and
nerfstudio's ``transforms.json``: the layout COLMAP, gsplat and nerfstudio read (docs/tool-layouts.md). The
formats themselves are :mod:`iggt_lightning.inference.export` and :mod:`iggt_lightning.inference.colmap`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iggt_lightning.inference import colmap, export

from .base import Exporter, FilePlan, export_option, register_exporter

# COLMAP's own layout (its mapper writes sparse/0, sparse/1, ...), where gsplat's parser looks first
COLMAP_DIR = "sparse/0"
DEFAULT_COLMAP_POINTS = 100_000   # a COLMAP model of ~10 MB with tracks; more with --colmap-max-points


def _frusta(scene) -> tuple:
    """The GLB's camera frusta: (extrinsics, intrinsics, photo sizes) of the views with valid cameras, or ()."""
    cams, ok = scene.cameras, scene.camera_views()
    return (cams.extrinsics[ok], cams.intrinsics[ok], [scene.views[v].photo_size for v in ok]) if cams else ()


@register_exporter("ply")
class PlyCloud(Exporter):
    """``points.ply``: the kept points with RGB, confidence and one int property per point attribute."""

    consumes = ("cloud",)

    @classmethod
    def files(cls, plan: FilePlan, options) -> list[str]:
        return ["points.ply"]

    def write(self, scene, outputs: dict) -> dict:
        cloud = scene.cloud
        export.write_ply(scene.path("points.ply"), cloud.points, cloud.colours, cloud.confidence, cloud.attributes)
        return {"points": int(len(cloud.points)), "points_from": cloud.name}


@register_exporter("glb")
class GlbLayers(Exporter):
    """``scene.glb`` (the cloud in its colours and the views' frusta) and one GLB per colour layer the plugins
    describe (e.g. ``instances.glb``), the same points recoloured."""

    consumes = ("cloud",)

    @classmethod
    def files(cls, plan: FilePlan, options) -> list[str]:
        return ["scene.glb", *plan.colour_layers]     # the layers the plugins declare (Plugin.colour_layers)

    def write(self, scene, outputs: dict) -> None:
        cloud, frusta = scene.cloud, _frusta(scene)
        export.write_glb(scene.path("scene.glb"), cloud.points, cloud.colours, *frusta)
        boxed = _instance_colour_layer() if scene.shared.get("instances") is not None else None
        for file, colours in cloud.layers.items():
            boxes = _boxes(scene) if file == boxed else None        # the instances' layer: their 3D boxes too
            export.write_glb(scene.path(file), cloud.points, colours, *(frusta or (None, None, None)), boxes=boxes)


def _instance_colour_layer() -> str | None:
    """The GLB of the instance colours: the colour layer the instances' viewer layer names."""
    from .base import viewer_layer_table

    return next((f"{layer.colour_layer}.glb" for _, layer in viewer_layer_table(None)
                 if layer.kind == "instances" and layer.colour_layer), None)


def _boxes(scene) -> list:
    """(name, edges, colour) of every instance's oriented box, in the instance palette."""
    from iggt_lightning.inference.instances3d import box_edges

    from .instances3d import scene_records

    records = [r for r in scene_records(scene) if "box" in r]
    palette = export.instance_colours(max((r["id"] for r in records), default=0))
    return [(f"box_{r['id']}", box_edges(r["box"]), palette[r["id"]]) for r in records]


@dataclass(frozen=True)
class ImagesOptions:
    save_images: bool = export_option(True, "write the input views under images/ (--no-images: false)")


@register_exporter("images")
class SavedViews(Exporter):
    """``images/<name>`` (the views as the model read them: EXIF-rotated, RGB) and ``images_N/<name>`` for N in
    :func:`export.downscale_factors` (gsplat's ``data_factor``, nerfstudio's downscale folders)."""

    consumes = ("photos",)
    Options = ImagesOptions

    @classmethod
    def files(cls, plan: FilePlan, options: ImagesOptions) -> list[str]:
        if not plan.image_names or not options.save_images:
            return []
        names = plan.image_names
        factors = export.downscale_factors(plan.photo_sizes) if plan.photo_sizes else export.DOWNSCALE_FACTORS
        return [*(f"images/{n}" for n in names), *(f"images_{k}/{n}" for k in factors for n in names)]

    def write(self, scene, outputs: dict) -> dict:
        names = export.saved_image_names(scene)
        for name, v in zip(names, scene.views):
            export.write_png_rgb(scene.path(f"images/{name}"), np.asarray(v.photo))
        factors = export.downscale_factors([(v.photo.shape[1], v.photo.shape[0]) for v in scene.views])
        for n in factors:
            for name, v in zip(names, scene.views):
                export.write_png_downscaled(scene.path(f"images_{n}/{name}"), np.asarray(v.photo), n)
        return {"images_downscaled": {"factors": factors, "rule": export.DOWNSCALE_RULE}}


def _image_paths(scene) -> list[str] | None:
    saved = export.saved_image_names(scene)
    return None if saved is None else [f"images/{n}" for n in saved]


@register_exporter("cameras_json")
class CamerasJson(Exporter):
    """``cameras.json``: per view with a valid camera, OpenCV extrinsics and photo intrinsics (and its saved image)."""

    consumes = ("cameras",)

    @classmethod
    def files(cls, plan: FilePlan, options) -> list[str]:
        return ["cameras.json"]

    def write(self, scene, outputs: dict) -> None:
        cams, ok, paths = scene.cameras, scene.camera_views(), _image_paths(scene)
        export.write_cameras_json(scene.path("cameras.json"), cams.extrinsics[ok], cams.intrinsics[ok],
                                  [scene.views[v].photo_size for v in ok], [scene.views[v].name for v in ok],
                                  None if paths is None else [paths[v] for v in ok])


@dataclass(frozen=True)
class ColmapOptions:
    colmap_format: str = export_option("txt", "COLMAP model format (--colmap-format)", choices=colmap.FORMATS)
    colmap_max_points: int = export_option(DEFAULT_COLMAP_POINTS, "3D points of the COLMAP model, thinned by "
                                           "voxels keeping the most confident (--colmap-max-points)", low=1)
    colmap_depth_tolerance: float = export_option(0.03, "a track's visibility test: relative depth difference "
                                                  "to the view's own surface", low=0, high=1, low_open=True,
                                                  high_open=True)


@register_exporter("colmap")
class ColmapModel(Exporter):
    """``sparse/0/``: COLMAP's cameras, images and points3D with tracks (the cloud's points seen by each view)."""

    consumes = ("cameras",)
    Options = ColmapOptions

    @classmethod
    def files(cls, plan: FilePlan, options: ColmapOptions) -> list[str]:
        return [f"{COLMAP_DIR}/{n}.{options.colmap_format}" for n in ("cameras", "images", "points3D")]

    def write(self, scene, outputs: dict) -> dict:
        o, cams, ok = self.options, scene.cameras, scene.camera_views()
        sizes = [scene.views[v].photo_size for v in ok]
        to_model = [(scene.views[v].transform.scale, scene.views[v].transform.offset) for v in ok]
        cloud = scene.cloud
        if cloud is not None:
            tracks = colmap.build_tracks(cloud, cams.extrinsics[ok], cams.intrinsics[ok], sizes, to_model, ok,
                                         o.colmap_max_points, o.colmap_depth_tolerance)
        else:
            tracks = colmap.Tracks(np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0),
                                   [np.zeros((0, 2))] * len(ok), [np.zeros(0, np.int64)] * len(ok))
        scene.current = f"{COLMAP_DIR}/"
        folder = scene.folder / COLMAP_DIR
        colmap.write_model(folder, cams.extrinsics[ok], cams.intrinsics[ok], sizes,
                           [scene.views[v].image_name for v in ok], [v + 1 for v in ok], tracks, o.colmap_format)
        info = {"path": COLMAP_DIR, "format": o.colmap_format, "points": int(len(tracks.points)),
                "observations": int(sum(len(p) for p in tracks.point_of)),
                "mean_track_length": tracks.mean_track_length,
                "mean_reprojection_error": float(tracks.errors.mean()) if len(tracks.errors) else None,
                "max_points": o.colmap_max_points, "depth_tolerance": o.colmap_depth_tolerance,
                "pixel_coordinates": "pixel i's centre at i + 0.5 (COLMAP's convention)"}
        # written by colmap.write_model (and pycolmap, which may add files), not through scene.path
        scene.files += sorted(f"{COLMAP_DIR}/{p.name}" for p in folder.iterdir() if p.is_file())
        return {"colmap": info}


@register_exporter("transforms")
class TransformsJson(Exporter):
    """nerfstudio's ``transforms.json``: the valid views' cameras and saved images (and ``points.ply``)."""

    consumes = ("cameras", "photos")

    @classmethod
    def files(cls, plan: FilePlan, options) -> list[str]:
        return ["transforms.json"] if plan.image_names else []

    def write(self, scene, outputs: dict) -> None:
        cams, ok, paths = scene.cameras, scene.camera_views(), _image_paths(scene)
        export.write_transforms_json(scene.path("transforms.json"), cams.extrinsics[ok], cams.intrinsics[ok],
                                     [scene.views[v].photo_size for v in ok], [paths[v] for v in ok],
                                     "points.ply" if scene.cloud is not None else None)
