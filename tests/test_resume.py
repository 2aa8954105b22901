"""Exact resumes: a run killed mid-epoch and resumed with ``--ckpt_path last`` replays the uninterrupted run.

Same batches (the training loader's position is in the checkpoint and every epoch's order and augmentations are
functions of (seed, epoch, index)), same RNG states (the contrastive loss samples pixels with torch's RNG), same
LR schedule: the per-step training losses after the resume point are bit-equal on CPU, and TensorBoard gets one
run (one version folder, each step once).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from iggt_lightning.data import GroupedBatchSampler, SyntheticDataModule
from iggt_lightning.data.resumable import EpochBatchSampler, EpochShuffleSampler, ResumableDataLoader, SampleIndex
from tests.test_cli_training import ROOT, run_iggt

# nano on 56 px scenes, 4 training scenes in batches of 2 (2 steps per epoch; 2-3 views, so the batches are
# grouped by shape), one DataLoader worker as in configs/synthetic_tiny.yaml, validation every 3 steps, TensorBoard
TINY = """\
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  precision: 32-true
  max_steps: {steps}
  val_check_interval: 3
  check_val_every_n_epoch: null
  num_sanity_val_steps: 0
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  gradient_clip_val: 1.0
  default_root_dir: {root}
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {root}, name: tensorboard}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true, save_top_k: 0, every_n_train_steps: {every}}}
    - class_path: tests.cli_helpers.RecordLosses
      init_args: {{path: {root}/losses.jsonl}}
model:
  preset: nano
  drop_heads: [track]
  lr: 1.0e-3
  warmup_steps: 3
  loss_options:
    contrastive: {{num_samples: 256, balanced: true}}
data:
  class_path: iggt_lightning.data.SyntheticDataModule
  init_args: {{num_train: 4, num_val: 2, num_test: 2, num_views: [2, 3], image_size: [56, 56], batch_size: 2,
               num_workers: 1}}
"""


def _config(root: Path, steps: int, every: int, kill: int | None = None) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny.yaml").write_text(TINY.format(root=root, steps=steps, every=every))
    args = ["--config", str(root / "tiny.yaml")]
    if kill is not None:
        (root / "kill.yaml").write_text("trainer:\n  callbacks+:\n    - class_path: tests.cli_helpers.KillAtStep\n"
                                        f"      init_args: {{step: {kill}}}\n")
        args += ["--config", str(root / "kill.yaml")]
    return args


def _losses(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "losses.jsonl").read_text().splitlines()]


def _start(args: list[str]) -> subprocess.Popen:
    """run_iggt's environment, without waiting (the two first runs share the 2 cores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
               PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "iggt_lightning", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_run_resumed_from_last_replays_the_uninterrupted_losses_bit_for_bit(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps, every, kill = 6, 3, 5
    full, cut = tmp_path / "full", tmp_path / "cut"
    # killed at step 5: last.ckpt is step 3 = batch 1 of 2 of epoch 1 (mid-epoch, right before a validation),
    # and the killed run has logged step 4 to TensorBoard already (the resumed run logs it again)
    runs = [_start(["fit", *_config(full, steps, every)]), _start(["fit", *_config(cut, steps, every, kill=kill)])]
    outs = [p.communicate(timeout=300) for p in runs]
    assert runs[0].returncode == 0, outs[0][1][-3000:]
    assert runs[1].returncode == 17, outs[1][1][-3000:]
    saved = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resume_at = saved["global_step"]
    assert resume_at == 3
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 1, "seed": 0, "batches_per_epoch": 2}]                # mid-epoch

    (cut / "losses.jsonl").rename(cut / "killed.jsonl")
    resumed = run_iggt(["fit", *_config(cut, steps, every), "--ckpt_path", "last"], cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    reference = {r["step"]: r for r in _losses(full)}
    assert sorted(reference) == list(range(1, steps + 1))
    after = _losses(cut)
    assert [r["step"] for r in after] == list(range(resume_at + 1, steps + 1))  # steps 4..6, into epoch 2
    for r in after:
        ref = reference[r["step"]]
        assert r["scenes"] == ref["scenes"], (r, ref)
        assert r["lr"] == ref["lr"], (r, ref)
        assert r["loss"] == ref["loss"], (r, ref)          # bit-equal: float64 of the same float32
    # the run is not trivially repeating itself: different scenes and losses from step to step
    assert len({r["loss"] for r in after}) == len(after)

    # TensorBoard: one version folder for both processes, every step once with the uninterrupted value
    assert [p.name for p in (cut / "tensorboard").iterdir()] == ["version_0"]
    folder = cut / "tensorboard" / "version_0"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    tb = {}
    for root in (full, cut):
        acc = EventAccumulator(str(next((root / "tensorboard").iterdir())), size_guidance={"scalars": 0})
        acc.Reload()
        tb[root] = [(s.step, s.value) for s in acc.Scalars("train/loss")]
    assert tb[cut] == tb[full] and len(tb[full]) == steps


def test_a_loader_state_resumes_at_its_batch_and_orders_depend_on_seed_and_epoch_only():
    dm = SyntheticDataModule(num_train=10, num_views=(2, 3), image_size=(28, 28), batch_size=2, num_objects=(1, 2))
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader.batch_sampler, GroupedBatchSampler)

    def epoch(e: int, state: dict | None = None) -> list[list[str]]:
        fresh = dm.train_dataloader()
        if state is not None:
            fresh.load_state_dict(state)
        else:
            fresh.batch_sampler.sampler.set_epoch(e)
        return [b["scene_id"] for b in fresh]

    e0, e1 = epoch(0), epoch(1)
    assert e0 == epoch(0) and e0 != e1                               # (seed, epoch) -> order, nothing else
    assert sorted(sum(e0, [])) == sorted(sum(e1, []))
    for k in range(len(e1)):
        assert epoch(1, {"epoch": 1, "batches": k, "seed": 0, "batches_per_epoch": len(e1)}) == e1[k:]
    assert epoch(1, {"epoch": 0, "batches": len(e0), "seed": 0}) == e1  # saved on an epoch's last batch

    # the position counts the batches handed out; the indices carry their epoch into the dataset
    it = iter(loader)
    next(it), next(it)
    assert loader.state_dict() == {"epoch": 0, "batches": 2, "seed": 0, "batches_per_epoch": len(e0)}
    loader.batch_sampler.set_epoch(3)
    assert {i.epoch for b in loader.batch_sampler for i in b} == {3}


def test_distributed_sampler_positions_resume_too():
    """Under DDP Lightning batches a DistributedSampler's order: (seed, epoch) decides it as well."""
    order = []
    for _ in range(2):
        sampler = DistributedSampler(range(9), num_replicas=2, rank=1, shuffle=True, seed=3)
        bs = EpochBatchSampler(sampler, 2, drop_last=False)
        bs.set_epoch(4)
        bs.skip = 1
        order.append([[(int(i), i.epoch) for i in b] for b in bs])
    sampler = DistributedSampler(range(9), num_replicas=2, rank=1, shuffle=True, seed=3)
    sampler.set_epoch(4)
    full = [list(map(int, b)) for b in torch.utils.data.BatchSampler(sampler, 2, drop_last=False)]
    assert order[0] == order[1] == [[(i, 4) for i in b] for b in full[1:]]


def test_training_views_are_a_function_of_seed_epoch_and_index(tmp_path):
    """A real-dataset reader's training split: fresh views and augmentations per epoch, the same ones in a
    DataLoader worker and in another instance, for the same (seed, epoch, index)."""
    from iggt_lightning.data import SceneFolderScenes
    from iggt_lightning.data.fixtures import write_fixture

    write_fixture("scene_folder", tmp_path, num_scenes=2, num_views=8, image_size=(42, 56))

    def reader():
        return SceneFolderScenes(tmp_path, split="train", val_fraction=0, test_fraction=0, num_views=3,
                                 image_size=(28, 28), scale_augment=(1.0, 1.8), color_jitter=1.0)

    a, b = reader(), reader()
    torch.manual_seed(0)
    x = a[SampleIndex(1, 5)]
    torch.manual_seed(1)                               # the global RNG plays no part
    y = b[SampleIndex(1, 5)]
    assert x["frame_ids"] == y["frame_ids"] and torch.equal(x["images"], y["images"])
    draws = {tuple(a[SampleIndex(1, e)]["frame_ids"]) + (float(a[SampleIndex(1, e)]["images"].sum()),)
             for e in range(6)}
    assert len(draws) > 1                              # each epoch its own views / augmentation
    a.set_epoch(5)
    assert torch.equal(a[1]["images"], x["images"])    # a plain index takes the dataset's epoch
    loader = torch.utils.data.DataLoader(b, batch_size=None, sampler=[SampleIndex(1, 5)], num_workers=1)
    assert torch.equal(next(iter(loader))["images"], x["images"])


@pytest.mark.parametrize("seed", [0, 7])
def test_epoch_shuffle_sampler_is_a_permutation_per_epoch(seed):
    s = EpochShuffleSampler(12, seed)
    orders = []
    for e in range(3):
        s.set_epoch(e)
        orders.append(list(s))
        assert sorted(orders[-1]) == list(range(12))
    assert len({tuple(o) for o in orders}) == 3
    s.set_epoch(1)
    assert list(s) == orders[1]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from iggt_lightning.training_callbacks import collect_rng_states, set_rng_states

    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    torch.rand(3), np.random.rand(), np.random.randn(), random.random()     # move off the seeded states
    torch.save({"rng": collect_rng_states()}, tmp_path / "s.ckpt")
    first = (torch.rand(4), np.random.rand(4), np.random.randn(), random.random())
    torch.rand(9), np.random.rand(9), random.random()
    set_rng_states(torch.load(tmp_path / "s.ckpt", weights_only=True)["rng"])  # tensors and plain containers only
    again = (torch.rand(4), np.random.rand(4), np.random.randn(), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2:] == again[2:]
