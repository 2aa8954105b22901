"""benchmarks/ablation.py: every variant is an override that reaches the model, and a run reports every column."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from iggt_lightning.lightning_cli import IGGTCLI

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic_tiny.yaml"
SHRINK = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--model.warmup_steps", "1",
          "--model.log_images_every_n_steps", "0", "--data.init_args.num_train", "4",
          "--data.init_args.num_val", "2", "--data.init_args.num_test", "2", "--data.init_args.image_size", "[56, 56]",
          "--data.init_args.num_views", "2", "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0"]


def load_harness():
    from benchmarks import ablation

    return ablation


def build(override: list[str], tmp_path: Path):
    args = ["--config", str(CONFIG), "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
            *override]
    return IGGTCLI(args=args, run=False).model


def test_every_variant_changes_exactly_what_it_names(tmp_path):
    table = load_harness().variants(CONFIG)
    assert {"full", "contrastive off", "cross-view off", "fusion off", "lambda 0.1", "lambda 10"} <= set(table)
    full = build(table["full"], tmp_path)
    assert full.loss_weights["contrastive"] == 1.0 and full.model.heads["instance"].decoder.fusion
    assert full.loss_options["contrastive"]["cross_view"] is True

    off = build(table["contrastive off"], tmp_path)
    assert off.loss_weights["contrastive"] == 0.0 and "contrastive" not in off.active_losses.get("instance", {})
    assert build(table["lambda 10"], tmp_path).loss_weights["contrastive"] == 10.0
    assert not build(table["fusion off"], tmp_path).model.heads["instance"].decoder.fusion
    cv = build(table["cross-view off"], tmp_path)
    # the override restates the config's other contrastive options instead of dropping them
    assert cv.loss_options["contrastive"] == {**full.loss_options["contrastive"], "cross_view": False}
    for name in ("cross-view off", "fusion off", "lambda 10"):
        assert build(table[name], tmp_path).loss_weights.keys() == full.loss_weights.keys()


def test_harness_trains_tests_and_writes_every_column(tmp_path):
    out = tmp_path / "ablation.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.ablation", "--threads", "1",
                          "--variants", "contrastive off", "--add", "tiny lr=--model.lr 1e-4", "--parallel", "2",
                          "--save-weights", str(tmp_path / "w"), "--json", str(out), "--", *SHRINK],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    # an --add'ed variant runs next to the named ones
    assert [r["variant"] for r in rows] == ["contrastive off", "tiny lr"]
    harness = load_harness()
    for r in rows:
        assert "error" not in r, r
        assert r["steps"] == 2
        for c in harness.COLUMNS:
            if c != "loss_contrastive":
                assert 0.0 <= r[c] < float("inf"), (r["variant"], c, r[c])
    assert "tiny lr" in run.stdout and "contrastive off" in run.stdout

    # --from-weights evaluates the saved weights again without training and reproduces every metric
    again = tmp_path / "again.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.ablation", "--threads", "1",
                          "--variants", "tiny lr", "--add", "tiny lr=--model.lr 1e-4",
                          "--from-weights", str(tmp_path / "w"), "--json", str(again), "--", *SHRINK],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (row,) = json.loads(again.read_text())["rows"]
    assert row["steps"] == 0 and row["trained_from"].endswith("tiny_lr.pt")
    trained = rows[1]
    for c in ("ap", "ap50", "t_miou", "t_sr", "abs_rel", "val_ap50", "val_t_sr", "val_abs_rel"):
        assert row[c] == pytest.approx(trained[c], abs=1e-6), c


def test_from_weights_names_the_missing_file(tmp_path):
    harness = load_harness()
    with pytest.raises(FileNotFoundError, match="no trained weights for variant 'full'"):
        harness.run_variant(CONFIG, [], SHRINK, name="full", from_weights=str(tmp_path))
