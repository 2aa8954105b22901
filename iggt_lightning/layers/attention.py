"""Attention primitives shared by the backbone and the heads.

Every attention call goes through :func:`attend`, so one switch decides the kernel:
PyTorch SDPA everywhere, and xformers' memory-efficient kernel only when it is installed,
the tensors are on CUDA and its first call succeeded (it pins its own torch, so it is an
optional extra and may be broken in a given environment).
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .fast_conv import Linear

_BACKEND = os.environ.get("IGGT_ATTENTION", "auto")  # "auto" | "sdpa" | "xformers"
_XFORMERS: dict = {"tried": False, "ok": False, "op": None}


def set_attention_backend(name: str) -> None:
    """Choose the attention kernel: ``auto`` (xformers on CUDA if it works), ``sdpa`` or ``xformers``."""
    global _BACKEND
    if name not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"unknown attention backend {name!r}; expected 'auto', 'sdpa' or 'xformers'")
    _BACKEND = name


def _xformers_op():
    if not _XFORMERS["tried"]:
        _XFORMERS["tried"] = True
        try:
            from xformers.ops import memory_efficient_attention

            _XFORMERS["op"] = memory_efficient_attention
        except Exception:  # not installed or built for another torch
            _XFORMERS["op"] = None
    return _XFORMERS["op"]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention on ``[B, heads, N, D]`` tensors."""
    if q.is_cuda and _BACKEND != "sdpa":
        op = _xformers_op()
        if op is not None:
            try:
                out = op(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
                _XFORMERS["ok"] = True
                return out.transpose(1, 2)
            except Exception as err:  # a failing build disables xformers for the whole process
                if _BACKEND == "xformers":
                    raise
                warnings.warn(f"xformers attention failed ({err}); using torch SDPA from now on")
                _XFORMERS["op"] = None
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head qk LayerNorm and 2D RoPE.

    ``view_context``: None (the default: :func:`attend` over the tokens given), or, while views are split across
    processes, an object whose ``attend(q, k, v)`` attends the local queries over every process's keys and values
    (:mod:`iggt_lightning.context_parallel` sets it on the attention modules whose tokens span views).
    """

    view_context = None

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, proj_bias: bool = True,
                 qk_norm: bool = False, rope: nn.Module | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        x = attend(q, k, v) if self.view_context is None else self.view_context.attend(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class CrossAttention(nn.Module):
    """Multi-head cross-attention with separate q/k/v projections (the part head's fusion layer)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = Linear(dim, dim, bias=qkv_bias)
        self.projk = Linear(dim, dim, bias=qkv_bias)
        self.projv = Linear(dim, dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        B, Nq, C = query.shape
        h = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, t.shape[1], h, C // h).transpose(1, 2)

        x = attend(split(self.projq(query)), split(self.projk(key)), split(self.projv(value)))
        return self.proj(x.transpose(1, 2).reshape(B, Nq, C))
