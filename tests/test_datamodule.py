"""Datamodules: distinct splits, batches of equal-shaped scenes with varying view counts, sample checks."""
import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

from iggt_lightning.data import GroupedBatchSampler, SampleError, SyntheticDataModule, SyntheticScenes, check_sample


def test_splits_are_distinct_and_deterministic():
    dm = SyntheticDataModule(num_train=3, num_val=3, num_test=3, num_views=2, image_size=(28, 28))
    ids = {stage: [dm.datasets[stage].scene(i).scene_id for i in range(3)] for stage in ("train", "val", "test")}
    assert len(set(ids["train"]) | set(ids["val"]) | set(ids["test"])) == 9
    again = SyntheticDataModule(num_train=3, num_val=3, num_test=3, num_views=2, image_size=(28, 28))
    a, b = dm.datasets["val"][1], again.datasets["val"][1]
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["instance_ids"], b["instance_ids"])


def test_variable_view_counts_are_batched_by_shape():
    dm = SyntheticDataModule(num_train=24, num_views=(2, 4), image_size=(28, 28), batch_size=3, num_objects=(1, 2))
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, GroupedBatchSampler)
    batches = list(loader)
    assert len(batches) == len(loader) == 8
    seen = set()
    for batch in batches:
        B, S = batch["images"].shape[:2]
        assert batch["depth"].shape == (B, S, 28, 28) and batch["instance_ids"].shape == (B, S, 28, 28)
        assert len(batch["scene_id"]) == B
        seen.add(S)
    assert seen == {2, 3, 4}


def test_grouped_batches_keep_ddp_ranks_in_step():
    keys = [i % 3 for i in range(23)]  # three shapes, uneven group sizes

    class _Data:
        def __len__(self):
            return 23

    counts = []
    for rank in (0, 1):
        sampler = DistributedSampler(_Data(), num_replicas=2, rank=rank, shuffle=True, seed=1)
        batches = list(GroupedBatchSampler(sampler, 4, drop_last=False, group_keys=keys))
        assert all(len({keys[i] for i in b}) == 1 for b in batches)
        counts.append(len(batches))
    assert counts[0] == counts[1] == 3  # ceil(12 / 4) on both ranks

    plain = list(GroupedBatchSampler(SequentialSampler(range(23)), 4, drop_last=False, group_keys=keys))
    assert len(plain) == 6 and sorted(i for b in plain for i in b) == list(range(23))  # 5 full + 1 partial
    full = list(GroupedBatchSampler(RandomSampler(range(24)), 4, drop_last=True, group_keys=[i % 2 for i in range(24)]))
    assert len(full) == 6 and all(len(b) == 4 for b in full)


def _scene():
    return SyntheticScenes(1, num_views=2, image_size=(28, 28))[0]


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["depth"].__setitem__((0, 1, 1), float("nan")), "depth has 1 NaN/inf value(s) (first in view 0)"),
    (lambda s: s["depth"].__setitem__((1, 2, 2), -0.5), "depth has 1 negative value(s) (first in view 1"),
    (lambda s: s.__setitem__("instance_ids", s["instance_ids"][:1]), "instance_ids has shape (1, 28, 28); expected (2, 28, 28)"),
    (lambda s: s.__setitem__("instance_ids", s["instance_ids"].float()), "instance_ids has dtype torch.float32"),
    (lambda s: s.__setitem__("images", s["images"] * 255), "expected RGB in [0, 1]"),
    (lambda s: s.__setitem__("images", [s["images"][0], s["images"][1][:, :14]]), "the views of images differ in size"),
    (lambda s: s["extrinsics"].__setitem__((0, 0, 0), 3.0), "not proper rotations"),
    (lambda s: s.__setitem__("world_points", s["world_points"][..., :2]), "world_points has shape"),
    (lambda s: s.pop("images"), "missing key(s) ['images']"),
])
def test_check_sample_names_the_broken_field(mutate, message):
    sample = _scene()
    mutate(sample)
    with pytest.raises(SampleError) as err:
        check_sample(sample)
    assert message in str(err.value) and "synthetic-0-0000000" in str(err.value)


def test_check_sample_accepts_a_good_scene_and_stacks_view_lists():
    sample = _scene()
    sample["images"] = list(sample["images"])
    out = check_sample(sample)
    assert out["images"].shape == (2, 3, 28, 28)
