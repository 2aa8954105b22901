"""Open-vocabulary labelling of instance masks: encoders, the post-processor, its metrics, and the CLI."""
import math

import pytest
import torch

from iggt_lightning.heads.postprocessors.open_vocab import OpenVocabLabels
from iggt_lightning.data import SyntheticScenes
from iggt_lightning.data.datamodule import collate_checked
from iggt_lightning.data.synthetic import COLOUR_NAMES
from iggt_lightning.inference.encoders import ColourEncoder, OpenCLIPEncoder, build_encoder
from iggt_lightning.metrics import OpenVocabMetrics


def oracle_outputs(batch):
    """The ground-truth instances standing in for the tracking post-processor's."""
    ids = batch["instance_ids"]
    return {"instance_masks": ids, "instance_scores": [torch.ones(int(i.max())) for i in ids]}


def test_colour_vocabulary_on_synthetic_scenes_with_oracle_masks():
    head = OpenVocabLabels(class_names=list(COLOUR_NAMES), encoder="colour")
    ds = SyntheticScenes(length=6, num_views=2, image_size=(56, 56), seed=5)
    metric = head.build_metrics()
    for i in range(0, 6, 2):
        batch = collate_checked([ds[i], ds[i + 1]])
        out = head.process(oracle_outputs(batch), batch["images"])
        assert out["semantic_maps"].shape == batch["instance_ids"].shape
        assert (out["semantic_maps"][batch["instance_ids"] == 0] == -1).all()
        head.update_metrics(metric, out, batch)
    res = metric["open_vocab"].compute()
    per_class = metric["open_vocab"].per_class_iou()
    assert res["miou_2d"] > 0.9 and res["macc_2d"] > 0.9 and res["miou_3d"] > 0.9, (res, per_class)


def test_crop_encoders_pool_per_view_crops():
    class CropColour(ColourEncoder):
        """A CLIP-style encoder: one embedding per crop (this one looks past the grey fill)."""

        dense = False

        def encode_crops(self, crops):
            emb = self.encode_dense(crops)
            keep = ((crops - 0.5).abs().sum(1, keepdim=True) > 1e-6).float()
            return torch.nn.functional.normalize((emb * keep).sum((2, 3)), dim=-1)

    head = OpenVocabLabels(class_names=list(COLOUR_NAMES), encoder=CropColour())
    batch = collate_checked([SyntheticScenes(length=1, num_views=2, image_size=(56, 56), seed=2)[0]])
    out = head.process(oracle_outputs(batch), batch["images"])
    target = head.target_maps(batch)
    scored = target >= 0
    assert (out["semantic_maps"][scored] == target[scored]).float().mean() > 0.9


def test_open_vocab_metrics_hand_case():
    m = OpenVocabMetrics(num_classes=2, voxel_size=1.0)
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, -1]]])
    points = torch.tensor([[[[0.1, 0, 0], [0.2, 0, 0], [5, 0, 0], [5.1, 0, 0]]]])
    m.update(pred, target, points)
    res = m.compute()
    # class 0: TP 1, FN 1, FP 0 -> IoU 1/2; class 1: TP 1, FN 1 (the "none"), FP 1 -> IoU 1/3
    assert res["miou_2d"].item() == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert res["macc_2d"].item() == pytest.approx(0.5)
    # voxels: {0.1, 0.2} -> target 0, votes pred 0/1 tie -> 0; {5, 5.1} -> target 1, pred 1/none tie -> 1
    assert res["miou_3d"].item() == pytest.approx(1.0)
    assert math.isnan(m.per_class_iou()[0]) is False
    with pytest.raises(ValueError, match="num_classes"):
        m.update(torch.tensor([[[2]]]), torch.tensor([[[0]]]))


def test_bad_configuration_and_missing_weights(tmp_path):
    with pytest.raises(ValueError, match="non-empty list of class_names"):
        OpenVocabLabels(class_names=[])
    with pytest.raises(ValueError, match="duplicates"):
        OpenVocabLabels(class_names=["red", "red"])
    with pytest.raises(ValueError, match="unknown vision-language encoder 'lseg'"):
        build_encoder("lseg")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        OpenCLIPEncoder(checkpoint=str(tmp_path / "missing.bin"))
    # an instance with no pixels gets label -1 and score 0
    head = OpenVocabLabels(class_names=["red"])
    ids = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    out = head.process({"instance_masks": ids, "instance_scores": [torch.ones(1)]}, torch.rand(1, 1, 3, 8, 8))
    assert out["instance_labels"][0].tolist() == [-1] and out["instance_label_scores"][0].tolist() == [0.0]
    # open_vocab needs tracking, which needs the instance head: without it, an error naming both
    from iggt_lightning.module import IGGTLitModule

    with pytest.raises(ValueError, match=r"post-processor 'open_vocab' needs head\(s\) or post-processor\(s\) "
                                         r"\['tracking'\]"):
        IGGTLitModule(preset="nano", drop_heads=["instance"], postprocess={"open_vocab": {"class_names": ["red"]}})


def test_open_vocab_in_iggt_test_on_synthetic_scenes(tmp_path, capsys):
    import json

    from iggt_lightning.cli import main
    from tests.test_cli_training import tiny_args

    post = json.dumps({"open_vocab": {"class_names": list(COLOUR_NAMES), "encoder": "colour"}})
    args = [*tiny_args(tmp_path), "--model.postprocess", post]
    assert main(["fit", *args]) == 0
    capsys.readouterr()
    assert main(["test", *args, "--ckpt_path", "last"]) == 0
    table = capsys.readouterr().out
    for metric in ("test/miou_2d", "test/macc_2d", "test/miou_3d", "test/ap50", "test/abs_rel"):
        assert metric in table, table
