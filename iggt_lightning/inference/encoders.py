"""Vision-language encoders for open-vocabulary labelling of instance masks.

An encoder turns class prompts into embeddings, and images into either **dense** per-pixel embeddings
(LSeg / OpenSeg style: ``encode_dense(images [S,3,H,W]) -> [S,E,h,w]``) or **per-crop** embeddings (CLIP
style: ``encode_crops(crops [N,3,h,w]) -> [N,E]``). Text and image embeddings live in one space and are
compared by cosine similarity. Weights are only ever read from local files: nothing is downloaded.

* :class:`OpenCLIPEncoder` (extra ``[clip]``): an open_clip model from a local checkpoint file.
* :class:`ColourEncoder`: deterministic and weight-free, for tests and the synthetic scenes: it embeds
  pixels by their colour and prompts by the colour word they contain (so it tells the synthetic scenes'
  colours apart, and nothing else).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

ENCODERS: dict[str, type] = {}


def register_encoder(name: str):
    def decorate(cls):
        ENCODERS[name] = cls
        return cls

    return decorate


def build_encoder(spec: "str | dict | VisionLanguageEncoder") -> "VisionLanguageEncoder":
    """``"colour"`` or ``{"name": "open_clip", "model": "ViT-B-32", "checkpoint": "/path/weights.bin"}``."""
    if isinstance(spec, VisionLanguageEncoder):
        return spec
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name not in ENCODERS:
        raise ValueError(f"unknown vision-language encoder {name!r}; expected one of {sorted(ENCODERS)}")
    return ENCODERS[name](**spec)


class VisionLanguageEncoder:
    """The protocol. ``dense`` says which image method the encoder implements."""

    dense: bool = True

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """[N] prompts -> [N,E] unit embeddings."""
        raise NotImplementedError

    def encode_dense(self, images: torch.Tensor) -> torch.Tensor:
        """[S,3,H,W] RGB in [0,1] -> [S,E,h,w] unit embeddings (any h, w; resampled by the caller)."""
        raise NotImplementedError

    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """[N,3,h,w] RGB crops in [0,1] (masked-out pixels grey) -> [N,E] unit embeddings."""
        raise NotImplementedError


@register_encoder("colour")
class ColourEncoder(VisionLanguageEncoder):
    """Embeds a pixel as a softmax over its similarity to the synthetic palette's colours, and a prompt as
    the one-hot of the first palette colour word it contains (an unknown word gets a uniform embedding).
    Pixels are compared by chromaticity and brightness, the palette's brightness taken at a typical shading
    (so a lit white and a black object stay apart)."""

    dense = True

    def __init__(self, temperature: float = 0.05, shading: float = 0.45) -> None:
        from iggt_lightning.data.synthetic import COLOURS

        self.names = list(COLOURS)
        self.palette = torch.tensor([COLOURS[n] for n in self.names], dtype=torch.float32)
        self.temperature = temperature
        self.shading = shading  # typical lit fraction of an object's albedo in the synthetic renders

    def _describe(self, rgb: torch.Tensor) -> torch.Tensor:
        s = rgb.sum(-1, keepdim=True).clamp(min=1e-3)
        return torch.cat([rgb / s, 0.5 * s / 3], -1)   # chromaticity + brightness

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        out = torch.full((len(prompts), len(self.names)), 1.0 / len(self.names))
        for i, p in enumerate(prompts):
            words = p.lower().replace(",", " ").split()
            hit = [j for j, n in enumerate(self.names) if n in words]
            if hit:
                out[i] = F.one_hot(torch.tensor(hit[0]), len(self.names)).float()
        return F.normalize(out, dim=-1)

    def encode_dense(self, images: torch.Tensor) -> torch.Tensor:
        x = self._describe(images.permute(0, 2, 3, 1).float())                  # [S,H,W,4]
        p = self._describe(self.shading * self.palette.to(x.device))            # [C,4]
        logits = -torch.cdist(x.reshape(-1, 4), p) / self.temperature
        emb = F.normalize(logits.softmax(-1), dim=-1)
        return emb.reshape(*x.shape[:3], -1).permute(0, 3, 1, 2)

    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encode_dense(crops).mean((2, 3)), dim=-1)


@register_encoder("open_clip")
class OpenCLIPEncoder(VisionLanguageEncoder):
    """CLIP from open_clip, per-crop embeddings, weights from a local file (``checkpoint``)."""

    dense = False

    def __init__(self, model: str = "ViT-B-32", checkpoint: str | None = None, device: str = "cpu") -> None:
        if not checkpoint or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"open_clip encoder: weights file {checkpoint!r} not found; download the "
                                    f"{model} weights once and pass their local path as `checkpoint` (nothing is "
                                    "downloaded at run time)")
        try:
            import open_clip
        except ImportError as err:
            raise ImportError("the open_clip encoder needs `pip install 'iggt-lightning[clip]'`") from err
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(model, pretrained=checkpoint,
                                                                               device=device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        self.device = device
        size = self.model.visual.image_size
        self.size = size if isinstance(size, tuple) else (size, size)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self.tokenizer(prompts).to(self.device)).float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(crops.float(), size=self.size, mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        return F.normalize(self.model.encode_image(((x - mean) / std).to(self.device)).float(), dim=-1).cpu()
