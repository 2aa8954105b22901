"""Official IGGT / VGGT-1B checkpoints <-> this framework, with strict key accounting.

Every official key is either renamed by a prefix rule (``OFFICIAL_PREFIXES``) or dropped by a named
rule (``DROP_RULES``); a missing key, a leftover key or a shape mismatch is an error listing the
keys. Files are read without unpickling code (``weights_only=True``) or from ``.safetensors``.

Our own format: a ``.safetensors`` file whose metadata holds ``format`` = ``iggt-lightning/v1`` and the
model ``config`` (JSON), or a ``.pt``/``.ckpt`` dict ``{"format", "config", "state_dict"}``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .fileio import atomic_write
from .model import IGGTModel

FORMAT = "iggt-lightning/v1"

# official prefix -> our prefix (module internals keep the official names).
OFFICIAL_PREFIXES = (
    ("aggregator.", "backbone."),
    ("camera_head.", "heads.camera."),
    ("depth_head.", "heads.depth.dpt."),
    ("point_head.", "heads.point.dpt."),
    ("track_head.", "heads.track."),
    ("part_adaptor.", "heads.instance.adaptor."),
    ("part_head.", "heads.instance.decoder."),
)

# (rule name, regex on the official key, why it is safe to drop)
DROP_RULES = (
    ("dino-mask-token", r"^aggregator\.patch_embed\.mask_token$",
     "DINOv2's masked-image-modelling token: frozen and never used by the forward pass"),
    ("part-head-dead-dpt-base", r"^part_head\.(norm|projects\.\d+|resize_layers\.\d+)\.",
     "PartHead inherits DPTHead's norm/projects/resize_layers but its forward never runs them "
     "(it reads the part_adaptor maps instead); 17.3 M dead parameters"),
)


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model, with the offending keys."""


def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def drop_rule(key: str) -> str | None:
    for name, pattern, _ in DROP_RULES:
        if re.search(pattern, key):
            return name
    return None


def rename_official_key(key: str) -> str | None:
    """Our name for an official key, or None when a drop rule removes it."""
    if drop_rule(key):
        return None
    for src, dst in OFFICIAL_PREFIXES:
        if key.startswith(src):
            return dst + key[len(src):]
    raise CheckpointError(f"official key {key!r} matches no mapping rule (expected a prefix among "
                          f"{[p for p, _ in OFFICIAL_PREFIXES]})")


def official_kind(keys) -> str:
    """'iggt-large' or 'vggt-large' from the official key set; an error for anything else."""
    keys = set(keys)
    if not any(k.startswith("aggregator.") for k in keys) or not any(k.startswith("camera_head.") for k in keys):
        sample = _listing(sorted(keys)[:8], 8)
        raise CheckpointError("this is not an official IGGT/VGGT checkpoint (no 'aggregator.*'/'camera_head.*' "
                              f"keys); its keys look like: {sample}")
    return "iggt-large" if any(k.startswith("part_head.") for k in keys) else "vggt-large"


def convert_official_state_dict(official: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map an official state dict onto ``model``'s keys; raises :class:`CheckpointError` on any mismatch."""
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for key, value in official.items():
        new = rename_official_key(key)
        if new is None:
            continue
        if new not in ours:
            unexpected.append(f"{key} (-> {new})")
        elif tuple(ours[new].shape) != tuple(value.shape):
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(ours[new].shape)}")
        else:
            out[new] = value
    missing = [k for k in ours if k not in out]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model key(s) missing from the checkpoint: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint key(s) the model does not have: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        raise CheckpointError("checkpoint does not match the model:\n  " + "\n  ".join(problems))
    return out


# ---------------------------------------------------------------------------- files
def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (flat, or under 'model'/'state_dict')")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def read_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """-> (state dict, metadata). Metadata has ``format``/``config`` for our own files, else is empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") == FORMAT:
            meta["config"] = json.loads(meta["config"])
            return sd, meta
        return _unwrap(sd, path), {}
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read as a tensor-only checkpoint ({err})") from err
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj["state_dict"], {"format": FORMAT, "config": obj["config"]}
    if isinstance(obj, dict) and "hyper_parameters" in obj and "state_dict" in obj:  # a Lightning checkpoint
        sd = {k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        cfg = obj.get("iggt_model_config", obj["hyper_parameters"].get("model_config"))
        return sd, ({"format": FORMAT, "config": cfg} if cfg is not None else {})
    return _unwrap(obj, path), {}


def load_model(path: str | os.PathLike, preset: str | None = None, map_location: str | torch.device = "cpu"
               ) -> IGGTModel:
    """Build and load a model from our format or an official IGGT/VGGT checkpoint (strict)."""
    sd, meta = read_file(path)
    if meta.get("format") == FORMAT:
        model = IGGTModel(**meta["config"])
        own = model.state_dict()
        mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
                      if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if mismatched:
            raise CheckpointError(f"{path}: shape mismatch(es) against its own config: {_listing(mismatched)}")
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{path}: does not match its own config: missing {_listing(missing)}; "
                                  f"unexpected {_listing(unexpected)}")
        return model.to(map_location)
    kind = preset or official_kind(sd)
    model = IGGTModel.from_preset(kind)
    model.load_state_dict(convert_official_state_dict(sd, model), strict=True)
    return model.to(map_location)


def save_model(model: IGGTModel, dst: str | os.PathLike) -> None:
    """Write ``model`` in our format (safetensors if the suffix says so, else a tensor-only .pt)."""
    dst = Path(dst)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = model.config
    if dst.suffix == ".safetensors":
        from safetensors.torch import save_file

        atomic_write(dst, lambda p: save_file(sd, p, metadata={"format": FORMAT, "config": json.dumps(config)}))
    else:
        atomic_write(dst, lambda p: torch.save({"format": FORMAT, "config": config, "state_dict": sd}, p))


def convert(src: str | os.PathLike, dst: str | os.PathLike, preset: str | None = None) -> IGGTModel:
    """``iggt convert``: official (or our) checkpoint -> our format."""
    model = load_model(src, preset)
    save_model(model, dst)
    return model
