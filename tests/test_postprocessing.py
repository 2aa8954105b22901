"""Post-processing as its own component: tracking and open_vocab run after the network, configured beside the
heads, by the test loop and by prediction through one path; old configs keep working with a warning."""
import warnings

import pytest
import torch

from iggt_lightning.heads.postprocessors.tracking import ids_to_masks
from iggt_lightning.model import IGGTModel
from iggt_lightning.module import IGGTLitModule
from iggt_lightning.postprocessor import PostProcessing, PostProcessor
from iggt_lightning.registry import register_postprocessor


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return IGGTLitModule(preset="nano", drop_heads=["track"]).eval()


def test_the_network_is_pure_and_tracking_runs_after_it_at_test_and_predict(module):
    images = torch.rand(2, 3, 3, 28, 42)
    with torch.no_grad():
        net = module.model(images)
        assert "instance_masks" not in net and "part_feat" in net      # tensors in, tensors out: no clustering
        out = module.run(images, "test")
    assert out["instance_masks"].shape == (2, 3, 28, 42) and out["instance_masks"].dtype == torch.long
    assert len(out["instance_scores"]) == 2
    for ids, scores in zip(out["instance_masks"], out["instance_scores"]):
        assert ids.max() == scores.numel() and ids.min() >= 1  # every pixel labelled, ids 1..K
    ids_image = module.postprocess["tracking"].log_images(out, {})["ids"]
    assert ids_image.shape == (3, 28, 42) and 0 <= ids_image.min() and ids_image.max() <= 1
    with torch.no_grad():
        assert "instance_masks" in module.run(images, "predict")
        assert "instance_masks" in module.run(images, "validate")       # validation logs instance metrics too
    with pytest.raises(ValueError, match="post-processing runs in"):
        module.postprocess(net, images, "fit")
    only_test = IGGTLitModule(preset="nano", drop_heads=["track"], postprocess={"tracking": {"stages": ["test"]}})
    with torch.no_grad():
        assert "instance_masks" not in only_test.run(images, "validate")
    with pytest.raises(TypeError):
        module.model(images, stage="test")      # the network has no stage argument any more


def test_test_loop_and_predict_share_one_path(module, monkeypatch):
    from iggt_lightning.data import SyntheticScenes
    from iggt_lightning.data.datamodule import collate_checked

    calls = []
    original = PostProcessing.__call__

    def spy(self, outputs, images, stage):
        calls.append(stage)
        return original(self, outputs, images, stage)

    monkeypatch.setattr(PostProcessing, "__call__", spy)
    batch = collate_checked([SyntheticScenes(length=1, num_views=2, image_size=(28, 28), seed=3)[0]])
    module.log_dict = module.log = lambda *a, **k: None  # no trainer here; logging is Lightning's business
    with torch.no_grad():
        module.test_step(batch, 0)
        predicted = module.predict_step(batch, 0)
    assert calls == ["test", "predict"] and "instance_masks" in predicted
    for m in module.test_metrics.values():
        for metric in m.values():
            metric.reset()


def test_postprocess_configuration_and_defaults():
    m = IGGTLitModule(preset="nano", drop_heads=["track"], postprocess={"tracking": {
        "clusterer": {"name": "torch", "granularity": 0.3}, "stages": ["validate", "test"]}})
    assert m.postprocess["tracking"].clusterer.granularity == 0.3
    assert m.postprocess.config == {"tracking": {"clusterer": {"name": "torch", "granularity": 0.3},
                                                 "stages": ["validate", "test"]}}
    with pytest.raises(ValueError, match="tracking stages must be among"):
        IGGTLitModule(preset="nano", postprocess={"tracking": {"stages": ["fit"]}})
    with pytest.raises(ValueError, match="unknown clusterer"):
        IGGTLitModule(preset="nano", postprocess={"tracking": {"clusterer": "dbscan"}})
    # a default post-processor goes with the head it needs; one the user asks for is an error naming both
    assert "tracking" not in IGGTLitModule(preset="nano", drop_heads=["instance"]).postprocess
    with pytest.raises(ValueError, match=r"post-processor 'tracking' needs head\(s\) or post-processor\(s\) "
                                         r"\['instance'\]"):
        IGGTLitModule(preset="nano", drop_heads=["instance"], postprocess={"tracking": {}})
    assert list(IGGTLitModule(preset="nano", drop_postprocess=["tracking"]).postprocess) == []
    with pytest.raises(ValueError, match=r"drop_postprocess: .* no post-processor\(s\) \['trackin'\]"):
        IGGTLitModule(preset="nano", drop_postprocess=["trackin"])


def test_old_configs_keep_working_and_say_what_to_write():
    with pytest.warns(FutureWarning, match=r"\['tracking'\] are post-processors, not heads.*model.postprocess"):
        m = IGGTLitModule(preset="nano", heads={"tracking": {"clusterer": {"name": "torch", "granularity": 0.3}}})
    assert "tracking" not in m.model.heads and m.postprocess["tracking"].clusterer.granularity == 0.3
    with pytest.warns(FutureWarning, match=r"write drop_postprocess: \['tracking'\]"):
        m = IGGTLitModule(preset="nano", drop_heads=["tracking"])
    assert "tracking" not in m.postprocess
    # the network alone refuses a post-processor among its heads, saying where it goes
    with pytest.raises(ValueError, match="'tracking' is a post-processor: configure it under postprocess"):
        IGGTModel.from_preset("nano", heads={"tracking": {}})


def test_a_stored_config_of_an_older_version_loads(tmp_path):
    """A checkpoint written before post-processing was its own component lists tracking among its heads."""
    import json

    from safetensors.torch import save_file

    from iggt_lightning.checkpoints import FORMAT

    torch.manual_seed(0)
    model = IGGTModel.from_preset("nano", drop_heads=["track"])
    config = dict(model.config, heads={**model.config["heads"], "tracking": {"clusterer": {"name": "torch",
                                                                                            "granularity": 0.25}}})
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": FORMAT, "config": json.dumps(config)})
    with pytest.warns(FutureWarning, match="post-processors, not heads"):
        loaded = IGGTLitModule.from_checkpoint_file(path)
    assert loaded.postprocess["tracking"].clusterer.granularity == 0.25
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.model.state_dict().items())


class CountObjects(PostProcessor):
    """A post-processor written against the contract: the number of instances per scene."""

    requires = ("tracking",)
    outputs = ("object_count",)

    def process(self, outputs, images):
        return {"object_count": torch.tensor([s.numel() for s in outputs["instance_scores"]])}


def test_a_custom_postprocessor_by_class_path_and_by_registration():
    m = IGGTLitModule(preset="nano", drop_heads=["track"],
                      postprocess={"count": {"class_path": "tests.test_postprocessing.CountObjects"}})
    assert m.postprocess.order == ["tracking", "count"]
    with torch.no_grad():
        out = m.run(torch.rand(1, 2, 3, 28, 28), "predict")
    assert out["object_count"].tolist() == [out["instance_scores"][0].numel()]
    register_postprocessor("count_objects")(CountObjects)
    assert type(IGGTLitModule(preset="nano", postprocess={"count_objects": {}}).postprocess["count_objects"]) \
        is CountObjects


class ClaimsDepth(PostProcessor):
    outputs = ("depth",)

    def process(self, outputs, images):
        return {}


class NeedsNothingThere(PostProcessor):
    requires = ("normals",)


class NotAPostProcessor:
    pass


def test_the_contract_covers_heads_and_postprocessors_together():
    heads = dict(IGGTModel.from_preset("nano").heads)
    for cls, match in ((ClaimsDepth, r"head 'depth' and post-processor 'extra' both declare output key 'depth'"),
                       (NeedsNothingThere, r"post-processor 'extra' needs head\(s\) or post-processor\(s\) "
                                           r"\['normals'\]")):
        with pytest.raises(ValueError, match=match):
            PostProcessing({"extra": {"class_path": f"{__name__}.{cls.__qualname__}"}}, heads)
    with pytest.raises(ValueError, match="not a subclass of iggt_lightning.postprocessor.PostProcessor"):
        PostProcessing({"extra": {"class_path": f"{__name__}.NotAPostProcessor"}}, heads)
    with pytest.raises(ValueError, match="a head of the model is named 'depth' too"):
        PostProcessing({"depth": {"class_path": f"{__name__}.ClaimsDepth"}}, heads)
    with pytest.raises(ValueError, match="unknown post-processor 'depth_edges'"):
        PostProcessing({"depth_edges": {}}, heads)


def test_module_test_step_feeds_instance_and_tracking_metrics():
    from iggt_lightning.data import SyntheticScenes
    from iggt_lightning.data.datamodule import collate_checked

    torch.manual_seed(0)
    module = IGGTLitModule(preset="nano", drop_heads=["track"]).eval()
    ds = SyntheticScenes(length=2, num_views=2, image_size=(28, 28), seed=3)
    batch = collate_checked([ds[0], ds[1]])
    module.log_dict = module.log = lambda *a, **k: None
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


def test_no_warning_for_a_current_config():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        IGGTLitModule(preset="nano", postprocess={"tracking": None})


def test_generic_prediction_code_names_no_builtin_plugin():
    """The predict pipeline, the writer and the scene API know plugins only through their hooks: none of them
    names a built-in head or post-processor, or one of their output keys (``vis`` / ``conf``, the point-track
    head's generic abbreviations, are left out: ``--conf-threshold`` is an option name)."""
    import re
    from pathlib import Path

    from iggt_lightning.registry import available_heads, available_postprocessors

    plugins = {**available_heads(), **available_postprocessors()}
    words = set(plugins) | {k for cls in plugins.values() for k in cls.outputs} - {"vis", "conf"}
    words |= {"pose_enc", "world_points", "part_feat", "instance_masks"}   # outputs some heads set per instance
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, words))) + r")\b")
    root = Path(__file__).resolve().parents[1] / "iggt_lightning" / "inference"
    for name in ("predict.py", "writer.py", "scene.py"):
        hits = [f"{name}:{i}: {line.strip()}" for i, line in enumerate((root / name).read_text().splitlines(), 1)
                if pattern.search(line)]
        assert not hits, "\n".join(hits)
