"""``point_prompts``: the instances a user points at, instead of the clustering's, as a post-processor a config
names, so that a dataset prediction (``iggt predict-dataset``) or ``module.run`` gives them too; ``iggt predict
--prompts FILE`` does the same for photos, with clicks in photo pixels and views by name
(:mod:`iggt_lightning.inference.prompts`, docs/evaluation.md#steering-instances-by-clicks-and-3d-boxes).

Configured in place of ``tracking`` (they produce the same outputs)::

    model:
      drop_postprocess: [tracking]
      postprocess:
        point_prompts:
          prompts:
            - {name: chair, clicks: [{view: 0, x: 120, y: 200}, {view: 0, x: 300, y: 210, positive: false}]}
            - {name: lamp, point: [0.4, -0.2, 2.1]}

Clicks are in model-input pixels of the view with that index (x right, y down, centres at integer coordinates);
a point is in the prediction's world frame. Every scene of the run gets the same prompts, ids 1..P in their
order; everything else (the scene's description, the masks files, the metrics) is ``tracking``'s.
"""
from __future__ import annotations

import torch

from iggt_lightning.inference.prompts import check_prompt, parse_prompts, prompted_outputs
from iggt_lightning.registry import register_postprocessor

from .tracking import InstanceTracking


@register_postprocessor("point_prompts")
class PromptedInstances(InstanceTracking):
    default = False         # only when a config names it (with its prompts)

    def __init__(self, prompts: list, stages: tuple[str, ...] = ("predict",), **tracking_options) -> None:
        super().__init__(stages=stages, **tracking_options)
        # the views and their sizes are the batch's: the ranges are checked when a batch comes (check_prompt)
        self.prompts = parse_prompts(prompts, "postprocess.point_prompts.prompts", lambda v: (
            (v, None) if type(v) is int and v >= 0 else (None, "is not a view index (an integer >= 0)")),
            lambda v, x, y: ((float(x), float(y)), None) if x >= 0 and y >= 0 else (None, "is not in the image"))

    def process(self, outputs: dict, images: torch.Tensor) -> dict:
        feats = outputs["part_feat"]
        S, H, W = feats.shape[1], feats.shape[-2], feats.shape[-1]
        masks, scores = [], []
        for b in range(feats.shape[0]):
            for i, prompt in enumerate(self.prompts):
                check_prompt(prompt, S, (H, W), f"postprocess.point_prompts.prompts[{i}]")
            one = {"part_feat": feats[b:b + 1]}
            if "world_points" in outputs:
                one["world_points"] = outputs["world_points"][b:b + 1]
            out, _ = prompted_outputs(one, self.prompts)
            masks.append(out["instance_masks"][0].to(feats.device))
            scores.append(out["instance_scores"][0].to(feats.device))
        return {"instance_masks": torch.stack(masks), "instance_scores": scores}
