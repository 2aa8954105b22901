"""docs/writing-a-head.md is executable: its head file is extracted and used by class_path (in process)
and as a third-party package with an entry point (a dist-info on PYTHONPATH, through the `iggt` CLI)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-a-head.md"


def guide_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) == 1, "the guide should hold exactly one python file"
    return blocks[0]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """A site directory holding the guide's file as an installed distribution with an entry point."""
    site = tmp_path_factory.mktemp("site")
    (site / "iggt_normals.py").write_text(guide_code())
    dist = site / "iggt_normals-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: iggt-normals\nVersion: 0.1\n")
    entry = re.search(r"\[options.entry_points\]\n(.*?)```", GUIDE.read_text(), re.S).group(1)
    (dist / "entry_points.txt").write_text("[iggt_lightning.heads]\n" + entry.split("\n", 1)[1])
    return site


def test_the_guides_head_trains_and_is_evaluated_by_class_path(plugin_site, monkeypatch):
    from iggt_lightning.data import SyntheticScenes
    from iggt_lightning.data.datamodule import collate_checked
    from iggt_lightning.module import IGGTLitModule

    monkeypatch.syspath_prepend(str(plugin_site))
    module = IGGTLitModule(preset="nano", drop_heads=["track"],
                           heads={"normals": {"class_path": "iggt_normals.NormalsHead"}})  # the YAML line
    assert "normals" in module.active_losses["normals"] and "normals" not in module.frozen_heads
    assert module.model.head_order.index("normals") > module.model.head_order.index("point")
    batch = collate_checked([SyntheticScenes(length=1, num_views=2, image_size=(28, 28), seed=0)[0]])
    batch = module._prepare(batch)
    out = module.model(batch["images"])
    assert out["normals"].shape == (1, 2, 28, 28, 3)
    terms = module.compute_losses(out, batch)
    assert 0 < terms["loss_normals"] < 2
    terms["loss"].backward()
    assert module.model.heads["normals"].refine[0].weight.grad.abs().sum() > 0
    metric = module.model.heads["normals"].build_metrics()
    module.model.heads["normals"].update_metrics(metric, out, batch)
    assert 0 <= metric["normal_angle"].compute()["normal_angle"] <= 180
    with pytest.raises(ValueError, match=r"needs head\(s\) \['point'\]"):
        IGGTLitModule(preset="nano", drop_heads=["track", "point", "instance"],
                      heads={"normals": {"class_path": "iggt_normals.NormalsHead"}})


def run_iggt(args, cwd, site):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "iggt_lightning", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_third_party_head_by_entry_point_from_yaml(plugin_site, tmp_path):
    from tests.test_cli_training import tiny_args

    listing = run_iggt(["heads", "list"], tmp_path, plugin_site)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("normals"))
    assert "entry point iggt_normals:NormalsHead (iggt-normals)" in row and "point" in row and "yes" in row
    config = tmp_path / "normals.yaml"
    config.write_text("model:\n  heads:\n    normals: {}\n")   # the short name, resolved through the entry point
    args = [*tiny_args(tmp_path, steps=3), "--config", str(config)]
    fit = run_iggt(["fit", *args], tmp_path, plugin_site)
    assert fit.returncode == 0, fit.stderr[-3000:]
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert any(k.startswith("model.heads.normals.refine") for k in state["state_dict"])
    test = run_iggt(["test", *args, "--ckpt_path", "last"], tmp_path, plugin_site)
    assert test.returncode == 0, test.stderr[-3000:]
    assert "test/normal_angle" in test.stdout and "test/loss_normals" in test.stdout
    # iggt predict writes the guide head's export (registered through its entry point: no trust needed)
    import json

    import numpy as np
    from PIL import Image

    from iggt_lightning.data import SyntheticScenes

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, im in enumerate(SyntheticScenes(length=1, num_views=2, image_size=(70, 98), seed=4)[0]["images"]):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    pred = run_iggt(["predict", str(photos), "-c", str(tmp_path / "checkpoints" / "last.ckpt"), "-o",
                     str(tmp_path / "out"), "--size", "56", "42", "--quiet",
                     "--points-from", "point"],   # a 3-step model's cameras may be degenerate; its point map is not
                    tmp_path, plugin_site)
    assert pred.returncode == 0, pred.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {"normals/p0.png", "normals/p1.png"} <= set(manifest["files"]) and "normals" in manifest
    rgb = np.asarray(Image.open(tmp_path / "out" / "normals" / "p0.png"))
    assert rgb.shape == (70, 98, 3)                                     # the photo's resolution
    n = rgb.astype(np.float64) / 255 * 2 - 1
    # unit normals encoded (n + 1) / 2: resampling to the photo blends neighbours (shorter vectors where they
    # disagree, which a 3-step model's noisy normals often do), so the longest ones are the unit ones
    norms = np.linalg.norm(n, axis=-1)
    assert abs(np.quantile(norms, 0.9) - 1) < 0.05 and norms.max() < 1.05


def test_the_guides_fine_tuning_section_is_the_shipped_snippet_and_runs(plugin_site, tmp_path, monkeypatch):
    """The guide's YAML is configs/finetune_new_head.yaml's model section; its command, on nano and an
    official-format file, fine-tunes the guide's head with the backbone untouched."""
    import yaml

    from iggt_lightning.cli import main
    from tests.test_checkpoints import _official_from_model, _perturbed_nano
    from tests.test_cli_training import tiny_args

    section = GUIDE.read_text().split("## Fine-tuning a pretrained model with your head", 1)[1]
    guide_yaml = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    shipped = ROOT / "configs" / "finetune_new_head.yaml"
    assert yaml.safe_load(guide_yaml) == yaml.safe_load(shipped.read_text())
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    assert "--config configs/finetune_new_head.yaml" in command and "--model.init_checkpoint" in command

    monkeypatch.syspath_prepend(str(plugin_site))
    source = _perturbed_nano(seed=3)
    official = tmp_path / "iggt_official.pt"
    torch.save({"model": _official_from_model(source)}, official)
    snippet = tmp_path / "finetune.yaml"
    snippet.write_text(guide_yaml)
    assert main(["fit", *tiny_args(tmp_path / "run", steps=2), "--model.preset", "nano", "--config", str(snippet),
                 "--model.init_checkpoint", str(official)]) == 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    trained = {k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    assert any(k.startswith("heads.normals.refine") for k in trained)
    assert all(torch.equal(trained[k], v) for k, v in source.state_dict().items() if k.startswith("backbone."))
