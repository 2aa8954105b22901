"""Inference: clustering of instance features into multi-view masks (and, later, the predict pipeline)."""
from .clustering import (CLUSTERERS, Clusterer, Clustering, HDBSCANClusterer, TorchClusterer, build_clusterer,
                         register_clusterer)

__all__ = ["CLUSTERERS", "Clusterer", "Clustering", "HDBSCANClusterer", "TorchClusterer", "build_clusterer",
           "register_clusterer"]
