"""Checkpoints by Hugging Face Hub id and model folder, and `iggt publish` (docs/hub.md).

No network: every Hub test reads a cache built here in huggingface_hub's layout (models--OWNER--NAME/{refs,
snapshots,blobs}) with HF_HUB_OFFLINE set, or replaces the one listing call with a failure.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

huggingface_hub = pytest.importorskip("huggingface_hub")
import huggingface_hub.constants  # noqa: E402 (a lazily loaded submodule)

from iggt_lightning.checkpoints import CheckpointError, inspect_checkpoint, load_model, save_model  # noqa: E402
from iggt_lightning.cli import main  # noqa: E402
from iggt_lightning.hub import parse_hub_id, resolve_checkpoint  # noqa: E402
from iggt_lightning.model import PRESETS, IGGTModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "reference"


def hub_cache(cache: Path, repo: str, files: dict, revision: str = "main") -> str:
    """Put ``files`` (name -> bytes or a file to copy) in the cache as ``repo`` at ``revision``; -> the commit."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(f"{repo}@{revision}:{sorted(files)}".encode()).hexdigest()
    snapshot = storage / "snapshots" / commit
    for name, content in files.items():
        data = Path(content).read_bytes() if isinstance(content, Path) else content
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    ref = storage / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    return commit


def nano(seed: int) -> IGGTModel:
    torch.manual_seed(seed)
    return IGGTModel.from_preset("nano", drop_heads=["track"])


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two nano models saved in our format, and three photos."""
    root = tmp_path_factory.mktemp("hub_models")
    for seed in (0, 1):
        save_model(nano(seed), root / f"nano{seed}.safetensors")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (84, 112, 3), dtype=np.uint8)).save(photos / f"v{i}.png")
    return root


@pytest.fixture()
def hub(tmp_path, monkeypatch, models):
    """An offline Hugging Face cache: owner/name at main (nano0) and v1 (nano1 + a second weight file)."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the environment when imported: set what it read
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    main_commit = hub_cache(cache, "owner/name", {"model.safetensors": models / "nano0.safetensors",
                                                  "config.json": b"{}", "README.md": b"# card"})
    hub_cache(cache, "owner/name", {"model.safetensors": models / "nano1.safetensors",
                                    "extra.pt": b"not weights"}, revision="v1")
    return {"cache": cache, "main": main_commit}


def test_parse_hub_id_tells_ids_from_paths():
    ref = parse_hub_id("owner/name@refs/pr/1:sub/model.pt")
    assert (ref.repo, ref.revision, ref.filename) == ("owner/name", "refs/pr/1", "sub/model.pt")
    assert parse_hub_id("facebook/VGGT-1B").repo == "facebook/VGGT-1B"
    for path in ("./owner/name", "/abs/name", "~/x/y", "a/b/c", "runs/last.ckpt", "a--b/c", "owner/name@x:../up",
                 "owner/name:", "C:/x"):
        assert parse_hub_id(path) is None, path


def test_load_model_by_id_revision_and_file_offline(hub, models):
    assert same_weights(load_model("owner/name"), nano(0))
    assert same_weights(load_model(f"owner/name@{hub['main']}"), nano(0))            # a commit hash
    assert same_weights(load_model("owner/name@v1:model.safetensors"), nano(1))      # a tag and a file
    assert same_weights(load_model("owner/name:model.safetensors"), nano(0))
    resolved = resolve_checkpoint("owner/name")
    assert resolved.parent.name == hub["main"] and resolved.name == "model.safetensors"


def test_init_checkpoint_and_convert_by_id(hub, tmp_path, capsys):
    from iggt_lightning.module import IGGTLitModule

    module = IGGTLitModule(preset="nano", drop_heads=["track"], init_checkpoint="owner/name@v1:model.safetensors")
    assert same_weights(module.model, nano(1))
    assert module.init_report.what == "init_checkpoint owner/name@v1:model.safetensors"
    out = tmp_path / "converted.pt"
    assert main(["convert", "owner/name", str(out)]) == 0
    assert same_weights(load_model(out), nano(0))


def test_local_path_wins_over_an_id_and_a_folder_is_a_snapshot(hub, models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "owner" / "name"
    local.mkdir(parents=True)
    (local / "model.safetensors").write_bytes((models / "nano1.safetensors").read_bytes())
    (local / "config.json").write_text("{}")
    assert same_weights(load_model("owner/name"), nano(1))          # the folder here, not the cached repo
    assert same_weights(load_model("./owner/name"), nano(1))
    snapshot = resolve_checkpoint("owner/name@v1:model.safetensors").parent
    with pytest.raises(CheckpointError, match="several weight files"):
        load_model(snapshot)                                        # a Path is a path: the v1 snapshot folder


@pytest.mark.parametrize("spec, expected", [
    ("someone/missing", ["someone/missing: no such local file or folder", "not in the Hugging Face cache",
                         "HF_HUB_OFFLINE is set", "hf download someone/missing"]),
    ("owner/name:nope.pt", ["owner/name:nope.pt: owner/name (in the local cache) has no file 'nope.pt'",
                            "its weight files: model.safetensors", "e.g. owner/name:model.safetensors"]),
    ("owner/name@v9", ["revision 'v9' of owner/name is not in the Hugging Face cache", "cached revisions: main, v1"]),
    ("owner/name@v1", ["owner/name@v1 (in the local cache) holds several weight files (extra.pt, "
                       "model.safetensors)", "pick one: name it after a colon, e.g. owner/name@v1:extra.pt"]),
])
def test_bad_hub_ids_are_one_line_naming_the_id(hub, models, tmp_path, capsys, spec, expected):
    with pytest.raises(CheckpointError) as err:
        load_model(spec)
    for part in expected:
        assert part in str(err.value), str(err.value)
    assert main(["predict", str(models / "photos"), "-c", spec, "-o", str(tmp_path / "out"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"iggt predict: error: {spec}: "), lines
    assert not (tmp_path / "out").exists()


def test_predict_refuses_its_own_mistakes_before_resolving_a_hub_id(hub, models, tmp_path, capsys, monkeypatch):
    """A wrong output folder or option is refused before the Hub is asked (a download may be gigabytes)."""
    import iggt_lightning.hub as hub_module

    asked = []
    monkeypatch.setattr(hub_module, "resolve_checkpoint", lambda spec: asked.append(spec) or spec)
    photos = models / "photos"
    assert main(["predict", str(photos), "-c", "someone/missing", "-o", str(photos / "out"), "--quiet"]) == 2
    assert "output directory" in capsys.readouterr().err
    assert main(["predict", str(photos), "-c", "someone/missing", "-o", str(tmp_path / "o"), "--conf-threshold",
                 "120", "--quiet"]) == 2
    assert "--conf-threshold" in capsys.readouterr().err
    assert asked == [] and not (tmp_path / "o").exists() and not (photos / "out").exists()


def test_model_folders_without_one_weight_file_are_refused(models, tmp_path):
    empty = tmp_path / "snapshot"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    (empty / ".model.safetensors.x.tmp").write_text("half-written")
    with pytest.raises(CheckpointError, match=r"snapshot is a folder; expected a checkpoint file \(.safetensors, .pt, "
                                              r".pth or .ckpt\) or a model folder holding one .*; it holds none$"):
        load_model(str(empty))
    (empty / "a.pt").write_bytes(b"x")
    (empty / "b.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"several weight files \(a.pt, b.safetensors\); pick one: give the "
                                              r"file's path, e.g. .*a.pt"):
        load_model(str(empty))


def test_unreachable_hub_falls_back_to_the_cache_and_online_errors_are_named(hub, monkeypatch):
    from huggingface_hub.utils import RepositoryNotFoundError, RevisionNotFoundError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def failing(error):
        def list_repo_files(self, repo_id, revision=None, **kw):
            raise error
        return list_repo_files

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", failing(ConnectionError("no route to host")))
    assert same_weights(load_model("owner/name"), nano(0))       # read from the cache, no download tried
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache .* while the Hub could not be reached "
                                              r"\(ConnectionError: no route to host\)"):
        load_model("someone/missing")
    # the errors the Hub answers with (made without a response: the messages do not use it)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        failing(RevisionNotFoundError.__new__(RevisionNotFoundError)))
    with pytest.raises(CheckpointError, match="owner/name has no revision 'v9' on the Hub; give a branch"):
        load_model("owner/name@v9")
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        failing(RepositoryNotFoundError.__new__(RepositoryNotFoundError)))
    with pytest.raises(CheckpointError, match="no model repo someone/else on the Hugging Face Hub"):
        load_model("someone/else")


def _manifest_safetensors(manifest: Path, dst: Path) -> Path:
    """An official checkpoint's key set (from the recorded manifest) as empty tensors: a header to inspect."""
    from safetensors.torch import save_file

    keys = [line.split("\t")[0] for line in manifest.read_text().splitlines() if line.strip()]
    save_file({k: torch.empty(0) for k in keys}, str(dst))
    return dst


@pytest.mark.parametrize("repo, manifest, preset", [
    ("facebook/VGGT-1B", "manifest_vggt.tsv", "vggt-large"),
    ("facebook/VGGT-1B-Commercial", "manifest_vggt.tsv", "vggt-large"),
    ("lifuguan/IGGT_official", "manifest_iggt.tsv", "iggt-large"),
])
def test_official_repo_layouts_give_the_weights_file_and_preset(hub, tmp_path, capsys, repo, manifest, preset):
    weights = _manifest_safetensors(REFERENCE / manifest, tmp_path / "w.safetensors")
    files = {"model.safetensors": weights, "config.json": b"{}", "README.md": b"# card"}
    if repo.startswith("facebook/"):          # model.pt beside it: the same weights for torch.hub
        files["model.pt"] = b"pickled copy"
    hub_cache(hub["cache"], repo, files)
    path = resolve_checkpoint(repo)
    assert path.name == "model.safetensors"
    if "model.pt" in files:
        assert f"{repo}: using model.safetensors (the repo also holds model.pt" in capsys.readouterr().err
    config = inspect_checkpoint(path)
    assert config["heads"] == PRESETS[preset]["heads"] and config["backbone"] == PRESETS[preset]["backbone"]


def test_iggt_predict_by_id_from_an_offline_cache(hub, models, tmp_path):
    """The command as a user runs it: a new process that reads HF_HUB_CACHE / HF_HUB_OFFLINE itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT),
               HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(hub["cache"]), HF_HUB_OFFLINE="1")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "iggt_lightning", "predict", str(models / "photos"), "-c",
                          "owner/name", "-o", str(out), "--size", "112", "84", "--quiet"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert "points.ply" in manifest["files"] and (out / "points.ply").is_file()


# ---------------------------------------------------------------------------- iggt publish
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run of the tests' tiny training config, 2 steps, then `iggt test --results`."""
    from tests.test_cli_training import tiny_args

    run = tmp_path_factory.mktemp("publish_run")
    assert main(["fit", *tiny_args(run)]) == 0
    assert main(["test", *tiny_args(run), "--ckpt_path", "last", "--results", str(run / "results.json")]) == 0
    return run


def test_publish_a_run_then_load_it_as_a_folder_and_as_a_hub_id(trained_run, hub, tmp_path, capsys):
    capsys.readouterr()
    dst = tmp_path / "published"
    before = sorted(p.name for p in trained_run.rglob("*"))
    assert main(["publish", str(trained_run), str(dst), "--license", "apache-2.0", "--repo-id", "me/tiny"]) == 0
    assert sorted(p.name for p in trained_run.rglob("*")) == before            # nothing written to the run
    assert sorted(os.listdir(dst)) == ["README.md", "config.json", "model.safetensors"]
    assert not list(tmp_path.glob(".published*"))
    err = capsys.readouterr().err
    assert "warning: the card quotes local paths" in err and "not found" not in err
    # the weights and config are the checkpoint's
    trained = load_model(trained_run / "checkpoints" / "last.ckpt")
    assert same_weights(load_model(str(dst)), trained)
    assert json.loads((dst / "config.json").read_text()) == inspect_checkpoint(dst / "model.safetensors")
    # the card: the Hub's own reader for the front matter, our metrics and config in the body
    card = huggingface_hub.ModelCard.load(dst / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "iggt-lightning" and meta["license"] == "apache-2.0"
    assert {"iggt-lightning", "depth-estimation", "instance-segmentation"} <= set(meta["tags"])
    results = json.loads((trained_run / "results.json").read_text())
    assert f"| ap50 | {results['metrics']['ap50']:.4g} |" in card.text
    assert "class_path: iggt_lightning.data.SyntheticDataModule" in card.text
    assert "iggt predict PHOTOS/ -c me/tiny -o OUT/" in card.text
    # the published folder as a Hub repo in the cache
    hub_cache(hub["cache"], "me/tiny", {name: dst / name for name in os.listdir(dst)})
    assert same_weights(load_model("me/tiny"), trained)


def test_publish_refuses_what_it_would_overwrite_and_says_what_it_lacks(trained_run, models, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert main(["publish", str(trained_run), str(full)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and os.listdir(full) == ["keep.txt"]
    inside = trained_run / "checkpoints" / "last.ckpt" / "x"
    assert main(["publish", str(trained_run), str(inside)]) == 2
    assert "lies inside the checkpoint" in capsys.readouterr().err
    assert main(["publish", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "must hold checkpoints/last.ckpt" in capsys.readouterr().err
    # a bare weights file: published, with what the card could not find said on stderr and in the card
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["publish", str(models / "nano0.safetensors"), str(empty)]) == 0
    err = capsys.readouterr().err
    for note in ("not found: training hyper-parameters", "not found: the training config and data",
                 "not found: evaluation metrics", "not found: a licence", "not found: the Hub id"):
        assert note in err, err
    card = (empty / "README.md").read_text()
    assert "license: other" in card and "## Not found or to check" in card
    assert same_weights(load_model(str(empty)), nano(0))


def test_publish_says_when_the_metrics_or_config_may_be_of_another_checkpoint(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy2(trained_run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    config = (trained_run / "config.yaml").read_text()
    assert "\n  lr: 0.002\n" in config
    (run / "config.yaml").write_text(config.replace("\n  lr: 0.002\n", "\n  lr: 0.1\n"))
    results = json.loads((trained_run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "ckpt_path": "epoch=0-step=1.ckpt"}))
    (run / "notes.json").write_text(json.dumps({"not": "results"}))       # another JSON file: not picked up
    capsys.readouterr()
    assert main(["publish", str(run), str(tmp_path / "out"), "--license", "mit"]) == 0
    err = capsys.readouterr().err
    assert "its model section differs from the checkpoint's hyper-parameters in lr" in err
    assert "measured with ckpt_path 'epoch=0-step=1.ckpt', which is not" in err
    card = (tmp_path / "out" / "README.md").read_text()
    assert "From `results.json`" in card and "notes.json" not in card and "differs from the checkpoint's" in card


def test_card_front_matter_reads_with_the_hub_reader_and_names_a_hub_base_model():
    from huggingface_hub.repocard import RepoCard

    from iggt_lightning.publish import Card, render_card

    card = Card("me/ft", "last.ckpt", "me/ft", "cc-by-nc-4.0", {"heads": {"camera": {}, "depth": {}}}, 10,
                info={"hyper_parameters": {"init_checkpoint": "facebook/VGGT-1B"}, "epoch": 1, "global_step": 9,
                      "lightning": "2.6"})
    meta = RepoCard(render_card(card)).data.to_dict()
    assert meta == {"library_name": "iggt-lightning", "license": "cc-by-nc-4.0", "pipeline_tag": "image-to-3d",
                    "tags": ["iggt-lightning", "3d-reconstruction", "camera-pose-estimation", "depth-estimation"],
                    "base_model": "facebook/VGGT-1B"}
