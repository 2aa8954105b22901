"""Instance features -> instance masks whose ids agree across views, with a confidence per instance.

Every clusterer takes one scene: ``features`` [S,D,H,W] (raw instance-head output; clusterers L2-normalise
it), optionally ``points`` [S,H,W,3] (world points, used by 3D smoothing) and ``confidence`` [S,H,W]. It
returns a :class:`Clustering`: ``ids`` int64 [S,H,W] with ids 1..K shared by all views (0 only where a
pixel was left out: ``confidence`` below ``min_confidence``, or every pixel was noise), and ``scores``
[K] in [0,1] (index k-1 is instance k's score).

* :class:`TorchClusterer` (default, no extra dependency, CPU or GPU): greedy density-peak clustering of a
  pixel sub-sample in feature space, refined by a few spherical k-means steps, then every pixel takes
  its nearest centre. ``granularity`` is the feature distance (chord on the unit sphere, 0..2) within
  which pixels form one instance: smaller = finer masks. The contrastive loss pushes different
  instances at least its margin (1.0) apart, so values around half of it separate trained features.
* :class:`HDBSCANClusterer` (the official pipeline): kNN-average the normalised features over each
  pixel's k nearest 3D neighbours (all views jointly), HDBSCAN with the official presets, noise pixels
  take their nearest labelled pixel's label in feature space. Needs scikit-learn (or ``hdbscan``) and
  scipy. ``max_points=None`` reproduces the official run on every pixel (slow); by default a random
  sub-sample is clustered (``min_cluster_size``/``min_samples`` scaled by the sampling fraction) and
  every pixel is then labelled from its nearest sample in feature space.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass

import numpy as np

import torch
import torch.nn.functional as F

CLUSTERERS: dict[str, type] = {}


def register_clusterer(name: str):
    def decorate(cls: type) -> type:
        CLUSTERERS[name] = cls
        cls.name = name
        return cls

    return decorate


def build_clusterer(spec: "str | dict | Clusterer | None" = None) -> "Clusterer":
    """``"torch"``, ``"hdbscan"``, ``{"name": "hdbscan", "preset": "medium"}`` or a Clusterer."""
    if spec is None:
        spec = "torch"
    if isinstance(spec, Clusterer):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", "torch")
    if name not in CLUSTERERS:
        raise ValueError(f"unknown clusterer {name!r}; expected one of {sorted(CLUSTERERS)}")
    return CLUSTERERS[name](**spec)


@dataclass
class Clustering:
    ids: torch.Tensor      # int64 [S,H,W], 0 = no instance
    scores: torch.Tensor   # float [K], score of instance k at index k-1

    @property
    def num_instances(self) -> int:
        return int(self.scores.numel())

    def masks(self) -> torch.Tensor:
        """bool [K,S,H,W], one multi-view mask per instance."""
        k = torch.arange(1, self.num_instances + 1, device=self.ids.device)
        return self.ids.unsqueeze(0) == k.view(-1, 1, 1, 1)


class Clusterer:
    """Interface: ``clusterer(features [S,D,H,W], points=None, confidence=None) -> Clustering``."""

    name = ""

    def __init__(self, min_confidence: float | None = None, seed: int = 0) -> None:
        self.min_confidence = min_confidence
        self.seed = seed

    def __call__(self, features: torch.Tensor, points: torch.Tensor | None = None,
                 confidence: torch.Tensor | None = None) -> Clustering:
        x, pts, keep, shape = self._flatten(features, points, confidence)
        ids = torch.zeros(shape, dtype=torch.long, device=features.device).flatten()
        if keep.sum() == 0:
            return Clustering(ids.view(shape), features.new_zeros(0))
        labels, scores = self.cluster(x[keep], None if pts is None else pts[keep])
        ids[keep] = labels.to(ids.device)
        return Clustering(ids.view(shape), scores.to(features.device, torch.float32))

    def cluster(self, x: torch.Tensor, points: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N,D] unit features (+ points [N,3]) -> labels [N] in 0..K (0 = none), scores [K]."""
        raise NotImplementedError

    def _flatten(self, features, points, confidence):
        if not isinstance(features, torch.Tensor) or features.ndim != 4:
            raise ValueError(f"features must be a tensor [S,D,H,W] (one scene); got "
                             f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
        S, D, H, W = features.shape
        if S == 0 or H * W == 0:
            raise ValueError(f"features have no pixels (shape {tuple(features.shape)})")
        x = features.detach().float().permute(0, 2, 3, 1).reshape(-1, D)
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).any(1).sum())
            raise ValueError(f"features contain NaN/inf at {bad} of {x.shape[0]} pixels; the instance head "
                             "diverged or the input was corrupt")
        x = F.normalize(x, dim=-1)
        pts = None
        if points is not None:
            if tuple(points.shape) != (S, H, W, 3):
                raise ValueError(f"points must have shape [S,H,W,3] = {(S, H, W, 3)}; got {tuple(points.shape)}")
            pts = points.detach().float().reshape(-1, 3)
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if confidence is not None:
            if tuple(confidence.shape) != (S, H, W):
                raise ValueError(f"confidence must have shape [S,H,W] = {(S, H, W)}; got {tuple(confidence.shape)}")
            if self.min_confidence is not None:
                keep = confidence.detach().reshape(-1).to(x.device) >= self.min_confidence
        if pts is not None:
            finite = torch.isfinite(pts).all(1)
            keep &= finite
            pts = torch.where(finite[:, None], pts, torch.zeros_like(pts))
        return x, pts, keep, (S, H, W)


def _sample(n: int, max_points: int | None, seed: int, device) -> torch.Tensor:
    if max_points is None or n <= max_points:
        return torch.arange(n, device=device)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:max_points].sort().values.to(device)


def nearest_centre(x: torch.Tensor, centres: torch.Tensor, chunk: int = 262144) -> tuple[torch.Tensor, torch.Tensor]:
    """For unit vectors x [N,D] and centres [K,D]: (index of the nearest centre, distances [N,2] to the
    nearest and the second nearest; the second is 2 = the sphere's diameter when K == 1)."""
    idx, dist = [], []
    for i in range(0, x.shape[0], chunk):
        d = torch.cdist(x[i:i + chunk], centres)
        if centres.shape[0] > 1:
            v, j = d.topk(2, dim=1, largest=False)
        else:
            v, j = torch.cat([d, torch.full_like(d, 2.0)], 1), torch.zeros_like(d, dtype=torch.long)
        idx.append(j[:, 0])
        dist.append(v)
    return torch.cat(idx), torch.cat(dist)


@register_clusterer("torch")
class TorchClusterer(Clusterer):
    """Density-peak + spherical k-means clustering in torch (see the module docstring).

    Args:
        granularity: feature distance within which pixels join one instance (smaller = finer). Presets:
            ``"small"`` 0.35, ``"medium"`` 0.5, ``"large"`` 0.7.
        min_size: smallest instance as a fraction of the clustered pixels; smaller groups join their
            nearest instance.
        max_points: pixels sub-sampled to find the centres (all pixels are labelled at the end).
        kmeans_iters: refinement steps of the centres.
        min_confidence: pixels whose confidence is below it get id 0 (only when a confidence is given).
        score_scale: feature distance that counts as fully separated (the contrastive loss margin, 1.0).
    Scores: mean over an instance's pixels of the assignment margin ``clamp((d2 - d1) / score_scale, 0, 1)``
    (d1, d2 = distances to the nearest and second nearest centre): compact instances far from any other
    score near 1, instances that blur into a neighbour near 0.
    """

    PRESETS = {"small": 0.35, "medium": 0.5, "large": 0.7}

    def __init__(self, granularity: float | str = "medium", min_size: float = 0.002, max_points: int = 8192,
                 kmeans_iters: int = 5, score_scale: float = 1.0, min_confidence: float | None = None,
                 seed: int = 0) -> None:
        super().__init__(min_confidence, seed)
        if isinstance(granularity, str):
            if granularity not in self.PRESETS:
                raise ValueError(f"unknown granularity preset {granularity!r}; expected one of "
                                 f"{sorted(self.PRESETS)} or a distance in (0, 2)")
            granularity = self.PRESETS[granularity]
        if not 0 < granularity < 2:
            raise ValueError(f"granularity must be a feature distance in (0, 2); got {granularity}")
        if not 0 <= min_size < 1:
            raise ValueError(f"min_size is a fraction of the pixels in [0, 1); got {min_size}")
        self.granularity, self.min_size = float(granularity), float(min_size)
        self.max_points, self.kmeans_iters = int(max_points), int(kmeans_iters)
        self.score_scale = float(score_scale)

    def find_centres(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        min_count = max(1, math.ceil(self.min_size * n))
        # [n,n] 1.0 where two points lie within the granularity, else 0.0 (n <= max_points). Float, not bool: torch
        # sums float rows several times faster, and the counts (< 2^24) are exact in float32.
        near = torch.cdist(x, x).lt_(self.granularity)
        density = near.sum(1)
        remaining = torch.ones(n, dtype=torch.bool, device=x.device)
        centres = []
        while True:
            dens = torch.where(remaining, density, density.new_full((), -1))
            i = int(dens.argmax())
            if int(dens[i]) < min_count:
                break
            members = near[i].bool() & remaining
            centres.append(F.normalize(x[members].mean(0), dim=0))
            remaining &= ~members
            density -= near[members].sum(0)                  # density among the points still unassigned (near is symmetric)
        if not centres:  # no group reaches min_count: one instance
            return F.normalize(x.mean(0, keepdim=True), dim=-1)
        c = torch.stack(centres)
        for _ in range(self.kmeans_iters):
            idx, _ = nearest_centre(x, c)
            counts = torch.bincount(idx, minlength=c.shape[0])
            sums = torch.zeros_like(c).index_add_(0, idx, x)
            alive = counts >= min_count
            if not alive.any():
                break
            c = F.normalize(sums[alive], dim=-1)
        return self._merge(c)

    def _merge(self, c: torch.Tensor) -> torch.Tensor:
        """Union centres that drifted within the granularity of each other."""
        k = c.shape[0]
        parent = list(range(k))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        close = (torch.cdist(c, c) < self.granularity).nonzero().tolist()
        for i, j in close:
            if i < j:
                parent[root(j)] = root(i)
        roots = sorted({root(i) for i in range(k)})
        if len(roots) == k:
            return c
        groups = torch.tensor([roots.index(root(i)) for i in range(k)], device=c.device)
        return F.normalize(torch.zeros(len(roots), c.shape[1], device=c.device).index_add_(0, groups, c), dim=-1)

    def cluster(self, x, points):
        sample = _sample(x.shape[0], self.max_points, self.seed, x.device)
        centres = self.find_centres(x[sample])
        idx, dist = nearest_centre(x, centres)
        margin = ((dist[:, 1] - dist[:, 0]) / self.score_scale).clamp(0, 1)
        counts = torch.bincount(idx, minlength=centres.shape[0])
        used = counts > 0
        remap = torch.cumsum(used.long(), 0)                  # 1..K for used centres
        scores = torch.zeros(centres.shape[0], device=x.device).index_add_(0, idx, margin)
        scores = scores[used] / counts[used]
        return remap[idx], scores


@register_clusterer("hdbscan")
class HDBSCANClusterer(Clusterer):
    """The official clustering: 3D kNN feature smoothing + HDBSCAN + nearest-labelled fill of noise.

    Args:
        preset: official constants ``"small"`` (eps 0.005, min_samples 50), ``"medium"`` (eps 0.01) or
            ``"large"`` (eps 0.06; the demo's active one); min_samples 100 and min_cluster_size 500
            otherwise, knn_k 20. Explicit arguments override the preset.
        max_points: pixels clustered (random sub-sample); None = every pixel, as the official demo.
        fill_refs_per_instance: labelled samples per instance that unsampled pixels are matched against.
        backend: ``"hdbscan"`` (the hdbscan package), ``"sklearn"`` (sklearn.cluster.HDBSCAN) or ``"auto"``
            (the hdbscan package when installed). scikit-learn's epsilon merge fails under NumPy >= 2.4
            (scikit-learn issue 33219); it then clusters without the merge and warns.
    Scores: mean HDBSCAN membership probability of the instance's clustered pixels.
    """

    PRESETS = {"small": dict(eps=0.005, min_samples=50, min_cluster_size=500, knn_k=20),
               "medium": dict(eps=0.01, min_samples=100, min_cluster_size=500, knn_k=20),
               "large": dict(eps=0.06, min_samples=100, min_cluster_size=500, knn_k=20)}

    def __init__(self, preset: str = "large", eps: float | None = None, min_samples: int | None = None,
                 min_cluster_size: int | None = None, knn_k: int | None = None, max_points: int | None = 20000,
                 fill_refs_per_instance: int = 64, backend: str = "auto", min_confidence: float | None = None,
                 seed: int = 0) -> None:
        super().__init__(min_confidence, seed)
        if preset not in self.PRESETS:
            raise ValueError(f"unknown HDBSCAN preset {preset!r}; expected one of {sorted(self.PRESETS)}")
        p = dict(self.PRESETS[preset])
        for k, v in dict(eps=eps, min_samples=min_samples, min_cluster_size=min_cluster_size, knn_k=knn_k).items():
            if v is not None:
                p[k] = v
        self.eps, self.min_samples, self.min_cluster_size, self.knn_k = \
            float(p["eps"]), int(p["min_samples"]), int(p["min_cluster_size"]), int(p["knn_k"])
        if backend not in ("auto", "sklearn", "hdbscan"):
            raise ValueError(f"backend must be 'auto', 'sklearn' or 'hdbscan'; got {backend!r}")
        if backend == "auto":
            backend = "hdbscan" if importlib.util.find_spec("hdbscan") is not None else "sklearn"
        self.max_points, self.backend = max_points, backend
        self.fill_refs_per_instance = int(fill_refs_per_instance)

    def _hdbscan(self, x, min_samples: int, min_cluster_size: int):
        try:
            if self.backend == "sklearn":
                from sklearn.cluster import HDBSCAN
            else:
                from hdbscan import HDBSCAN
        except ImportError as err:
            raise ImportError(f"the HDBSCAN clusterer needs {'scikit-learn>=1.3' if self.backend == 'sklearn' else 'hdbscan'}"
                              " (pip install 'iggt-lightning[clustering]'); the default 'torch' clusterer needs "
                              "nothing") from err
        def fit(eps: float):
            h = HDBSCAN(min_cluster_size=max(2, min_cluster_size), min_samples=max(1, min_samples),
                        cluster_selection_epsilon=eps, allow_single_cluster=False,
                        **({"copy": True} if self.backend == "sklearn" else {}))
            return h.fit(np.asarray(x, dtype=np.float64))

        try:
            h = fit(self.eps)
        except TypeError as err:  # scikit-learn 1.9's epsilon search fails on some cluster trees
            warnings.warn(f"HDBSCAN with cluster_selection_epsilon={self.eps} failed inside scikit-learn ({err}); "
                          "clustered without the epsilon merge (backend='hdbscan' avoids this)", RuntimeWarning)
            h = fit(0.0)
        return h.labels_, h.probabilities_

    def smooth(self, x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Mean feature of each point's knn_k nearest 3D neighbours (itself excluded; all views jointly)."""
        from scipy.spatial import cKDTree

        k = min(self.knn_k, x.shape[0] - 1)
        if k < 1:
            return x
        p = points.cpu().double().numpy()
        _, nb = cKDTree(p).query(p, k=k + 1, workers=-1)
        nb = torch.from_numpy(nb[:, 1:]).to(x.device)
        return x[nb].mean(1)  # not re-normalised, as the official code

    def cluster(self, x, points):
        import numpy as np

        n = x.shape[0]
        sample = _sample(n, self.max_points, self.seed, x.device)
        frac = sample.numel() / n
        xs = x[sample]
        if points is not None:
            xs = self.smooth(xs, points[sample])
        labels, prob = self._hdbscan(xs.cpu().numpy(), round(self.min_samples * frac),
                                     round(self.min_cluster_size * frac))
        labels = torch.from_numpy(np.asarray(labels)).long()
        prob = torch.from_numpy(np.asarray(prob, dtype=np.float32))
        labelled = labels >= 0
        if not labelled.any():  # all noise: the official code gives every pixel label 0
            return torch.zeros(n, dtype=torch.long, device=x.device), torch.zeros(0)
        k = int(labels.max()) + 1
        scores = torch.zeros(k).index_add_(0, labels[labelled], prob[labelled]) / \
            torch.bincount(labels[labelled], minlength=k).clamp(min=1)
        # noise samples take the label of their nearest labelled sample in feature space (as the official
        # code); unsampled pixels, by their own unsmoothed feature, that of their nearest among up to
        # `fill_refs_per_instance` random labelled samples of each instance (exact nearest-sample search
        # over a million pixels would dominate the run time)
        ref = xs[labelled.to(xs.device)]
        ref_labels = labels[labelled].to(x.device)
        sampled_labels = labels.to(x.device).clone()
        noise = ~labelled.to(x.device)
        if noise.any():
            sampled_labels[noise] = ref_labels[_nn_index(xs[noise], ref)]
        if frac == 1.0:
            out = sampled_labels
        else:
            g = torch.Generator().manual_seed(self.seed + 1)
            perm = torch.randperm(ref.shape[0], generator=g).to(x.device)
            lab, order = ref_labels[perm].sort(stable=True)
            rank = torch.arange(lab.numel(), device=x.device) - torch.searchsorted(lab, lab)
            pick = perm[order[rank < self.fill_refs_per_instance]]
            out = ref_labels[pick][_nn_index(x, ref[pick])]
            out[sample] = sampled_labels
        used = torch.bincount(out, minlength=k) > 0
        remap = torch.cumsum(used.long(), 0)
        return remap[out], scores[used.cpu()]


def _nn_index(q: torch.Tensor, ref: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index into ref of each query's nearest neighbour (Euclidean). On CPU a k-d tree (scipy, which this
    clusterer needs anyway): instance features are clustered, so it visits few leaves and is several times
    faster than the dense products over millions of pixels; elsewhere chunked matrix products."""
    if q.device.type == "cpu":
        from scipy.spatial import cKDTree

        _, idx = cKDTree(ref.double().numpy()).query(q.double().numpy(), k=1, workers=-1)
        return torch.from_numpy(np.asarray(idx, dtype=np.int64))
    r2 = (ref * ref).sum(1)
    return torch.cat([(r2 - 2 * q[i:i + chunk] @ ref.T).argmin(1) for i in range(0, q.shape[0], chunk)])
