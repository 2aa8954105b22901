"""Validation, test and dataset predict visit every scene of their split exactly once, whatever the grouping of
scenes by shape into batches; training keeps its fixed number of batches per epoch."""
import json
from collections import Counter
from pathlib import Path

import pytest
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper
from torch.utils.data import DistributedSampler, SequentialSampler

from iggt_lightning.cli import main
from iggt_lightning.data import GroupedBatchSampler, SyntheticDataModule

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "synthetic_tiny.yaml")


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_evaluation_batches_hold_every_index_once_with_remainders_in_several_groups():
    # three shapes of 7, 6 and 5 indices: with batches of 4 every group leaves a remainder (3, 2, 1)
    keys = [(2, 28, 28)] * 7 + [(3, 28, 28)] * 6 + [(4, 28, 28)] * 5
    keys = [keys[(i * 7) % 18] for i in range(18)]          # interleaved, as a real split comes
    sampler = GroupedBatchSampler(SequentialSampler(range(18)), 4, drop_last=False, group_keys=keys,
                                  fixed_length=False)
    batches = [list(map(int, b)) for b in sampler]
    assert len(batches) == len(sampler) == 2 + 2 + 2          # ceil(7/4) + ceil(6/4) + ceil(5/4)
    assert sorted(i for b in batches for i in b) == list(range(18))
    assert all(len({keys[i] for i in b}) == 1 for b in batches)
    assert sorted(len(b) for b in batches) == [1, 2, 3, 4, 4, 4]
    # the training mode of the same grouping: ceil(18 / 4) = 5 batches, so a remainder waits for another epoch
    fixed = list(GroupedBatchSampler(SequentialSampler(range(18)), 4, drop_last=False, group_keys=keys))
    assert len(fixed) == 5 and len({i for b in fixed for i in b}) < 18


def test_evaluation_batches_keep_ddp_ranks_in_step():
    keys = [i % 3 for i in range(23)]
    per_rank = []
    for rank in (0, 1):
        sampler = DistributedSampler(_Sized(23), num_replicas=2, rank=rank, shuffle=False)
        mine = [int(i) for i in sampler]
        batches = [list(map(int, b)) for b in GroupedBatchSampler(sampler, 4, drop_last=False, group_keys=keys,
                                                                   fixed_length=False)]
        own = sum(-(-n // 4) for n in Counter(keys[i] for i in mine).values())
        assert sorted(i for b in batches[:own] for i in b) == sorted(mine)   # each of its indices once, then pads
        assert all(len({keys[i] for i in b}) == 1 for b in batches)
        per_rank.append(batches)
    assert len(per_rank[0]) == len(per_rank[1])                        # same step count on every rank
    assert {i for b in per_rank[0] + per_rank[1] for i in b} == set(range(23))
    assert len(per_rank[0]) == 4          # rank 0's shapes split 4/4/4 (3 batches), rank 1's 5/4/3: rank 0 pads

    # predict under DDP: Lightning's sampler repeats nothing, so neither does the grouping (ranks may differ)
    seen = []
    for rank in (0, 1):
        sampler = UnrepeatedDistributedSamplerWrapper(SequentialSampler(range(24)), num_replicas=2, rank=rank,
                                                      shuffle=False)
        batched = GroupedBatchSampler(sampler, 4, drop_last=False, group_keys=keys + [0], fixed_length=False)
        batches = [list(map(int, b)) for b in batched]
        assert len(batches) == len(batched)
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(24))


def test_every_scene_once_requires_keeping_the_last_batch():
    with pytest.raises(ValueError, match="drop_last=True drops scenes, fixed_length=False"):
        GroupedBatchSampler(SequentialSampler(range(4)), 2, drop_last=True, group_keys=[0, 1, 0, 1],
                            fixed_length=False)


def _scene_ids(loader) -> list[str]:
    return [s for batch in loader for s in batch["scene_id"]]


def test_val_test_predict_loaders_cover_a_mixed_view_split():
    # val: 7, 5 and 1 scenes of 2, 3 and 4 views; test (and predict): 6, 7 and 9; batches of 4 leave a remainder
    # in every group, so grouping needs more than ceil(N / 4) batches
    dm = SyntheticDataModule(num_train=12, num_val=13, num_test=22, num_views=(2, 4), image_size=(28, 28),
                             num_objects=(1, 2), batch_size=4, num_workers=0)
    for stage, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader()),
                          ("predict", dm.predict_dataloader())):
        data = dm.datasets[stage]
        groups = Counter(data.sample_shape(i) for i in range(len(data)))
        assert len(groups) == 3 and all(n % 4 for n in groups.values()), groups
        ids = _scene_ids(loader)
        assert len(loader) == sum(-(-n // 4) for n in groups.values()) > -(-len(data) // 4)
        assert sorted(ids) == sorted(data.scene(i).scene_id for i in range(len(data))), stage
    # training: a fixed ceil(12 / 4) = 3 batches per epoch (DDP ranks in step), remainders left to other epochs
    assert len(dm.train_dataloader()) == 3


@pytest.fixture(scope="module")
def pinned_nano(tmp_path_factory):
    """A nano model whose camera head predicts identity poses and a 1 rad field of view (random weights often
    predict a degenerate one, which predict refuses to write)."""
    from iggt_lightning.checkpoints import save_model
    from tests.cli_helpers import pinned_nano_model

    path = tmp_path_factory.mktemp("pinned") / "nano.safetensors"
    save_model(pinned_nano_model(), path)
    return path


@pytest.mark.parametrize("stage, split", [("test", 48), ("validate", 24), ("predict", 48)])
def test_iggt_commands_see_every_scene_of_synthetic_tiny_once(stage, split, pinned_nano, tmp_path, capsys):
    """configs/synthetic_tiny.yaml's data (48 test scenes of 2 or 3 views in batches of 4: the grouping used to
    drop scenes 41, 45 and 46) with 28 px images and the nano model, so that it runs in seconds."""
    record = tmp_path / "scenes.jsonl"
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text("trainer:\n  callbacks:\n    - class_path: tests.cli_helpers.RecordEvalScenes\n"
                         f"      init_args: {{path: {record}}}\n")
    args = [stage, "--config", CONFIG, "--config", str(callbacks), "--model.preset", "nano",
            "--model.init_checkpoint", str(pinned_nano), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--data.init_args.image_size", "[28, 28]",
            "--data.init_args.num_workers", "0", "--data.init_args.num_train", "8"]
    if stage == "predict":
        args += ["--out", str(tmp_path / "predictions")]
    assert main(args) == 0, capsys.readouterr().err
    ids = [s for line in record.read_text().splitlines() for s in json.loads(line)["scenes"]]
    data = SyntheticDataModule(num_test=48, num_val=24, num_views=(2, 3), image_size=(28, 28), seed=0,
                               background_id=100).datasets["test" if stage != "validate" else "val"]
    expected = [data.scene(i).scene_id for i in range(split)]
    assert len(ids) == split and sorted(ids) == sorted(expected)
    if stage == "predict":
        assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == sorted(expected)
