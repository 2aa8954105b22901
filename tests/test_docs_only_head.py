"""A plugin head written only from the documentation (docs/writing-a-head.md, docs/checkpoints-are-data.md,
README.md, configs/finetune_new_head.yaml), and the whole user flow of the guide's "Fine-tuning a pretrained
model with your head": an official-format checkpoint, the head added by class path with the backbone frozen,
`iggt fit`, reloading the result (trust required), `iggt predict` writing the head's files, and its image hook.

The head predicts a per-pixel *surface roughness* in [0, 1]: how far a pixel's 3D point lies off the mean of
its four image neighbours, relative to their mean distance (0 on a regularly sampled plane, up to 1 at creases
and occlusion corners). It refines the roughness of the point head's map with the photo's colours.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchmetrics import Metric

from iggt_lightning.head import Head, HeadInput
from iggt_lightning.registry import register_head

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = str(ROOT / "configs" / "finetune_new_head.yaml")
CLASS_PATH = "tests.test_docs_only_head.RoughnessHead"


# --------------------------------------------------------------------------------------------- the head file

def roughness_from_points(points: torch.Tensor) -> torch.Tensor:
    """World points [..., H, W, 3] -> roughness [..., H, W] in [0, 1]: |p - mean(n_i)| / mean|p - n_i| over the
    4-neighbourhood (edges replicate; bounded by 1 by the triangle inequality). 0 where the points coincide."""
    lead, (H, W) = points.shape[:-3], points.shape[-3:-1]
    p = points.reshape(-1, H, W, 3).permute(0, 3, 1, 2)                     # [N, 3, H, W]
    q = F.pad(p, (1, 1, 1, 1), mode="replicate")
    neigh = torch.stack([q[..., :-2, 1:-1], q[..., 2:, 1:-1], q[..., 1:-1, :-2], q[..., 1:-1, 2:]], 0)
    lap = (p - neigh.mean(0)).norm(dim=1)                                   # [N, H, W]
    spread = (p.unsqueeze(0) - neigh).norm(dim=2).mean(0)
    rough = torch.where(spread > 1e-8, lap / spread.clamp(min=1e-8), torch.zeros_like(lap)).clamp(0, 1)
    return rough.reshape(*lead, H, W)


def roughness_target(batch: dict):
    """Ground-truth roughness and where it is defined: the pixel and its four neighbours valid."""
    target = roughness_from_points(batch["world_points"].float())
    v = batch["valid_mask"]
    valid = v.clone()
    for shift, dim in ((1, -1), (-1, -1), (1, -2), (-1, -2)):
        valid &= torch.roll(v, shift, dims=dim)
    return target, valid


class RoughnessMAE(Metric):
    """Mean absolute roughness error over the pixels where the ground truth is defined."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        err = (pred - target).abs()[valid]
        self.total = self.total + err.double().sum()
        self.count = self.count + err.numel()

    def compute(self) -> dict:
        return {"roughness_mae": self.total / self.count.clamp(min=1)}


@register_head("docs_only_roughness")
class RoughnessHead(Head):
    requires = ("point",)           # reads the point head's world_points
    outputs = ("roughness",)        # [B, S, H, W] in [0, 1]
    loss_terms = ("roughness",)     # weighted by loss_weights.roughness (default 1)

    def __init__(self, hidden: int = 8, seed: int = 0):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(4, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 1, 3, padding=1))
        # a deterministic initialisation, so a test can tell whether training moved the weights
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))

    def forward(self, inp: HeadInput) -> dict:
        points = inp.outputs["world_points"]                                 # [B, S, H, W, 3]
        B, S, H, W, _ = points.shape
        coarse = roughness_from_points(points).reshape(B * S, 1, H, W)
        x = torch.cat([coarse, inp.images.reshape(B * S, 3, H, W).to(coarse)], 1)
        logit = torch.logit(coarse.clamp(1e-3, 1 - 1e-3)) + self.net(x)
        return {"roughness": torch.sigmoid(logit).reshape(B, S, H, W)}

    def loss(self, outputs: dict, batch: dict, active: dict) -> dict:
        if "roughness" not in active:
            return {}
        target, valid = roughness_target(batch)
        err = (outputs["roughness"] - target).abs()[valid]
        return {"loss_roughness": err.mean() if err.numel() else outputs["roughness"].sum() * 0}

    def build_metrics(self) -> dict:
        return {"roughness_mae": RoughnessMAE()}

    def update_metrics(self, metrics: dict, outputs: dict, batch: dict) -> None:
        target, valid = roughness_target(batch)
        metrics["roughness_mae"].update(outputs["roughness"], target, valid)

    def log_images(self, outputs: dict, batch: dict) -> dict:
        return {"roughness": outputs["roughness"][0, 0].unsqueeze(0).clamp(0, 1)}      # [1, H, W]

    def export(self, outputs: dict, scene) -> None:
        """roughness/<view>.npy (float32) and roughness/<view>.png (8-bit, value = roughness x 255) per photo."""
        rough = outputs["roughness"][scene.index].detach().float().cpu()               # [S, H, W]
        for v, view in enumerate(scene.views):
            r, _ = scene.to_photo(v, rough[v])                                          # [H0, W0]
            r = np.asarray(r, dtype=np.float32)
            np.save(scene.path(f"roughness/{view.stem}.npy"), r)
            Image.fromarray((r.clip(0, 1) * 255).round().astype(np.uint8)).save(scene.path(f"roughness/{view.stem}.png"))
        scene.manifest["roughness"] = {"encoding": "float32 in [0, 1] (.npy); PNG value = roughness x 255",
                                       "meaning": "4-neighbour point-map roughness"}

    @classmethod
    def planned_files(cls, stems: list) -> list:
        return [f"roughness/{s}.{ext}" for s in stems for ext in ("npy", "png")]


# --------------------------------------------------------------------------------------------- the flow

def _official_checkpoint(path: Path):
    from tests.test_checkpoints import _official_from_model, _perturbed_nano
    model = _perturbed_nano(0)
    torch.save({"model": _official_from_model(model)}, path)
    return model


def _photos(folder: Path) -> list[Path]:
    from iggt_lightning.data import SyntheticScenes
    images = SyntheticScenes(length=1, num_views=2, image_size=(56, 84), seed=1)[0]["images"]     # [S, 3, H, W]
    folder.mkdir()
    paths = []
    for i, img in enumerate(images):
        p = folder / f"photo_{i}.png"
        Image.fromarray((img.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()).save(p)
        paths.append(p)
    return paths


def test_docs_only_head_finetune_reload_predict(tmp_path, capsys):
    from iggt_lightning.checkpoints import load_model
    from iggt_lightning.cli import main
    from tests.test_cli_training import tiny_args

    # 1. an official-format pretrained checkpoint (nano)
    official = tmp_path / "iggt_official.pt"
    pretrained = _official_checkpoint(official)

    # 2. the head added by class path, backbone frozen, only the new head trains
    run = tmp_path / "run"
    args = [*tiny_args(run, steps=3), "--config", FINETUNE, "--model.preset", "nano",
            "--model.heads", json.dumps({"roughness": {"class_path": CLASS_PATH}}),
            "--model.init_checkpoint", str(official)]
    assert main(["fit", *args]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    # 3. backbone bit-identical to the pretrained file, the pretrained heads' parameters too (their terms weigh 0;
    #    the instance head's BatchNorm statistics may move, as configs/finetune_new_head.yaml says); the
    #    new head's weights moved away from its (deterministic) initialisation
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    ref = pretrained.state_dict()
    backbone = [k for k in ref if k.startswith("backbone.")]
    assert backbone
    for k in backbone:
        assert torch.equal(state[f"model.{k}"], ref[k]), k
    for k, param in pretrained.named_parameters():
        if k.startswith(("heads.camera.", "heads.depth.", "heads.point.", "heads.instance.")):
            assert torch.equal(state[f"model.{k}"], param.detach()), k
    fresh = RoughnessHead().state_dict()
    trained = {k[len("model.heads.roughness."):]: v for k, v in state.items() if k.startswith("model.heads.roughness.")}
    assert trained.keys() == fresh.keys()
    assert any(not torch.equal(trained[k], fresh[k]) for k in fresh)

    # 4. reloading: the checkpoint names the head by its class path, which no installed package registers, so a
    #    fresh process (where this module is not imported, hence the head not registered) refuses it without
    #    trust_code and builds it with trust_code=True. (In this process @register_head above has registered
    #    the class, so here it would load without the opt-in: trust_code=True is passed anyway, as documented.)
    script = ("import sys, torch\n"
              "from iggt_lightning.checkpoints import load_model\n"
              "try:\n    load_model(sys.argv[1])\nexcept Exception as e:\n    print('REFUSED', e)\n"
              "else:\n    print('LOADED WITHOUT TRUST')\n"
              "m = load_model(sys.argv[1], trust_code=True).eval()\n"
              "print('HEAD', type(m.heads['roughness']).__module__, type(m.heads['roughness']).__name__)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", script, str(ckpt)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "REFUSED" in proc.stdout and "trust" in proc.stdout, proc.stdout
    assert CLASS_PATH in proc.stdout, proc.stdout                       # the refusal names the class
    assert "HEAD tests.test_docs_only_head RoughnessHead" in proc.stdout, proc.stdout
    model = load_model(ckpt, trust_code=True).eval()
    assert isinstance(model.heads["roughness"], RoughnessHead)
    for k, v in trained.items():
        assert torch.equal(model.heads["roughness"].state_dict()[k], v), k
    photos = _photos(tmp_path / "photos")
    images = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                          for p in photos]).float() / 255                                       # [S, 3, 56, 84]
    with torch.no_grad():
        out = model(images)
    rough = out["roughness"]
    assert rough.shape == (1, 2, 56, 84)
    assert torch.isfinite(rough).all() and rough.min() >= 0 and rough.max() <= 1

    # the head's metric is in `iggt test`'s table (the classes the command line names are trusted)
    capsys.readouterr()
    assert main(["test", *args, "--ckpt_path", str(ckpt)]) == 0
    assert "test/roughness_mae" in capsys.readouterr().out

    # 5. iggt predict on the photos writes the head's files, at the photos' resolution, listed in the manifest
    stems = [p.stem for p in photos]
    expected = RoughnessHead.planned_files(stems)
    pred = tmp_path / "pred"
    common = [str(tmp_path / "photos"), "-c", str(ckpt), "--size", "84", "56", "--trust-checkpoint-code"]
    capsys.readouterr()
    assert main(["predict", *common, "-o", str(tmp_path / "dry"), "--dry-run"]) == 0
    planned = [line.strip() for line in capsys.readouterr().out.splitlines()]
    for rel in expected:
        assert rel in planned, planned
    assert not (tmp_path / "dry").exists()

    assert main(["predict", *common, "-o", str(pred)]) == 0
    manifest = json.loads((pred / "manifest.json").read_text())
    assert set(expected) <= set(manifest["files"]), manifest["files"]
    assert "roughness" in manifest
    for v, stem in enumerate(stems):
        arr = np.load(pred / "roughness" / f"{stem}.npy")
        assert arr.shape == (56, 84) and arr.dtype == np.float32
        np.testing.assert_allclose(arr, rough[0, v].numpy(), atol=1e-4)
        png = np.asarray(Image.open(pred / "roughness" / f"{stem}.png"))
        assert png.shape == (56, 84) and png.dtype == np.uint8
        assert np.abs(png.astype(np.float32) - rough[0, v].numpy() * 255).max() <= 1.0

    # 6. the image hook: one [C, H, W] image in [0, 1], C = 1 or 3
    from iggt_lightning.data import SyntheticScenes
    sample = SyntheticScenes(length=1, num_views=2, image_size=(56, 84), seed=1)[0]
    batch = {k: v.unsqueeze(0) if torch.is_tensor(v) else [v] for k, v in sample.items()}
    with torch.no_grad():
        out = model(batch["images"])
    logged = model.heads["roughness"].log_images(out, batch)
    assert logged.keys() == {"roughness"}
    img = logged["roughness"]
    assert img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[1:] == (56, 84)
    assert torch.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
    # and its loss and metric on that batch
    head = model.heads["roughness"]
    losses = head.loss(out, batch, {"roughness": {}})
    assert torch.isfinite(losses["loss_roughness"])
    metrics = head.build_metrics()
    head.update_metrics(metrics, out, batch)
    assert torch.isfinite(metrics["roughness_mae"].compute()["roughness_mae"])
