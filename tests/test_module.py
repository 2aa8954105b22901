"""IGGTLitModule on the embedded synthetic scenes: a real optimisation step on the nano model."""
import re

import pytest
import torch

from iggt_lightning.data.synthetic import SyntheticScenes
from iggt_lightning.module import IGGTLitModule


def _batch(n=2):
    ds = SyntheticScenes(length=4, num_views=2, image_size=(56, 56), seed=0)
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in
            ("images", "depth", "extrinsics", "intrinsics", "world_points", "valid_mask", "instance_ids")}


def test_training_step_reduces_loss_and_every_term_is_finite():
    torch.manual_seed(0)
    module = IGGTLitModule(preset="nano", drop_heads=["track"], lr=1e-3, warmup_steps=0)
    batch = _batch()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        prepared = module._prepare(dict(batch))
        terms = module.compute_losses(module.model(prepared["images"]), prepared)
        assert all(torch.isfinite(v) for v in terms.values()), terms
        assert {"loss_camera", "loss_depth", "loss_point", "loss_contrastive"} <= terms.keys()
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
    assert losses[-1] < losses[0]


def test_contrastive_weight_zero_removes_the_term_and_bad_terms_are_refused():
    module = IGGTLitModule(preset="nano", drop_heads=["track"], loss_weights={"contrastive": 0.0})
    batch = module._prepare(_batch(1))
    terms = module.compute_losses(module.model(batch["images"]), batch)
    assert "loss_contrastive" not in terms
    with pytest.raises(ValueError, match="loss_weights: unknown loss term"):
        IGGTLitModule(preset="nano", loss_weights={"contrastiv": 1.0})
    with pytest.raises(ValueError, match="matches no parameter"):
        IGGTLitModule(preset="nano", freeze=["^nothing_here"])


def _official_names(model):
    """Our state dict under the official IGGT key names (the inverse of the checkpoint prefix mapping)."""
    inverse = {"backbone.": "aggregator.", "heads.camera.": "camera_head.", "heads.depth.dpt.": "depth_head.",
               "heads.point.dpt.": "point_head.", "heads.instance.adaptor.": "part_adaptor.",
               "heads.instance.decoder.": "part_head."}
    out = {}
    for k, v in model.state_dict().items():
        prefix = next(p for p in inverse if k.startswith(p))
        out[inverse[prefix] + k[len(prefix):]] = v.clone()
    return out


def _save_as(source, tmp_path, fmt: str):
    """``source``'s weights in our format or under the official key names; returns the path."""
    from iggt_lightning.checkpoints import save_model

    path = tmp_path / ("m.safetensors" if fmt == "ours" else "official.pt")
    if fmt == "ours":
        save_model(source, path)
    else:
        torch.save({"model": _official_names(source)}, path)
    return path


@pytest.mark.parametrize("fmt", ["ours", "official"])
def test_init_checkpoint_loads_every_weight(tmp_path, fmt):
    torch.manual_seed(1)
    source = IGGTLitModule(preset="nano", drop_heads=["track"]).model
    path = _save_as(source, tmp_path, fmt)
    torch.manual_seed(2)
    module = IGGTLitModule(preset="nano", drop_heads=["track"], init_checkpoint=str(path))
    for (name, a), b in zip(source.state_dict().items(), module.model.state_dict().values()):
        assert torch.equal(a, b), name


def _nano(*names):
    """preset=None arguments: nano's backbone and the named heads of nano."""
    from iggt_lightning.model import PRESETS

    return {"preset": None, "backbone": dict(PRESETS["nano"]["backbone"]),
            "heads": {n: dict(PRESETS["nano"]["heads"][n]) for n in names}}


def _rank_zero_log():
    """Records what the module logs through Lightning's rank_zero_info."""
    import logging

    class Records(logging.Handler):
        lines: list = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    handler = Records(logging.INFO)
    handler.lines = []
    return logging.getLogger("lightning.pytorch.utilities.rank_zero"), handler


@pytest.mark.parametrize("fmt", ["ours", "official"])
def test_init_checkpoint_leaves_a_new_head_fresh_and_names_it(tmp_path, fmt):
    torch.manual_seed(1)
    source = IGGTLitModule(preset="nano", drop_heads=["track", "instance"]).model   # a VGGT-like file: no instance
    path = _save_as(source, tmp_path, fmt)
    torch.manual_seed(2)
    fresh = IGGTLitModule(preset="nano", drop_heads=["track"]).model.heads["instance"].state_dict()
    logger, records = _rank_zero_log()
    logger.addHandler(records)
    try:
        torch.manual_seed(2)
        module = IGGTLitModule(preset="nano", drop_heads=["track"], init_checkpoint=str(path))
    finally:
        logger.removeHandler(records)
    state = module.model.state_dict()
    for name, value in source.state_dict().items():
        assert torch.equal(state[name], value), name
    for name, value in fresh.items():            # the new head: as initialised, not touched by the file
        assert torch.equal(state[f"heads.instance.{name}"], value), name
    report = module.init_report
    assert list(report.fresh) == ["instance"] and len(report.fresh["instance"]) == len(fresh)
    assert report.loaded == len(source.state_dict()) and report.kind == fmt
    line = next(m for m in records.lines if m.startswith(f"init_checkpoint {path}"))
    assert f"{len(fresh)} tensors of new head(s) ['instance'] freshly initialised" in line, line
    assert any(m.startswith("trainable: ") for m in records.lines), records.lines


def test_init_checkpoint_whose_backbone_differs_from_the_config_names_the_key(tmp_path):
    from iggt_lightning.checkpoints import CheckpointError, save_model
    from iggt_lightning.model import IGGTModel

    path = tmp_path / "wide.safetensors"
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"], backbone={"embed_dim": 48}), path)
    with pytest.raises(CheckpointError) as err:
        IGGTLitModule(preset="nano", drop_heads=["track"], init_checkpoint=str(path))
    msg = str(err.value)
    assert f"init_checkpoint {path} does not match the configured model" in msg
    assert "backbone.camera_token: checkpoint (1, 2, 1, 48) vs model (1, 2, 1, 32)" in msg, msg


def test_init_checkpoint_head_the_config_leaves_out_must_be_in_drop_heads(tmp_path):
    from iggt_lightning.checkpoints import CheckpointError, save_model
    from iggt_lightning.model import IGGTModel

    path = tmp_path / "m.safetensors"
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), path)        # has an instance head
    args = _nano("camera", "depth", "point")
    with pytest.raises(CheckpointError, match=r"head\(s\) \['instance'\] \(\d+ tensors\) that the configuration "
                       r"does not build; to leave them out, list them in model.drop_heads"):
        IGGTLitModule(**args, init_checkpoint=str(path))
    module = IGGTLitModule(**args, drop_heads=["instance"], init_checkpoint=str(path))
    assert list(module.init_report.ignored) == ["instance"] and not module.init_report.fresh
    with pytest.raises(ValueError, match=r"has no head\(s\) \['instanse'\], nor has init_checkpoint"):
        IGGTLitModule(**args, drop_heads=["instance", "instanse"], init_checkpoint=str(path))
    with pytest.raises(ValueError, match=r"has no head\(s\) \['instanse'\]; configured"):
        IGGTLitModule(**args, drop_heads=["instanse"])


def test_init_checkpoint_with_a_head_partly_present_or_an_extra_key_is_refused(tmp_path):
    from iggt_lightning.checkpoints import FORMAT, CheckpointError
    from iggt_lightning.model import IGGTModel

    model = IGGTModel.from_preset("nano", drop_heads=["track"])
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    gone = "heads.depth.dpt.scratch.output_conv2.0.bias"
    del sd[gone]
    sd["heads.camera.bogus"] = torch.zeros(2)
    path = tmp_path / "partial.pt"
    torch.save({"format": FORMAT, "config": model.config, "state_dict": sd}, path)
    with pytest.raises(CheckpointError) as err:
        IGGTLitModule(preset="nano", drop_heads=["track"], init_checkpoint=str(path))
    msg = str(err.value)
    assert f"1 model key(s) missing from the checkpoint: {gone} (head(s) ['depth'] are only partly in the file)" in msg
    assert "1 checkpoint key(s) the model does not have: heads.camera.bogus" in msg, msg


def test_freeze_takes_module_names_and_regexes():
    module = IGGTLitModule(preset="nano", drop_heads=["track"],
                           freeze=["backbone", "heads.depth", r"\.norm\d?\.weight$"])
    for name, p in module.model.named_parameters():
        expected = not (name.startswith(("backbone.", "heads.depth.")) or re.search(r"\.norm\d?\.weight$", name)
                        or name.startswith("heads.instance.decoder.cross_attention_1"))
        assert p.requires_grad == expected, name
    assert any(n.startswith("heads.point.") and p.requires_grad for n, p in module.model.named_parameters())
    summary = module._trainable_summary()
    train = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    assert summary.startswith(f"trainable: {train:,} of ") and "by freeze ['backbone', 'heads.depth'" in summary
    # a module name is a prefix of whole names: heads.dep is no module, and as a regex it matches heads.depth
    assert IGGTLitModule(preset="nano", drop_heads=["track"], freeze=["heads.dep"]).frozen_by_pattern
    with pytest.raises(ValueError) as err:
        IGGTLitModule(preset="nano", drop_heads=["track"], freeze=["heads.track"])
    assert "freeze pattern 'heads.track' matches no parameter" in str(err.value)
    assert "backbone, heads.camera, heads.depth, heads.point, heads.instance" in str(err.value)
    with pytest.raises(ValueError, match=r"freeze pattern '\(' is neither a module name nor a valid regular"):
        IGGTLitModule(preset="nano", drop_heads=["track"], freeze=["("])


def test_preset_none_drops_dependants_like_a_preset():
    module = IGGTLitModule(**_nano("camera", "depth", "point", "instance"), drop_heads=["instance"])
    assert list(module.model.heads) == ["camera", "depth", "point"]
    assert list(module.postprocess) == []                                   # tracking needs instance: gone too
    with pytest.raises(ValueError, match=r"head 'instance' needs head\(s\) \['point'\]"):
        IGGTLitModule(**_nano("camera", "depth", "point", "instance"), drop_heads=["point"])
    with pytest.raises(ValueError, match="without a preset, give the heads"):
        IGGTLitModule(preset=None)


def test_heads_without_an_active_loss_are_frozen_and_lr_groups_split_backbone_from_heads():
    module = IGGTLitModule(preset="nano", loss_weights={"contrastive": 0.0}, lr=1e-3, backbone_lr=1e-5)
    assert sorted(module.frozen_heads) == ["instance", "track"]
    assert not any(p.requires_grad for p in module.model.heads["instance"].parameters())
    assert all(p.requires_grad for p in module.model.heads["depth"].parameters())
    opt = module.configure_optimizers()["optimizer"]
    by_lr = {}
    for g in opt.param_groups:
        by_lr.setdefault(g["lr"], set()).update(id(p) for p in g["params"])
    backbone = {id(p) for p in module.model.backbone.parameters()}
    assert by_lr[1e-5] == backbone
    assert by_lr[1e-3] == {id(p) for p in module.model.parameters() if p.requires_grad} - backbone
