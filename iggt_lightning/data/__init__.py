"""Datasets: procedurally generated multi-view instance scenes and VGGT scene normalisation."""
from .normalize import normalize_scene
from .synthetic import CLASS_NAMES, Scene, SceneObject, SyntheticScenes, collate_scenes, render_scene

__all__ = ["CLASS_NAMES", "Scene", "SceneObject", "SyntheticScenes", "collate_scenes", "normalize_scene",
           "render_scene"]
