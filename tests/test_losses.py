"""Loss terms against hand-computed tiny cases, plus masking, gradients and degenerate inputs."""
import math

import pytest
import torch

from iggt_lightning.losses import (
    camera_loss,
    conf_regression_loss,
    depth_loss,
    instance_contrastive_loss,
    instance_mean_contrastive_loss,
    point_loss,
)

DTYPE = torch.float64


def close(actual, expected, **kw):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), **kw)


def assert_zero_attached(value, leaf):
    """0, finite, and backward reaches ``leaf`` (with a zero gradient)."""
    assert torch.isfinite(value) and value.item() == 0
    value.backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


# ============================================================================= camera
GT_ENC = torch.tensor([[[0.5, -1.0, 2.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.2]]], dtype=DTYPE)  # [B=1,S=1,9]
# errors: t (0.1, -0.2, 0.3) -> mean 0.2; q (0.04, 0, 0, 0) -> 0.01; fov (0.1, 0.3) -> 0.2
ERR = torch.tensor([0.1, -0.2, 0.3, 0.04, 0.0, 0.0, 0.0, 0.1, 0.3], dtype=DTYPE)


def test_camera_loss_single_iteration_by_hand():
    out = camera_loss([GT_ENC + ERR], GT_ENC)
    close(out["loss_T"], 0.2)
    close(out["loss_R"], 0.01)
    close(out["loss_fov"], 0.2)
    close(out["loss_camera"], 0.2 + 0.01 + 0.5 * 0.2)


def test_camera_loss_iteration_weighting():
    n = 4
    # only the last iteration wrong: weight gamma^0 = 1, averaged over n iterations -> error / n
    preds = [GT_ENC.clone() for _ in range(n - 1)] + [GT_ENC + ERR]
    out = camera_loss(preds, GT_ENC, gamma=0.6)
    close(out["loss_T"], 1.0 * 0.2 / n)
    close(out["loss_camera"], 1.0 * 0.31 / n)
    # only the first iteration wrong: weight gamma^(n-1)
    preds = [GT_ENC + ERR] + [GT_ENC.clone() for _ in range(n - 1)]
    close(camera_loss(preds, GT_ENC, gamma=0.6)["loss_camera"], 0.6 ** 3 * 0.31 / n)
    # a stacked [n,B,S,9] tensor is the same as the list
    stacked = torch.stack([GT_ENC] * (n - 1) + [GT_ENC + ERR])
    close(camera_loss(stacked, GT_ENC)["loss_camera"], 0.31 / n)


def test_camera_loss_huber_and_translation_clamp():
    err = torch.tensor([0.5, 3.0, 0, 0, 0, 0, 0, 0, 0], dtype=DTYPE)
    # huber(0.5) = 0.5 * 0.25 = 0.125; huber(3) = 3 - 0.5 = 2.5; mean over 3 = 2.625 / 3
    close(camera_loss([GT_ENC + err], GT_ENC, loss_type="huber")["loss_T"], 2.625 / 3)
    big = torch.tensor([1000.0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=DTYPE)
    close(camera_loss([GT_ENC + big], GT_ENC)["loss_T"], 100.0 / 3)
    with pytest.raises(ValueError):
        camera_loss([GT_ENC], GT_ENC, loss_type="l3")


def test_camera_loss_valid_mask_and_empty():
    gt = GT_ENC.expand(2, 3, 9).clone()
    pred = gt + ERR
    pred[1] += 50.0  # scene 1 is wrong everywhere but invalid
    valid = torch.tensor([True, False])
    close(camera_loss([pred], gt, valid=valid)["loss_camera"], 0.31)
    valid_frames = torch.tensor([[True, True, True], [False, False, False]])
    close(camera_loss([pred], gt, valid=valid_frames)["loss_camera"], 0.31)
    leaf = pred.clone().requires_grad_(True)
    out = camera_loss([leaf], gt, valid=torch.tensor([False, False]))
    assert_zero_attached(out["loss_camera"], leaf)


def test_camera_loss_gradients_reach_every_iteration():
    preds = [(GT_ENC + ERR * (i + 1)).requires_grad_(True) for i in range(4)]
    camera_loss(preds, GT_ENC)["loss_camera"].backward()
    for p in preds:
        assert p.grad is not None and p.grad.abs().sum() > 0


# ============================================================================= regression
def tiny_depth():
    """B=S=1, H=1, W=3: pred (1, 3, 0), gt 0, conf (2, 1, 1)."""
    pred = torch.tensor([1.0, 3.0, 0.0], dtype=DTYPE).reshape(1, 1, 1, 3, 1)
    conf = torch.tensor([2.0, 1.0, 1.0], dtype=DTYPE).reshape(1, 1, 1, 3)
    gt = torch.zeros(1, 1, 1, 3, dtype=DTYPE)
    return pred, conf, gt


def test_conf_regression_by_hand():
    pred, conf, gt = tiny_depth()
    valid = torch.ones(1, 1, 1, 3, dtype=torch.bool)
    out = conf_regression_loss(pred, conf, gt[..., None], valid, gamma=1.0, alpha=0.2)
    # r = (1, 3, 0); conf term = mean(1*2 - 0.2 ln 2, 3*1 - 0, 0 - 0) ; reg = mean(r)
    close(out["loss_conf"], (5 - 0.2 * math.log(2)) / 3)
    close(out["loss_reg"], 4 / 3)
    # scale 1: (|3-1| + |0-3|) / 3 valid = 5/3; scale 2 (columns 0, 2): |0-1| / 2 = 1/2; scales 4, 8: one
    # column, no pair -> 0; averaged over 4 scales
    close(out["loss_grad"], (5 / 3 + 1 / 2) / 4)
    close(out["total"], out["loss_conf"] + out["loss_reg"] + out["loss_grad"])
    out = conf_regression_loss(pred, conf, gt[..., None], valid, gamma=2.0, alpha=0.5, gradient_weight=0.0)
    close(out["loss_conf"], (2 * 2 - 0.5 * math.log(2) + 2 * 3) / 3)
    close(out["total"], out["loss_conf"] + 4 / 3)


def test_depth_loss_mask_by_hand_and_keys():
    pred, conf, gt = tiny_depth()
    valid = torch.tensor([True, False, True]).reshape(1, 1, 1, 3)
    pred[0, 0, 0, 1] = 1e6  # invalid pixel: excluded everywhere
    conf[0, 0, 0, 1] = 1e-9
    gt[0, 0, 0, 1] = float("nan")
    out = depth_loss(pred, conf, gt, valid)
    assert set(out) == {"loss_depth", "loss_depth_conf", "loss_depth_reg", "loss_depth_grad"}
    close(out["loss_depth_conf"], (2 - 0.2 * math.log(2)) / 2)
    close(out["loss_depth_reg"], 1 / 2)
    # scale 1: both x-pairs touch the invalid pixel -> 0; scale 2: |0 - 1| / 2 valid
    close(out["loss_depth_grad"], (0 + 1 / 2) / 4)
    close(out["loss_depth"], out["loss_depth_conf"] + out["loss_depth_reg"] + out["loss_depth_grad"])


def test_point_loss_uses_euclidean_residual():
    pred = torch.tensor([3.0, 4.0, 0.0], dtype=DTYPE).reshape(1, 1, 1, 1, 3)
    gt = torch.zeros_like(pred)
    conf = torch.ones(1, 1, 1, 1, dtype=DTYPE)
    out = point_loss(pred, conf, gt, torch.ones(1, 1, 1, 1, dtype=torch.bool))
    assert set(out) == {"loss_point", "loss_point_conf", "loss_point_reg", "loss_point_grad"}
    close(out["loss_point_reg"], 5.0)
    close(out["loss_point_conf"], 5.0)  # log 1 = 0
    close(out["loss_point_grad"], 0.0)


def random_maps(seed=0, B=2, S=2, H=8, W=10, C=1):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(B, S, H, W, C, generator=g, dtype=DTYPE) * 3
    gt = torch.rand(B, S, H, W, C, generator=g, dtype=DTYPE) * 3
    conf = 1 + torch.rand(B, S, H, W, generator=g, dtype=DTYPE) * 4
    valid = torch.rand(B, S, H, W, generator=g) > 0.3
    return pred, conf, gt, valid


@pytest.mark.parametrize("C", [1, 3])
def test_regression_ignores_invalid_pixels(C):
    pred, conf, gt, valid = random_maps(C=C)
    ref = conf_regression_loss(pred, conf, gt, valid)
    pred2, conf2, gt2 = pred.clone(), conf.clone(), gt.clone()
    pred2[~valid] = 1e4
    conf2[~valid] = 1e-6
    gt2[~valid] = float("nan")
    out = conf_regression_loss(pred2, conf2, gt2, valid)
    for k in ref:
        assert torch.isfinite(out[k])
        close(out[k], ref[k].item())


def test_regression_gradients_flow():
    pred, conf, gt, valid = random_maps()
    pred.requires_grad_(True)
    conf.requires_grad_(True)
    out = depth_loss(pred, conf, gt[..., 0], valid)
    out["loss_depth"].backward()
    assert pred.grad.abs().sum() > 0 and conf.grad.abs().sum() > 0
    assert (pred.grad[~valid] == 0).all() and (conf.grad[~valid] == 0).all()
    # the gradient term alone also reaches the predictions
    pred.grad = None
    conf_regression_loss(pred, conf, gt, valid)["loss_grad"].backward()
    assert pred.grad.abs().sum() > 0


def test_regression_no_nan_at_zero_residual():
    pred, conf, gt, valid = random_maps()
    pred = gt.clone().requires_grad_(True)
    out = conf_regression_loss(pred, conf, gt, valid)
    out["total"].backward()
    assert torch.isfinite(pred.grad).all()
    close(out["loss_reg"], 0.0)


def test_regression_empty_mask():
    pred, conf, gt, valid = random_maps()
    pred.requires_grad_(True)
    out = conf_regression_loss(pred, conf, gt, torch.zeros_like(valid))
    for k in ("loss_conf", "loss_reg", "loss_grad"):
        assert out[k].item() == 0
    assert_zero_attached(out["total"], pred)


def test_quantile_filter_drops_injected_outlier():
    # 2000 pixels: residuals 0.001 .. 1.999 plus one huge outlier. Clamped at 100 and above the 98 %
    # quantile (between the 1960th and 1961st smallest, 1.96002) the outlier and the top 2 % are dropped:
    # the kept residuals are 0.001 .. 1.960, mean 0.001 * 1961 / 2 = 0.9805.
    values = torch.cat([torch.arange(1, 2000, dtype=DTYPE) * 0.001, torch.tensor([1e6], dtype=DTYPE)])
    perm = torch.randperm(2000, generator=torch.Generator().manual_seed(0))
    pred = values[perm].reshape(1, 1, 40, 50, 1)
    gt = torch.zeros_like(pred)
    conf = torch.ones(1, 1, 40, 50, dtype=DTYPE)
    valid = torch.ones(1, 1, 40, 50, dtype=torch.bool)
    out = conf_regression_loss(pred, conf, gt, valid)
    close(out["loss_reg"], 0.9805)
    close(out["loss_conf"], 0.9805)  # c = 1: gamma r c - alpha log c = r
    # without the quantile step only the clamp at 100 applies
    unfiltered = conf_regression_loss(pred, conf, gt, valid, quantile=None)
    close(unfiltered["loss_reg"], (0.001 * 1999 * 2000 / 2 + 100) / 2000)
    assert torch.isfinite(unfiltered["loss_grad"])


# ============================================================================= contrastive (Eq. 4)
def feats(rows, H=1):
    """Pixel feature rows [N,D] of one view -> [B=1,S=1,D,H,N/H]."""
    f = torch.tensor(rows, dtype=DTYPE)
    return f.T.reshape(1, 1, f.shape[1], H, -1).clone()


def ids_(values, H=1):
    return torch.tensor(values, dtype=torch.long).reshape(1, 1, H, -1)


def test_contrastive_pull_by_hand():
    # same id, features (3, 0) and (0, 1): normalised d = sqrt 2 -> pull sqrt 2, no negatives
    out = instance_contrastive_loss(feats([[3.0, 0.0], [0.0, 1.0]]), ids_([5, 5]))
    close(out["loss_pull"], math.sqrt(2))
    close(out["loss_push"], 0.0)
    close(out["loss_contrastive"], 2.0 * math.sqrt(2))


def test_contrastive_push_by_hand():
    # different ids, (1, 0) vs (0.6, 0.8): d = sqrt(0.4^2 + 0.8^2) = sqrt 0.8 -> push 1 - sqrt 0.8
    out = instance_contrastive_loss(feats([[1.0, 0.0], [0.6, 0.8]]), ids_([1, 2]))
    close(out["loss_pull"], 0.0)
    close(out["loss_push"], 1 - math.sqrt(0.8))
    close(out["loss_contrastive"], 1 - math.sqrt(0.8))
    close(instance_contrastive_loss(feats([[1.0, 0.0], [0.6, 0.8]]), ids_([1, 2]), margin=2.0)["loss_push"],
          2 - math.sqrt(0.8))


def test_contrastive_mixed_by_hand():
    # ids (1, 1, 2); a = (1, 0), b = (0.6, 0.8), c = (0, 1)
    # pull: d(a, b) = sqrt 0.8 (both orders); push: d(a, c) = sqrt 2 -> 0, d(b, c) = sqrt 0.4 -> 1 - sqrt 0.4,
    # over 4 ordered negative pairs -> (1 - sqrt 0.4) / 2
    f = feats([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    out = instance_contrastive_loss(f, ids_([1, 1, 2]), lambda_pull=2.0, lambda_push=1.0)
    pull, push = math.sqrt(0.8), (1 - math.sqrt(0.4)) / 2
    close(out["loss_pull"], pull)
    close(out["loss_push"], push)
    close(out["loss_contrastive"], 2 * pull + push)
    out = instance_contrastive_loss(f, ids_([1, 1, 2]), lambda_pull=0.5, lambda_push=3.0)
    close(out["loss_contrastive"], 0.5 * pull + 3 * push)


def test_contrastive_ignores_id_zero():
    f = feats([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.3], [0.2, -0.7]])
    ids = ids_([1, 1, 2, 0, 0])
    ref = instance_contrastive_loss(f[..., :3], ids[..., :3])
    f2 = f.clone()
    f2[..., 3:] = torch.randn(1, 1, 2, 1, 2, dtype=DTYPE) * 10
    out = instance_contrastive_loss(f2, ids)
    for k in ref:
        close(out[k], ref[k].item())


def consistent_features(S=2, H=3, W=4, D=4, num_ids=3):
    """Same id -> identical feature (one-hot e_id), different ids -> orthogonal, in every view."""
    ids = torch.arange(S * H * W).reshape(1, S, H, W) % (num_ids + 1)  # includes background 0
    f = torch.nn.functional.one_hot(ids, D).to(DTYPE).permute(0, 1, 4, 2, 3) * 2.5  # scale removed by the norm
    return f.contiguous(), ids


def test_contrastive_consistent_features_give_zero():
    f, ids = consistent_features()
    f.requires_grad_(True)
    out = instance_contrastive_loss(f, ids)
    assert out["loss_pull"].item() == 0  # exact: identical rows have distance exactly 0
    assert out["loss_push"].item() == 0  # orthogonal unit vectors are sqrt 2 > M = 1 apart
    out["loss_contrastive"].backward()
    assert torch.isfinite(f.grad).all()


def test_contrastive_cross_view_pairs():
    # two views, ids 1 and 2 in each; inside a view: same id identical, different ids orthogonal.
    # Across views id 1 is e0 vs e2 (inconsistent): only cross-view positive pairs are wrong.
    view0 = [[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 1.0, 0, 0]]
    view1 = [[0, 0, 1.0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0], [0, 0, 0, 1.0]]
    f = torch.stack([torch.tensor(view0, dtype=DTYPE).T, torch.tensor(view1, dtype=DTYPE).T])
    f = f.reshape(1, 2, 4, 1, 4)
    ids = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]]).reshape(1, 2, 1, 4)
    within = instance_contrastive_loss(f, ids, cross_view=False)
    assert within["loss_contrastive"].item() == 0
    across = instance_contrastive_loss(f, ids, cross_view=True)
    # positives per sample: 1 in-view (d 0) + 2 cross-view (d sqrt 2): pull = 2 sqrt 2 / 3; all negatives
    # orthogonal -> push 0
    close(across["loss_pull"], 2 * math.sqrt(2) / 3)
    close(across["loss_push"], 0.0)
    assert across["loss_contrastive"] > 0


def test_contrastive_single_instance_and_empty():
    f = torch.randn(1, 2, 3, 2, 2, dtype=DTYPE, requires_grad=True)
    one = instance_contrastive_loss(f, torch.ones(1, 2, 2, 2, dtype=torch.long))
    assert torch.isfinite(one["loss_contrastive"]) and one["loss_pull"] > 0
    assert one["loss_push"].item() == 0
    one["loss_contrastive"].backward()
    assert f.grad.abs().sum() > 0
    f.grad = None
    none = instance_contrastive_loss(f, torch.zeros(1, 2, 2, 2, dtype=torch.long))
    assert none["loss_pull"].item() == 0 and none["loss_push"].item() == 0
    assert_zero_attached(none["loss_contrastive"], f)
    # a single foreground pixel: no pair at all
    ids = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    ids[0, 1, 0, 0] = 4
    f.grad = None
    assert_zero_attached(instance_contrastive_loss(f, ids)["loss_contrastive"], f)


def test_contrastive_averages_each_term_over_scenes_where_defined():
    # scene 0: ids (1, 2) -> push only; scene 1: ids (3, 3) -> pull only
    f = torch.zeros(2, 1, 2, 1, 2, dtype=DTYPE)
    f[0, 0, :, 0, 0], f[0, 0, :, 0, 1] = torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8])
    f[1, 0, :, 0, 0], f[1, 0, :, 0, 1] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    ids = torch.tensor([[1, 2], [3, 3]]).reshape(2, 1, 1, 2)
    out = instance_contrastive_loss(f, ids)
    close(out["loss_push"], 1 - math.sqrt(0.8))
    close(out["loss_pull"], math.sqrt(2))


def test_contrastive_sampling_and_gradients():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 8, 6, 7, generator=g, dtype=DTYPE, requires_grad=True)
    ids = torch.randint(0, 4, (2, 3, 6, 7), generator=g)
    a = instance_contrastive_loss(f, ids, num_samples=20, generator=torch.Generator().manual_seed(1))
    b = instance_contrastive_loss(f, ids, num_samples=20, generator=torch.Generator().manual_seed(1))
    close(a["loss_contrastive"], b["loss_contrastive"].item())
    full = instance_contrastive_loss(f, ids, num_samples=10_000)
    assert torch.isfinite(full["loss_contrastive"]) and full["loss_pull"] > 0 and full["loss_push"] > 0
    full["loss_contrastive"].backward()
    assert f.grad.abs().sum() > 0
    # background pixels get no gradient
    assert (f.grad.permute(0, 1, 3, 4, 2)[ids == 0] == 0).all()


def test_contrastive_resizes_ids_to_features():
    f = feats([[1.0, 0.0], [0.6, 0.8]])
    ids_hi = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]]).reshape(1, 1, 2, 4)  # 2x the feature resolution
    close(instance_contrastive_loss(f, ids_hi)["loss_push"], 1 - math.sqrt(0.8))


# ============================================================================= per-instance-mean variant
def mean_variant_case():
    """S=2 views of 4 pixels, D=1.
    view 0: ids (1, 1, 2, 2), f (0, 1, 1.2, 1.2); view 1: ids (1, 1, 0, 0), f (2, 2, 9, 9)."""
    f = torch.tensor([[0.0, 1.0, 1.2, 1.2], [2.0, 2.0, 9.0, 9.0]], dtype=DTYPE).reshape(1, 2, 1, 1, 4)
    ids = torch.tensor([[1, 1, 2, 2], [1, 1, 0, 0]]).reshape(1, 2, 1, 4)
    return f, ids


def test_mean_contrastive_by_hand():
    f, ids = mean_variant_case()
    out = instance_mean_contrastive_loss(f, ids, min_pixels=1)
    # means: mu(0,1) = 0.5, mu(0,2) = 1.2, mu(1,1) = 2
    # pull: (0,1): relu(0.5 - 0.25) for both pixels = 0.25; (0,2): 0; (1,1): 0 -> mean over 3 = 0.25 / 3
    # push: view 0: relu(1 - 0.7) = 0.3; view 1 has one instance -> not counted
    # cons: instance 1 in both views: relu(|0.5 - 2| - 0.5) = 1.0
    close(out["loss_pull"], 0.25 / 3)
    close(out["loss_push"], 0.3)
    close(out["loss_cons"], 1.0)
    close(out["loss_contrastive"], 2 * 0.25 / 3 + 1 * 0.3 + 2 * 1.0)


def test_mean_contrastive_min_pixels_and_empty():
    f, ids = mean_variant_case()
    f.requires_grad_(True)
    out = instance_mean_contrastive_loss(f, ids, min_pixels=3)  # every instance has 2 pixels
    for k in ("loss_pull", "loss_push", "loss_cons"):
        assert out[k].item() == 0
    assert_zero_attached(out["loss_contrastive"], f)
    f.grad = None
    out = instance_mean_contrastive_loss(f, torch.zeros_like(ids))
    assert_zero_attached(out["loss_contrastive"], f)


def test_mean_contrastive_gradients_and_zero_distance():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 8, 8, 8, generator=g, dtype=DTYPE, requires_grad=True)
    ids = torch.randint(0, 4, (2, 3, 8, 8), generator=g)
    out = instance_mean_contrastive_loss(f, ids, min_pixels=2)
    assert all(out[k] > 0 for k in ("loss_pull", "loss_cons"))
    out["loss_contrastive"].backward()
    assert f.grad.abs().sum() > 0 and torch.isfinite(f.grad).all()
    # identical features per id in every view: pull and consistency are exactly 0, backward stays finite
    f0, ids0 = consistent_features()
    f0.requires_grad_(True)
    out = instance_mean_contrastive_loss(f0, ids0, min_pixels=1, normalize=True)
    assert out["loss_pull"].item() == 0 and out["loss_cons"].item() == 0
    out["loss_contrastive"].backward()
    assert torch.isfinite(f0.grad).all()


def test_contrastive_balanced_sampling_gives_small_instances_their_share():
    from iggt_lightning.losses.contrastive import _sample_scene

    ids = torch.ones(2, 40, 40, dtype=torch.long)   # a "room" covering most of both views
    ids[:, :5, :5] = 2                              # two small objects, 50 pixels each
    ids[:, -5:, -5:] = 3
    feats = torch.randn(2, 8, 40, 40)
    g = torch.Generator().manual_seed(0)
    _, uniform, _ = _sample_scene(feats, ids, 60, g)
    _, balanced, _ = _sample_scene(feats, ids, 60, g, balanced=True)
    assert torch.bincount(uniform, minlength=4)[2:].sum() < 10       # ~3 of 60 expected
    assert (torch.bincount(balanced, minlength=4)[1:] >= 15).all()   # ~20 each
    out = instance_contrastive_loss(feats[None], ids[None], num_samples=60, balanced=True, generator=g)
    assert torch.isfinite(out["loss_contrastive"])
