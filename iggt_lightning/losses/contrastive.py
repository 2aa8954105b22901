"""Instance-embedding losses for the instance head's ``part_feat`` ``[B,S,D,H,W]``.

``instance_contrastive_loss`` is the paper's 3D-consistent contrastive loss (PAPER.md §2, Eq. 4);
``instance_mean_contrastive_loss`` is the per-instance-mean ("discriminative") variant of the community
reproduction (TRAINING-AND-DATA.md §5.1 "MVC"). Both return ``loss_contrastive`` (the weighted total),
``loss_pull`` and ``loss_push`` (the variant adds ``loss_cons``), so either can feed the training module.
Instance id 0 is background and is ignored by both; ids are consistent across the views of a scene.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F

from .options import NonNegative, Positive, Range, forwards_options

__all__ = ["contrastive_loss", "instance_contrastive_loss", "instance_mean_contrastive_loss"]


# ----------------------------------------------------------------------------- helpers
def _zero(features: torch.Tensor) -> torch.Tensor:
    """0 attached to the features' graph: a batch without pairs must still backprop (DDP needs every
    parameter of the instance head to get a gradient)."""
    return features.sum() * 0.0


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half precision -> fp32 (distances are compared with margins of ~1); fp32/fp64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _match_resolution(instance_ids: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Nearest-resize ``[B,S,h,w]`` ids to the feature resolution ``hw`` (a no-op when equal)."""
    if tuple(instance_ids.shape[-2:]) == tuple(hw):
        return instance_ids
    B, S = instance_ids.shape[:2]
    # float64 represents every id up to 2^53 exactly, so nearest resizing cannot merge ids
    ids = F.interpolate(instance_ids.reshape(B * S, 1, *instance_ids.shape[-2:]).double(), size=hw, mode="nearest")
    return ids.reshape(B, S, *hw).to(instance_ids.dtype)


def _pairwise_distance(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distances ``[...,N,M]`` between rows of ``a`` and ``b`` (default ``a``).

    The direct (non-matmul) ``cdist`` path: it is exact for identical rows (the ``|a|^2+|b|^2-2ab``
    shortcut leaves ~1e-4 of rounding there) and its backward is 0, not NaN, at distance 0.
    """
    return torch.cdist(a, a if b is None else b, compute_mode="donot_use_mm_for_euclid_dist")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, dims=None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` (over ``dims``, default all); 0 where the mask is empty."""
    mask = mask.to(values.dtype)
    if dims is None:
        return (values * mask).sum() / mask.sum().clamp_min(1.0)
    return (values * mask).sum(dims) / mask.sum(dims).clamp_min(1.0)


def _mean_or_zero(parts: list[torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """Mean of the collected values (scalars or 1-d tensors), or a graph-attached 0 when there are none."""
    values = [p.reshape(-1) for p in parts if p.numel()]
    if not values:
        return _zero(features)
    return torch.cat(values).mean()


# ----------------------------------------------------------------------------- paper loss (Eq. 4)
def _sample_scene(features: torch.Tensor, ids: torch.Tensor, num_samples: int,
                  generator: torch.Generator | None, balanced: bool = False):
    """Sample up to ``num_samples`` foreground pixels of one scene over **all** its views, uniformly, or with
    ``balanced`` each instance equally likely (pixel weight 1 / its instance's pixel count), so that small
    objects get pairs too when a large one (a room's walls) covers most of the image.

    ``features`` ``[S,D,H,W]``, ``ids`` ``[S,H,W]`` -> (features ``[N,D]``, ids ``[N]``, view index ``[N]``).
    Sampling over all views (rather than per view) is what lets positive pairs cross views.
    """
    S, D, H, W = features.shape
    candidates = torch.nonzero(ids.reshape(-1) != 0).squeeze(1)
    if candidates.numel() > num_samples:
        device = generator.device if generator is not None else candidates.device
        if balanced:
            cand_ids = ids.reshape(-1)[candidates]
            _, inverse, counts = torch.unique(cand_ids, return_inverse=True, return_counts=True)
            weights = (1.0 / counts.double())[inverse].to(device)
            pick = torch.multinomial(weights, num_samples, replacement=False, generator=generator)
        else:
            pick = torch.randperm(candidates.numel(), generator=generator, device=device)[:num_samples]
        candidates = candidates[pick.to(candidates.device)]
    view, pixel = candidates // (H * W), candidates % (H * W)
    sampled = features.reshape(S, D, H * W)[view, :, pixel]  # [N,D]
    return sampled, ids.reshape(-1)[candidates], view


def _scene_pair_terms(f: torch.Tensor, ids: torch.Tensor, view: torch.Tensor, margin: float, cross_view: bool):
    """Eq. 4 on one scene's sampled, L2-normalised features ``f`` ``[N,D]``, with ``d_ij = ||f_i - f_j||_2``::

        pull = mean_{i != j, m_i = m_j} d_ij
        push = mean_{m_i != m_j} max(0, M - d_ij)

    over ordered pairs; ``cross_view=False`` keeps only pairs from the same view. Returns (pull, push),
    each ``None`` when the scene has no such pair.
    """
    d = _pairwise_distance(f)
    n = f.shape[0]
    pair = ~torch.eye(n, dtype=torch.bool, device=f.device)
    if not cross_view:
        pair &= view[:, None] == view[None, :]
    same = ids[:, None] == ids[None, :]
    positives, negatives = same & pair, ~same & pair
    pull = _masked_mean(d, positives) if bool(positives.any()) else None
    push = _masked_mean(torch.relu(margin - d), negatives) if bool(negatives.any()) else None
    return pull, push


def instance_contrastive_loss(features: torch.Tensor, instance_ids: torch.Tensor,
                              num_samples: Annotated[int, Range(2)] = 4096, margin: Positive = 1.0,
                              lambda_pull: NonNegative = 2.0, lambda_push: NonNegative = 1.0,
                              cross_view: bool = True, balanced: bool = False,
                              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """IGGT's 3D-consistent contrastive loss (PAPER.md §2, Eq. 4)::

        L_mvc = lambda_pull * mean_{p_i,p_j in P, m(p_i) = m(p_j), i != j} d(f_i, f_j)
              + lambda_push * mean_{p_i,p_j in P, m(p_i) != m(p_j)} max(0, M - d(f_i, f_j))

    ``d`` = plain (unsquared) L2 distance between L2-normalised features, as the paper writes it; M = 1,
    lambda_pull = 2, lambda_push = 1 (appendix A.3, with its "lambda_pull = 1.0" typo read as lambda_push).
    Choices the paper leaves open (PAPER.md §8), made here:

    * ``P``: per scene, up to ``num_samples`` pixels with id != 0 drawn uniformly without replacement from
      all views together; ids are scene-global, so same-id pairs across views are the "3D-consistent" part.
      ``balanced=True`` draws each instance equally often instead (pixel weight 1 / instance size).
      ``cross_view=False`` (ablation) keeps only pairs inside one view.
    * means over ordered pairs instead of the paper's sums, so the scale does not grow with ``N^2``;
    * each term is then averaged over the scenes where it is defined (pull: >= 2 samples of one id; push:
      >= 2 distinct ids), so a single-instance scene contributes only to pull and an empty scene to nothing.

    ``features`` ``[B,S,D,H,W]`` (raw head output; normalised here over D), ``instance_ids`` ``[B,S,H,W]``
    int (nearest-resized to the features if needed). Returns ``loss_contrastive``, ``loss_pull``,
    ``loss_push``; terms without any pair are 0, attached to ``features``' graph.
    """
    B, S, D, H, W = features.shape
    instance_ids = _match_resolution(instance_ids, (H, W)).to(features.device)
    pulls, pushes = [], []
    for b in range(B):
        f, ids, view = _sample_scene(features[b], instance_ids[b], num_samples, generator, balanced)
        if f.shape[0] < 2:
            continue
        f = F.normalize(_at_least_fp32(f), dim=-1)
        pull, push = _scene_pair_terms(f, ids, view, margin, cross_view)
        if pull is not None:
            pulls.append(pull)
        if push is not None:
            pushes.append(push)
    loss_pull, loss_push = _mean_or_zero(pulls, features), _mean_or_zero(pushes, features)
    return {"loss_contrastive": lambda_pull * loss_pull + lambda_push * loss_push,
            "loss_pull": loss_pull, "loss_push": loss_push}


# ----------------------------------------------------------------------------- per-instance-mean variant
def _view_instance_means(features: torch.Tensor, ids: torch.Tensor):
    """Per (view, instance) statistics of one scene.

    ``features`` ``[S,D,H,W]``, ``ids`` ``[S,H,W]`` -> dict with ``fg`` (foreground pixel features
    ``[P,D]``), ``slot`` (their (view, instance) index ``s*K + k``, ``[P]``), ``counts`` ``[S*K]``,
    ``means`` ``[S,K,D]``, ``K``; or None when the scene has no foreground.
    """
    S, D = features.shape[:2]
    instances = torch.unique(ids)
    instances = instances[instances != 0]
    if instances.numel() == 0:
        return None
    K = instances.numel()
    view, pixel = torch.nonzero(ids.reshape(S, -1) != 0, as_tuple=True)
    fg = features.reshape(S, D, -1)[view, :, pixel]  # [P,D]
    slot = view * K + torch.searchsorted(instances, ids.reshape(S, -1)[view, pixel])
    counts = torch.bincount(slot, minlength=S * K).to(fg.dtype)
    sums = fg.new_zeros(S * K, D).index_add(0, slot, fg)
    means = sums / counts.clamp_min(1.0)[:, None]
    return {"fg": fg, "slot": slot, "counts": counts, "means": means.reshape(S, K, D), "K": K}


def _mean_pull(stats: dict, present: torch.Tensor, delta: float) -> torch.Tensor:
    """``P_{s,k} = mean_{p in k, view s} relu(||f_p - mu_{s,k}||_2 - delta)`` for the present (s,k)."""
    S, K, D = stats["means"].shape
    mu = stats["means"].reshape(S * K, D)[stats["slot"]]
    hinge = torch.relu(torch.linalg.vector_norm(stats["fg"] - mu, dim=-1) - delta)
    per_slot = hinge.new_zeros(S * K).index_add(0, stats["slot"], hinge) / stats["counts"].clamp_min(1.0)
    return per_slot[present.reshape(-1)]


def _mean_push(means: torch.Tensor, present: torch.Tensor, delta: float) -> torch.Tensor:
    """``Q_s = mean_{i != j} relu(delta - ||mu_{s,i} - mu_{s,j}||_2)`` for views with >= 2 present instances."""
    K = means.shape[1]
    pairs = present[:, :, None] & present[:, None, :] & ~torch.eye(K, dtype=torch.bool, device=means.device)
    q = _masked_mean(torch.relu(delta - _pairwise_distance(means)), pairs, dims=(1, 2))
    return q[pairs.any(dim=(1, 2))]


def _mean_consistency(means: torch.Tensor, present: torch.Tensor, delta: float) -> torch.Tensor:
    """``C_k = mean_{v != w} relu(||mu_{v,k} - mu_{w,k}||_2 - delta)`` for instances present in >= 2 views."""
    S = means.shape[0]
    by_instance, seen = means.transpose(0, 1), present.transpose(0, 1)  # [K,S,D], [K,S]
    pairs = seen[:, :, None] & seen[:, None, :] & ~torch.eye(S, dtype=torch.bool, device=means.device)
    c = _masked_mean(torch.relu(_pairwise_distance(by_instance) - delta), pairs, dims=(1, 2))
    return c[pairs.any(dim=(1, 2))]


def instance_mean_contrastive_loss(features: torch.Tensor, instance_ids: torch.Tensor,
                                   min_pixels: Annotated[int, Range(1)] = 16, delta_pull: NonNegative = 0.25,
                                   delta_push: Positive = 1.0, delta_cons: NonNegative = 0.5,
                                   lambda_pull: NonNegative = 2.0, lambda_push: NonNegative = 1.0,
                                   lambda_cons: NonNegative = 2.0, normalize: bool = False) -> dict[str, torch.Tensor]:
    """The reproduction's discriminative multi-view loss (TRAINING-AND-DATA.md §5.1 "MVC").

    With ``mu_{b,s,k}`` the mean feature of instance k != 0 in view s (only instances with >= ``min_pixels``
    pixels count), using **all** pixels (no sampling)::

        P_{b,s,k} = mean_{p in k} relu(||f_p - mu_{b,s,k}|| - delta_pull)            (pull to the mean)
        Q_{b,s}   = mean_{i != j} relu(delta_push - ||mu_{b,s,i} - mu_{b,s,j}||)     (push means apart, per view)
        C_{b,k}   = mean_{v != w} relu(||mu_{b,v,k} - mu_{b,w,k}|| - delta_cons)     (cross-view consistency)
        L = lambda_pull * mean_{b,s,k} P + lambda_push * mean_{b,s} Q + lambda_cons * mean_{b,k} C

    Plain L2 distances and unsquared hinges; Q over views with >= 2 instances, C over instances seen in
    >= 2 views. Like the reproduction, features are **raw** by default (``normalize=False``), although
    inference normalises them before clustering; ``normalize=True`` L2-normalises over D first.
    Returns ``loss_contrastive``, ``loss_pull``, ``loss_push``, ``loss_cons``.
    """
    B, S, D, H, W = features.shape
    instance_ids = _match_resolution(instance_ids, (H, W)).to(features.device)
    feats = _at_least_fp32(features)
    if normalize:
        feats = F.normalize(feats, dim=2)
    pulls, pushes, conss = [], [], []
    for b in range(B):
        stats = _view_instance_means(feats[b], instance_ids[b])
        if stats is None:
            continue
        present = (stats["counts"] >= min_pixels).reshape(S, stats["K"])
        pulls.append(_mean_pull(stats, present, delta_pull))
        pushes.append(_mean_push(stats["means"], present, delta_push))
        conss.append(_mean_consistency(stats["means"], present, delta_cons))
    loss_pull = _mean_or_zero(pulls, features)
    loss_push = _mean_or_zero(pushes, features)
    loss_cons = _mean_or_zero(conss, features)
    total = lambda_pull * loss_pull + lambda_push * loss_push + lambda_cons * loss_cons
    return {"loss_contrastive": total, "loss_pull": loss_pull, "loss_push": loss_push, "loss_cons": loss_cons}


VARIANTS = {"pairs": instance_contrastive_loss, "mean": instance_mean_contrastive_loss}


@forwards_options(VARIANTS, by="variant")
def contrastive_loss(features: torch.Tensor, instance_ids: torch.Tensor, variant: Literal["pairs", "mean"] = "pairs",
                     **options) -> dict[str, torch.Tensor]:
    """The instance head's ``contrastive`` term: the paper's pixel-pair loss (``pairs``) or the per-instance-mean
    one (``mean``); the other options go to the chosen function."""
    if variant not in VARIANTS:
        raise ValueError(f"loss_options.contrastive.variant must be one of {list(VARIANTS)}; got {variant!r}")
    return VARIANTS[variant](features, instance_ids, **options)
