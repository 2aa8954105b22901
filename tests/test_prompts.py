"""Point prompts (iggt_lightning/inference/prompts.py) and the click protocol (iggt_lightning/metrics/interactive.py)
on rendered scenes with features that identify each object (what a well-trained instance head gives), so what
a prompt must return is known exactly."""
import numpy as np
import pytest
import torch

from iggt_lightning.data import SyntheticScenes
from iggt_lightning.inference.prompts import (Click, Prompt, PromptError, otsu_threshold, photo_to_model,
                                              prompt_mask)
from iggt_lightning.metrics.interactive import click_ious, interior_click, matched_mious


@pytest.fixture(scope="module")
def scene():
    return SyntheticScenes(length=1, num_views=3, image_size=(84, 112), seed=2, num_objects=(4, 4),
                           repeat_prob=0.0)[0]


def features_of(ids: torch.Tensor, noise: float = 0.05, seed: int = 0, merge: tuple[int, int] | None = None):
    """[S,D,H,W] features: a random unit code per id (the room, id 0, too) plus noise; ``merge`` gives two ids one
    code, as an under-trained head that cannot tell them apart."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.nn.functional.normalize(torch.randn(int(ids.max()) + 1, 16, generator=g), dim=1)
    if merge is not None:
        codes[merge[1]] = codes[merge[0]]
    f = codes[ids].permute(0, 3, 1, 2)
    return f + noise * torch.randn(f.shape, generator=g)


def test_one_click_finds_the_object_in_every_view(scene):
    ids = scene["instance_ids"]
    feats = features_of(ids)
    for obj in [int(i) for i in ids.unique() if i]:
        click = interior_click((ids == obj).numpy(), True)
        result = prompt_mask(feats, Prompt((click,)))
        inter = (result.mask & (ids == obj)).sum().item()
        union = (result.mask | (ids == obj)).sum().item()
        assert inter / union > 0.98, obj
        assert 0.5 <= result.threshold < 1


def test_a_negative_click_splits_what_the_features_merge(scene):
    ids = scene["instance_ids"]
    objs = [int(i) for i in ids.unique() if i]
    a, b = objs[0], objs[1]
    feats = features_of(ids, merge=(a, b), noise=0.02)
    # the merged code plus a little of each object's own: a negative click on b must push b out
    own = torch.nn.functional.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(5)), dim=1)
    feats += 0.4 * (ids == a)[:, None] * own[0][None, :, None, None] + 0.4 * (ids == b)[:, None] * own[1][None, :, None, None]
    pos, neg = interior_click((ids == a).numpy(), True), interior_click((ids == b).numpy(), False)
    one = prompt_mask(feats, Prompt((pos,))).mask
    two = prompt_mask(feats, Prompt((pos, neg))).mask
    gt = ids == a
    assert (one & (ids == b)).sum() > 0.5 * (ids == b).sum()          # one click takes both
    assert (two & (ids == b)).sum() < 0.02 * (ids == b).sum()         # the negative click removes b
    assert (two & gt).sum() > 0.95 * gt.sum()


def test_a_3d_point_prompt_takes_the_object_at_that_point(scene):
    ids, points = scene["instance_ids"], scene["world_points"]
    obj = int(ids.unique()[1])
    v, y, x = (int(t[len(t) // 2]) for t in torch.nonzero(ids == obj, as_tuple=True))
    result = prompt_mask(features_of(ids), Prompt(point=tuple(points[v, y, x].tolist())), points=points)
    assert (result.mask & (ids == obj)).sum() > 0.98 * (ids == obj).sum()
    assert result.clicks[-1].positive


@pytest.mark.parametrize("prompt, words", [
    (Prompt((Click(3, 5, 5),)), "clicks[0].view: 3 is not one of the 3 views"),
    (Prompt((Click(0, 200, 5),)), "outside the 112x84 image"),
    (Prompt((Click(0, 5, 5, positive=False),)), "only negative clicks"),
    (Prompt(()), "no clicks and no 3D point"),
])
def test_bad_prompts_are_one_line_naming_the_field(scene, prompt, words):
    with pytest.raises(PromptError, match=words.replace("[", r"\[").replace("]", r"\]")):
        prompt_mask(features_of(scene["instance_ids"]), prompt)


def test_clicks_follow_the_error_and_three_beat_one_on_a_merged_head(scene):
    ids = scene["instance_ids"]
    objs = [int(i) for i in ids.unique() if i]
    feats = features_of(ids, merge=(objs[0], objs[1]), noise=0.02)
    own = torch.nn.functional.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(5)), dim=1)
    feats += 0.4 * (ids == objs[0])[:, None] * own[0][None, :, None, None]
    feats += 0.4 * (ids == objs[1])[:, None] * own[1][None, :, None, None]
    ious = click_ious(lambda p: prompt_mask(feats, p).mask, ids == objs[0], clicks=3)
    assert len(ious) == 3 and ious[2] > ious[0] + 0.2 and ious[2] > 0.9, ious
    # the clustering side: a prediction equal to the ground truth matches every object at IoU 1
    assert matched_mious(ids, ids, objs) == [1.0] * len(objs)


def test_otsu_splits_two_groups_and_photo_clicks_map_to_the_model_input():
    values = torch.cat([torch.full((100,), 0.1), torch.full((50,), 0.9)])
    assert 0.1 < otsu_threshold(values) < 0.9

    class T:                               # photo 224 wide -> model 112: half scale, no offset
        scale, offset = (0.5, 0.5), (0.0, 0.0)

    assert photo_to_model(0, 0, T) == (-0.25, -0.25) and photo_to_model(223, 167, T) == (111.25, 83.25)
    assert np.allclose(photo_to_model(100, 50, T), (49.75, 24.75))


def test_with_points_a_click_takes_its_copy_only_not_the_identical_one_elsewhere():
    scene = SyntheticScenes(length=1, num_views=3, image_size=(84, 112), seed=7, num_objects=(4, 4),
                            repeat_prob=1.0)[0]
    ids, points = scene["instance_ids"], scene["world_points"]
    objs = [int(i) for i in ids.unique() if i]
    feats = features_of(ids, merge=(objs[0], objs[1]), noise=0.02)       # the copies look the same
    click = interior_click((ids == objs[0]).numpy(), True)
    blind = prompt_mask(feats, Prompt((click,))).mask
    placed = prompt_mask(feats, Prompt((click,)), points=points).mask
    assert (blind & (ids == objs[1])).sum() > 0.9 * (ids == objs[1]).sum()      # features alone take both
    assert (placed & (ids == objs[1])).sum() == 0                              # 3D connectivity keeps one
    assert (placed & (ids == objs[0])).sum() > 0.95 * (ids == objs[0]).sum()


# ------------------------------------------------------------------------------------ iggt predict --prompts
@pytest.fixture(scope="module")
def predict_assets(tmp_path_factory):
    from PIL import Image

    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.model import IGGTModel

    root = tmp_path_factory.mktemp("prompts")
    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), root / "nano.safetensors")
    (root / "photos").mkdir()
    scene = SyntheticScenes(length=1, num_views=3, image_size=(84, 112), seed=1)[0]
    for i, im in enumerate(scene["images"]):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(root / "photos" / f"view_{i}.png")
    return root


def _predict(root, out, prompts: dict | str):
    import json

    from iggt_lightning.cli import main

    path = root / "p.json"
    path.write_text(prompts if isinstance(prompts, str) else json.dumps(prompts))
    return main(["predict", str(root / "photos"), "-c", str(root / "nano.safetensors"), "-o", str(out),
                 "--size", "112", "84", "--quiet", "--prompts", str(path)])


def test_predict_writes_the_prompted_instances_with_their_ids_and_record(predict_assets, tmp_path):
    import json

    from PIL import Image

    prompts = {"prompts": [{"name": "left", "clicks": [{"view": "view_0.png", "x": 20, "y": 40}]},
                           {"clicks": [{"view": 2, "x": 90, "y": 40},
                                       {"view": 2, "x": 20, "y": 40, "positive": False}]}]}
    assert _predict(predict_assets, tmp_path / "out", prompts) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    record = manifest["prompted_instances"]["prompts"]
    assert [r["id"] for r in record] == [1, 2] and record[0]["name"] == "left"
    assert all(0.5 <= r["threshold"] <= 1 for r in record) and record[1]["clicks"][1]["positive"] is False
    ids = set()
    for i in range(3):
        ids |= set(np.unique(np.asarray(Image.open(tmp_path / "out" / "masks" / f"view_{i}.png"))).tolist())
    assert ids <= {0, 1, 2} and 1 in ids
    coco = json.loads((tmp_path / "out" / "masks" / "instances.json").read_text())
    assert {a["track_id"] for a in coco["annotations"]} <= {1, 2}
    boxes = json.loads((tmp_path / "out" / "instances3d.json").read_text())["instances"]
    assert {b["id"] for b in boxes} <= {1, 2}


@pytest.mark.parametrize("content, words", [
    ("{not json", "not a readable JSON file"),
    ({"prompts": []}, 'expected {"prompts": [one or more prompts]}'),
    ({"prompts": [{"clicks": [{"view": "nope.png", "x": 1, "y": 1}]}]}, "prompts[0].clicks[0].view: 'nope.png'"),
    ({"prompts": [{"clicks": [{"view": 0, "x": 500, "y": 1}]}]}, "is outside view_0.png"),
    ({"prompts": [{"clicks": [{"view": 0, "x": 5, "y": 5, "positive": False}]}]}, "prompts[0]: only negative"),
    ({"prompts": [{"clicks": [{"view": 0, "x": 5, "y": 5}], "run": "rm -rf /"}]}, "prompts[0]: expected an object"),
])
def test_a_bad_prompts_file_is_one_line_naming_the_field_and_writes_nothing(predict_assets, tmp_path, capsys,
                                                                           content, words):
    assert _predict(predict_assets, tmp_path / "out", content) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err and "p.json" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_the_prompts_post_processor_gives_the_prompted_instances_in_any_run():
    """``postprocess: {point_prompts: ...}`` in place of tracking: module.run (and so a dataset prediction) gives the
    same instances as the Python call; a bad prompt is one line naming its config field."""
    from iggt_lightning.inference.prompts import Click, Prompt, prompted_outputs
    from iggt_lightning.module import IGGTLitModule

    spec = [{"name": "a", "clicks": [{"view": 0, "x": 10, "y": 20}]},
            {"point": [0.1, 0.2, 1.0], "clicks": [{"view": 1, "x": 30, "y": 5, "positive": False}]}]
    torch.manual_seed(0)
    module = IGGTLitModule(preset="nano", drop_heads=["track"], drop_postprocess=["tracking"],
                           postprocess={"point_prompts": {"prompts": spec}}).eval()
    images = torch.rand(1, 2, 3, 56, 84)
    with torch.no_grad():
        out = module.run(images, "predict")
    expected, _ = prompted_outputs({"part_feat": out["part_feat"], "world_points": out["world_points"]},
                                   [Prompt((Click(0, 10.0, 20.0),), None, "a"),
                                    Prompt((Click(1, 30.0, 5.0, False),), (0.1, 0.2, 1.0))])
    assert torch.equal(out["instance_masks"], expected["instance_masks"])
    assert torch.allclose(out["instance_scores"][0], expected["instance_scores"][0])
    with pytest.raises(ValueError, match=r"postprocess\.point_prompts\.prompts\[0\]\.clicks\[0\]\.view"):
        IGGTLitModule(preset="nano", drop_heads=["track"], drop_postprocess=["tracking"],
                      postprocess={"point_prompts": {"prompts": [{"clicks": [{"view": -1, "x": 0, "y": 0}]}]}})
    far = IGGTLitModule(preset="nano", drop_heads=["track"], drop_postprocess=["tracking"],
                        postprocess={"point_prompts": {"prompts": [{"clicks": [{"view": 0, "x": 500, "y": 0}]}]}}).eval()
    with pytest.raises(ValueError, match=r"prompts\[0\]\.clicks\[0\]: \(500.0, 0.0\) is outside the 84x56"):
        with torch.no_grad():
            far.run(images, "predict")
