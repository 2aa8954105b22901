"""Camera head: iterative refinement of a 9-d pose encoding from each frame's camera token.

Encoding ``[t_x, t_y, t_z, q_x, q_y, q_z, q_w, fov_h, fov_w]``: world-to-camera translation, a
scalar-last quaternion (not normalised) and fields of view in radians (OpenCV camera axes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from iggt_lightning.geometry import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri
from iggt_lightning.head import Head, HeadInput
from iggt_lightning.layers.block import Block, Mlp
from iggt_lightning.losses import camera_loss
from iggt_lightning.metrics import CameraMetrics
from iggt_lightning.registry import register_head


def _act(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "linear":
        return x
    if kind == "relu":
        return F.relu(x)
    if kind == "exp":
        return torch.exp(x)
    if kind == "inv_log":
        return torch.sign(x) * torch.expm1(torch.abs(x))
    raise ValueError(f"unknown pose activation {kind!r}")


@register_head("camera")
class CameraHead(Head):
    outputs = ("pose_enc",)
    loss_terms = ("camera",)
    loss_functions = {"camera": camera_loss}   # its options: camera_loss's keyword parameters
    official_prefixes = (("camera_head.", ""),)
    # under head_precision "autocast" the camera head still runs in fp32: it is a fraction of a percent of the
    # arithmetic, and bf16 moved the main job's cameras by 0.36 degrees (median; benchmarks/bf16.py)
    reduced_precision = False

    def __init__(self, dim_in: int = 2048, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4,
                 init_values: float = 0.01, num_iterations: int = 4, trans_act: str = "linear",
                 quat_act: str = "linear", fl_act: str = "relu", layer: int = -1) -> None:
        super().__init__()
        self.token_layers = (layer,)
        self.num_iterations = num_iterations
        self.acts = (trans_act, quat_act, fl_act)
        self.trunk = nn.Sequential(*[Block(dim_in, num_heads, mlp_ratio, init_values=init_values)
                                     for _ in range(trunk_depth)])
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, 9))
        self.embed_pose = nn.Linear(9, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in, bias=True))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, 9)

    def view_attention(self) -> list[nn.Module]:
        """The trunk attends over the frames' camera tokens: the only place the views meet."""
        return [block.attn for block in self.trunk]

    def forward(self, inp: HeadInput) -> dict:
        tokens = self.token_norm(inp.tokens[self.token_layers[0]][:, :, 0])  # camera token per frame [B, S, C]
        B, S, _ = tokens.shape
        pred = None
        preds = []
        for _ in range(self.num_iterations):
            if pred is not None:
                pred = pred.detach()  # each refinement learns a delta on a fixed previous estimate
            cond = self.embed_pose(self.empty_pose_tokens.expand(B, S, -1) if pred is None else pred)
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            pred = delta if pred is None else pred + delta
            t, q, fov = pred[..., :3], pred[..., 3:7], pred[..., 7:]
            preds.append(torch.cat([_act(t, self.acts[0]), _act(q, self.acts[1]), _act(fov, self.acts[2])], -1))
        return {"pose_enc": preds}

    def loss(self, outputs: dict, batch: dict, active: dict[str, dict]) -> dict:
        """``camera``: :func:`~iggt_lightning.losses.camera_loss` against the batch cameras' encoding."""
        if "camera" not in active:
            return {}
        gt = extri_intri_to_pose_encoding(batch["extrinsics"], batch["intrinsics"], tuple(batch["images"].shape[-2:]))
        return camera_loss(outputs["pose_enc"], gt, **active["camera"])

    def build_metrics(self, **options) -> dict:
        """``options`` (``model.metric_options.camera``): :class:`CameraMetrics` arguments, e.g. VGGT's CO3D
        protocol ``{pairs: unordered, aggregate: category}``."""
        return {"camera": CameraMetrics(**options)}

    def describe(self, outputs: dict, scene) -> None:
        """The scene's cameras: the last refinement's pose encoding as OpenCV extrinsics and photo intrinsics."""
        if "pose_enc" not in outputs:
            return
        import numpy as np

        from iggt_lightning.inference.scene import SceneCameras

        W, H = scene.model_size
        extr, intr = pose_encoding_to_extri_intri(outputs["pose_enc"][-1][scene.index].detach().float().cpu(), (H, W))
        extr, intr = extr.double(), intr.double()
        centred = intr.clone()
        centred[:, :2, 2] += 0.5  # the model puts pixel centres at integer coordinates (VGGT), exports at i + 0.5
        K = np.stack([v.transform.intrinsics_to_photo(k).numpy() for v, k in zip(scene.views, centred)])
        E = extr.numpy()
        valid = []
        for v in range(len(E)):
            intr_ok = bool(np.isfinite(K[v]).all() and K[v][0, 0] > 0 and K[v][1, 1] > 0)
            extr_ok = bool(np.isfinite(E[v]).all())
            if not intr_ok:
                scene.report_invalid(v, "intrinsics")
            if not extr_ok:
                scene.report_invalid(v, "extrinsics")
            valid.append(intr_ok and extr_ok)
        scene.cameras = SceneCameras(E, K, intr.numpy(), valid)

    def update_metrics(self, metrics: dict, outputs: dict, batch: dict) -> None:
        if "pose_enc" in outputs:
            H, W = batch["images"].shape[-2:]
            extrinsics, _ = pose_encoding_to_extri_intri(outputs["pose_enc"][-1], (H, W))
            metrics["camera"].update(extrinsics, batch["extrinsics"], batch.get("scene_id"))
