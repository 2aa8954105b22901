"""The official IGGT / VGGT model classes, built from a local checkout for side-by-side benchmarks.

Nothing here downloads or stores official code: the caller passes the path of a checkout of
lifuguan/IGGT_official (its ``iggt`` package holds both the IGGT and the VGGT classes), e.g.::

    git clone https://github.com/lifuguan/IGGT_official /somewhere/IGGT_official
    python -m benchmarks.vs_official --official /somewhere/IGGT_official

The official package imports a few libraries only for names its forward never uses
(``huggingface_hub.PyTorchModelHubMixin``, ``transformers.Mask2FormerConfig``, ``basicsr``'s ``to_2tuple`` /
``trunc_normal_``, ``detectron2``'s ``ShapeSpec``, ``sam2``'s ``PositionEmbeddingSine``, ``apex``'s or ``src.model.norm``'s ``RMSNorm``). Where one is not
installed, a placeholder module with just that name is registered before the import, and :data:`STUBBED` lists
which ones were, so a report can say so. The ``sam2`` placeholder returns nothing: the official part adaptor
computes a sine position embedding per level and discards it, so without ``sam2`` the official side skips that
work and is timed slightly faster than it really runs (the comparison errs in its favour). The official and our model are given the same weights (the official model's random initialisation,
converted with the rules ``iggt convert`` uses), so both sides compute the same function and
:func:`max_output_difference` can check it.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import convert_official_state_dict
from ..model import IGGTModel
from ..parity import load_fixture, model_config_from_fixture

STUBBED: list[str] = []
# Presets whose official module arguments are read from a parity fixture (small widths the official
# constructors do not expose); the large ones are the official classes' own defaults.
FIXTURE_PRESETS = {"tiny": "parity_tiny.pt", "small-dino": "parity_small_dino.pt"}
CLASS_PRESETS = {"iggt-large": "IGGT", "vggt-large": "VGGT"}
PRESETS = sorted(FIXTURE_PRESETS) + sorted(CLASS_PRESETS)


def _placeholder(module: str, names: dict) -> None:
    try:
        importlib.import_module(module)
        return
    except ImportError:
        pass
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            if i > 1:
                setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], sys.modules[name])
    for k, v in names.items():
        setattr(sys.modules[module], k, v)
    STUBBED.append(module)


def _to_2tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


class _NoEmbedding(nn.Module):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, x):
        return None


def import_official(checkout: str | Path) -> types.SimpleNamespace:
    """The official classes from ``checkout`` (a folder holding the ``iggt`` package)."""
    root = Path(checkout).expanduser().resolve()
    if not (root / "iggt" / "models" / "vggt.py").is_file():
        raise FileNotFoundError(f"{root}: not a checkout of lifuguan/IGGT_official (no iggt/models/vggt.py)")
    _placeholder("huggingface_hub", {"PyTorchModelHubMixin": type("PyTorchModelHubMixin", (), {})})
    _placeholder("transformers", {"Mask2FormerConfig": type("Mask2FormerConfig", (), {})})
    _placeholder("basicsr.archs.arch_util", {"to_2tuple": _to_2tuple, "trunc_normal_": nn.init.trunc_normal_})
    _placeholder("detectron2.layers", {"ShapeSpec": type("ShapeSpec", (), {})})
    _placeholder("sam2.modeling.position_encoding", {"PositionEmbeddingSine": _NoEmbedding})
    if importlib.util.find_spec("apex") is None:   # its fallback import path (an RMSNorm the forward never builds)
        _placeholder("src.model.norm", {"RMSNorm": nn.RMSNorm})
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    vggt = importlib.import_module("iggt.models.vggt")
    return types.SimpleNamespace(
        IGGT=vggt.IGGT, VGGT=vggt.VGGT,
        Aggregator=importlib.import_module("iggt.models.aggregator").Aggregator,
        CameraHead=importlib.import_module("iggt.heads.camera_head").CameraHead,
        DPTHead=importlib.import_module("iggt.heads.dpt_head").DPTHead,
        TrackHead=importlib.import_module("iggt.heads.track_head").TrackHead,
        SamProjector=importlib.import_module("iggt.heads.adaptor").SamProjector,
        PartHead=importlib.import_module("iggt.heads.part_head").PartHead)


def _resolve(value):
    if isinstance(value, str) and value.startswith("iggt.") and value.count(".") >= 2:
        module, _, name = value.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return value


def _from_fixture_config(off: types.SimpleNamespace, config: dict) -> nn.Module:
    """The official IGGT/VGGT forward over submodules built with the fixture's recorded arguments."""
    cls = off.IGGT if "part_head" in config["modules"] else off.VGGT
    model = cls.__new__(cls)
    nn.Module.__init__(model)
    builders = {"aggregator": off.Aggregator, "camera_head": off.CameraHead, "point_head": off.DPTHead,
                "depth_head": off.DPTHead, "track_head": off.TrackHead, "part_adaptor": off.SamProjector,
                "part_head": off.PartHead}
    for name, build in builders.items():
        if name in config["modules"]:
            kwargs = {k: _resolve(v) for k, v in config["modules"][name]["resolved_kwargs"].items()}
            setattr(model, name, build(**kwargs))
        else:
            setattr(model, name, None)
    return model


def build_pair(preset: str, checkout: str | Path, fixtures: str | Path, seed: int = 0) -> tuple[nn.Module, IGGTModel]:
    """(official model, our model) in eval mode with the same weights. ``fixtures``: the folder holding the parity
    fixtures of :data:`FIXTURE_PRESETS` (a checkout's tests/data/reference; they are not installed)."""
    if preset not in PRESETS:
        raise ValueError(f"no official counterpart for preset {preset!r}; expected one of {PRESETS}")
    off = import_official(checkout)
    torch.manual_seed(seed)
    if preset in FIXTURE_PRESETS:
        config = load_fixture(str(Path(fixtures) / FIXTURE_PRESETS[preset]))["config"]
        official = _from_fixture_config(off, config)
        ours = IGGTModel(**model_config_from_fixture(config))
    else:
        official = getattr(off, CLASS_PRESETS[preset])()
        ours = IGGTModel.from_preset(preset)
    official.eval()
    ours.load_state_dict(convert_official_state_dict(official.state_dict(), ours), strict=True)
    return official, ours.eval()


def max_output_difference(official_out: dict, ours_out: dict) -> dict[str, float]:
    """max|ours - official| / max|official| per shared dense output (a check that both sides match)."""
    diffs = {}
    for key in ("depth", "world_points", "part_feat"):
        if key in official_out and key in ours_out:
            a, b = official_out[key].double(), ours_out[key].double()
            diffs[key] = float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
    if "pose_enc" in official_out and "pose_enc" in ours_out:
        a, b = official_out["pose_enc"][-1].double(), ours_out["pose_enc"][-1].double()
        diffs["pose_enc"] = float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
    return diffs
