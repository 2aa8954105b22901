"""Point prompts -> one instance's mask in every view, from the instance features.

Clustering decides by itself what an instance is, and a user who sees two chairs merged can only try another
granularity. A prompt says it instead: one or more clicks (view, x, y), positive or negative, or a 3D point.
The prompted instance is every pixel, in every view, whose instance feature is closer to the positive clicks'
pooled feature than a threshold and closer to it than to any negative click's:

* a click's feature is the mean of the L2-normalised features in a 3 x 3 neighbourhood of its pixel (one pixel is
  noisy at object edges); a pixel's similarity to the prompt is its largest cosine similarity to a positive
  click's feature (so a second positive click adds the part of the object the first did not reach);
* the threshold is chosen per prompt by Otsu's rule on those similarities over every pixel (the
  split between "like the click" and the rest that best separates the two groups), never below
  ``min_similarity``; the chosen value is returned so that it can be stated;
* a 3D point prompt becomes a positive click at the pixel whose predicted 3D point is nearest to it;
* with the predicted points, the mask keeps only what is connected in 3D to a positive click (voxels of
  ``voxel_fraction`` of the median camera distance, 26-neighbours): features cannot tell identical copies apart,
  their places can.

Pixels are model-input pixels (x right, y down, centres at integer coordinates); :func:`photo_to_model` maps a
click on a photo. Pure tensors in, tensors out: the post-processor and ``iggt predict --prompts`` wrap it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


class PromptError(ValueError):
    """A prompt that cannot be used, named in one line (the field and what was expected)."""


@dataclass(frozen=True)
class Click:
    view: int
    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class Prompt:
    """One instance to find: ``clicks`` and/or ``point`` (a 3D point in the prediction's world frame)."""

    clicks: tuple[Click, ...] = ()
    point: tuple[float, float, float] | None = None
    name: str | None = None


@dataclass
class PromptResult:
    mask: torch.Tensor                 # bool [S,H,W]
    threshold: float                   # the similarity the mask keeps (Otsu, at least min_similarity)
    similarity: torch.Tensor           # float [S,H,W]: the largest similarity to a positive click
    clicks: list[Click] = field(default_factory=list)   # the clicks used (a 3D point's included)


def check_prompt(prompt: Prompt, views: int, size: tuple[int, int], where: str = "prompt") -> None:
    """``size`` (H, W). One :class:`PromptError` naming the field of the first problem."""
    H, W = size
    if not prompt.clicks and prompt.point is None:
        raise PromptError(f"{where}: no clicks and no 3D point; expected at least one positive click or a point")
    for i, c in enumerate(prompt.clicks):
        if not isinstance(c.view, int) or not 0 <= c.view < views:
            raise PromptError(f"{where}.clicks[{i}].view: {c.view!r} is not one of the {views} views")
        if not (0 <= c.x <= W - 1 and 0 <= c.y <= H - 1):
            raise PromptError(f"{where}.clicks[{i}]: ({c.x}, {c.y}) is outside the {W}x{H} image")
    if prompt.point is None and not any(c.positive for c in prompt.clicks):
        raise PromptError(f"{where}: only negative clicks; a negative click says what the instance is not, "
                          "give at least one positive click or a 3D point")


def _click_feature(f: torch.Tensor, c: Click) -> torch.Tensor:
    """Mean normalised feature of the 3 x 3 neighbourhood of a click (f: [S,H,W,D] normalised)."""
    S, H, W, _ = f.shape
    x, y = int(round(c.x)), int(round(c.y))
    patch = f[c.view, max(0, y - 1):min(H, y + 2), max(0, x - 1):min(W, x + 2)].reshape(-1, f.shape[-1])
    return F.normalize(patch.mean(0), dim=0)


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """The threshold maximising the between-class variance of ``values`` (Otsu 1979)."""
    v = values.flatten().float()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist = torch.histc(v, bins=bins, min=lo, max=hi).double()
    centres = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    centres = (centres[:-1] + centres[1:]) / 2
    w0 = hist.cumsum(0)
    w1 = hist.sum() - w0
    m0 = (hist * centres).cumsum(0) / w0.clamp(min=1)
    m1 = ((hist * centres).sum() - (hist * centres).cumsum(0)) / w1.clamp(min=1)
    between = w0 * w1 * (m0 - m1) ** 2
    k = int(between[:-1].argmax())
    return float((centres[k] + centres[k + 1]) / 2)


def nearest_pixel(points: torch.Tensor, xyz: tuple[float, float, float]) -> Click:
    """The pixel (any view) whose predicted 3D point [S,H,W,3] is nearest to ``xyz``, as a positive click."""
    d = (points.float() - torch.tensor(xyz, dtype=torch.float32)).norm(dim=-1)
    d = torch.where(torch.isfinite(d), d, torch.full_like(d, float("inf")))
    k = int(d.argmin())
    S, H, W = d.shape
    return Click(k // (H * W), float(k % W), float((k // W) % H), True)


def connected_to_clicks(mask: torch.Tensor, points: torch.Tensor, clicks: list[Click], voxel: float) -> torch.Tensor:
    """``mask`` [S,H,W] reduced to the pixels whose 3D points lie in voxels connected (26-neighbours) to a
    positive click's voxel."""
    from scipy.ndimage import label

    pts = points.float().numpy()
    sel = mask.numpy() & np.isfinite(pts).all(-1)
    if not sel.any():
        return mask
    cells = np.floor(pts[sel] / voxel).astype(np.int64)
    lo = cells.min(0)
    cells -= lo
    dims = cells.max(0) + 1
    if np.prod(dims) > 64_000_000:          # a degenerate spread of points: leave the mask as it is
        return mask
    grid = np.zeros(dims, bool)
    grid[tuple(cells.T)] = True
    labels, _ = label(grid, structure=np.ones((3, 3, 3)))
    wanted = set()
    for c in clicks:
        if c.positive:
            p = pts[c.view, int(round(c.y)), int(round(c.x))]
            if np.isfinite(p).all():
                q = np.floor(p / voxel).astype(np.int64) - lo
                if (q >= 0).all() and (q < dims).all() and labels[tuple(q)]:
                    wanted.add(int(labels[tuple(q)]))
    if not wanted:
        return mask
    keep = np.zeros_like(sel)
    keep[sel] = np.isin(labels[tuple(cells.T)], list(wanted))
    return torch.from_numpy(keep)


def prompt_mask(features: torch.Tensor, prompt: Prompt, points: torch.Tensor | None = None,
                min_similarity: float = 0.5, voxel_fraction: float | None = 0.02) -> PromptResult:
    """``features`` [S,D,H,W] (the instance head's ``part_feat`` of one scene), ``points`` [S,H,W,3] (a 3D point
    prompt needs them; with them the mask is also kept 3D-connected to the clicks, unless ``voxel_fraction`` is
    None) -> the prompted instance's mask in every view."""
    S, D, H, W = features.shape
    check_prompt(prompt, S, (H, W))
    clicks = list(prompt.clicks)
    if prompt.point is not None:
        if points is None:
            raise PromptError("prompt.point: a 3D point prompt needs the predicted points (the point head)")
        clicks.append(nearest_pixel(points, prompt.point))
    f = F.normalize(features.float().permute(0, 2, 3, 1), dim=-1)             # [S,H,W,D]
    positives = torch.stack([_click_feature(f, c) for c in clicks if c.positive])
    # like any positive click: an object whose parts look different is taken part by part as clicks add them
    similarity = (f @ positives.T).amax(-1)                                   # [S,H,W]
    threshold = max(otsu_threshold(similarity), min_similarity)
    mask = similarity >= threshold
    negatives = [_click_feature(f, c) for c in clicks if not c.positive]
    if negatives:
        closest_negative = (f @ torch.stack(negatives).T).amax(-1)
        mask &= similarity > closest_negative
    if points is not None and voxel_fraction is not None:
        finite = points[torch.isfinite(points).all(-1)].float()
        if len(finite):
            scale = float(finite.norm(dim=-1).median())      # the first camera sits at the origin
            mask = connected_to_clicks(mask, points, clicks, max(voxel_fraction * scale, 1e-9))
    for c in clicks:                       # a click is a statement about its own pixel
        mask[c.view, int(round(c.y)), int(round(c.x))] = bool(c.positive)
    return PromptResult(mask, threshold, similarity, clicks)


def photo_to_model(column: float, row: float, transform) -> tuple[float, float]:
    """A click on photo pixel (column, row) (the indices an image viewer shows) -> model-input pixel (x, y) with
    centres at integer coordinates, through the view's :class:`~iggt_lightning.inference.images.ViewTransform`
    (continuous coordinates: the photo pixel's centre is column + 0.5)."""
    (sx, sy), (ox, oy) = transform.scale, transform.offset
    return ((column + 0.5) * sx + ox - 0.5, (row + 0.5) * sy + oy - 0.5)


# ------------------------------------------------------------------------------------ iggt predict --prompts
PROMPT_KEYS = {"name", "clicks", "point"}
CLICK_KEYS = {"view", "x", "y", "positive"}


def read_prompts(path, view_names: list[str], transforms, photo_sizes: list[tuple[int, int]]) -> list[Prompt]:
    """A prompts file (JSON: ``{"prompts": [{"name": ..., "clicks": [{"view": <photo name or index>, "x": <column>,
    "y": <row>, "positive": true}], "point": [x, y, z]}]}``, clicks in photo pixels) -> prompts in model-input
    pixels. One :class:`PromptError` naming the file and the field of the first problem; nothing in the file is
    run or followed (it is data: names, numbers, booleans)."""
    import json
    from pathlib import Path

    where = str(path)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PromptError(f"{where}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict) or set(data) != {"prompts"} or not isinstance(data["prompts"], list) \
            or not data["prompts"]:
        raise PromptError(f"{where}: expected {{\"prompts\": [one or more prompts]}}")
    index = {n: i for i, n in enumerate(view_names)}

    def view_of(view):
        v = index.get(view) if isinstance(view, str) else view if type(view) is int else None
        if v is None or not 0 <= v < len(view_names):
            return None, (f"is not one of the views ({', '.join(view_names[:5])}"
                          f"{', ...' if len(view_names) > 5 else ''}, or an index 0..{len(view_names) - 1})")
        return v, None

    def to_model(v, x, y):
        W, H = photo_sizes[v]
        if not (0 <= x < W and 0 <= y < H):
            return None, f"is outside {view_names[v]} ({W}x{H} pixels)"
        return photo_to_model(x, y, transforms[v]), None

    return parse_prompts(data["prompts"], f"{where}: prompts", view_of, to_model)


def parse_prompts(entries: list, field: str, view_of, to_model) -> list[Prompt]:
    """Prompt objects (``name``, ``clicks`` [{view, x, y, positive}], ``point`` [x, y, z]) -> :class:`Prompt`
    in model-input pixels. ``view_of(view) -> (index, None)`` or ``(None, why)``; ``to_model(index, x, y) ->
    ((mx, my), None)`` or ``(None, why)``. One :class:`PromptError` naming ``field[i]...``."""
    import math

    if not isinstance(entries, list) or not entries:
        raise PromptError(f"{field}: expected a list of one or more prompts")
    out = []
    for p, entry in enumerate(entries):
        at = f"{field}[{p}]"
        if not isinstance(entry, dict) or set(entry) - PROMPT_KEYS:
            raise PromptError(f"{at}: expected an object with keys among {sorted(PROMPT_KEYS)}")
        name = entry.get("name")
        if name is not None and (not isinstance(name, str) or not name or len(name) > 200):
            raise PromptError(f"{at}.name: expected a non-empty string of at most 200 characters")
        clicks = []
        raw_clicks = entry.get("clicks") or []
        if not isinstance(raw_clicks, list):
            raise PromptError(f"{at}.clicks: expected a list of clicks")
        for c, click in enumerate(raw_clicks):
            cf = f"{at}.clicks[{c}]"
            if not isinstance(click, dict) or set(click) - CLICK_KEYS or not {"view", "x", "y"} <= set(click):
                raise PromptError(f"{cf}: expected an object with view, x, y (and positive)")
            v, why = view_of(click["view"])
            if v is None:
                raise PromptError(f"{cf}.view: {click['view']!r} {why}")
            x, y = click["x"], click["y"]
            if not all(isinstance(u, (int, float)) and not isinstance(u, bool) and math.isfinite(u) for u in (x, y)):
                raise PromptError(f"{cf}: x and y must be finite numbers (pixels)")
            model_xy, why = to_model(v, x, y)
            if model_xy is None:
                raise PromptError(f"{cf}: ({x}, {y}) {why}")
            positive = click.get("positive", True)
            if not isinstance(positive, bool):
                raise PromptError(f"{cf}.positive: expected true or false")
            clicks.append(Click(v, *model_xy, positive))
        point = entry.get("point")
        if point is not None:
            if not (isinstance(point, list) and len(point) == 3 and all(
                    isinstance(u, (int, float)) and not isinstance(u, bool) and math.isfinite(u) for u in point)):
                raise PromptError(f"{at}.point: expected [x, y, z], three finite numbers")
            point = tuple(float(u) for u in point)
        if not clicks and point is None:
            raise PromptError(f"{at}: no clicks and no point; expected at least one positive click or a point")
        if point is None and not any(c.positive for c in clicks):
            raise PromptError(f"{at}: only negative clicks; give at least one positive click or a point")
        out.append(Prompt(tuple(clicks), point, name))
    return out


def prompted_outputs(outputs: dict, prompts: list[Prompt], checkpoint: str = "the model") -> tuple[dict, dict]:
    """A scene's outputs (batch of one) with ``instance_masks`` / ``instance_scores`` replaced by the prompted
    instances, ids 1..P in the file's order (a pixel two prompts take goes to the one it is more similar to);
    returns them and the manifest's record of each prompt."""
    if "part_feat" not in outputs:
        raise PromptError(f"--prompts: {checkpoint} predicts no instance features (it has no instance head)")
    feats = outputs["part_feat"][0].detach().float().cpu()
    points = outputs.get("world_points")
    points = points[0].detach().float().cpu() if points is not None else None
    S, _, H, W = feats.shape
    best = torch.full((S, H, W), -float("inf"))
    ids = torch.zeros((S, H, W), dtype=torch.long)
    records, scores = [], []
    for k, prompt in enumerate(prompts, 1):
        r = prompt_mask(feats, prompt, points)
        take = r.mask & (r.similarity > best)
        ids[take], best[take] = k, r.similarity[take]
        scores.append(float(r.similarity[r.mask].mean()) if r.mask.any() else 0.0)
        records.append({"id": k, "name": prompt.name, "threshold": round(r.threshold, 4),
                        "clicks": [{"view": c.view, "x": round(c.x, 2), "y": round(c.y, 2), "positive": c.positive}
                                   for c in r.clicks],
                        "point": list(prompt.point) if prompt.point is not None else None})
    for rec in records:
        rec["pixels"] = int((ids == rec["id"]).sum())
    out = dict(outputs)
    out["instance_masks"] = ids[None].to(outputs["instance_masks"].device if "instance_masks" in outputs else "cpu")
    out["instance_scores"] = [torch.tensor(scores)]
    return out, {"prompts": records,
                 "clicks_in": "model-input pixels (x right, y down, centres at integer coordinates)"}
