"""IGGTModel behaviour beyond the official code: odd grids, many views, batches, bf16, bad input."""
import pytest
import torch

from iggt_lightning import IGGTModel
from iggt_lightning.head import Head
from iggt_lightning.layers import attention
from iggt_lightning.registry import dependency_order


def _tensors(out):
    return {k: v for k, v in out.items() if torch.is_tensor(v)}


def test_output_contract(nano_model):
    x = torch.rand(2, 3, 3, 56, 84)
    with torch.no_grad():
        out = nano_model(x, query_points=torch.tensor([[3.0, 4.0], [80.0, 50.0]]))
    B, S, H, W = 2, 3, 56, 84
    assert len(out["pose_enc"]) == 4 and out["pose_enc"][-1].shape == (B, S, 9)
    assert out["depth"].shape == (B, S, H, W, 1) and out["depth_conf"].shape == (B, S, H, W)
    assert out["world_points"].shape == (B, S, H, W, 3) and out["world_points_conf"].shape == (B, S, H, W)
    assert out["part_feat"].shape == (B, S, 8, H, W)
    assert out["track"].shape == (B, S, 2, 2) and out["vis"].shape == (B, S, 2)
    assert (out["depth"] > 0).all() and (out["depth_conf"] > 1).all()
    # frame 0 of a track is the query point itself
    assert torch.allclose(out["track"][:, 0], torch.tensor([[3.0, 4.0], [80.0, 50.0]]).expand(B, -1, -1))
    assert "point_feat" not in out and "track_iters" not in out  # intermediates only on request
    with torch.no_grad():
        single = nano_model(x[0])
    assert single["depth"].shape == (1, S, H, W, 1)


@pytest.mark.parametrize("side", [518, 126])
def test_odd_patch_grid_runs(nano_model, side):
    """518 px = 37 patches: the official window attention crashes there; we pad inside it."""
    x = torch.rand(1, 2, 3, side, side)
    with torch.no_grad():
        out = nano_model(x)
    assert out["part_feat"].shape == (1, 2, 8, side, side)
    assert all(torch.isfinite(v).all() for v in _tensors(out).values())


def test_sixteen_views_chunked_equals_unchunked(nano_model, monkeypatch):
    import iggt_lightning.head as head_module

    x = torch.rand(1, 16, 3, 56, 56)
    old = nano_model.frames_chunk_size
    try:
        monkeypatch.setattr(head_module, "CPU_FRAMES_CHUNK", None)   # really unchunked
        nano_model.frames_chunk_size = None
        with torch.no_grad():
            full = nano_model(x)
        nano_model.frames_chunk_size = 3
        with torch.no_grad():
            chunked = nano_model(x)
        monkeypatch.setattr(head_module, "CPU_FRAMES_CHUNK", 2)      # the CPU cap under a larger setting
        nano_model.frames_chunk_size = 8
        with torch.no_grad():
            capped = nano_model(x)
    finally:
        nano_model.frames_chunk_size = old
    for k, v in _tensors(full).items():
        assert torch.allclose(chunked[k], v, rtol=0, atol=1e-5 * float(v.abs().max())), k
        assert torch.allclose(capped[k], v, rtol=0, atol=1e-5 * float(v.abs().max())), k


def test_batch_matches_separate_scenes(nano_model):
    """Chunks run over the flattened B*S frames; every frame must land back in its own scene."""
    x = torch.rand(2, 5, 3, 42, 56)
    nano_model.frames_chunk_size, old = 3, nano_model.frames_chunk_size
    try:
        with torch.no_grad():
            both = nano_model(x)
            first, second = nano_model(x[:1]), nano_model(x[1:])
    finally:
        nano_model.frames_chunk_size = old
    for k in ("depth", "world_points", "part_feat"):
        ref = torch.cat([first[k], second[k]])
        assert torch.allclose(both[k], ref, rtol=0, atol=1e-5 * float(ref.abs().max())), k
    assert torch.allclose(both["pose_enc"][-1], torch.cat([first["pose_enc"][-1], second["pose_enc"][-1]]), atol=1e-5)


def test_bf16_autocast_runs(nano_model):
    x = torch.rand(1, 2, 3, 56, 56)
    with torch.no_grad():
        ref = nano_model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = nano_model(x)
    for k, v in _tensors(out).items():
        assert torch.isfinite(v).all(), k
    assert out["depth"].dtype == torch.float32  # heads run in fp32, as the official model does
    rel = (out["depth"] - ref["depth"]).abs().max() / ref["depth"].abs().max()
    assert rel < 0.1


def test_heads_follow_autocast_only_when_asked(nano_model):
    """head_precision "autocast" runs the heads in bf16 (their outputs come back as float32, rounded as bf16
    rounds); the default keeps them in fp32 as the official model does; anything else is refused."""
    x = torch.rand(1, 2, 3, 56, 56)
    with torch.no_grad():
        ref = nano_model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            official = nano_model(x)
            nano_model.set_head_precision("autocast")
            try:
                fast = nano_model(x)
            finally:
                nano_model.set_head_precision("fp32")
    for k, v in _tensors(fast).items():
        assert v.dtype == official[k].dtype and torch.isfinite(v).all(), k
    # the camera head declares reduced_precision = False: it stays in fp32, so the poses are the official run's
    assert torch.equal(fast["pose_enc"][-1], official["pose_enc"][-1])
    depth_err = {name: float(((o["depth"] - ref["depth"]).abs() / ref["depth"].abs()).median())
                 for name, o in (("official", official), ("fast", fast))}
    assert depth_err["fast"] > depth_err["official"] and depth_err["fast"] < 0.02
    with pytest.raises(ValueError, match="head_precision must be one of"):
        nano_model.set_head_precision("bf16")


def test_dense_activations_run_in_float32_under_bf16():
    """A dense head in bf16 still activates in float32. Rounded to bf16, ``1 + exp(c)`` keeps steps of 2^-7 near
    1: the low-confidence end of the map collapsed to a few values, and a percentile filter kept every pixel."""
    from iggt_lightning.layers.dpt import activate_dense

    logits = torch.linspace(-8, -2, 4000).bfloat16().unique()              # every bf16 value in the range
    out = torch.stack([logits, logits]).reshape(1, 2, 1, -1)                  # [N, C = value + confidence, H, W]
    for activation in ("exp", "inv_log", "sigmoid"):
        values, conf = activate_dense(out, activation, "expp1")
        assert values.dtype == conf.dtype == torch.float32
        assert conf.unique().numel() == logits.numel()                       # none merged
        assert torch.equal(conf.reshape(-1), 1 + logits.float().exp())
        ref, _ = activate_dense(out.float(), activation, "expp1")
        assert torch.equal(values, ref)


def test_a_bf16_prediction_keeps_the_confidence_percentile(nano_model):
    """What the user sees of the above: the default filter (the lowest 5 % of confidence dropped) keeps about 95 %
    of the pixels with the heads in bf16 too."""
    x = torch.rand(1, 2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        nano_model.set_head_precision("autocast")
        try:
            out = nano_model(x)
        finally:
            nano_model.set_head_precision("fp32")
    for key in ("depth_conf", "world_points_conf"):
        conf = out[key]
        kept = float((conf >= torch.quantile(conf.reshape(-1), 0.05)).float().mean())
        assert 0.93 < kept < 0.97, (key, kept)


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    model = IGGTModel.from_preset("nano", drop_heads=["track"]).train()
    x = torch.rand(1, 2, 3, 28, 28)

    def grads(flag):
        model.zero_grad()
        model.backbone.gradient_checkpointing = flag
        out = model(x)
        (out["depth"].mean() + out["part_feat"].square().mean() + out["pose_enc"][-1].square().mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    torch.manual_seed(1)
    g0 = grads(False)
    torch.manual_seed(1)
    g1 = grads(True)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6, rtol=1e-4), n


@pytest.mark.parametrize("images, match", [
    (torch.rand(3, 56, 56), r"\[S,3,H,W\] or \[B,S,3,H,W\]"),
    (torch.rand(1, 2, 4, 56, 56), "3 \\(RGB\\) channels"),
    ((torch.rand(1, 2, 3, 56, 56) * 255).to(torch.uint8), "floating point"),
    (torch.rand(1, 2, 3, 50, 56), "resize to e.g. 56x56"),
    (torch.rand(1, 0, 3, 56, 56), "no views"),
])
def test_bad_images(nano_model, images, match):
    with pytest.raises((ValueError, TypeError), match=match):
        nano_model(images)


def test_bad_query_points(nano_model):
    x = torch.rand(1, 2, 3, 56, 56)
    with pytest.raises(ValueError, match="outside the 56x56 image"):
        nano_model(x, query_points=torch.tensor([[10.0, 70.0]]))
    with pytest.raises(ValueError, match=r"\[N,2\] or \[B,N,2\]"):
        nano_model(x, query_points=torch.zeros(3))
    small = IGGTModel.from_preset("nano", heads={"track": {"corr_levels": 7}})
    with pytest.raises(ValueError, match="at least 128 px"):
        small(x, query_points=torch.tensor([[10.0, 10.0]]))


def test_config_errors():
    with pytest.raises(ValueError, match="needs head\\(s\\) \\['point'\\]"):
        IGGTModel.from_preset("nano", drop_heads=["point"])
    with pytest.raises(ValueError, match="unknown head 'normals'"):
        IGGTModel(backbone=dict(embed_dim=32, depth=4, num_heads=2, patch_embed="conv"), heads={"normals": {}})
    with pytest.raises(ValueError, match="cannot import head class 'no_such_pkg.Head'"):
        IGGTModel.from_preset("nano", heads={"mine": {"class_path": "no_such_pkg.Head"}})
    with pytest.raises(ValueError, match="unknown argument\\(s\\) \\['featurs'\\]"):
        IGGTModel.from_preset("nano", heads={"depth": {"featurs": 8}})
    with pytest.raises(ValueError, match="reads backbone layer"):
        IGGTModel.from_preset("nano", heads={"depth": {"layers": (0, 1, 2, 9)}})
    with pytest.raises(ValueError, match="unknown preset"):
        IGGTModel.from_preset("huge")
    with pytest.raises(ValueError, match="cycle"):
        dependency_order({"a": ("b",), "b": ("a",)})


class _Probe(Head):
    """A head that declares what a test sets on its subclasses and computes nothing."""

    def forward(self, inp):
        return {}


class SecondDepth(_Probe):
    outputs = ("depth_edges", "depth")          # "depth" is the depth head's


class SecondDepthLoss(_Probe):
    outputs = ("refined",)
    loss_terms = ("depth",)                     # the depth head's term


class SecondDepthMetric(_Probe):
    outputs = ("refined",)

    def build_metrics(self):
        from iggt_lightning.metrics import DepthMetrics

        return {"depth": DepthMetrics()}        # the depth head's metric name


class NeedsNormals(_Probe):
    requires = ("normals",)
    outputs = ("curvature",)


class OutputsAString(_Probe):
    outputs = "normals"                         # not a tuple: ("normals",)


class OutputsImages(_Probe):
    outputs = ("images",)


class MetricNotAMetric(_Probe):
    def build_metrics(self):
        return {"count": 3}


@pytest.mark.parametrize("head, message", [
    ("collections.OrderedDict", r"\(heads.extra\): 'collections.OrderedDict' is <class 'collections.OrderedDict'>, "
                                r"not a subclass of iggt_lightning.head.Head"),
    ("SecondDepth", r"heads 'depth' and 'extra' both declare output key 'depth'"),
    ("SecondDepthLoss", r"heads 'depth' and 'extra' both declare loss term 'depth'"),
    ("SecondDepthMetric", r"heads 'depth' and 'extra' both declare metric 'depth'"),
    ("NeedsNormals", r"head 'extra' needs head\(s\) \['normals'\] \(its requires\)"),
    ("OutputsAString", r"head 'extra' \(OutputsAString\) declares outputs = 'normals'; expected a tuple of names"),
    ("OutputsImages", r"head 'extra' declares output key\(s\) \['images'\], which the model itself sets"),
    ("MetricNotAMetric", r"head 'extra'.s build_metrics\(\) gives 'count' = int, not a torchmetrics Metric"),
])
def test_head_contract_is_checked_when_the_model_is_built(head, message):
    path = head if "." in head else f"tests.test_model.{head}"
    with pytest.raises(ValueError, match=message):
        IGGTModel.from_preset("nano", drop_heads=["track"], heads={"extra": {"class_path": path}})


def test_builtin_plugins_fit_the_contract_together():
    from iggt_lightning.module import IGGTLitModule
    from iggt_lightning.plugin import check_contract

    m = IGGTLitModule(preset="nano", postprocess={"open_vocab": {"class_names": ["chair"]}})
    plugins = dict(m.plugins())
    check_contract(plugins)
    outputs = [k for p in plugins.values() for k in p.outputs]
    assert len(outputs) == len(set(outputs)) and list(m.postprocess) == ["tracking", "open_vocab"]


class LabelsFromInstances(Head):
    """A non-trainable head that reads the instance head's features (for the dependants rule)."""

    requires = ("instance",)
    outputs = ("instance_norm",)
    trainable = False

    def forward(self, inp):
        return {"instance_norm": inp.outputs["part_feat"].norm(dim=2)}


def test_build_model_drops_non_trainable_dependants_with_or_without_a_preset():
    from iggt_lightning.model import PRESETS, build_model

    assert list(build_model("nano", drop_heads=["instance"]).heads) == ["camera", "depth", "point", "track"]
    heads = {n: PRESETS["nano"]["heads"][n] for n in ("camera", "depth", "point", "instance")}
    heads["norm"] = {"class_path": "tests.test_model.LabelsFromInstances"}
    model = build_model(None, backbone=PRESETS["nano"]["backbone"], heads=heads, drop_heads=["instance"])
    assert list(model.heads) == ["camera", "depth", "point"]          # the non-trainable dependant goes too
    # a head asked for over a preset is not dropped silently: its missing requirement is the error
    with pytest.raises(ValueError, match=r"head 'norm' needs head\(s\) \['instance'\]"):
        build_model("nano", drop_heads=["instance"], heads={"norm": {"class_path": "tests.test_model.LabelsFromInstances"}})
    with pytest.raises(ValueError, match="drop_heads must be a list of head names; got the string 'track'"):
        build_model("nano", drop_heads="track")


def test_instance_head_without_fusion_needs_no_point_head():
    m = IGGTModel.from_preset("nano", drop_heads=["point", "track"], heads={"instance": {"fusion": False}}).eval()
    with torch.no_grad():
        out = m(torch.rand(1, 2, 3, 28, 28))
    assert out["part_feat"].shape == (1, 2, 8, 28, 28)


def test_attention_backend_switch():
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention.set_attention_backend("flash")
    q = torch.rand(1, 2, 5, 8)
    attention.set_attention_backend("xformers")  # no CPU kernels: SDPA still serves CPU tensors
    try:
        out = attention.attend(q, q, q)
    finally:
        attention.set_attention_backend("auto")
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, q, q))


def test_presets_parameter_counts():
    with torch.device("meta"):
        iggt = IGGTModel.from_preset("iggt-large")
        vggt = IGGTModel.from_preset("vggt-large")
    n_iggt = sum(p.numel() for p in iggt.parameters())
    n_vggt = sum(p.numel() for p in vggt.parameters())
    assert n_vggt == 1_256_537_516 - 1024  # official minus DINO's unused mask token
    assert n_iggt == 1_299_474_470 - 1024 - 17_310_208  # minus the part head's dead DPT base layers


def test_cli_heads_list_and_unknown_subcommand(capsys):
    from iggt_lightning.cli import main

    assert main(["heads", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("camera", "depth", "point", "track", "instance"):
        assert f"\n{name} " in out
    instance_row = next(line for line in out.splitlines() if line.startswith("instance "))
    assert instance_row.split()[1] == "head"
    assert instance_row.split()[3:] == ["point", "part_feat", "contrastive", "yes"]  # deps, outputs, loss, trains
    tracking_row = next(line for line in out.splitlines() if line.startswith("tracking "))
    assert tracking_row.split()[1] == "post-processor" and tracking_row.split()[3:] == [
        "instance", "instance_masks,instance_scores", "-", "no"]
    track_row = next(line for line in out.splitlines() if line.startswith("track "))
    assert track_row.split()[-2:] == ["-", "no"]  # no loss terms, nothing to train
    assert main(["bogus"]) == 2
    assert "unknown subcommand 'bogus'" in capsys.readouterr().err
