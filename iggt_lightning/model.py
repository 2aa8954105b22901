"""IGGTModel: the backbone plus an ordered set of plugin heads; pure tensors in, a dict out.

Output keys (the official ones): ``pose_enc`` (list over refinement iterations of [B,S,9]),
``depth`` [B,S,H,W,1], ``depth_conf`` [B,S,H,W], ``world_points`` [B,S,H,W,3],
``world_points_conf`` [B,S,H,W], ``part_feat`` [B,S,8,H,W] (raw instance features), and with query
points ``track`` [B,S,N,2], ``vis``/``conf`` [B,S,N]; ``images`` echoes the (batched) input.
The keys heads declare as ``intermediates`` and ``backbone`` (all layer tokens) are returned only with
``return_intermediates=True``. What runs after the network (clustering into instances, labelling) is
post-processing (:mod:`iggt_lightning.postprocessor`), not part of a preset.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .backbone import Aggregator
from .head import HeadInput
from .plugin import RESERVED_OUTPUTS, build_plugin, check_contract, split_spec  # noqa: F401 (API)
from .registry import dependency_order, get_head

_DPT_WIDE = dict(features=256, out_channels=(256, 512, 1024, 1024))

PRESETS: dict[str, dict[str, Any]] = {
    # The official IGGT (VGGT-1B + instance head), 1.30 B parameters.
    "iggt-large": dict(
        backbone=dict(embed_dim=1024, depth=24, num_heads=16, patch_embed="dinov2_vitl14_reg"),
        heads=dict(camera=dict(num_heads=16), depth={}, point={}, track={}, instance={})),
    # VGGT-1B.
    "vggt-large": dict(
        backbone=dict(embed_dim=1024, depth=24, num_heads=16, patch_embed="dinov2_vitl14_reg"),
        heads=dict(camera=dict(num_heads=16), depth={}, point={}, track={})),
    # The parity-fixture configurations (docs/parity.md).
    "tiny": dict(
        backbone=dict(embed_dim=64, depth=24, num_heads=4, patch_embed="conv"),
        heads=dict(camera=dict(num_heads=8), depth={}, point={}, track={}, instance={})),
    "small-dino": dict(
        backbone=dict(embed_dim=384, depth=24, num_heads=6, patch_embed="dinov2_vits14_reg"),
        heads=dict(camera=dict(num_heads=12), depth={}, point={}, track={}, instance={})),
    # A few-MB model for tests and CPU experiments: every head, narrow and shallow.
    "nano": dict(
        backbone=dict(embed_dim=32, depth=4, num_heads=2, patch_embed="conv"),
        heads=dict(
            camera=dict(num_heads=2, trunk_depth=1),
            depth=dict(features=32, out_channels=(16, 32, 64, 64), layers=(0, 1, 2, 3)),
            point=dict(features=32, out_channels=(16, 32, 64, 64), layers=(0, 1, 2, 3)),
            track=dict(features=16, hidden_size=32, depth=1, num_heads=2, num_virtual_tracks=8, corr_levels=3,
                       out_channels=(16, 32, 64, 64), layers=(0, 1, 2, 3)),
            instance=dict(features=32, adaptor_channels=(16, 16, 16, 16), layers=(0, 1, 2, 3)))),
}
# configs/synthetic_tiny.yaml's model: nano with a 3x wider backbone and a wider instance adaptor. nano's 32-wide
# tokens cannot tell apart objects one or two patches wide (the wider model roughly doubled multi-view AP50 on
# the synthetic test split in benchmarks/ablation.py's runs) at a modest cost in step time.
PRESETS["mini"] = dict(
    backbone=dict(embed_dim=96, depth=4, num_heads=4, patch_embed="conv"),
    heads={**copy.deepcopy(PRESETS["nano"]["heads"]),
           "instance": dict(features=32, adaptor_channels=(32, 32, 64, 64), layers=(0, 1, 2, 3))})


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class IGGTModel(nn.Module):
    """Backbone + heads.

    Args:
        backbone: keyword arguments of :class:`~iggt_lightning.backbone.Aggregator`.
        heads: head name -> keyword arguments (``None`` = defaults). A name is a registered head
            or a dotted ``module.Class`` path; a dict value may name its class with ``class_path``
            (and then ``init_args``). ``dim_in`` and ``patch_size`` default to the backbone's.
        frames_chunk_size: frames a dense head decodes at once in eval mode (memory bound; results do not
            depend on it); a head in training mode decodes the whole batch (see :mod:`iggt_lightning.head`).
        trust_code: whether a dotted path that is not a registered head may be imported (False for configs
            read from files: see :mod:`iggt_lightning.registry`); ``source`` names the config in errors.
    """

    # Official checkpoints (checkpoints.official_rules): the backbone is the official ``aggregator``, less DINOv2's
    # mask token; each head declares its own keys (Head.official_prefixes / official_drop_rules)
    official_prefixes = (("aggregator.", "backbone."),)
    official_drop_rules = (
        ("dino-mask-token", r"^aggregator\.patch_embed\.mask_token$",
         "DINOv2's masked-image-modelling token: frozen and never used by the forward pass"),)

    def __init__(self, backbone: dict | None = None, heads: dict[str, dict | None] | None = None,
                 frames_chunk_size: int | None = 8, *, trust_code: bool = True,
                 source: str = "the model configuration") -> None:
        super().__init__()
        backbone = copy.deepcopy(dict(backbone or {}))
        self.backbone = Aggregator(**backbone)
        if "global_attention" in backbone:  # stored in full, so a checkpoint keeps today's defaults
            backbone["global_attention"] = self.backbone.global_attention.to_dict()
        self.config = {"backbone": backbone, "heads": copy.deepcopy(heads or {}),
                       "frames_chunk_size": frames_chunk_size}
        self.frames_chunk_size = frames_chunk_size
        self.head_precision = "fp32"   # a run-time choice (set_head_precision), not part of the configuration
        built = {}
        for name, spec in (heads or {}).items():
            target, kwargs = split_spec(name, spec, "head", source)
            cls = get_head(target, trust_code=trust_code, source=f"{source} (heads.{name})")
            defaults = {"dim_in": 2 * self.backbone.embed_dim, "patch_size": self.backbone.patch_size}
            built[name] = build_plugin(cls, "head", name, kwargs, defaults)
        check_contract(built, source)
        self.head_order = dependency_order({n: tuple(h.requires) for n, h in built.items()})
        self.heads = nn.ModuleDict({n: built[n] for n in self.head_order})
        depth = self.backbone.depth
        for n, h in self.heads.items():
            bad = [i for i in h.token_layers if not -depth <= i < depth]
            if bad:
                raise ValueError(f"head {n!r} reads backbone layer(s) {bad}, but the backbone has {depth} layers")
        self.token_layers = {i % depth for h in self.heads.values() for i in h.token_layers}

    def set_head_precision(self, value: str, field: str = "head_precision") -> None:
        """``fp32``: the heads run in float32 under autocast too, as the official model does (the default);
        ``autocast``: they follow the autocast around the forward pass (bf16 on CPU: the heads are most of the
        arithmetic, so this is what makes bf16 fast there; docs/speed.md has its accuracy), except a head that
        declares ``reduced_precision = False`` (the camera head)."""
        if value not in HEAD_PRECISIONS:
            raise ValueError(f"{field} must be one of {list(HEAD_PRECISIONS)}; got {value!r}")
        self.head_precision = value

    @classmethod
    def from_preset(cls, name: str, *, trust_code: bool = True, source: str = "the model configuration",
                    **overrides: Any) -> "IGGTModel":
        """Build a named configuration (``iggt-large``, ``vggt-large``, ``tiny``, ``small-dino``, ``nano``,
        ``mini``); ``overrides`` (``backbone``, ``heads``, ``drop_heads``, ``frames_chunk_size``) are merged into
        it as :func:`build_model` does (``heads={"track": None}`` is not a removal: use ``drop_heads``)."""
        if name is None or name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return build_model(name, trust_code=trust_code, source=source, **overrides)

    # ------------------------------------------------------------------ input checks
    def _check_inputs(self, images: torch.Tensor, query_points: torch.Tensor | None):
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim == 4:
            images = images.unsqueeze(0)
        if images.ndim != 5:
            raise ValueError(f"images must have shape [S,3,H,W] or [B,S,3,H,W]; got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point RGB in [0, 1]; got dtype {images.dtype} "
                            "(convert uint8 images with images.float() / 255)")
        B, S, C, H, W = images.shape
        if S == 0 or B == 0:
            raise ValueError(f"images contain no views (shape {tuple(images.shape)}); at least one is needed")
        if C != 3:
            raise ValueError(f"images must have 3 (RGB) channels in dim -3; got {C} (shape {tuple(images.shape)})")
        p = self.backbone.patch_size
        if H % p or W % p:
            sug = (max(p, round(H / p) * p), max(p, round(W / p) * p))
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}; "
                             f"resize to e.g. {sug[0]}x{sug[1]} (H x W)")
        if query_points is not None:
            if query_points.ndim == 2:
                query_points = query_points.unsqueeze(0)
            if query_points.ndim != 3 or query_points.shape[-1] != 2 or query_points.shape[0] not in (1, B):
                raise ValueError(f"query_points must have shape [N,2] or [B,N,2] with B={B}; "
                                 f"got {tuple(query_points.shape)}")
            if query_points.shape[0] != B:
                query_points = query_points.expand(B, -1, -1)
            query_points = query_points.to(images.dtype)
            outside = (query_points[..., 0] < 0) | (query_points[..., 0] > W - 1) | \
                      (query_points[..., 1] < 0) | (query_points[..., 1] > H - 1)
            if bool(outside.any()):
                bad = query_points[outside][:3].tolist()
                raise ValueError(f"{int(outside.sum())} query point(s) lie outside the {W}x{H} image "
                                 f"(x in [0,{W - 1}], y in [0,{H - 1}]), e.g. {bad}")
        for head in self.heads.values():
            head.check_inputs(images, query_points)
        return images, query_points

    def forward(self, images: torch.Tensor, query_points: torch.Tensor | None = None,
                return_intermediates: bool = False) -> dict[str, Any]:
        """images: [S,3,H,W] or [B,S,3,H,W] RGB in [0,1]; query_points: [N,2] or [B,N,2] pixels (x, y)."""
        images, query_points = self._check_inputs(images, query_points)
        feats = self.backbone(images, layers=self.token_layers)
        inp = HeadInput(feats.tokens, feats.patch_start_idx, images, query_points, {}, self.frames_chunk_size)
        for name in self.head_order:
            head = self.heads[name]
            inp.training = head.training      # chunking only in eval mode (head.py): training BatchNorm sees the batch
            # By default the heads run in fp32 even under autocast, as the official model does (the backbone's
            # residual stream is already fp32 because LayerScale promotes it); head_precision "autocast" lets them
            # follow it, and their outputs come back in fp32.
            if self.head_precision == "fp32" or not head.reduced_precision:
                with torch.autocast(images.device.type, enabled=False):
                    inp.outputs.update(head(inp))
            else:
                inp.outputs.update(_to_float32(head(inp)))
        out = dict(inp.outputs)
        out["images"] = images
        if return_intermediates:
            out["backbone"] = feats
        else:
            for head in self.heads.values():
                for key in head.intermediates:
                    out.pop(key, None)
        return out


HEAD_PRECISIONS = ("fp32", "autocast")


def _to_float32(outputs: dict) -> dict:
    """A head's reduced-precision tensors (and lists of them) as float32; the rest unchanged."""
    def cast(v):
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != torch.float32:
            return v.float()
        if isinstance(v, (list, tuple)) and any(isinstance(t, torch.Tensor) for t in v):
            return type(v)(cast(t) for t in v)
        return v
    return {k: cast(v) for k, v in outputs.items()}


def build_model(preset: str | None = None, backbone: dict | None = None, heads: dict[str, dict | None] | None = None,
                drop_heads: list[str] | tuple[str, ...] = (), frames_chunk_size: int | None = 8, *,
                trust_code: bool = True, source: str = "the model configuration") -> IGGTModel:
    """The one way a model configuration becomes an :class:`IGGTModel` (``IGGTModel.from_preset`` and
    ``IGGTLitModule`` both come here).

    ``preset``: a :data:`PRESETS` name whose backbone and heads ``backbone`` / ``heads`` are merged over (a new
    head name adds a head, ``name: null`` keeps the preset's arguments), or None to build ``backbone`` and
    ``heads`` alone. ``drop_heads``: configured heads to leave out. A non-trainable head that needs a dropped
    one goes too, unless ``heads`` names it over a preset (then it was asked for, and the missing requirement
    is an error); a trainable head left without its input is an error naming both. Post-processing is not part
    of the network: :func:`~iggt_lightning.postprocessor.build_postprocessing`."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    if isinstance(drop_heads, str):
        raise ValueError(f"drop_heads must be a list of head names; got the string {drop_heads!r}")
    drop = set(drop_heads or ())
    given = dict(heads or {})
    if preset is None:
        if not given:
            raise ValueError("without a preset, give the heads (and backbone) to build")
        arch, asked_for = {"backbone": dict(backbone or {}), "heads": given}, set()
    else:
        overrides = {"backbone": dict(backbone or {}), "heads": {k: {} if v is None else v for k, v in given.items()}}
        arch, asked_for = _merge(PRESETS[preset], overrides), set(given)
    configured = arch["heads"]
    unknown = sorted(drop - set(configured))
    if unknown:
        where = f"preset {preset!r}" if preset is not None else "the configuration"
        raise ValueError(f"drop_heads: {where} has no head(s) {unknown}; configured heads: {list(configured)}")

    def head_class(name: str) -> type:
        spec = configured[name]
        target = spec.get("class_path", name) if isinstance(spec, dict) else name
        return get_head(target, trust_code=trust_code, source=f"{source} (heads.{name})")

    while True:
        dependents = {k for k in configured if k not in drop and k not in asked_for and not head_class(k).trainable
                      and set(head_class(k).requires) & drop}
        if not dependents:
            break
        drop |= dependents
    return IGGTModel(backbone=arch["backbone"], heads={k: v for k, v in configured.items() if k not in drop},
                     frames_chunk_size=frames_chunk_size, trust_code=trust_code, source=source)


def check_head_contract(heads: dict[str, nn.Module], source: str = "the model configuration") -> None:
    """The heads' declarations fit together (see :func:`~iggt_lightning.plugin.check_contract`)."""
    check_contract(heads, source)
