"""Small composable layers shared by the backbone and the heads."""
from .attention import Attention, CrossAttention, attend, set_attention_backend
from .block import Block, LayerScale, Mlp
from .rope import RotaryPositionEmbedding2D, grid_positions

__all__ = ["Attention", "CrossAttention", "attend", "set_attention_backend", "Block", "LayerScale", "Mlp",
           "RotaryPositionEmbedding2D", "grid_positions"]
