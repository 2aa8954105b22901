"""Training-free token merging for the aggregator's global attention (in the style of FastVGGT, arXiv 2509.02560).

A global block attends over the tokens of all S frames at once ([B, S*P, C]), which is quadratic in S. With
merging, the block's attention runs over a much smaller set:

1. **Partition.** Destination tokens are every token of the first (reference) frame, every frame's camera and
   register tokens, and in each other frame a ``1 - ratio`` share of its patch tokens: spread evenly over the
   patch grid (``select="grid"``) or drawn at random with a fixed seed (``"random"``); a ``salient`` share of
   them may instead be the frame's most distinctive patches (least similar to the frame's mean). The other
   patch tokens are sources.
2. **Merge.** Each source joins its most similar destination (cosine similarity of the normalised block inputs,
   ``similarity="tokens"``, or of the attention's keys, ``"keys"``), among the destinations that are patch
   tokens: camera and register tokens never absorb a source. A destination becomes the mean of itself and its
   sources. Similarities are computed between sources and destinations only, in chunks.
3. **Attend** over the merged tokens; a merged token keeps its destination's RoPE position. With ``proportional``
   (the default; ToMe's proportional attention) a merged token's attention logit as a key gets ``+ log(count)``,
   so it weighs as much as the tokens it holds: when those are identical, the result is exact.
4. **Unmerge.** Every token gets the attention output of the merged token it belongs to.

Only the attention is merged: LayerScale, the residual and the MLP stay per token. :class:`~.block.Block` and
:class:`~.attention.Attention` are used as they are; the aggregator chooses where merging applies.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from .block import Block

try:
    from torch.distributed.fsdp import FSDPModule as _FSDP
except ImportError:  # torch < 2.6 (or no distributed build)
    _FSDP = None

KINDS = ("exact", "merged")
SELECTIONS = ("grid", "random")
SIMILARITIES = ("tokens", "keys")
SCOPES = ("all", "frame")
# at most this many similarity entries (sources x destinations) are held at once
CHUNK_ELEMENTS = 1 << 22
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class GlobalAttention:
    """How the aggregator's global blocks attend: ``kind="exact"`` (all tokens) or ``"merged"`` (see module doc).

    ``ratio``: the share of each non-reference frame's patch tokens merged away, in [0, 1);
    ``start_block``: the first global block that merges (earlier ones are exact);
    ``select``: how the kept patch tokens are spread, ``"grid"`` or ``"random"`` (``seed``);
    ``salient``: the share of the kept patch tokens taken as the frame's most distinctive ones instead, in [0, 1];
    ``similarity``: what sources and destinations are matched on, ``"tokens"`` or ``"keys"``;
    ``scope``: where a source may go, ``"all"`` (any frame's destination patches) or ``"frame"`` (its own frame's
    and the reference frame's: cost linear in the number of frames);
    ``proportional``: weigh each merged key by the number of tokens it holds (else plain attention).
    """

    kind: str = "exact"
    ratio: float = 0.9
    start_block: int = 0
    select: str = "grid"
    salient: float = 0.0
    similarity: str = "tokens"
    scope: str = "all"
    proportional: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        """The spec this config is parsed from (``{"kind": "exact"}`` alone for the exact mode)."""
        return {"kind": "exact"} if self.kind == "exact" else asdict(self)

    def merges(self, block: int) -> bool:
        return self.kind == "merged" and block >= self.start_block


def parse_global_attention(spec: dict | GlobalAttention | None, depth: int | None = None,
                           field: str = "global_attention") -> GlobalAttention:
    """``{"kind": "exact"}`` (also None) or ``{"kind": "merged", "ratio": ..., ...}`` -> :class:`GlobalAttention`;
    any other kind, an unknown key or a value out of range is a ``ValueError`` naming the field."""
    if spec is None:
        return GlobalAttention()
    if isinstance(spec, GlobalAttention):
        spec = spec.to_dict()
    if not isinstance(spec, dict):
        raise ValueError(f"{field} must be a mapping such as {{'kind': 'exact'}} or {{'kind': 'merged', 'ratio': 0.9}}"
                         f"; got {spec!r}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{field}.kind must be one of {list(KINDS)}; got {kind!r}")
    allowed = ["kind"] if kind == "exact" else [f.name for f in fields(GlobalAttention)]
    unknown = sorted(set(spec) - set(allowed), key=str)
    if unknown:
        raise ValueError(f"{field}: unknown key(s) {unknown} for kind {kind!r}; expected keys: {allowed}")
    if kind == "exact":
        return GlobalAttention()
    out = GlobalAttention(**spec)

    def number(name: str, lo: float, hi: float, hi_open: bool, meaning: str) -> None:
        v = getattr(out, name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v \
            and (v < hi if hi_open else v <= hi)
        if not ok:
            raise ValueError(f"{field}.{name} must be a number in [{lo:g}, {hi:g}{')' if hi_open else ']'} "
                             f"({meaning}); got {v!r}")

    def integer(name: str, lo: int, hi: int | None, meaning: str) -> None:
        v = getattr(out, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v >= hi):
            rng = f">= {lo}" if hi is None else f"in [0, {hi - 1}]"
            raise ValueError(f"{field}.{name} must be an integer {rng} ({meaning}); got {v!r}")

    def choice(name: str, options: tuple) -> None:
        if getattr(out, name) not in options:
            raise ValueError(f"{field}.{name} must be one of {list(options)}; got {getattr(out, name)!r}")

    number("ratio", 0, 1, True, "the share of each non-reference frame's patch tokens merged away")
    integer("start_block", 0, depth, "the first global block that merges; the backbone has "
            f"{depth if depth is not None else '?'} blocks")
    choice("select", SELECTIONS)
    number("salient", 0, 1, False, "the share of the kept patch tokens chosen as the most distinctive ones")
    choice("similarity", SIMILARITIES)
    choice("scope", SCOPES)
    if not isinstance(out.proportional, bool):
        raise ValueError(f"{field}.proportional must be true or false; got {out.proportional!r}")
    integer("seed", 0, None, "the random selection's seed")
    return GlobalAttention(**{**asdict(out), "ratio": float(out.ratio), "salient": float(out.salient)})


@dataclass(frozen=True)
class Layout:
    """Where the tokens of a global block are: S frames of P tokens (``special`` camera/register tokens, then an
    h x w patch grid), frame-major."""

    frames: int
    tokens_per_frame: int
    special: int
    height: int
    width: int


@functools.lru_cache(maxsize=16)
def spread_indices(count: int, height: int, width: int, spreads: int = 1) -> torch.Tensor:
    """[spreads, count] raster indices of a ``height x width`` grid, each row ``count`` distinct cells spread
    evenly over the grid: the cells the R2 low-discrepancy sequence (Roberts 2018) visits first, each row on its
    own toroidal shift of the sequence (so frames keep different cells). Any prefix of a row is spread too.
    Cached: do not modify the result in place."""
    n = height * width
    k = torch.arange(8 * n, dtype=torch.float64)
    a1, a2 = 0.7548776662466927, 0.5698402909980532                    # 1/g, 1/g^2 with g^3 = g + 1
    shift = torch.arange(spreads, dtype=torch.float64)[:, None]
    y = torch.floor(((0.5 + shift * _GOLDEN + k * a1) % 1.0) * height).long().clamp_(max=height - 1)
    x = torch.floor(((0.5 + shift * _GOLDEN ** 2 + k * a2) % 1.0) * width).long().clamp_(max=width - 1)
    # the first step at which each cell is visited (cells never visited: after all others, in raster order)
    first = torch.full((spreads, n), 8 * n, dtype=torch.long) + torch.arange(n)
    first = first.scatter_reduce(1, y * width + x, k.long().expand(spreads, -1), reduce="amin")
    return first.argsort(dim=1)[:, :count]


class TokenMerge:
    """The merge of one global block's tokens: ``slot[b, i]`` is the merged token that token i belongs to;
    ``dst[b, m]`` the token merged token m sits at (its position); ``counts[b, m]`` how many tokens it holds."""

    def __init__(self, slot: torch.Tensor, dst: torch.Tensor, counts: torch.Tensor, merged: bool) -> None:
        self.slot, self.dst, self.counts = slot, dst, counts
        self.merged = merged  # whether any token was merged into another (else merge/unmerge are the identity)

    @property
    def size(self) -> int:
        return self.dst.shape[1]

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, M, C]: each merged token is the mean of the tokens it holds."""
        B, _, C = x.shape
        out = x.new_zeros(B, self.size, C).scatter_add_(1, self.slot[..., None].expand(-1, -1, C), x)
        return out / self.counts[..., None].to(x.dtype)

    def unmerge(self, x: torch.Tensor) -> torch.Tensor:
        """[B, M, C] -> [B, N, C]: every token gets its merged token's value."""
        return x.gather(1, self.slot[..., None].expand(-1, -1, x.shape[-1]))

    def positions(self, pos: torch.Tensor | None) -> torch.Tensor | None:
        """[B, N, 2] RoPE positions -> [B, M, 2]: a merged token keeps its destination's position."""
        if pos is None:
            return None
        return pos.expand(self.dst.shape[0], -1, -1).gather(1, self.dst[..., None].expand(-1, -1, pos.shape[-1]))


def _keys(attn, y: torch.Tensor) -> torch.Tensor:
    """The attention's keys of ``y`` (after its qk-norm, before RoPE), heads concatenated: [B, N, C]."""
    B, N, C = y.shape
    w, b = attn.qkv.weight[C:2 * C], (attn.qkv.bias[C:2 * C] if attn.qkv.bias is not None else None)
    k = F.linear(y, w, b).reshape(B, N, attn.num_heads, attn.head_dim)
    return attn.k_norm(k).reshape(B, N, C)


def match(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """[B, n, C] sources, [B, m, C] destinations, both L2-normalised -> [B, n] index of each source's most
    similar destination (cosine similarity), in chunks of sources so at most ``CHUNK_ELEMENTS`` are held."""
    B, n, _ = src.shape
    rows = max(1, CHUNK_ELEMENTS // max(1, B * dst.shape[1]))
    out = torch.empty(B, n, dtype=torch.long, device=src.device)
    dst_t = dst.transpose(1, 2)
    for i in range(0, n, rows):
        out[:, i:i + rows] = torch.bmm(src[:, i:i + rows], dst_t).argmax(dim=-1)
    return out


@torch.no_grad()
def plan_merge(feats: torch.Tensor, layout: Layout, cfg: GlobalAttention, block: int = 0) -> TokenMerge:
    """The merge of a global block whose (similarity) features are ``feats`` [B, S*P, C] (see module doc)."""
    B, N_all, _ = feats.shape
    S, P, K, h, w = layout.frames, layout.tokens_per_frame, layout.special, layout.height, layout.width
    n = P - K  # patches per frame
    if N_all != S * P or n != h * w:
        raise ValueError(f"token layout {layout} does not fit {N_all} tokens")
    device = feats.device
    feats = F.normalize(feats.float(), dim=-1)
    n_src = min(int(round(cfg.ratio * n)), n - 1) if S > 1 else 0
    n_keep = n - n_src
    # kept patches of frames 1..S-1, [B, S-1, n_keep] (frame-local patch indices)
    n_sal = min(int(round(cfg.salient * n_keep)), n_keep)
    n_spread = n_keep - n_sal
    if cfg.select == "grid":
        spread = spread_indices(n_spread, h, w, S - 1)
    else:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + block)
        spread = torch.rand(S - 1, n, generator=gen).argsort(dim=1)[:, :n_spread]
    keep = spread.to(device).unsqueeze(0).expand(B, -1, -1)
    if n_sal and S > 1:
        patches = feats.view(B, S, P, -1)[:, 1:, K:]                       # [B, S-1, n, C]
        mean = F.normalize(patches.mean(dim=2, keepdim=True), dim=-1)
        score = -(patches * mean).sum(-1)                                  # distinctive = far from the mean
        score = score.scatter(2, keep, float("-inf"))
        keep = torch.cat([keep, score.topk(n_sal, dim=2).indices], dim=2)
    is_dst = torch.zeros(B, S, P, dtype=torch.bool, device=device)
    is_dst[:, 0] = True
    is_dst[:, :, :K] = True
    if S > 1:
        is_dst[:, 1:, K:] = is_dst[:, 1:, K:].scatter(2, keep, True)
    is_dst = is_dst.view(B, N_all)
    # destinations in token order, then sources (a stable sort keeps the order: ratio 0 is the identity)
    order = torch.argsort((~is_dst).to(torch.int8), dim=1, stable=True)
    M = P + (S - 1) * (K + n_keep)
    dst, src = order[:, :M], order[:, M:]
    slot = torch.empty(B, N_all, dtype=torch.long, device=device)
    slot.scatter_(1, dst, torch.arange(M, device=device).expand(B, -1))
    if src.shape[1]:
        gather = lambda idx: feats.gather(1, idx.reshape(B, -1, 1).expand(-1, -1, feats.shape[-1])  # noqa: E731
                                          ).view(*idx.shape, -1)
        # the merged tokens that may absorb a source: patch tokens (never a camera or register token) of any frame
        # (scope "all") or of the source's own frame and the reference frame (scope "frame")
        patch_slot = torch.arange(P + K, P + K + n_keep)
        frame_patch_slots = (torch.arange(S - 1)[:, None] * (K + n_keep) + patch_slot).to(device)  # [S-1, n_keep]
        ref_slots = torch.arange(K, P, device=device)
        if cfg.scope == "all":
            targets = torch.cat([ref_slots, frame_patch_slots.reshape(-1)])                      # [T]
            slot.scatter_(1, src, targets[match(gather(src), gather(dst[:, targets]))])
        else:
            targets = torch.cat([ref_slots.expand(S - 1, -1), frame_patch_slots], dim=1)           # [S-1, T]
            src_f = src.reshape(B * (S - 1), n_src)
            best = match(gather(src_f), gather(dst[:, targets]).view(B * (S - 1), targets.shape[1], -1))
            slot.scatter_(1, src, targets.expand(B, -1, -1).reshape(B * (S - 1), -1).gather(1, best).view(B, -1))
    counts = torch.zeros(B, M, device=device).scatter_add_(1, slot, torch.ones(B, N_all, device=device))
    return TokenMerge(slot, dst, counts, bool(src.shape[1]))


def attention(attn, x: torch.Tensor, pos: torch.Tensor | None, key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``attn(x, pos=pos)`` (an :class:`~.attention.Attention`) with ``key_bias`` [B, N] added to every query's
    logit of each key; without it, exactly ``attn.forward``'s computation."""
    if key_bias is None:
        return attn(x, pos=pos)
    B, N, C = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.rope is not None and pos is not None:
        q, k = attn.rope(q, pos), attn.rope(k, pos)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias[:, None, None, :].to(q.dtype))
    return attn.proj(x.transpose(1, 2).reshape(B, N, C))


def merged_block(block: Block, x: torch.Tensor, pos: torch.Tensor | None, layout: Layout, cfg: GlobalAttention,
                 index: int = 0) -> torch.Tensor:
    """``block(x, pos)`` with its attention over merged tokens: ``x + ls1(unmerge(attn(merge(norm1(x)))))``,
    then the per-token MLP as in :class:`~.block.Block`."""
    if _FSDP and isinstance(block, _FSDP):
        # FSDP2 gathers a sharded block's parameters in the block's own forward, which this path goes around
        raise RuntimeError("global_attention kind 'merged' cannot run FSDP-sharded blocks; use kind 'exact' with "
                           "FSDP, or a single-device / DDP strategy with 'merged'")
    y = block.norm1(x)
    with torch.no_grad():
        feats = _keys(block.attn, y) if cfg.similarity == "keys" else y
    tm = plan_merge(feats, layout, cfg, index)
    bias = tm.counts.log() if cfg.proportional and tm.merged else None
    x = x + block.ls1(tm.unmerge(attention(block.attn, tm.merge(y), tm.positions(pos), bias)))
    return x + block.ls2(block.mlp(block.norm2(x)))
