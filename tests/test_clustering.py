"""Clustering instance features into multi-view masks: the torch default and the official HDBSCAN path."""
import pytest
import torch
import torch.nn.functional as F

from iggt_lightning.inference import HDBSCANClusterer, TorchClusterer, build_clusterer


def scene(S=3, H=24, W=32, objects=4, noise=0.05, seed=0):
    """Block-shaped objects visible in every view; features = one unit vector per object (+ noise);
    world points = a distinct 3D location per object (+ noise). id 0 is a background like any other."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(S, H, W, dtype=torch.long)
    for k in range(1, objects + 1):
        for s in range(S):
            y = int(torch.randint(0, H - 8, (1,), generator=g))
            x = int(torch.randint(0, W - 8, (1,), generator=g))
            ids[s, y:y + 8, x:x + 8] = k
    centres = F.normalize(torch.randn(objects + 1, 8, generator=g), dim=-1)
    feats = centres[ids] + noise * torch.randn(S, H, W, 8, generator=g)
    points = 5 * torch.randn(objects + 1, 3, generator=g)[ids] + 0.1 * torch.randn(S, H, W, 3, generator=g)
    return feats.permute(0, 3, 1, 2), points, ids


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b group the pixels identically (up to renaming ids)."""
    pairs = torch.unique(torch.stack([a.flatten(), b.flatten()], 1), dim=0)
    return len(pairs) == len(a.unique()) == len(b.unique())


def test_torch_clusterer_recovers_objects_with_ids_shared_across_views():
    feats, _, ids = scene()
    out = TorchClusterer()(feats)
    assert out.ids.shape == ids.shape and out.ids.dtype == torch.long
    assert same_partition(out.ids, ids)          # one id per object, the same in every view
    assert out.num_instances == 5 and (out.ids > 0).all()  # every pixel labelled
    assert out.scores.shape == (5,) and ((out.scores >= 0) & (out.scores <= 1)).all()
    masks = out.masks()
    assert masks.shape == (5, *ids.shape) and (masks.sum(0) == 1).all()


def test_granularity_merges_close_objects_and_scores_reflect_separation():
    feats, _, ids = scene(objects=2, noise=0.02)
    x = feats.permute(0, 2, 3, 1)
    a, b = F.normalize(x[ids == 1].mean(0), dim=0), F.normalize(x[ids == 2].mean(0), dim=0)
    # move object 2 to distance ~0.3 of object 1
    close = F.normalize(a + 0.3 * F.normalize(b - a * (a @ b), dim=0), dim=0)
    x = x.clone()
    x[ids == 2] = close + 0.02 * torch.randn((ids == 2).sum(), 8)
    feats = x.permute(0, 3, 1, 2)
    fine, coarse = TorchClusterer(granularity=0.15)(feats), TorchClusterer(granularity="large")(feats)
    assert fine.num_instances == 3 and same_partition(fine.ids, ids)
    assert coarse.num_instances == 2
    merged = coarse.ids[ids == 1].unique()
    assert len(merged) == 1 and (coarse.ids[ids == 2] == merged).all()
    # in the fine clustering the two close objects score lower than the well separated background
    bg = int(fine.ids[ids == 0][0])
    close_ids = [int(fine.ids[ids == k][0]) for k in (1, 2)]
    assert all(fine.scores[bg - 1] > fine.scores[k - 1] for k in close_ids)


def test_confidence_threshold_leaves_pixels_unlabelled_and_sub_sampling_labels_everything():
    feats, _, ids = scene(S=2, H=56, W=56)
    conf = torch.ones(ids.shape)
    conf[0, :10] = 0.1
    out = TorchClusterer(min_confidence=0.5, max_points=500)(feats, confidence=conf)
    assert (out.ids[0, :10] == 0).all() and (out.ids[conf >= 0.5] > 0).all()
    keep = conf >= 0.5
    assert same_partition(out.ids[keep], ids[keep])


def test_single_view_and_bad_inputs():
    feats, points, ids = scene(S=1)
    assert same_partition(TorchClusterer()(feats).ids, ids)
    bad = feats.clone()
    bad[0, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf at 1 of"):
        TorchClusterer()(bad)
    with pytest.raises(ValueError, match=r"features must be a tensor \[S,D,H,W\]"):
        TorchClusterer()(feats[0])
    with pytest.raises(ValueError, match=r"points must have shape \[S,H,W,3\]"):
        TorchClusterer()(feats, points[..., :2])
    with pytest.raises(ValueError, match="granularity must be"):
        TorchClusterer(granularity=2.5)
    with pytest.raises(ValueError, match="unknown granularity preset 'huge'"):
        TorchClusterer(granularity="huge")
    with pytest.raises(ValueError, match="unknown clusterer 'kmeans'"):
        build_clusterer("kmeans")
    with pytest.raises(ValueError, match="unknown HDBSCAN preset"):
        HDBSCANClusterer(preset="tiny")


@pytest.mark.parametrize("backend", ["sklearn", "hdbscan"])
def test_hdbscan_path_with_3d_smoothing_and_sub_sampling(backend):
    pytest.importorskip("sklearn.cluster" if backend == "sklearn" else "hdbscan")
    feats, points, ids = scene(S=2, H=40, W=40, objects=3)
    n = ids.numel()
    full = build_clusterer({"name": "hdbscan", "preset": "medium", "min_cluster_size": 40, "min_samples": 10,
                            "max_points": None, "backend": backend})(feats, points)
    assert same_partition(full.ids, ids) and (full.ids > 0).all()
    assert full.scores.shape == (4,) and ((full.scores > 0) & (full.scores <= 1)).all()
    sub = HDBSCANClusterer(preset="medium", min_cluster_size=40, min_samples=10, max_points=n // 4,
                           backend=backend)(feats, points)
    assert same_partition(sub.ids, ids) and (sub.ids > 0).all()


def test_hdbscan_all_noise_gives_id_zero_everywhere():
    pytest.importorskip("sklearn.cluster")
    feats = F.normalize(torch.randn(1, 8, 6, 6), dim=1)
    out = HDBSCANClusterer(min_cluster_size=500, min_samples=5, max_points=None)(feats)
    assert out.num_instances == 0 and (out.ids == 0).all()


def test_hdbscan_backend_auto_prefers_the_hdbscan_package():
    # scikit-learn's epsilon merge breaks under NumPy >= 2.4, the hdbscan package's does not
    pytest.importorskip("hdbscan")
    assert HDBSCANClusterer().backend == "hdbscan"
    with pytest.raises(ValueError, match="backend must be 'auto', 'sklearn' or 'hdbscan'"):
        HDBSCANClusterer(backend="cuml")
