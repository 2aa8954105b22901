"""The `iggt` LightningCLI: fit/test from the shipped config, config and data errors, resume, DDP and FSDP2 on CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iggt_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "synthetic_tiny.yaml")


def tiny_args(root: Path, steps: int = 2, log_images: int = 0) -> list[str]:
    """configs/synthetic_tiny.yaml shrunk to seconds: 56 px, 2 views, 2-scene batches, a few steps."""
    return ["--config", CONFIG, "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.log_images_every_n_steps", str(log_images), "--model.warmup_steps", "1",
            "--data.init_args.num_train", "8", "--data.init_args.num_val", "2", "--data.init_args.num_test", "2",
            "--data.init_args.image_size", "[56, 56]", "--data.init_args.num_views", "2",
            "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0"]


def run_iggt(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m iggt_lightning ...` in a clean environment (no pytest state, one thread per process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
               PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "iggt_lightning", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_fit_writes_last_checkpoint_and_test_prints_the_metric_table(tmp_path, capsys):
    assert main(["fit", *tiny_args(tmp_path)]) == 0
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    assert state["iggt_model_config"]["heads"].keys() == {"camera", "depth", "point", "instance"}
    assert state["iggt_model_config"]["postprocess"] == {"tracking": {"ignore_ids": [100]}}   # travels beside them
    capsys.readouterr()
    assert main(["test", *tiny_args(tmp_path), "--ckpt_path", "last"]) == 0
    table = capsys.readouterr().out
    # one table with every configured head's metrics: camera, depth, point map, instances and tracking
    for metric in ("test/abs_rel", "test/delta_1.25", "test/tau_1.03", "test/rra@30", "test/rta@30", "test/auc@30",
                   "test/accuracy", "test/completeness", "test/chamfer", "test/ap", "test/ap50", "test/ap25",
                   "test/ap_2d", "test/ap50_2d", "test/ap25_2d", "test/t_miou", "test/t_sr", "test/loss_contrastive",
                   "test/ap50_objects", "test/ap_objects", "test/t_miou_objects", "test/t_sr_objects"):
        assert metric in table, table
    # an explicit checkpoint file: LightningCLI re-parses its hyper-parameters as the module's arguments
    assert main(["test", *tiny_args(tmp_path), "--ckpt_path", str(ckpt)]) == 0
    assert "test/ap50" in capsys.readouterr().out


@pytest.mark.parametrize("override, message", [
    (["--model.lr_typo", "1"], "lr_typo"),
    (["--model.heads", '{"normalz": {}}'], "unknown head 'normalz'"),
    (["--model.heads", '{"instance": {"fusoin": false}}'], "unknown argument(s) ['fusoin']"),
    (["--model.loss_weights", '{"contrastiv": 0}'], "loss_weights: unknown loss term(s) ['contrastiv']"),
    (["--model.drop_heads", "[trak]"], "has no head(s) ['trak']"),
    (["--data.init_args.image_size", "[50, 56]"], "multiples of 14"),
])
def test_config_typos_are_named(tmp_path, capsys, override, message):
    try:
        rc = main(["fit", *tiny_args(tmp_path), *override])
    except SystemExit as exit_:  # jsonargparse's own parse errors
        rc = exit_.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("fault, message", [
    ("nan_depth", "depth has 1 NaN/inf value(s) (first in view 1)"),
    ("negative_depth", "depth has 1 negative value(s) (first in view 0"),
    ("ids_shape", "instance_ids has shape (2, 28, 56); expected (2, 56, 56)"),
    ("view_sizes", "the views of images differ in size"),
])
def test_bad_samples_stop_training_with_the_field_named(tmp_path, capsys, fault, message):
    rc = main(["fit", *tiny_args(tmp_path), "--data", "tests.cli_helpers.CorruptDataModule", "--data.fault", fault])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "synthetic-0-" in err, err


def test_killed_run_resumes_from_last_at_the_step_it_stopped(tmp_path):
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {save_last: true, save_top_k: 0, every_n_train_steps: 1}\n"
        "    - class_path: tests.cli_helpers.KillAtStep\n      init_args: {step: 3}\n")
    first = run_iggt(["fit", *tiny_args(tmp_path, steps=6), "--config", str(callbacks)], cwd=ROOT)
    assert first.returncode == 17, first.stderr[-3000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved_step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert saved_step == 2  # the kill at step 3 came before that step's checkpoint
    resume = tmp_path / "resume.yaml"
    resume.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {save_last: true, save_top_k: 0, every_n_train_steps: 1}\n"
        f"    - class_path: tests.cli_helpers.RecordSteps\n      init_args: {{path: {tmp_path / 'steps'}}}\n")
    second = run_iggt(["fit", *tiny_args(tmp_path, steps=6), "--config", str(resume), "--ckpt_path", "last"],
                      cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    steps = json.loads((tmp_path / "steps.rank0").read_text())
    assert steps["first"] == saved_step and steps["last"] == 6


@pytest.mark.parametrize("strategy, strategy_class, sharded", [
    ("ddp", "DDPStrategy", "none"),
    ("fsdp", "ModelParallelStrategy", "all"),  # FSDP2: every parameter is a DTensor shard
])
def test_two_process_cpu_fit(tmp_path, strategy, strategy_class, sharded):
    record = tmp_path / "record.yaml"
    record.write_text("trainer:\n  callbacks:\n"
                      f"    - class_path: tests.cli_helpers.RecordSteps\n      init_args: {{path: {tmp_path / 'steps'}}}\n")
    proc = run_iggt(["fit", *tiny_args(tmp_path, steps=3), "--config", str(ROOT / "configs" / "strategies" /
                     f"{strategy}.yaml"), "--config", str(record), "--trainer.enable_checkpointing", "false"],
                    cwd=ROOT, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        steps = json.loads((tmp_path / f"steps.rank{rank}").read_text())
        assert steps == {"first": 0, "last": 3, "world_size": 2, "strategy": strategy_class, "sharded": sharded}


def test_tensorboard_gets_every_loss_term_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = tiny_args(tmp_path, log_images=1)
    i = args.index("--trainer.logger")
    del args[i:i + 2]
    args += ["--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.save_dir",
             str(tmp_path / "tb"), "--trainer.log_every_n_steps", "1"]
    assert main(["fit", *args]) == 0
    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.*")).parent),
                              size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    for term in ("loss", "loss_camera", "loss_depth", "loss_point", "loss_contrastive", "loss_pull", "loss_push"):
        assert f"train/{term}" in scalars, scalars
    assert {"val/abs_rel", "val/rra@30"} <= scalars
    # every head's log_images (post-processors' on the first validation batch, when they run in validate)
    assert {"input", "depth/depth", "instance/pca"} <= images, images


@pytest.mark.parametrize("config", ["synthetic_tiny.yaml", "iggt_large.yaml"])
def test_shipped_configs_parse(config, capsys):
    """Every shipped config (and each strategy stacked on it) validates against the CLI's signatures."""
    for extra in ([], ["--config", str(ROOT / "configs" / "strategies" / "fsdp.yaml")]):
        with pytest.raises(SystemExit) as done:
            main(["fit", "--config", str(ROOT / "configs" / config), *extra, "--print_config"])
        assert done.value.code in (0, None)
        printed = capsys.readouterr().out
        assert "preset:" in printed and "class_path: iggt_lightning.data.SyntheticDataModule" in printed


def test_command_line_loss_options_keep_their_types(tmp_path):
    from iggt_lightning.lightning_cli import IGGTCLI

    cli = IGGTCLI(args=[*tiny_args(tmp_path), "--model.loss_options",
                        '{"contrastive": {"cross_view": false, "lambda_pull": 0.5, "num_samples": 64}}'], run=False)
    assert cli.model.loss_options["contrastive"] == {"cross_view": False, "lambda_pull": 0.5, "num_samples": 64}
    assert cli.model.loss_weights == {"camera": 1.0, "depth": 1.0, "point": 1.0, "contrastive": 1.0}
