"""docs/postprocessors.md is executable: its post-processor is extracted, configured by class_path, run by the
test loop's and prediction's one path, and exported by `iggt predict`."""
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "postprocessors.md"


def test_the_documented_postprocessor_runs_and_exports(tmp_path, monkeypatch):
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.cli import main
    from iggt_lightning.data import SyntheticScenes
    from iggt_lightning.model import IGGTModel
    from iggt_lightning.module import IGGTLitModule

    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    (tmp_path / "instance_boxes.py").write_text(blocks[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {"class_path": "instance_boxes.InstanceBoxes", "init_args": {"quantile": 0.05}}   # the YAML
    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), tmp_path / "m.safetensors",
               postprocess={"tracking": {}, "boxes": spec})
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, im in enumerate(SyntheticScenes(length=1, num_views=2, image_size=(56, 84), seed=1)[0]["images"]):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    # a stored dotted path is code named by the file: it runs only when the user trusts it
    assert main(["predict", str(photos), "-c", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "refused"),
                 "--quiet"]) == 2
    assert main(["predict", str(photos), "-c", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "out"),
                 "--quiet", "--trust-checkpoint-code"]) == 0

    module = IGGTLitModule(preset="nano", drop_heads=["track"], postprocess={"boxes": spec})
    assert module.postprocess.order == ["tracking", "boxes"]
    with torch.no_grad():
        out = module.run(torch.rand(1, 2, 3, 28, 28), "test")
    K = out["instance_scores"][0].numel()
    boxes = out["instance_boxes"][0]
    assert boxes.shape == (K, 2, 3) and (boxes[:, 1] >= boxes[:, 0]).all()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "instances/boxes.json" in manifest["files"] and manifest["instance_boxes"]["file"] == "instances/boxes.json"
    table = json.loads((tmp_path / "out" / "instances" / "boxes.json").read_text())
    assert len(table) == manifest["instances"] and all(len(row["size"]) == 3 for row in table)
