"""Datasets: procedurally generated scenes, real-dataset readers, co-transforms, mixing, datamodules."""
from .datamodule import GroupedBatchSampler, SceneDataModule, SyntheticDataModule, VideoWindowsDataModule, collate_checked
from .frames import DatasetError, Frame
from .infinigen import InfinigenScenes
from .mixed import MixedScenes
from .multiview import MultiViewScenes, SceneRecord
from .normalize import normalize_scene
from .pose_annotations import CO3DScenes, PoseListScenes
from .re10k import RE10KScenes
from .scannet import ScanNetScenes
from .scannetpp import ScanNetPPScenes
from .scene_folder import SceneFolderScenes
from .synthetic import CLASS_NAMES, Scene, SceneObject, SyntheticScenes, collate_scenes, render_scene
from .transforms import ColorJitter, Compose, CropResize
from .validate import SampleError, check_sample

__all__ = ["CLASS_NAMES", "CO3DScenes", "ColorJitter", "Compose", "CropResize", "DatasetError", "Frame", "GroupedBatchSampler",
           "InfinigenScenes", "MixedScenes", "MultiViewScenes", "PoseListScenes", "RE10KScenes", "SampleError", "ScanNetPPScenes",
           "ScanNetScenes", "Scene", "SceneDataModule", "SceneFolderScenes", "SceneObject", "SceneRecord",
           "SyntheticDataModule", "SyntheticScenes", "VideoWindowsDataModule", "check_sample", "collate_checked", "collate_scenes",
           "normalize_scene", "render_scene"]
