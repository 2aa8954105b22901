"""Numerical parity against fixtures made from the official IGGT forward (docs/parity.md).

Everything is read from the fixture: the official module configuration, the weight recipe (official
key, shape, seed), integer buffers, inputs, strides and token indices. The weights are generated under
their official names and converted through :mod:`iggt_lightning.checkpoints`, so the key mapping is
exercised too.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoints import convert_official_state_dict
from .model import IGGTModel

FIXTURE_FORMAT = "iggt-parity-fixture/v1"
WELL_CONDITIONED_BAR = 1e-4     # max|Δ| / max|ref|, fp32 (PARITY.md)
STRICT_BAR = 2e-5               # what a faithful port reaches; --strict enforces it
TRACK_PX_BAR, PROB_BAR = 2.0, 0.1                   # fp32 sanity bars for the ill-conditioned outputs
FP64_POSE_BAR, FP64_TRACK_PX, FP64_PROB = 1e-6, 0.05, 5e-3


def fixture_value(name: str, shape, seed: int) -> np.ndarray:
    """The fixtures' deterministic weight recipe (see PARITY.md)."""
    rs = np.random.RandomState((zlib.crc32(name.encode()) + seed) % 2 ** 32)
    x = rs.standard_normal(size=tuple(shape)).astype(np.float32)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return 1.0 + 0.1 * np.abs(x)
    if len(shape) >= 2:
        return x / np.sqrt(float(np.prod(shape[1:])))
    if leaf == "weight":
        return 1.0 + 0.1 * x
    return 0.1 * x


_RECIPE_MARKERS = ("zlib.crc32(name.encode()) + seed", "running_var", "1.0 + 0.1 * np.abs(x)",
                   "x / np.sqrt(float(np.prod(shape[1:])))", "1.0 + 0.1 * x", "0.1 * x")


def load_fixture(path: str) -> dict:
    from .checkpoints import load_tensor_file

    fx = load_tensor_file(path)   # weights_only; a damaged file is one line naming it
    if not isinstance(fx, dict) or fx.get("format") != FIXTURE_FORMAT:
        raise ValueError(f"{path}: not a parity fixture (expected format {FIXTURE_FORMAT!r})")
    recipe = fx.get("recipe", "")
    if not all(m in recipe for m in _RECIPE_MARKERS):
        raise ValueError(f"{path}: its weight recipe differs from the one implemented here; recipe:\n{recipe}")
    return fx


def _kw(cfg: dict, module: str) -> dict:
    return cfg["modules"][module]["resolved_kwargs"]


def model_config_from_fixture(config: dict) -> dict:
    """Translate the official per-module constructor arguments into IGGTModel arguments."""
    mods = config["modules"]
    agg = _kw(config, "aggregator")
    if list(agg.get("aa_order", ["frame", "global"])) != ["frame", "global"] or agg.get("aa_block_size", 1) != 1:
        raise ValueError(f"unsupported aggregator schedule: aa_order={agg.get('aa_order')}, "
                         f"aa_block_size={agg.get('aa_block_size')}")
    backbone = {k: agg[k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio", "num_register_tokens",
                                    "patch_embed", "patch_size", "img_size", "qkv_bias", "proj_bias", "ffn_bias",
                                    "qk_norm", "rope_freq", "init_values")}
    heads: dict = {}
    cam = _kw(config, "camera_head")
    if cam.get("pose_encoding_type", "absT_quaR_FoV") != "absT_quaR_FoV":
        raise ValueError(f"unsupported pose encoding {cam['pose_encoding_type']!r}")
    heads["camera"] = {k: cam[k] for k in ("dim_in", "trunk_depth", "num_heads", "mlp_ratio", "init_values",
                                          "trans_act", "quat_act", "fl_act")}

    def dense(name: str, out_dim: int) -> dict:
        d = _kw(config, name)
        if d["output_dim"] != out_dim or d.get("down_ratio", 1) != 1 or d.get("for_tracker"):
            raise ValueError(f"{name}: unsupported configuration {d}")
        return dict(dim_in=d["dim_in"], patch_size=d["patch_size"], activation=d["activation"],
                    conf_activation=d["conf_activation"], features=d["features"],
                    out_channels=tuple(d["out_channels"]), layers=tuple(d["intermediate_layer_idx"]),
                    pos_embed=d["pos_embed"])

    if "depth_head" in mods:
        heads["depth"] = dense("depth_head", 2)
    if "point_head" in mods:
        heads["point"] = dense("point_head", 4)
    if "track_head" in mods:
        t = _kw(config, "track_head")
        heads["track"] = {k: t[k] for k in ("dim_in", "patch_size", "features", "iters", "predict_conf", "stride",
                                           "corr_levels", "corr_radius", "hidden_size")}
    if "part_head" in mods:
        a, p = _kw(config, "part_adaptor"), _kw(config, "part_head")
        if a.get("pos_embed") or list(p["out_channels"]) != list(a["out_channels"]):
            raise ValueError(f"unsupported instance configuration: adaptor {a}, part head {p}")
        heads["instance"] = dict(dim_in=p["dim_in"], patch_size=p["patch_size"], output_dim=p["output_dim"],
                                 features=p["features"], adaptor_channels=tuple(a["out_channels"]),
                                 layers=tuple(a["intermediate_layer_idx"]))
    return {"backbone": backbone, "heads": heads}


def official_state_dict(fx: dict) -> dict[str, torch.Tensor]:
    seed = int(fx["seed"])
    sd = {}
    for name, shape, dtype in fx["manifest"]:
        if name in fx["int_buffers"]:
            sd[name] = fx["int_buffers"][name].clone()
        elif "float" in str(dtype):
            sd[name] = torch.from_numpy(np.ascontiguousarray(fixture_value(name, shape, seed)))
        else:
            raise ValueError(f"fixture manifest entry {name} has dtype {dtype} but no stored int buffer")
    return sd


def build_model(fx: dict) -> IGGTModel:
    model = IGGTModel(**model_config_from_fixture(fx["config"]))
    model.load_state_dict(convert_official_state_dict(official_state_dict(fx), model), strict=True)
    return model.eval()


@dataclass
class Row:
    name: str
    shape: tuple
    value: float        # relative error (max|Δ|/max|ref|) or absolute, see ``kind``
    bar: float
    kind: str           # "rel" | "abs px" | "abs"
    well_conditioned: bool

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.value)) and self.value <= self.bar


def _rel(mine: torch.Tensor, ref: torch.Tensor) -> float:
    mine, ref = mine.double(), ref.double()
    if mine.shape != ref.shape:
        raise ValueError(f"shape mismatch: ours {tuple(mine.shape)} vs reference {tuple(ref.shape)}")
    return float((mine - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _abs(mine: torch.Tensor, ref: torch.Tensor) -> float:
    if mine.shape != ref.shape:
        raise ValueError(f"shape mismatch: ours {tuple(mine.shape)} vs reference {tuple(ref.shape)}")
    return float((mine.double() - ref.double()).abs().max())


@torch.no_grad()
def run_parity(fx: dict, fp64: bool = False, strict: bool = False, model: IGGTModel | None = None) -> list[Row]:
    model = model if model is not None else build_model(fx)
    dtype = torch.float64 if fp64 else torch.float32
    model = model.to(dtype)
    images = fx["inputs"]["images"].to(dtype)
    qp = fx["inputs"].get("query_points")
    qp = qp.to(dtype) if qp is not None else None
    out = model(images, query_points=qp, return_intermediates=True)
    ref, inter = fx["outputs"], fx["intermediates"]
    bar = STRICT_BAR if strict else WELL_CONDITIONED_BAR
    rows: list[Row] = []

    def rel(name, mine, r):
        rows.append(Row(name, tuple(r.shape), _rel(mine, r), bar, "rel", True))

    for i, r in enumerate(ref["pose_enc"]):
        rel(f"pose_enc[{i}]", out["pose_enc"][i], r)
    for key in ("depth", "depth_conf", "world_points", "world_points_conf", "part_feat"):
        if key in ref:
            rel(key, out[key], ref[key])
    feats = out["backbone"]
    idx = inter["aggregator_token_idx"]
    for layer, r in inter["aggregator"].items():
        rel(f"aggregator[{layer}]", feats.tokens[int(layer)][:, :, idx], r)
    pidx = inter["patch_embed_patch_idx"]
    rel("patch_embed_tokens", feats.patch_tokens[:, pidx], inter["patch_embed_tokens"])
    s = int(inter["point_feat_stride"])
    for name, mine, r in zip(inter["point_feat_names"], out["point_feat"], inter["point_feat"]):
        rel(f"point_feat.{name}", mine[:, :, ::s, ::s], r)

    if "track" in ref and qp is not None:
        track_head = model.heads["track"]
        from .head import HeadInput

        inp = HeadInput(feats.tokens, feats.patch_start_idx, out["images"], qp.unsqueeze(0) if qp.ndim == 2 else qp,
                        {}, model.frames_chunk_size)
        iters1 = track_head(inp, iters=1)
        if fp64:
            r64 = fx["reference_fp64"]
            for i, r in enumerate(r64["track_iters"]):
                rows.append(Row(f"track_iters[{i}] (fp64 ref)", tuple(r.shape), _abs(out["track_iters"][i], r),
                                FP64_TRACK_PX, "abs px", False))
            rows.append(Row("track (fp64 ref)", tuple(r64["track"].shape), _abs(out["track"], r64["track"]),
                            FP64_TRACK_PX, "abs px", False))
            for key in ("vis", "conf"):
                rows.append(Row(f"{key} (fp64 ref)", tuple(r64[key].shape), _abs(out[key], r64[key]), FP64_PROB,
                                "abs", False))
            for key, b, kind in (("track", FP64_TRACK_PX, "abs px"), ("vis", FP64_PROB, "abs"),
                                 ("conf", FP64_PROB, "abs")):
                r = r64["track_head_iters1"][key]
                rows.append(Row(f"track_head_iters1.{key} (fp64 ref)", tuple(r.shape), _abs(iters1[key], r), b, kind,
                                False))
            for i, r in enumerate(r64["pose_enc"]):
                rows.append(Row(f"pose_enc[{i}] (fp64 ref)", tuple(r.shape), _rel(out["pose_enc"][i], r),
                                FP64_POSE_BAR, "rel", False))
        else:
            for i, r in enumerate(inter["track_iters"][:2]):
                rel(f"track_iters[{i}]", out["track_iters"][i], r)
            for key in ("track", "vis", "conf"):
                rel(f"track_head_iters1.{key}", iters1[key], inter["track_head_iters1"][key])
            rows.append(Row("track", tuple(ref["track"].shape), _abs(out["track"], ref["track"]), TRACK_PX_BAR,
                            "abs px", False))
            for key in ("vis", "conf"):
                rows.append(Row(key, tuple(ref[key].shape), _abs(out[key], ref[key]), PROB_BAR, "abs", False))
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'tensor':<40} {'shape':<22} {'error':>11} {'bar':>9}  kind    status"]
    for r in rows:
        lines.append(f"{r.name:<40} {str(r.shape):<22} {r.value:>11.3e} {r.bar:>9.1e}  {r.kind:<7} "
                     f"{'ok' if r.ok else 'FAIL'}")
    return "\n".join(lines)


def worst_well_conditioned(rows: list[Row]) -> float:
    vals = [r.value for r in rows if r.well_conditioned]
    return max(vals) if vals else float("nan")
