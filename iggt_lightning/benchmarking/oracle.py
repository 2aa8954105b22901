"""A stand-in network for measuring windowed reconstruction itself: it returns a long sequence's ground truth as
a network would see it, so that what the windows, the alignment and the instance association do is measured
apart from any model's errors (benchmarks/long_video.py's "oracle" rows, tests/test_windowed.py).

Each window comes out in a frame of its own (a random similarity: rotation, translation, scale 0.3-3), with its
own instance numbering in a random order, depth and points with relative noise (``noise``, 1 % by default), and
features that identify an object's *appearance* up to noise: identical copies get the same feature, so only
where they are tells them apart, as with a real network."""
from __future__ import annotations

import zlib

import numpy as np
import torch

from iggt_lightning.geometry import extri_intri_to_pose_encoding
from iggt_lightning.inference.windowed import Sim3


def _random_sim3(rng) -> Sim3:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return Sim3(float(rng.uniform(0.3, 3.0)), q * np.sign(np.linalg.det(q)), rng.normal(size=3))


class GroundTruthNetwork:
    """``net(images [1,S,3,H,W], start)``: the outputs of the window of frames [start, start + S)."""

    def __init__(self, seq, seed: int = 0, depth_noise: float = 0.01):
        self.seq, self.rng, self.noise = seq, np.random.default_rng(seed), depth_noise
        self.calls = []

    def __call__(self, images: torch.Tensor, start: int) -> dict:
        S = images.shape[1]
        frames = [self.seq.frame(i) for i in range(start, start + S)]
        to_window = _random_sim3(self.rng)                    # global -> this window's own frame
        E = torch.stack([torch.as_tensor(f["extrinsics"]).double() for f in frames])
        K = torch.stack([torch.as_tensor(f["intrinsics"]).float() for f in frames])
        E_w = to_window.extrinsics(E).float()                 # world-to-camera of the window's frame
        depth = torch.stack([torch.as_tensor(f["depth"]) for f in frames]).double()
        depth = depth * (1 + self.noise * torch.as_tensor(self.rng.normal(size=depth.shape)))
        points = torch.stack([torch.as_tensor(f["world_points"]) for f in frames]).double()
        points = points + self.noise * depth[..., None] * torch.as_tensor(self.rng.normal(size=points.shape))
        points_w = to_window.points(points).float()
        gt = torch.stack([torch.as_tensor(f["instance_ids"]) for f in frames]).long()
        present = [int(i) for i in gt.unique() if i != 0]
        order = self.rng.permutation(len(present))
        local = torch.zeros(int(gt.max()) + 1, dtype=torch.long)
        for k, j in enumerate(order):
            local[present[j]] = k + 1
        ids = local[gt]
        # features: the object's appearance (identical copies alike), a fixed code per shape/colour
        feats = torch.zeros(S, 8, *gt.shape[-2:])
        for oid in present:
            obj = self.seq.objects[oid - 1]
            look = zlib.crc32(repr((obj.shape, obj.colour_name, [round(float(v), 4) for v in obj.size])).encode())
            code = torch.as_tensor(np.random.default_rng(look).normal(size=8)).float()
            feats += (gt == oid)[:, None] * code[None, :, None, None]
        feats += 0.1 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(start))
        H, W = gt.shape[-2:]
        self.calls.append(S)
        return {"pose_enc": [extri_intri_to_pose_encoding(E_w, K, (H, W))[None]],
                "depth": (depth * to_window.s).float()[None, ..., None],
                "depth_conf": torch.ones(1, S, H, W), "world_points": points_w[None],
                "world_points_conf": torch.ones(1, S, H, W), "images": images,
                "part_feat": feats[None], "instance_masks": ids[None],
                "instance_scores": [torch.full((len(present),), 0.9)]}


