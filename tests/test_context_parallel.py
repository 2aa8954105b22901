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


def _worker(rank: int, world: int, init: str, S: int, out_dir: str, mutants: bool) -> None:
    from iggt_lightning import context_parallel as cp

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = _model()
        images = _images(S)
        results = {"exact": cp.forward_views(model, images)}
        local, _ = cp.forward_local(model, images)
        results["local_keys"] = sorted(local)
        results["local_views"] = local["depth"].shape[1]
        if mutants:
            # global attention made local: each process attends over its own views only
            original = cp.ViewShard.attend
            cp.ViewShard.attend = lambda self, q, k, v: cp.attend(q, k, v)
            results["local_attention"] = cp.forward_views(model, images)
            cp.ViewShard.attend = original
            # every process believing it holds the reference view (the global frame offset ignored)
            from iggt_lightning.backbone.aggregator import Aggregator

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


def _spawn(tmp_path, S: int, mutants: bool = False) -> list[dict]:
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, S, str(tmp_path), mutants), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("S", [3, 5])
def test_two_processes_equal_one(tmp_path, S):
    with torch.no_grad():
        ref = _model()(_images(S))
    results = _spawn(tmp_path, S, mutants=S == 5)
    assert [r["local_views"] for r in results] == [(S + 1) // 2, S // 2]      # uneven: rank 0 holds one more
    for r in results:
        for key in KEYS:
            assert _max_diff(r["exact"][key], ref[key]) < TOL, key
    if S == 5:
        # non-exact attention or a misplaced reference view would be caught
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
