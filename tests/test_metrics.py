import math

import pytest
import torch

from iggt_lightning.metrics import CameraMetrics, DepthMetrics


def test_depth_metrics_scale_invariant_and_hand_case():
    t = torch.tensor([[[1.0, 2.0], [4.0, 8.0]]])
    m = DepthMetrics()
    m.update(3.0 * t, t)  # any global scale is removed by the median alignment
    out = m.compute()
    assert out["abs_rel"].item() == pytest.approx(0.0, abs=1e-12)
    assert out["delta_1.25"].item() == 1.0 and out["tau_1.03"].item() == 1.0

    # 4 pixels, one of them 50 % too deep; median alignment keeps the scale (median 3.0 -> 3.0)
    m = DepthMetrics()
    pred = torch.tensor([[[1.0, 2.0], [4.0, 12.0]]]).unsqueeze(-1)  # [...,H,W,1] accepted
    m.update(pred, t, valid=torch.ones(1, 2, 2, dtype=torch.bool))
    out = m.compute()
    assert out["abs_rel"].item() == pytest.approx(0.5 / 4)
    assert out["delta_1.25"].item() == pytest.approx(0.75) and out["tau_1.03"].item() == pytest.approx(0.75)


def test_depth_metrics_masks_and_errors():
    t = torch.tensor([[[1.0, 0.0], [2.0, 2.0]]])
    p = torch.tensor([[[1.0, 99.0], [2.0, 2.0]]])
    m = DepthMetrics()
    m.update(p, t)  # target 0 = invalid, its wild prediction is ignored
    assert m.compute()["abs_rel"].item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        m.update(torch.ones(2, 3), torch.ones(3, 2))
    assert math.isnan(DepthMetrics().compute()["abs_rel"].item())


def _rot_z(deg):
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def test_camera_metrics():
    gt = torch.stack([torch.cat([_rot_z(10 * i), torch.tensor([[i], [0.5], [1.0]])], 1) for i in range(3)])
    m = CameraMetrics()
    m.update(gt.clone(), gt)
    out = m.compute()
    assert out["rra@30"].item() == 1.0 and out["rta@30"].item() == 1.0 and out["auc@30"].item() == 1.0

    # scaling all translations changes nothing (scale-free); rotating camera 2 by 45 degrees breaks its 4 pairs
    pred = gt.clone()
    pred[:, :, 3] *= 7.0
    pred[2, :, :3] = _rot_z(45) @ pred[2, :, :3]
    m = CameraMetrics()
    m.update(pred, gt)
    out = m.compute()
    assert out["rra@30"].item() == pytest.approx(2 / 6)
    assert out["auc@30"].item() <= 2 / 6 + 1e-9
