"""The backbone: VGGT's alternating-attention aggregator over a conv or DINOv2 patch embedding."""
from .aggregator import Aggregator, BackboneOutput
from .patch_embed import ConvPatchEmbed, DinoV2

__all__ = ["Aggregator", "BackboneOutput", "ConvPatchEmbed", "DinoV2"]
