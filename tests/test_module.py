"""IGGTLitModule on the embedded synthetic scenes: a real optimisation step on the nano model."""
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


@pytest.mark.parametrize("fmt", ["ours", "official"])
def test_init_checkpoint_loads_every_weight(tmp_path, fmt):
    from iggt_lightning.checkpoints import save_model

    torch.manual_seed(1)
    source = IGGTLitModule(preset="nano", drop_heads=["track"]).model
    path = tmp_path / ("m.safetensors" if fmt == "ours" else "official.pt")
    if fmt == "ours":
        save_model(source, path)
    else:
        torch.save({"model": _official_names(source)}, path)
    torch.manual_seed(2)
    module = IGGTLitModule(preset="nano", drop_heads=["track"], init_checkpoint=str(path))
    for (name, a), b in zip(source.state_dict().items(), module.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_init_checkpoint_of_another_architecture_is_refused(tmp_path):
    from iggt_lightning.checkpoints import CheckpointError, save_model

    save_model(IGGTLitModule(preset="nano", drop_heads=["track", "instance"]).model, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        IGGTLitModule(preset="nano", drop_heads=["track"], init_checkpoint=str(tmp_path / "m.safetensors"))


def test_heads_without_an_active_loss_are_frozen_and_lr_groups_split_backbone_from_heads():
    module = IGGTLitModule(preset="nano", loss_weights={"contrastive": 0.0}, lr=1e-3, backbone_lr=1e-5)
    assert sorted(module.frozen_heads) == ["instance", "track", "tracking"]
    assert not any(p.requires_grad for p in module.model.heads["instance"].parameters())
    assert all(p.requires_grad for p in module.model.heads["depth"].parameters())
    opt = module.configure_optimizers()["optimizer"]
    by_lr = {}
    for g in opt.param_groups:
        by_lr.setdefault(g["lr"], set()).update(id(p) for p in g["params"])
    backbone = {id(p) for p in module.model.backbone.parameters()}
    assert by_lr[1e-5] == backbone
    assert by_lr[1e-3] == {id(p) for p in module.model.parameters() if p.requires_grad} - backbone
