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
