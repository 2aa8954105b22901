"""The tracking head: clustering at test/predict time, never in training; its metrics in the module."""
import pytest
import torch

from heads.tracking import ids_to_masks
from iggt_lightning.model import IGGTModel
from iggt_lightning.module import IGGTLitModule


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return IGGTModel.from_preset("nano", drop_heads=["track"]).eval()


def test_tracking_runs_at_test_and_predict_only(model):
    images = torch.rand(2, 3, 3, 28, 42)
    with torch.no_grad():
        out = model(images, stage="test")
        assert out["instance_masks"].shape == (2, 3, 28, 42) and out["instance_masks"].dtype == torch.long
        assert len(out["instance_scores"]) == 2
        for ids, scores in zip(out["instance_masks"], out["instance_scores"]):
            assert ids.max() == scores.numel() and ids.min() >= 1  # every pixel labelled, ids 1..K
        assert "instance_masks" in model(images, stage="predict")
        assert "instance_masks" not in model(images, stage="validate")
        assert "instance_masks" in model(images)  # direct use in eval mode
    model.train()
    try:
        assert "instance_masks" not in model(images)
    finally:
        model.eval()


def test_tracking_head_configuration():
    m = IGGTModel.from_preset("nano", drop_heads=["track"], heads={"tracking": {
        "clusterer": {"name": "torch", "granularity": 0.3}, "stages": ["validate", "test"]}})
    assert m.heads["tracking"].clusterer.granularity == 0.3
    with pytest.raises(ValueError, match="tracking stages must be among"):
        IGGTModel.from_preset("nano", heads={"tracking": {"stages": ["fit"]}})
    with pytest.raises(ValueError, match="unknown clusterer"):
        IGGTModel.from_preset("nano", heads={"tracking": {"clusterer": "dbscan"}})
    # the tracking head needs the instance head; dropping instance drops tracking with it
    assert "tracking" not in IGGTModel.from_preset("nano", drop_heads=["instance"]).heads


def test_module_test_step_feeds_instance_and_tracking_metrics():
    from iggt_lightning.data import SyntheticScenes
    from iggt_lightning.data.datamodule import collate_checked

    torch.manual_seed(0)
    module = IGGTLitModule(preset="nano", drop_heads=["track"]).eval()
    ds = SyntheticScenes(length=2, num_views=2, image_size=(28, 28), seed=3)
    batch = collate_checked([ds[0], ds[1]])
    module.log_dict = module.log = lambda *a, **k: None  # no trainer here; logging is Lightning's business
    with torch.no_grad():
        module.test_step(batch, 0)
    ap = module.test_metrics["tracking"]["instance_ap"]
    assert ap.update_count == 1 and len(ap.scenes()) == 2
    gt = ids_to_masks(batch["instance_ids"][0])
    assert ap.scenes()[0][2].shape == gt.shape and torch.equal(ap.scenes()[0][2], gt)
    assert set(module.test_metrics) == {"camera", "depth", "point", "tracking"}
    assert module.test_metrics["depth"]["depth"].update_count == 1


def test_ids_to_masks():
    ids = torch.tensor([[[0, 2], [5, 2]]])
    masks = ids_to_masks(ids)
    assert masks.shape == (2, 1, 2, 2) and masks[0].sum() == 2 and masks[1, 0, 1, 0]
