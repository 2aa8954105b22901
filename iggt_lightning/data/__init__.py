"""Datasets: procedurally generated multi-view instance scenes, VGGT scene normalisation, datamodules."""
from .datamodule import GroupedBatchSampler, SceneDataModule, SyntheticDataModule, collate_checked
from .normalize import normalize_scene
from .synthetic import CLASS_NAMES, Scene, SceneObject, SyntheticScenes, collate_scenes, render_scene
from .validate import SampleError, check_sample

__all__ = ["CLASS_NAMES", "GroupedBatchSampler", "SampleError", "Scene", "SceneDataModule", "SceneObject",
           "SyntheticDataModule", "SyntheticScenes", "check_sample", "collate_checked", "collate_scenes",
           "normalize_scene", "render_scene"]
