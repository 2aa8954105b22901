"""Exporters: the components that write a prediction's files (one per format), registered by name
(:mod:`.base`; third-party ones through the ``iggt_lightning.exporters`` entry-point group). Importing the
package registers the built-ins, in the order they write: per-view maps, then the scene's files
(docs/writing-an-exporter.md)."""
from .base import (ENTRY_POINT_GROUP, SCENE_SLOTS, Exporter, FilePlan, NoOptions, ViewerLayer, applicable_exporters,
                   available_exporters, chosen, export_option, exporter_source, files_for_outputs, get_exporter,
                   is_scene_exporter, register_exporter, selected_exporters, registered_exporter, unregister_exporter, viewer_layer_table)
from .view_maps import INSTANCE_ATTRIBUTE, DepthMaps, InstanceMasks
from .scene_files import (COLMAP_DIR, DEFAULT_COLMAP_POINTS, CamerasJson, ColmapModel, GlbLayers, PlyCloud,
                          SavedViews, TransformsJson)
from .instances3d import Grounding, Instances3D
from .point_features import FEATURES_FILE, PointFeatures

__all__ = ["COLMAP_DIR", "DEFAULT_COLMAP_POINTS", "ENTRY_POINT_GROUP", "INSTANCE_ATTRIBUTE", "SCENE_SLOTS",
           "CamerasJson", "ColmapModel", "DepthMaps", "Exporter", "FilePlan", "GlbLayers", "Grounding", "InstanceMasks",
           "Instances3D", "PointFeatures", "FEATURES_FILE",
           "NoOptions", "PlyCloud", "SavedViews", "TransformsJson", "ViewerLayer", "applicable_exporters",
           "available_exporters", "chosen", "export_option", "exporter_source", "files_for_outputs", "get_exporter",
           "is_scene_exporter", "register_exporter", "selected_exporters", "registered_exporter", "unregister_exporter", "viewer_layer_table"]
