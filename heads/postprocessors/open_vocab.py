"""Open-vocabulary labels for instances (a post-processor): pool a vision-language encoder's features inside
each multi-view instance mask from ``tracking`` and name it by cosine similarity to class prompts.

Args: ``class_names`` (the vocabulary), ``encoder`` (``colour`` or ``{name: open_clip, model: ViT-B-32,
checkpoint: /path/open_clip.bin}``, see ``iggt_lightning.inference.encoders``), ``templates`` (prompt
templates, embeddings averaged), ``stages`` (default test and predict), ``min_pixels`` (an instance's view
mask smaller than this is not used for crops), ``voxel_size`` (3D mIoU), ``aliases`` (ground-truth name ->
vocabulary entry, e.g. ScanNet's ``refridgerator`` -> ``refrigerator``).

Outputs: ``instance_labels`` and ``instance_label_scores`` (per scene, [K]: class index and cosine score of
instance k at k-1; -1 / 0 for an instance with no pixels), ``semantic_maps`` [B,S,H,W] (class index per
pixel, -1 = none). Dense encoders: features averaged over the instance's pixels in all views. Crop
encoders: one crop per view (the mask's box, 10 % margin, pixels outside the mask grey), embeddings averaged.

Ground truth for the metrics: the batch's ``class_names`` (per scene, ``class_names[i]`` names instance id
i + 1); an object takes the vocabulary entry equal to its name, else the entry whose words all occur in its
name (``red`` for ``red box``); other pixels are not scored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from iggt_lightning.inference.encoders import build_encoder
from iggt_lightning.metrics.open_vocab import OpenVocabMetrics
from iggt_lightning.postprocessor import PostProcessor
from iggt_lightning.registry import register_postprocessor


@register_postprocessor("open_vocab")
class OpenVocabLabels(PostProcessor):
    requires = ("tracking",)
    outputs = ("instance_labels", "instance_label_scores", "semantic_maps")

    def __init__(self, class_names: list[str] | None = None, encoder: str | dict = "colour",
                 templates: tuple[str, ...] = ("{}", "a photo of a {}."), stages: tuple[str, ...] = ("test", "predict"),
                 min_pixels: int = 16, voxel_size: float = 0.05, aliases: dict[str, str] | None = None) -> None:
        super().__init__(stages)
        if not class_names:
            raise ValueError("open_vocab needs a non-empty list of class_names (the vocabulary)")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"open_vocab class_names contain duplicates: {class_names}")
        self.class_names, self.templates = list(class_names), tuple(templates)
        self.encoder = build_encoder(encoder)
        self.min_pixels, self.voxel_size = int(min_pixels), float(voxel_size)
        self.aliases = dict(aliases or {})
        unknown = sorted(set(self.aliases.values()) - set(self.class_names))
        if unknown:
            raise ValueError(f"open_vocab aliases map to {unknown}, which are not among class_names")
        self._text: torch.Tensor | None = None

    def text_embeddings(self) -> torch.Tensor:
        if self._text is None:
            per_template = [self.encoder.encode_text([t.format(c) for c in self.class_names]) for t in self.templates]
            self._text = F.normalize(torch.stack(per_template).mean(0), dim=-1)
        return self._text

    def pool(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """images [S,3,H,W], masks bool [K,S,H,W] -> [K,E] unit embeddings (zero for empty masks)."""
        K, S, H, W = masks.shape
        if self.encoder.dense:
            dense = self.encoder.encode_dense(images)
            dense = F.interpolate(dense.float(), size=(H, W), mode="bilinear", align_corners=False)  # [S,E,H,W]
            m = masks.float()
            summed = torch.einsum("ksHW,seHW->ke", m, dense.to(m.device))
            return F.normalize(summed / m.sum((1, 2, 3)).clamp(min=1)[:, None], dim=-1)
        out = []
        for k in range(K):
            crops = []
            for s in range(S):
                m = masks[k, s]
                if int(m.sum()) < self.min_pixels:
                    continue
                ys, xs = torch.nonzero(m, as_tuple=True)
                y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
                py, px = max(1, (y1 - y0) // 10), max(1, (x1 - x0) // 10)
                y0, y1, x0, x1 = max(0, y0 - py), min(H, y1 + py), max(0, x0 - px), min(W, x1 + px)
                crop = torch.where(m[None, y0:y1, x0:x1], images[s, :, y0:y1, x0:x1], torch.full_like(images[s, :, y0:y1, x0:x1], 0.5))
                crops.append(F.interpolate(crop[None].float(), size=(64, 64), mode="bilinear", align_corners=False)[0])
            if crops:
                out.append(F.normalize(self.encoder.encode_crops(torch.stack(crops)).mean(0), dim=-1))
            else:
                out.append(torch.zeros(self.text_embeddings().shape[1]))
        return torch.stack(out) if out else torch.zeros(0, self.text_embeddings().shape[1])

    def process(self, outputs: dict, images: torch.Tensor) -> dict:
        if "instance_masks" not in outputs:
            return {}
        text = self.text_embeddings()
        labels, scores, maps = [], [], []
        for b, (ids, inst_scores) in enumerate(zip(outputs["instance_masks"], outputs["instance_scores"])):
            K = inst_scores.numel()
            masks = ids.unsqueeze(0) == torch.arange(1, K + 1, device=ids.device).view(-1, 1, 1, 1)
            emb = self.pool(images[b].detach(), masks)
            sim = emb @ text.T.to(emb.device)                                  # [K,C]
            score, label = sim.max(1) if K else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
            empty = emb.abs().sum(1) == 0
            label = torch.where(empty, torch.full_like(label, -1), label)
            score = torch.where(empty, torch.zeros_like(score), score)
            lut = torch.cat([torch.tensor([-1], device=label.device), label])    # id 0 -> none
            labels.append(label)
            scores.append(score)
            maps.append(lut[ids])
        return {"instance_labels": labels, "instance_label_scores": scores, "semantic_maps": torch.stack(maps)}

    def describe(self, outputs: dict, scene) -> None:
        """Labels for ``scene.shared["instances"]`` (written into masks/instances.json by ``tracking``) and the
        manifest's ``labels`` (per instance, the class name or null)."""
        found = scene.shared.get("instances")
        if found is None or "instance_labels" not in outputs:
            return
        labels = outputs["instance_labels"][scene.index].tolist()
        found["labels"] = {"names": self.class_names, "labels": labels,
                           "scores": outputs["instance_label_scores"][scene.index].tolist()}
        scene.manifest["labels"] = [self.class_names[i] if i >= 0 else None for i in labels]

    # ------------------------------------------------------------------ metrics
    def build_metrics(self) -> dict:
        return {"open_vocab": OpenVocabMetrics(len(self.class_names), voxel_size=self.voxel_size)}

    def vocabulary_index(self, name: str) -> int:
        name = self.aliases.get(name, name)
        if name in self.class_names:
            return self.class_names.index(name)
        words = set(name.lower().split())
        hits = [i for i, c in enumerate(self.class_names) if set(c.lower().split()) <= words]
        return hits[0] if len(hits) == 1 else -1

    def target_maps(self, batch: dict) -> torch.Tensor:
        """[B,S,H,W] vocabulary index per pixel from instance ids and the per-scene ``class_names``."""
        out = torch.full_like(batch["instance_ids"], -1)
        for b, names in enumerate(batch["class_names"]):
            for i, name in enumerate(names):
                out[b][batch["instance_ids"][b] == i + 1] = self.vocabulary_index(name)
        return out

    def update_metrics(self, metrics: dict, outputs: dict, batch: dict) -> None:
        if "semantic_maps" not in outputs or "class_names" not in batch:
            return
        target = self.target_maps(batch)
        for b in range(target.shape[0]):
            metrics["open_vocab"].update(outputs["semantic_maps"][b], target[b], batch["world_points"][b])
