"""Typed options: every export option is declared once (type, default, range, help) and a misspelt key, a wrong type
or an out-of-range value stops `iggt predict` (photos or --config) before anything is written; the training
module's options, loss options included (declared by the loss functions' signatures), are checked when it is built."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from iggt_lightning.cli import main
from iggt_lightning.inference.options import (ExportOptionError, option_table, registered_plugins,
                                              resolve_export_options)
from iggt_lightning.losses import camera_loss, contrastive_loss, depth_loss
from iggt_lightning.losses.options import all_options, check_loss_options
from iggt_lightning.module import IGGTLitModule


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.data.fixtures import write_fixture
    from iggt_lightning.model import IGGTModel

    root = tmp_path_factory.mktemp("options")
    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), root / "nano.safetensors")
    (root / "photos").mkdir()
    for i in range(2):
        Image.fromarray(np.full((28, 42, 3), 60 * i, np.uint8)).save(root / "photos" / f"p{i}.png")
    write_fixture("scene_folder", root / "data", num_scenes=1, num_views=2, image_size=(28, 42))
    (root / "predict.yaml").write_text(f"""
trainer: {{accelerator: cpu, devices: 1, logger: false, enable_progress_bar: false, enable_model_summary: false}}
model: {{preset: nano, drop_heads: [track], init_checkpoint: {root / 'nano.safetensors'}}}
data:
  class_path: iggt_lightning.data.SceneDataModule
  init_args:
    predict:
      class_path: iggt_lightning.data.SceneFolderScenes
      init_args: {{root: {root / 'data'}, split: all, num_views: 2, image_size: [28, 42]}}
""")
    return root


def depth_plugins():
    return [(n, c) for n, c in registered_plugins() if n == "depth"]


# ---------------------------------------------------------------------------------------------- the table
def test_every_declared_export_option_has_type_default_and_help_and_predict_help_lists_it(capsys):
    table = option_table(registered_plugins())
    assert {"conf_threshold", "save_images", "colmap_max_points", "depth_png_scale"} <= set(table)
    for name, (opt, owner) in table.items():
        assert opt.name == name and opt.type in (bool, int, float, str), name
        assert opt.help.strip() and owner, name
        assert opt.parse(opt.default) == opt.default, name        # the default passes its own declaration
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = capsys.readouterr().out
    listing = out.split("export options (--export-option KEY=VALUE):")[1]
    for name, (opt, _) in table.items():
        assert f"  {name} ({opt.type.__name__}, default " in listing, name


@pytest.mark.parametrize("given, field, expected", [
    ({"save_images": "no"}, "save_images", "expected true or false, or 1 or 0; got 'no'"),
    ({"save_images": 2}, "save_images", "expected true or false"),
    ({"depth_png_scale": "0"}, "depth_png_scale", "expected a finite number > 0; got '0'"),
    ({"depth_png_scale": "nan"}, "depth_png_scale", "a finite number > 0"),
    ({"colmap_max_points": "1e5"}, "colmap_max_points", "expected an integer >= 1; got '1e5'"),
    ({"colmap_max_points": True}, "colmap_max_points", "expected an integer >= 1; got True"),
    ({"colmap_depth_tolerance": 1}, "colmap_depth_tolerance", "in (0, 1)"),
    ({"colmap_format": "json"}, "colmap_format", "expected one of ['txt', 'bin']"),
    ({"conf_threshold": 100}, "conf_threshold", "with conf_mode percentile expected a percentile in [0, 100)"),
])
def test_a_wrong_type_or_range_names_the_option_and_what_it_expects(given, field, expected):
    with pytest.raises(ExportOptionError) as err:
        resolve_export_options(given, depth_plugins())
    assert str(err.value).startswith(f"export option {field}: ") and expected in str(err.value), str(err.value)


def test_text_is_read_by_the_declared_type_and_defaults_fill_the_rest():
    got = resolve_export_options({"save_images": "0", "colmap_max_points": "500",
                                  "depth_png_scale": "256", "conf_mode": "absolute", "conf_threshold": "150"},
                                 depth_plugins())
    assert got["save_images"] is False and got["colmap_max_points"] == 500
    assert got["depth_png_scale"] == 256.0 and got["conf_threshold"] == 150.0
    assert got["colmap_format"] == "txt" and got["points_from"] is None     # declared defaults


def test_an_unknown_key_is_named_with_the_closest_option():
    with pytest.raises(ExportOptionError, match=r"export option 'depth_png_scal' is unknown \(did you mean "
                                                r"depth_png_scale\?\)"):
        resolve_export_options({"depth_png_scal": 100}, depth_plugins())
    # a plugin's option is unknown to a run without that plugin
    with pytest.raises(ExportOptionError, match="export option 'depth_png_scale' is unknown"):
        resolve_export_options({"depth_png_scale": 100}, [])


@pytest.mark.parametrize("option, field", [("save_images=no", "save_images"), ("depth_png_scale=0", "depth_png_scale"),
                                           ("depth_png_scal=100", "'depth_png_scal'")])
def test_predict_photos_refuses_before_any_output_exists(assets, tmp_path, capsys, option, field):
    out = tmp_path / "out"
    rc = main(["predict", str(assets / "photos"), "-c", str(assets / "nano.safetensors"), "-o", str(out), "--quiet",
               "--export-option", option])
    err = capsys.readouterr().err
    assert rc == 2 and f"iggt predict: error: export option {field}" in err and "Traceback" not in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_predict_dataset_refuses_before_any_output_exists(assets, tmp_path, capsys):
    out = tmp_path / "preds"
    rc = main(["predict", "--config", str(assets / "predict.yaml"), "--out", str(out),
               "--export_options", json.dumps({"save_images": "no"})])
    err = capsys.readouterr().err
    assert rc == 2 and "export option save_images: expected true or false" in err, err
    assert not out.exists()


def test_the_writer_checks_its_options_against_the_model_plugins():
    from types import SimpleNamespace

    from iggt_lightning.inference.writer import PredictionWriter

    writer = PredictionWriter("unused", options={"depth_png_scale": 10})   # known: a registered plugin's option
    model = SimpleNamespace(plugins=lambda: [("camera", registered_plugins()[0][1])])
    with pytest.raises(ExportOptionError, match="export option 'depth_png_scale' is unknown"):
        writer.setup(None, model, "predict")          # but this model has no depth head


# ---------------------------------------------------------------------------------------------- training
BAD_TRAINING = [
    ({"lr": 0}, "model.lr must be a finite number > 0"),
    ({"lr": -1e-4}, "model.lr must be a finite number > 0"),
    ({"backbone_lr": 0.0}, "model.backbone_lr must be a finite number > 0"),
    ({"weight_decay": -0.01}, "model.weight_decay must be a finite number >= 0"),
    ({"warmup_steps": -1}, "model.warmup_steps must be an integer >= 0"),
    ({"frames_chunk_size": 0}, "model.frames_chunk_size must be an integer >= 1"),
    ({"log_images_every_n_steps": -5}, "model.log_images_every_n_steps must be an integer >= 0"),
    ({"loss_options": {"contrastive": {"num_samples": 0}}},
     "model.loss_options.contrastive.num_samples: expected an integer >= 2; got 0"),
    ({"loss_options": {"contrastive": {"num_sample": 64}}},
     "model.loss_options.contrastive.num_sample: unknown option (did you mean num_samples?)"),
    ({"loss_options": {"contrastive": {"cross_view": "no"}}},
     "model.loss_options.contrastive.cross_view: expected true or false; got 'no'"),
    ({"loss_options": {"contrastive": {"variant": "mean", "num_samples": 64}}},
     "model.loss_options.contrastive.num_samples: unknown option"),
    ({"loss_options": {"depth": {"quantile": 1.5}}}, "model.loss_options.depth.quantile: expected a finite number"),
    ({"loss_options": {"camera": {"loss_type": "l2"}}},
     "model.loss_options.camera.loss_type: expected one of ['l1', 'huber']"),
    ({"loss_weights": {"camera": 0, "depth": 0, "point": 0, "contrastive": 0}},
     "model.loss_weights: every loss term ['camera', 'contrastive', 'depth', 'point'] has weight 0"),
    ({"loss_weights": {"depth": -1.0}}, "model.loss_weights.depth must be a finite number >= 0"),
]


@pytest.mark.parametrize("kwargs, message", BAD_TRAINING, ids=[m.split(":")[0].split(" ")[0] for _, m in BAD_TRAINING])
def test_training_options_are_checked_when_the_module_is_built(kwargs, message):
    with pytest.raises(ValueError) as err:
        IGGTLitModule(preset="nano", drop_heads=["track"], **kwargs)
    assert str(err.value).startswith(message), str(err.value)


def test_valid_loss_options_pass_and_reach_the_loss():
    module = IGGTLitModule(preset="nano", drop_heads=["track"], loss_options={
        "contrastive": {"variant": "mean", "min_pixels": 4, "normalize": True},
        "depth": {"quantile": None, "gradient_weight": 0}, "camera": {"loss_type": "huber", "gamma": 0.8}})
    assert module.active_losses["instance"]["contrastive"] == {"variant": "mean", "min_pixels": 4, "normalize": True}


def test_loss_options_are_the_loss_functions_keyword_parameters():
    declared, whose = all_options(depth_loss, {})
    assert whose == "depth_loss -> conf_regression_loss" and declared["gamma"].default == 1.0
    assert set(all_options(camera_loss, {})[0]) == {"gamma", "loss_type", "weight_trans", "weight_rot", "weight_fov"}
    assert "generator" not in all_options(contrastive_loss, {})[0]              # an input, not an option
    assert "min_pixels" in all_options(contrastive_loss, {"variant": "mean"})[0]
    check_loss_options(contrastive_loss, {"num_samples": 2, "margin": 0.5}, "f")
    with pytest.raises(ValueError, match=r"^f\.margin: expected a finite number > 0; got 0"):
        check_loss_options(contrastive_loss, {"margin": 0}, "f")
