"""Views across processes (iggt_lightning.context_parallel): 2 gloo processes, gathered, equal 1 process.

The nano model's LayerScale gammas are set to 1 (random init keeps them at 0.01, which would make the views'
interaction too faint to test), the camera and register tokens drawn at unit scale (the reference view's
slot then differs from the others'): then making the global attention local, or giving every process the reference
view's tokens, moves the outputs far beyond the tolerance, and the tests check that it does."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf", "part_feat", "images")
TOL = 1e-5
SIZES = (3, 5)


def _model():
    from iggt_lightning import IGGTModel

    torch.manual_seed(0)
    model = IGGTModel.from_preset("nano").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
        for token in (model.backbone.camera_token, model.backbone.register_token):   # slots 0 and 1 unlike
            token.normal_()
    return model


def _images(S: int) -> torch.Tensor:
    return torch.rand(1, S, 3, 28, 42, generator=torch.Generator().manual_seed(S))


def _max_diff(a, b) -> float:
    if isinstance(a, (list, tuple)):
        return max(_max_diff(x, y) for x, y in zip(a, b))
    assert a.shape == b.shape
    return float(((a - b).abs() / (1 + b.abs())).max())


def _worker(rank: int, world: int, init: str, out_dir: str) -> None:
    from iggt_lightning import context_parallel as cp
    from iggt_lightning.backbone.aggregator import Aggregator

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = _model()
        results = {}
        for S in SIZES:
            images = _images(S)
            results[S] = {"exact": cp.forward_views(model, images)}
            local, _ = cp.forward_local(model, images)
            results[S]["local_views"] = local["depth"].shape[1]
        images = _images(5)
        # global attention made local: each process attends over its own views only
        original = cp.ViewShard.attend
        cp.ViewShard.attend = lambda self, q, k, v: cp.attend(q, k, v)
        results["local_attention"] = cp.forward_views(model, images)
        cp.ViewShard.attend = original
        # every process believing it holds the reference view (the global frame offset ignored)
        per_frame = Aggregator._per_frame
        Aggregator._per_frame = staticmethod(lambda token, B, S, reference=True: per_frame(token, B, S))
        results["no_offset"] = cp.forward_views(model, images)
        Aggregator._per_frame = staticmethod(per_frame)
        try:
            cp.forward_views(model, images[:, :1])
        except ValueError as err:
            results["too_few"] = str(err)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    """S=3 and S=5 views (uneven splits) on 2 gloo processes, gathered, equal one process's forward."""
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    model = _model()
    for S in SIZES:
        with torch.no_grad():
            ref = model(_images(S))
        assert [r[S]["local_views"] for r in results] == [(S + 1) // 2, S // 2]      # rank 0 holds one more
        for r in results:
            for key in KEYS:
                assert _max_diff(r[S]["exact"][key], ref[key]) < TOL, (S, key)
    # non-exact attention or a misplaced reference view would be caught (ref: the S=5 forward, SIZES[-1])
    for mutant in ("local_attention", "no_offset"):
        worst = max(_max_diff(results[1][mutant][k], ref[k]) for k in KEYS if k != "images")
        assert worst > 100 * TOL, mutant
    assert "1 view(s) cannot be split over 2 processes" in results[0]["too_few"]


@pytest.fixture
def one_process(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_refusals(one_process, nano_model):
    from iggt_lightning.context_parallel import forward_views

    images = torch.rand(1, 2, 3, 28, 28)
    out = forward_views(nano_model, images)
    assert set(KEYS) <= set(out)
    assert nano_model.backbone.first_view == 0
    assert all(b.attn.view_context is None for b in nano_model.backbone.global_blocks)
    with pytest.raises(ValueError, match="query_points: point tracking"):
        forward_views(nano_model, images, torch.tensor([[4.0, 5.0]]))
    with pytest.raises(ValueError, match="return_intermediates"):
        forward_views(nano_model, images, return_intermediates=True)
    nano_model.backbone.set_global_attention({"kind": "merged", "ratio": 0.5})
    try:
        with pytest.raises(ValueError, match="backbone.global_attention: token merging"):
            forward_views(nano_model, images)
    finally:
        nano_model.backbone.set_global_attention(None)
    nano_model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            forward_views(nano_model, images)
    finally:
        nano_model.eval()


def test_no_process_group(nano_model):
    from iggt_lightning.context_parallel import forward_views

    with pytest.raises(RuntimeError, match="initialised process group"):
        forward_views(nano_model, torch.rand(1, 2, 3, 28, 28))


def test_iggt_test_with_the_strategy(tmp_path):
    """``iggt test --config configs/strategies/context_parallel.yaml`` (2 processes): the metrics of one process (the
    losses' random pixel-pair sampling aside)."""
    import json

    from iggt_lightning.cli import main
    from tests.test_cli_training import ROOT, run_iggt

    args = ["test", "--config", str(ROOT / "configs" / "synthetic_tiny.yaml"), "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--data.init_args.num_test", "2",
            "--data.init_args.image_size", "[56, 56]", "--data.init_args.num_views", "3",
            "--data.init_args.batch_size", "1", "--data.init_args.num_workers", "0"]
    assert main([*args, "--results", str(tmp_path / "one.json")]) == 0
    proc = run_iggt([*args, "--config", str(ROOT / "configs" / "strategies" / "context_parallel.yaml"),
                     "--results", str(tmp_path / "two.json")], cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text())["metrics"] for n in ("one", "two"))
    assert one.keys() == two.keys()
    for k in one:
        if k not in ("loss", "loss_contrastive", "loss_pull", "loss_push"):     # sampled pixel pairs: RNG state
            assert two[k] == pytest.approx(one[k], rel=1e-4, abs=1e-6), k


def test_the_strategy_refuses_fit(tmp_path, capsys):
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    from iggt_lightning.cli import main
    from iggt_lightning.context_parallel_strategy import ContextParallelStrategy
    from tests.test_cli_training import ROOT

    with pytest.raises(ValueError, match="trainer.strategy: 'context_parallel' .* not for training"):
        ContextParallelStrategy().setup(SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING)))
    # iggt fit refuses it before any process starts
    assert main(["fit", "--config", str(ROOT / "configs" / "synthetic_tiny.yaml"), "--config",
                 str(ROOT / "configs" / "strategies" / "context_parallel.yaml"),
                 "--trainer.default_root_dir", str(tmp_path)]) != 0
    assert "trainer.strategy: 'context_parallel' splits each scene's views" in capsys.readouterr().err
