"""Hostile and careless inputs, one case per fault (issue 17): each asserts the exit code (or the exception), that
the message names the file or field, and that nothing outside the expected output appeared or disappeared.

1. Checkpoints are data: a checkpoint whose stored config names a command (``subprocess.Popen`` with shell
   arguments) never runs it, through any entry point; the marker file it would create must not appear.
2. Photos and dataset files: EXIF orientations, 16-bit and float grey, palette, CMYK, bilevel, transparency,
   decompression bombs, truncated / empty / non-image files (both decoders: ``load_image`` for ``iggt
   predict``, ``read_rgb`` for the dataset readers); NaN / inf / negative depth and frames without valid depth
   make ``iggt data check`` fail naming the file and the fractions.
3. ``iggt predict`` outputs: never an input, nothing half-written, free space, a dry run that refuses what the
   real run refuses, non-finite predictions reported per view and never written, COLMAP names.
4. Training: ``last.ckpt`` holds the final step; the first non-finite loss stops training naming the step.
"""
from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from iggt_lightning import IGGTModel
from iggt_lightning.checkpoints import FORMAT, CheckpointError, load_model, read_file, save_model
from iggt_lightning.cli import main
from iggt_lightning.registry import UntrustedCodeError
from iggt_lightning.data.fixtures import reader_class, write_fixture
from iggt_lightning.data.frames import DatasetError, DepthWarning, read_rgb
from iggt_lightning.imageio import ImageWarning
from iggt_lightning.inference.images import InputError, load_image
from tests.test_cli_training import tiny_args

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "synthetic_tiny.yaml")


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size: compared before/after to see what appeared or vanished."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def evil_heads(marker: Path) -> dict:
    """A head spec that, if imported and called, runs a shell command creating ``marker``."""
    return {"evil": {"class_path": "subprocess.Popen",
                     "init_args": {"args": f"touch {marker}", "shell": True}}}


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return IGGTModel.from_preset("nano", drop_heads=["track"])


def evil_config(nano, marker: Path) -> dict:
    cfg = json.loads(json.dumps(nano.config))
    cfg["heads"].update(evil_heads(marker))
    return cfg


def write_ours(path: Path, nano, config: dict) -> Path:
    sd = {k: v.contiguous() for k, v in nano.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata={"format": FORMAT, "config": json.dumps(config)})
    else:
        torch.save({"format": FORMAT, "config": config, "state_dict": sd}, path)
    return path


def write_lightning(path: Path, nano, model_config: dict | None = None, hparams: dict | None = None) -> Path:
    """A Lightning-style checkpoint: ``model.*`` weights, hyper-parameters and our stored model config."""
    ckpt = {"state_dict": {f"model.{k}": v for k, v in nano.state_dict().items()}, "epoch": 0, "global_step": 0,
            "pytorch-lightning_version": "2.6.6", "hyper_parameters": hparams or {"preset": "nano"}}
    if model_config is not None:
        ckpt["iggt_model_config"] = model_config
    torch.save(ckpt, path)
    return path


def write_any(path: Path, nano, config: dict) -> Path:
    """``config`` stored the way the file's suffix says: a Lightning .ckpt, else our .safetensors / .pt."""
    if path.suffix == ".ckpt":
        return write_lightning(path, nano, model_config=config)
    return write_ours(path, nano, config)


def tiny_fit_args(root: Path) -> list[str]:
    return ["--config", CONFIG, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "1",
            "--trainer.val_check_interval", "1", "--trainer.logger", "false", "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.preset", "nano", "--model.log_images_every_n_steps", "0", "--model.warmup_steps", "1",
            "--data.init_args.num_train", "2", "--data.init_args.num_val", "2", "--data.init_args.num_test", "2",
            "--data.init_args.image_size", "[56, 56]", "--data.init_args.num_views", "2",
            "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0"]


# ---------------------------------------------------------------------------- 1. checkpoints are data
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".ckpt"])
def test_stored_config_naming_a_command_is_refused_by_load_model(tmp_path, nano, suffix):
    marker = tmp_path / "PWNED"
    path = tmp_path / f"evil{suffix}"
    write_any(path, nano, evil_config(nano, marker))
    with pytest.raises(UntrustedCodeError, match=r"subprocess\.Popen") as err:
        load_model(path)
    assert str(path) in str(err.value) and "--trust-checkpoint-code" in str(err.value)
    assert not marker.exists()


def test_trusting_the_file_still_builds_only_heads(tmp_path, nano):
    """The opt-in allows importing a class, but what is built must be a Head: Popen is refused before it is called."""
    marker = tmp_path / "PWNED"
    path = write_ours(tmp_path / "evil.safetensors", nano, evil_config(nano, marker))
    with pytest.raises(CheckpointError, match="not a subclass of iggt_lightning.head.Head"):
        load_model(path, trust_code=True)
    assert not marker.exists()


def test_registered_class_path_loads_without_trust(tmp_path, nano):
    """A stored config may name a registered head by its dotted class path: nothing new is imported."""
    cfg = json.loads(json.dumps(nano.config))
    cfg["heads"]["depth"] = {"class_path": "heads.depth.DepthHead", "init_args": cfg["heads"]["depth"]}
    path = write_ours(tmp_path / "ok.safetensors", nano, cfg)
    model = load_model(path)
    assert type(model.heads["depth"]).__name__ == "DepthHead"


def test_trusted_file_may_import_a_real_head(tmp_path, nano):
    """With the opt-in, a head class that is not registered (here a test module's) is imported and built."""
    cfg = json.loads(json.dumps(nano.config))
    cfg["heads"]["probe"] = {"class_path": "tests.test_bad_inputs.ProbeHead"}
    path = write_ours(tmp_path / "probe.safetensors", nano, cfg)
    with pytest.raises(UntrustedCodeError, match="ProbeHead"):
        load_model(path)
    assert "probe" in load_model(path, trust_code=True).heads


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".ckpt"])
@pytest.mark.parametrize("entry", ["predict", "convert"])
def test_cli_refuses_a_checkpoint_naming_a_command(tmp_path, nano, capsys, entry, suffix):
    marker = tmp_path / "PWNED"
    path = tmp_path / f"evil{suffix}"
    write_any(path, nano, evil_config(nano, marker))
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.new("RGB", (56, 42), (40 * i, 90, 160)).save(photos / f"{i}.png")
    before = tree(tmp_path)
    if entry == "predict":
        rc = main(["predict", str(photos), "-c", str(path), "-o", str(tmp_path / "out"), "--quiet"])
    else:
        rc = main(["convert", str(path), str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "subprocess.Popen" in err and str(path) in err and "--trust-checkpoint-code" in err
    assert not marker.exists()
    assert tree(tmp_path) == before


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_ckpt_hyper_parameters_naming_a_command_are_refused(tmp_path, nano, capsys, command):
    """LightningCLI re-parses a --ckpt_path file's hyper-parameters as the module's arguments."""
    marker = tmp_path / "PWNED"
    ckpt = write_lightning(tmp_path / "evil.ckpt", nano, hparams={"preset": "nano", "heads": evil_heads(marker)})
    before = tree(tmp_path)
    rc = main([command, *tiny_fit_args(tmp_path / "run"), "--ckpt_path", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "heads.evil" in err and "subprocess.Popen" in err and str(ckpt) in err
    assert not marker.exists()
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("run")} == before


def test_ckpt_hyper_parameters_with_an_unregistered_head_need_the_opt_in(tmp_path, nano, capsys):
    """A real head that is not registered: refused from the file alone, accepted with --trust-checkpoint-code or
    when the user's own config names the same class."""
    probe = {"probe": {"class_path": "tests.test_bad_inputs.ProbeHead"}}
    ckpt = write_lightning(tmp_path / "probe.ckpt", nano,
                           hparams={"preset": "nano", "drop_heads": ["track"], "heads": probe})
    args = ["test", *tiny_fit_args(tmp_path / "run"), "--model.drop_heads", "[track]", "--ckpt_path", str(ckpt)]
    assert main(args) == 2
    assert "tests.test_bad_inputs.ProbeHead" in capsys.readouterr().err
    assert main([*args, "--trust-checkpoint-code"]) == 0, capsys.readouterr().err
    assert main([*args, "--model.heads", json.dumps(probe)]) == 0, capsys.readouterr().err


def test_ckpt_hyper_parameters_with_an_unregistered_postprocessor_are_refused(tmp_path, nano, capsys):
    """Post-processors in a --ckpt_path file's hyper-parameters are data too; an older run's `tracking` head
    entry still loads (moved to postprocess)."""
    marker = tmp_path / "PWNED"
    evil = {"evil": {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}}
    ckpt = write_lightning(tmp_path / "evil.ckpt", nano, hparams={"preset": "nano", "drop_heads": ["track"],
                                                                  "postprocess": evil})
    args = ["test", *tiny_fit_args(tmp_path / "run"), "--model.drop_heads", "[track]", "--ckpt_path", str(ckpt)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "hyper_parameters.postprocess.evil" in err and "os.system" in err and not marker.exists()
    old = write_lightning(tmp_path / "old.ckpt", nano, hparams={"preset": "nano", "drop_heads": ["track"],
                                                                "heads": {"tracking": {}}})
    with pytest.warns(FutureWarning, match="post-processors, not heads"):
        assert main([*args[:-1], str(old)]) == 0, capsys.readouterr().err


def test_ckpt_foreign_model_class_is_refused(tmp_path, nano, capsys):
    ckpt = write_lightning(tmp_path / "foreign.ckpt", nano, hparams={"_class_path": "subprocess.Popen",
                                                                   "args": "true"})
    rc = main(["test", *tiny_fit_args(tmp_path / "run"), "--ckpt_path", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 2 and "subprocess.Popen" in err and str(ckpt) in err


def test_pickle_payload_in_ckpt_path_never_runs(tmp_path, capsys):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "pickle.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, ckpt)
    rc = main(["test", *tiny_fit_args(tmp_path / "run"), "--ckpt_path", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 2 and str(ckpt) in err and "refused" in err
    assert not marker.exists()


def test_init_checkpoint_config_is_never_built(tmp_path, nano, capsys):
    """model.init_checkpoint takes the weights only: an evil stored config is not even imported."""
    marker = tmp_path / "PWNED"
    path = write_ours(tmp_path / "init.safetensors", nano, evil_config(nano, marker))
    rc = main(["fit", *tiny_fit_args(tmp_path / "run"), "--model.drop_heads", "[track]",
               "--model.init_checkpoint", str(path)])
    assert rc == 0, capsys.readouterr().err
    assert not marker.exists()


# ---------------------------------------------------------------------------- 5. errors name the file
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".ckpt"])
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_damaged_checkpoint_files_name_the_file(tmp_path, nano, suffix, damage):
    path = tmp_path / f"model{suffix}"
    if suffix == ".ckpt":
        write_lightning(path, nano, model_config=nano.config)
    else:
        save_model(nano, path)
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": os.urandom(4096)}[damage])
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message.strip()
    if suffix != ".safetensors":   # random bytes are not a pickle payload: say what the file is not
        assert {"empty": "empty (0 bytes)", "truncated": "truncated",
                "garbage": "not a PyTorch checkpoint"}[damage] in message, message


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder; expected a checkpoint file"):
        load_model(tmp_path)


def test_damaged_ckpt_path_names_the_file_in_lightning(tmp_path, nano, capsys):
    ckpt = write_lightning(tmp_path / "last.ckpt", nano, model_config=nano.config)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    rc = main(["test", *tiny_fit_args(tmp_path / "run"), "--ckpt_path", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 2 and str(ckpt) in err and "truncated" in err and "Traceback" not in err


def test_damaged_last_checkpoint_names_the_file(tmp_path, capsys):
    """`--ckpt_path last` is resolved by Lightning itself; its reader is ours, so the error names the file."""
    root = tmp_path / "run"
    assert main(["fit", *tiny_fit_args(root)]) == 0
    last = root / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:2000])
    capsys.readouterr()
    rc = main(["fit", *tiny_fit_args(root), "--trainer.max_steps", "2", "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert rc == 2 and "last.ckpt" in err and "truncated" in err and "Traceback" not in err, err


@pytest.mark.parametrize("field, value, message", [
    ("backbone", {"embed_dim": 32, "depth": 4, "num_heads": 2, "patch_embed": "conv", "widht": 3}, "widht"),
    ("heads", ["depth"], "config.heads: expected null or a mapping"),
    ("frames_chunk_size", -1, "frames_chunk_size"),
    ("extra", 1, "config.extra: unknown field"),
])
def test_bad_stored_config_fields_are_named(tmp_path, nano, field, value, message):
    cfg = json.loads(json.dumps(nano.config))
    cfg[field] = value
    path = write_ours(tmp_path / "bad.safetensors", nano, cfg)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_malformed_config_json_is_named(tmp_path, nano, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in nano.state_dict().items()}, str(path),
              metadata={"format": FORMAT, "config": "{not json"})
    assert main(["convert", str(path), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not valid JSON" in err
    assert not (tmp_path / "out.pt").exists()


def test_convert_never_overwrites_its_input(tmp_path, nano, capsys):
    path = tmp_path / "model.safetensors"
    save_model(nano, path)
    before = path.read_bytes()
    assert main(["convert", str(path), str(path)]) == 2
    assert "is the input checkpoint itself" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_wrong_shape_official_dict_is_refused_before_building(tmp_path, monkeypatch):
    """An official-looking file whose shapes do not fit the preset fails on the meta device, naming the key;
    the real 1.3 B-parameter model is never built."""
    from iggt_lightning import checkpoints

    with torch.device("meta"):
        skeleton = IGGTModel.from_preset("vggt-large")
    official = {}
    for key, value in skeleton.state_dict().items():
        for src, dst in checkpoints.OFFICIAL_PREFIXES:
            if key.startswith(dst):
                official[src + key[len(dst):]] = torch.zeros(1)  # tiny tensors: every shape is wrong
                break
    path = tmp_path / "model.pt"
    torch.save(official, path)
    built = []
    real_from_preset = IGGTModel.from_preset.__func__

    def spy(cls, name, **kw):
        built.append(torch.get_default_device().type)
        return real_from_preset(cls, name, **kw)

    monkeypatch.setattr(IGGTModel, "from_preset", classmethod(spy))
    with pytest.raises(CheckpointError, match="shape mismatch") as err:
        load_model(path)
    assert str(path) in str(err.value)
    assert built == ["meta"]


def test_read_file_keeps_weights_when_config_is_not_used(tmp_path, nano):
    marker = tmp_path / "PWNED"
    path = write_ours(tmp_path / "evil.pt", nano, evil_config(nano, marker))
    sd, meta = read_file(path, check_config=False)
    assert set(sd) == set(nano.state_dict()) and "evil" in meta["config"]["heads"]
    assert not marker.exists()


# a head only the trust test imports (by its dotted path)
from iggt_lightning.head import Head  # noqa: E402


class ProbeHead(Head):
    outputs = ("probe",)
    trainable = False

    def __init__(self, dim_in: int = 0) -> None:
        super().__init__()

    def forward(self, inp):
        return {}


# ====================================================================================================
# 2. photos and dataset files
# ====================================================================================================
SIZE = (42, 56)            # fixture resolution (H, W): multiples of 14, not square


def both(path: Path) -> list[np.ndarray]:
    """The photo decoded by iggt predict's reader and by the dataset readers' (they must agree)."""
    a, b = load_image(path), read_rgb(Path(path))
    assert a.dtype == b.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    np.testing.assert_array_equal(a, b)
    return [a, b]


def refused(path: Path, *match: str) -> None:
    """Both decoders refuse ``path`` in one line naming the file (and ``match``)."""
    for fn, err in ((load_image, InputError), (read_rgb, DatasetError)):
        with pytest.raises(err) as info:
            fn(Path(path))
        msg = str(info.value)
        assert str(path) in msg and "\n" not in msg, msg
        for m in match:
            assert m in msg, msg


def photo(h: int = 20, w: int = 32, seed: int = 0) -> np.ndarray:
    """A photo whose every pixel differs from its mirrored / rotated counterparts."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# -- EXIF orientation ----------------------------------------------------------------------------------------
def test_exif_orientation_6_jpeg_comes_out_rotated_as_a_viewer_shows_it(tmp_path):
    stored = photo(24, 40)
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif_bytes(6))
    with Image.open(path) as im:                    # the stored pixels, as JPEG decodes them (no rotation)
        raw = np.asarray(im.convert("RGB"))
    for got in both(path):
        assert got.shape == (40, 24, 3)             # W and H swapped
        np.testing.assert_array_equal(got, np.rot90(raw, -1))   # 6 = "rotate 90 degrees clockwise to view"


# the eight EXIF orientations, written out independently of Pillow: what a viewer shows for stored pixels a
VIEWED = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
          5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
          7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_exif_transpose(tmp_path, orientation):
    stored = photo(12, 18, seed=orientation)
    path = tmp_path / f"o{orientation}.png"          # lossless: exact comparison
    Image.fromarray(stored).save(path, exif=exif_bytes(orientation))
    with Image.open(path) as im:
        reference = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    for got in both(path):
        np.testing.assert_array_equal(got, VIEWED[orientation](stored))
        np.testing.assert_array_equal(got, reference)


# -- pixel modes ---------------------------------------------------------------------------------------------
def grey_gradient(h: int = 16, w: int = 300) -> np.ndarray:
    return np.round(np.linspace(0, 65535, h * w)).reshape(h, w).astype(np.int64)


@pytest.mark.parametrize("mode,suffix", [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif")])
def test_16_bit_grey_is_scaled_to_8_bit_not_saturated(tmp_path, mode, suffix):
    values = grey_gradient()
    if mode == "I":
        im = Image.fromarray(values.astype(np.int32))
    else:
        im = Image.frombytes(mode, (values.shape[1], values.shape[0]),
                             values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    path = tmp_path / f"grey16{suffix}"
    im.save(path)
    with Image.open(path) as check:
        assert check.mode == mode                  # the file really is what the test means to check
    for got in both(path):
        assert got.shape == values.shape + (3,)
        assert (got == got[..., :1]).all()         # grey: three equal channels
        assert np.abs(got[..., 0].astype(np.int64) - values / 257).max() <= 1
        assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 200


def test_32_bit_integer_beyond_16_bits_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "wide.tif"
    Image.fromarray(np.full((4, 4), 200000, np.int32)).save(path)
    refused(path, "200000", "0..65535")


def test_float_grey_in_0_1_is_scaled_and_other_ranges_refused(tmp_path):
    values = np.linspace(0, 1, 16 * 64, dtype=np.float32).reshape(16, 64)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    for got in both(path):
        assert (got == got[..., :1]).all()
        assert np.abs(got[..., 0].astype(np.float64) - values * 255).max() <= 0.5 + 1e-6
    hdr = tmp_path / "hdr.tif"
    Image.fromarray(values * 3).save(hdr)
    refused(hdr, "[0, 1]", "3")
    nan = values.copy()
    nan[0, 0] = np.nan
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    refused(tmp_path / "nan.tif", "NaN")


def test_palette_with_and_without_transparency(tmp_path):
    palette = np.array([[255, 0, 0], [0, 128, 255], [10, 200, 30], [90, 90, 90]], np.uint8)
    index = np.random.default_rng(1).integers(0, 4, (10, 14)).astype(np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(palette.flatten().tolist())
    im.save(tmp_path / "p.png")
    for got in both(tmp_path / "p.png"):
        np.testing.assert_array_equal(got, palette[index])
    im.save(tmp_path / "pt.png", transparency=1)   # palette entry 1 transparent: white, as RGBA on white
    expected = palette[index].copy()
    expected[index == 1] = 255
    for got in both(tmp_path / "pt.png"):
        np.testing.assert_array_equal(got, expected)


def test_alpha_is_composited_on_white(tmp_path):
    rng = np.random.default_rng(2)
    grey, alpha = rng.integers(0, 256, (2, 8, 9)).astype(np.uint8)
    Image.fromarray(np.stack([grey, alpha], -1), "LA").save(tmp_path / "la.png")
    a = alpha / 255.0
    expected = grey * a + 255 * (1 - a)
    for got in both(tmp_path / "la.png"):
        assert np.abs(got.astype(np.float64) - expected[..., None]).max() <= 1.01
    rgb = photo(8, 9)
    Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1), "RGBA").save(tmp_path / "rgba.png")
    expected = rgb * a[..., None] + 255 * (1 - a[..., None])
    for got in both(tmp_path / "rgba.png"):
        assert np.abs(got.astype(np.float64) - expected).max() <= 1.01


def test_cmyk_jpeg_including_adobe_inverted(tmp_path):
    # flat 8x8 blocks (JPEG keeps flat blocks nearly exact); Pillow writes CMYK JPEGs with the Adobe marker,
    # i.e. the inverted encoding Photoshop uses
    cmyk = np.zeros((16, 16, 4), np.uint8)
    colours = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 200, 100, 20), (30, 60, 90, 120)]
    for k, c in enumerate(colours):
        cmyk[8 * (k // 2):8 * (k // 2) + 8, 8 * (k % 2):8 * (k % 2) + 8] = c
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, "CMYK").save(path, quality=100)
    with Image.open(path) as im:
        assert im.mode == "CMYK" and "adobe" in im.info
    c = cmyk.astype(np.float64)
    expected = (255 - c[..., :3]) * (255 - c[..., 3:]) / 255       # CMYK -> RGB (recent Pillow, most viewers)
    naive = 255 - np.minimum(255, c[..., :3] + c[..., 3:])        # older Pillow's formula
    for got in both(path):
        err = min(np.abs(got - expected).max(), np.abs(got - naive).max())
        assert err <= 4, err                                       # not inverted (that would be off by ~255)


def test_bilevel_grey_and_ycbcr(tmp_path):
    bits = np.random.default_rng(3).integers(0, 2, (9, 13)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    with Image.open(tmp_path / "bits.png") as im:
        assert im.mode == "1"
    for got in both(tmp_path / "bits.png"):
        np.testing.assert_array_equal(got, np.where(bits, 255, 0)[..., None].repeat(3, -1))
    grey = np.random.default_rng(4).integers(0, 256, (9, 13)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    for got in both(tmp_path / "grey.png"):
        np.testing.assert_array_equal(got, grey[..., None].repeat(3, -1))
    ycc = np.zeros((8, 8, 3), np.uint8)
    ycc[..., 0], ycc[..., 1], ycc[..., 2] = 120, 90, 170
    Image.fromarray(ycc, "YCbCr").save(tmp_path / "ycc.tif")
    with Image.open(tmp_path / "ycc.tif") as im:
        assert im.mode == "YCbCr"
    y, cb, cr = 120.0, 90 - 128.0, 170 - 128.0                     # JFIF YCbCr -> RGB
    expected = np.array([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb])
    for got in both(tmp_path / "ycc.tif"):
        assert np.abs(got.astype(np.float64) - expected).max() <= 2


# -- refused files -------------------------------------------------------------------------------------------
def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height (1-bit grey) without the pixel data: what a decompression bomb's
    header looks like to Pillow, written in microseconds."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_200_megapixel_image_is_refused_naming_file_pixels_and_limit(tmp_path, monkeypatch):
    monkeypatch.delenv("IGGT_MAX_IMAGE_PIXELS", raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89478485)          # Pillow's default
    path = png_header(tmp_path / "bomb.png", 20000, 10000)
    refused(path, "200,000,000 pixels", f"{2 * 89478485:,}", "IGGT_MAX_IMAGE_PIXELS")


def test_pixel_limit_warns_above_and_refuses_above_twice(tmp_path, monkeypatch):
    monkeypatch.delenv("IGGT_MAX_IMAGE_PIXELS", raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    big = tmp_path / "big.png"
    Image.fromarray(photo(40, 40)).save(big)                          # 1,600 pixels: warned, read
    with pytest.warns(ImageWarning, match="big.png.*1,600 pixels") as record:
        assert load_image(big).shape == (40, 40, 3)
    assert not [w for w in record if issubclass(w.category, Image.DecompressionBombWarning)]   # not Pillow's nameless one
    huge = tmp_path / "huge.png"
    Image.fromarray(photo(50, 50)).save(huge)                         # 2,500 > 2 x 1,000: refused
    refused(huge, "2,500 pixels", "2,000")
    monkeypatch.setenv("IGGT_MAX_IMAGE_PIXELS", "100000")             # the documented override
    assert load_image(huge).shape == (50, 50, 3)


def test_truncated_empty_and_non_image_files_are_refused_in_one_line(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    refused(empty, "empty")
    text = tmp_path / "notes.jpg"
    text.write_text("these are not pixels\n")
    refused(text, "cannot read image")
    for suffix in (".jpg", ".png"):
        whole = tmp_path / f"whole{suffix}"
        Image.fromarray(photo(64, 64)).save(whole)
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        refused(cut, "cannot read image")
    refused(tmp_path / "absent.png", "missing")


# -- through the readers -------------------------------------------------------------------------------------
def scene_folder(tmp_path: Path, views: int = 3) -> Path:
    root = tmp_path / "ds"
    write_fixture("scene_folder", root, num_scenes=1, num_views=views, image_size=SIZE, seed=5)
    return root


def read_frames(root: Path) -> list:
    ds = reader_class("scene_folder")(root, split="all", num_views=1, min_views=1)
    record = ds.scenes[0]
    return [ds.read_frame(record, key) for key in record.frames]


def test_dataset_reader_applies_exif_and_scales_16_bit_images(tmp_path):
    root = scene_folder(tmp_path)
    images = root / "scene0000" / "images"
    original = [np.asarray(Image.open(images / f"view_{v:02d}.png").convert("RGB")) for v in range(3)]
    # view 0 stored as a phone stores a portrait: the pixels turned, EXIF orientation 6 to turn them back
    Image.fromarray(np.ascontiguousarray(np.rot90(original[0], 1))).save(images / "view_00.png",
                                                                         exif=exif_bytes(6))
    # view 1 as 16-bit grey
    grey = np.round(original[1].mean(-1)).astype(np.uint16)
    Image.fromarray(grey * 257).save(images / "view_01.png")
    with Image.open(images / "view_01.png") as im:
        assert im.mode == "I;16"
    frames = read_frames(root)
    np.testing.assert_array_equal(frames[0].image, original[0])
    np.testing.assert_array_equal(frames[1].image, np.repeat(grey[..., None], 3, -1).astype(np.uint8))
    np.testing.assert_array_equal(frames[2].image, original[2])
    assert main(["data", "check", str(root)]) == 0                   # sizes agree with cameras.json again


def test_dataset_reader_refuses_a_bad_image_naming_it(tmp_path, capsys):
    root = scene_folder(tmp_path)
    bad = root / "scene0000" / "images" / "view_01.png"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DatasetError, match="view_01.png"):
        read_frames(root)
    assert main(["data", "check", str(root)]) == 1
    assert str(bad) in capsys.readouterr().out


def test_predict_reads_photos_exif_rotated(tmp_path, nano_model):
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.inference.predict import PredictOptions, run_predict

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(photo(30, 50)).save(photos / "a.jpg", exif=exif_bytes(6))
    Image.fromarray(photo(30, 50)).save(photos / "b.jpg")
    ckpt = tmp_path / "model.safetensors"
    save_model(nano_model, ckpt)                                      # a dry run checks it, builds no model
    plan = run_predict(PredictOptions([str(photos)], str(ckpt), str(tmp_path / "out"), dry_run=True, progress=False))
    assert plan["photo_sizes"] == [(30, 50), (50, 30)]                # (W, H): a.jpg turned upright


# -- depth ---------------------------------------------------------------------------------------------------
def infinigen(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "inf"
    write_fixture("infinigen", root, num_scenes=1, num_views=3, image_size=SIZE, seed=6)
    return root, sorted(root.glob("*/*/frames/Depth/camera_0/*.npy"))


def data_check(root: Path, capsys, *args: str) -> tuple[int, str]:
    rc = main(["data", "check", str(root), *args])
    return rc, capsys.readouterr().out


def test_nan_and_negative_depth_fail_data_check_naming_file_and_fractions(tmp_path, capsys):
    root, files = infinigen(tmp_path)
    assert data_check(root, capsys)[0] == 0
    depth = np.load(files[1])
    H, W = depth.shape
    depth[:3] = np.nan                       # 3 rows NaN, 2 rows negative
    depth[3:5] = -1.0
    np.save(files[1], depth)
    rc, out = data_check(root, capsys, "--json", str(tmp_path / "report.json"))
    assert rc == 1
    line = next(ln for ln in out.splitlines() if str(files[1]) in ln)
    assert f"{100 * 3 / H:.3g} % NaN/inf" in line and f"{100 * 2 / H:.3g} % negative" in line, line
    assert f"{100 * (H - 5) / H:.3g} % valid" in line, line
    assert not any(str(f) in out for f in (files[0], files[2]))      # only the bad file is named
    frames = json.loads((tmp_path / "report.json").read_text())["scenes"][0]["depth_frames"]
    bad = next(f for f in frames if f["file"] == str(files[1]))
    assert bad["nonfinite"] == pytest.approx(3 / H) and bad["negative"] == pytest.approx(2 / H)
    assert bad["valid"] == pytest.approx((H - 5) / H)
    # the threshold is the option's: 5 of 42 rows is under 20 %
    assert data_check(root, capsys, "--max-invalid-depth", "0.2")[0] == 0
    assert data_check(root, capsys, "--max-invalid-depth", "0.1")[0] == 1


def test_infinite_depth_counts_as_non_finite(tmp_path, capsys):
    root, files = infinigen(tmp_path)
    depth = np.load(files[0])
    depth[:, : depth.shape[1] // 2] = np.inf
    np.save(files[0], depth)
    rc, out = data_check(root, capsys)
    assert rc == 1 and str(files[0]) in out and "50 % NaN/inf" in out, out


def test_frame_without_valid_depth_is_a_problem_and_a_sparse_one_a_warning(tmp_path, capsys):
    root = scene_folder(tmp_path, views=4)
    depth_dir = root / "scene0000" / "depth"
    zero, sparse = depth_dir / "view_01.png", depth_dir / "view_02.png"
    kept = zero.read_bytes()
    Image.fromarray(np.zeros(SIZE, np.uint16)).save(zero)                 # 0 = no measurement, everywhere
    with Image.open(sparse) as im:
        mm = np.asarray(im).copy()
    mm[:, 2:] = 0                                                       # 2 of 56 columns measured
    Image.fromarray(mm).save(sparse)
    rc, out = data_check(root, capsys)
    assert rc == 1
    warnings_part, problems_part = out.split("warning(s):")[1].split("problem(s):")
    problem = next(ln for ln in problems_part.splitlines() if str(zero) in ln)
    assert "no valid depth" in problem and "0 % valid" in problem, problem
    assert str(sparse) not in problems_part                              # sparse is not wrong, only worth a look
    warning = next(ln for ln in warnings_part.splitlines() if str(sparse) in ln)
    assert f"{100 * 2 / SIZE[1]:.3g} % of the pixels have valid depth" in warning, warning
    zero.write_bytes(kept)                                              # repaired: the sparse frame only warns
    rc, out = data_check(root, capsys)
    assert rc == 0 and "1 warning(s)" in out and str(sparse) in out and "no problems found" in out, out


def test_readers_warn_once_per_file_about_nan_depth(tmp_path):
    root = scene_folder(tmp_path)
    depth_dir = root / "scene0000" / "depth"
    for png in sorted(depth_dir.glob("*.png")):                         # float depth in metres instead of mm PNG
        depth = np.asarray(Image.open(png)).astype(np.float32) / 1000
        if png.stem == "view_02":
            depth[0, :7] = np.nan
        np.save(png.with_suffix(".npy"), depth)
        png.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = read_frames(root) + read_frames(root)                 # every file read twice
    named = [str(w.message) for w in caught if issubclass(w.category, DepthWarning)]
    target = str(depth_dir / "view_02.npy")
    assert len(named) == 1 and target in named[0], named
    assert f"{100 * 7 / (SIZE[0] * SIZE[1]):.3g} % NaN/inf" in named[0], named[0]
    assert (frames[2].depth[0, :7] == 0).all() and np.isfinite(frames[2].depth).all()   # still invalid = 0


def test_camera_for_the_unrotated_pixels_is_refused_with_an_exif_hint(tmp_path, capsys):
    root = scene_folder(tmp_path)
    image = root / "scene0000" / "images" / "view_02.png"
    with Image.open(image) as im:
        stored = np.asarray(im.convert("RGB"))
    Image.fromarray(stored).save(image, exif=exif_bytes(8))           # cameras.json describes the stored pixels
    rc, out = data_check(root, capsys)
    assert rc == 1
    line = next(ln for ln in out.splitlines() if "view_02.png" in ln)
    assert "cameras.json" in line and f"says {SIZE[1]}x{SIZE[0]}" in line and "EXIF orientation" in line, line


# ====================================================================================================
# 3. predict outputs
# ====================================================================================================
W, H = 56, 42


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.model import IGGTModel

    root = tmp_path_factory.mktemp("bad_predict_model")
    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), root / "nano.safetensors")
    return root / "nano.safetensors"


def make_photos(folder: Path, names=("p0.png", "p1.png", "p2.png")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:H, 0:W]
    for i, n in enumerate(names):
        im = np.stack([(xx * 4 + 40 * i) % 256, (yy * 6) % 256, ((xx + yy) * 3 + 20 * i) % 256], -1)
        Image.fromarray(im.astype(np.uint8)).save(folder / n)
    return folder


def snapshot(*roots: Path) -> dict:
    """Every file and folder under ``roots`` (hidden ones too) -> (size, mtime) / 'dir'."""
    snap = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                snap[os.path.join(dirpath, d)] = "dir"
            for f in filenames:
                p = os.path.join(dirpath, f)
                st = os.lstat(p)
                snap[p] = (st.st_size, st.st_mtime_ns)
    return snap


def outside(snap: dict, out: Path) -> dict:
    o = str(out)
    return {k: v for k, v in snap.items() if k != o and not k.startswith(o + os.sep)}


def predict(inputs, ckpt, out, *extra):
    inputs = [str(i) for i in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    return main(["predict", *inputs, "-c", str(ckpt), "-o", str(out), "--size", str(W), str(H), "--quiet", *extra])


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def strict_json(path: Path):
    def refuse(token):
        raise ValueError(f"{path}: non-JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


# ------------------------------------------------------------------------------------------ 1. outputs vs inputs
@pytest.mark.parametrize("case", ["is_input_folder", "contains_input_folder", "inside_input_folder", "symlink_to_input",
                                  "is_input_photo", "contains_checkpoint", "dot", "dotdot"])
def test_output_folder_never_touches_an_input(case, ckpt, tmp_path, capsys, monkeypatch):
    photos = make_photos(tmp_path / "photos")
    inputs, model, extra = [photos], ckpt, ["--overwrite"]
    if case == "is_input_folder":
        out, want = photos, ["is the input folder", str(photos)]
    elif case == "contains_input_folder":
        out, want = tmp_path, ["contains the input folder", str(photos)]
    elif case == "inside_input_folder":
        out, want = photos / "pred", ["lies inside the input folder", str(photos)]
    elif case == "symlink_to_input":
        out = tmp_path / "link"
        out.symlink_to(photos, target_is_directory=True)
        want = ["is the input folder", str(photos)]
    elif case == "is_input_photo":
        inputs = [photos / "p0.png", photos / "p1.png"]
        out, want = photos / "p1.png", ["is the input photo", str(photos / "p1.png")]
    elif case == "contains_checkpoint":
        (tmp_path / "models").mkdir()
        model = tmp_path / "models" / "nano.safetensors"
        model.write_bytes(ckpt.read_bytes())
        out, want = tmp_path / "models", ["contains the checkpoint", str(model)]
    else:
        work = photos if case == "dot" else tmp_path / "a" / "b"
        work.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(work)
        out = "." if case == "dot" else ".."
        inputs = [photos] if case == "dot" else [photos]
        want = ["current directory or one of its parents", repr(out)]
    before = snapshot(tmp_path, ckpt.parent)
    assert predict(inputs, model, out, *extra) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in want), err
    assert err.count("\n") == 1                              # one line, no traceback
    assert snapshot(tmp_path, ckpt.parent) == before         # nothing read-written, nothing deleted


def test_overwrite_refuses_a_folder_that_is_not_a_prediction(ckpt, tmp_path, capsys):
    photos = make_photos(tmp_path / "photos")
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("years of work")
    (other / "manifest.json").write_text('{"name": "not ours"}')    # a manifest, but not one of ours
    before = snapshot(tmp_path, ckpt.parent)
    assert predict(photos, ckpt, other, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "not an iggt predict output" in err and str(other) in err
    assert snapshot(tmp_path, ckpt.parent) == before
    # and without --overwrite an existing folder is refused as before
    assert predict(photos, ckpt, other) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert snapshot(tmp_path, ckpt.parent) == before


# ------------------------------------------------------------------------------------------ 2. leftovers of dead runs
def test_leftovers_of_dead_runs_are_removed_and_live_ones_kept(ckpt, tmp_path, capsys):
    from iggt_lightning.inference.predict import MANIFEST_FORMAT

    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "out"
    out.mkdir()                                              # a previous prediction, to be replaced
    (out / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT}))
    dead, live_other = dead_pid(), os.getppid()
    junk = {
        f".out.partial-{dead}-x1y2": False,                 # killed mid-export
        f".out.old-{dead}": False,                          # killed while deleting the replaced output
        f".out.partial-{os.getpid()}-live": True,           # this process: alive
        f".out.partial-{dead}-h00000000-xyz": True,         # made on another host (shared disk): its pid says nothing
        f".out.old-{live_other}": True,                     # a live process
        f".other.partial-{dead}-zz": True,                  # another output's: not ours to judge here
    }
    for name in junk:
        (tmp_path / name).mkdir()
        (tmp_path / name / "points.ply").write_bytes(b"x" * 1000)
    # the dry run only reports them
    before = snapshot(tmp_path, ckpt.parent)
    assert predict(photos, ckpt, out, "--overwrite", "--dry-run") == 0
    text = capsys.readouterr().out
    assert f".out.partial-{dead}-x1y2" in text and f".out.old-{dead}" in text and "-live" not in text
    assert "h00000000" not in text
    assert snapshot(tmp_path, ckpt.parent) == before
    assert predict(photos, ckpt, out, "--overwrite") == 0
    for name, kept in junk.items():
        assert (tmp_path / name).is_dir() == kept, name
    after = snapshot(tmp_path, ckpt.parent)
    removed = {k for k in before if k not in after}
    assert removed and all(f"-{dead}" in k for k in outside({k: 0 for k in removed}, out))
    assert outside(after, out) == {k: v for k, v in outside(before, out).items() if k not in removed}
    assert strict_json(out / "manifest.json")["views"] == 3
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden == sorted(n for n, kept in junk.items() if kept)


def test_an_output_moved_aside_by_a_dead_run_is_put_back_not_deleted(ckpt, tmp_path, capsys):
    from iggt_lightning.inference.predict import MANIFEST_FORMAT

    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "out"
    old = tmp_path / f".out.old-{dead_pid()}"                # died between "out -> old" and "new -> out"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "views": 99}))
    before = snapshot(tmp_path, ckpt.parent)
    assert predict(photos, ckpt, out) == 2                   # it is still the user's output: not replaced silently
    err = capsys.readouterr().err
    assert "exists" in err and str(old) in err and "--overwrite" in err
    assert snapshot(tmp_path, ckpt.parent) == before
    assert predict(photos, ckpt, out, "--overwrite") == 0
    assert not old.exists() and strict_json(out / "manifest.json")["views"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "photos"]


# ------------------------------------------------------------------------------------------ 3. free space, full disk
def test_free_space_is_checked_before_inference(ckpt, tmp_path, capsys, monkeypatch):
    import shutil as shutil_mod
    from collections import namedtuple

    from iggt_lightning import checkpoints

    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "deep" / "out"
    usage = namedtuple("usage", "total used free")
    probed = []

    def tiny_disk(path):
        probed.append(str(path))
        return usage(10 ** 9, 10 ** 9 - 50_000, 50_000)

    def no_model(*a, **k):
        raise AssertionError("the model was loaded although the output cannot fit")

    monkeypatch.setattr(shutil_mod, "disk_usage", tiny_disk)
    monkeypatch.setattr(checkpoints, "load_model", no_model)
    before = snapshot(tmp_path, ckpt.parent)
    for extra in ([], ["--dry-run"]):
        assert predict(photos, ckpt, out, *extra) == 2
        err = capsys.readouterr().err
        assert "not enough free space" in err and str(out) in err and "50,000 bytes" in err, err
        need = int(err.split("(")[1].split(" bytes")[0].replace(",", ""))
        assert need > 3 * W * H * 23                         # at least the PLY's points
        assert snapshot(tmp_path, ckpt.parent) == before
    assert probed and all(p == str(tmp_path) for p in probed)   # the nearest existing folder of the output


@pytest.mark.parametrize("writer", ["NpzSpool.save", "write_png16"])
def test_a_full_disk_during_export_is_one_line_naming_the_output(writer, ckpt, tmp_path, capsys, monkeypatch):
    from iggt_lightning.inference import export

    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "new" / "out"

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    owner, _, name = writer.rpartition(".")
    monkeypatch.setattr(getattr(export, owner) if owner else export, name, full)
    before = snapshot(tmp_path, ckpt.parent)
    assert predict(photos, ckpt, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on device" in err.lower() and str(out) in err, err
    assert "partial" not in err                             # the temporary folder is not what the user asked for
    assert "depth/" in err                                  # the file being written
    assert snapshot(tmp_path, ckpt.parent) == before         # no partial folder, not even the new/ parent


# ------------------------------------------------------------------------------------------ 4. dry run == real run
@pytest.mark.parametrize("case", ["size_0_0", "size_below_patch", "conf_percentile", "conf_nan", "output_inside_input",
                                  "bad_device", "bad_precision", "unreadable_checkpoint", "video_frames"])
def test_dry_run_refuses_what_the_real_run_refuses(case, ckpt, tmp_path, capsys):
    photos = make_photos(tmp_path / "photos")
    out, model = tmp_path / "out", ckpt
    extra = {"size_0_0": ["--size", "0", "0"], "size_below_patch": ["--size", "13", "42"],
             "conf_percentile": ["--conf-threshold", "100"],
             "conf_nan": ["--conf-threshold", "nan", "--conf-mode", "absolute"],
             "bad_device": ["--device", "gpu0"], "bad_precision": ["--precision", "8"],
             "video_frames": ["--video-frames", "0"]}.get(case, [])
    want = {"size_0_0": "--size 0 0", "size_below_patch": "patch size, 14 px", "conf_percentile": "--conf-threshold",
            "conf_nan": "--conf-threshold", "bad_device": "--device 'gpu0'", "bad_precision": "--precision",
            "video_frames": "--video-frames", "output_inside_input": str(photos)}
    if case == "output_inside_input":
        out = photos / "out"
    if case == "unreadable_checkpoint":
        model = tmp_path / "broken.safetensors"
        model.write_bytes(ckpt.read_bytes()[:200])          # truncated
        want[case] = str(model)
    before = snapshot(tmp_path, ckpt.parent)
    messages = []
    for dry in (True, False):
        assert predict(photos, model, out, *extra, *(["--dry-run"] if dry else [])) == 2
        err = capsys.readouterr().err
        assert want[case] in err and err.count("\n") == 1, err
        messages.append(err)
        assert snapshot(tmp_path, ckpt.parent) == before
    assert messages[0] == messages[1]
    # and a valid dry run still passes (the refusals are about the option, not the dry run)
    if case not in ("output_inside_input", "unreadable_checkpoint"):
        assert predict(photos, model, out, "--dry-run") == 0
        capsys.readouterr()
        assert snapshot(tmp_path, ckpt.parent) == before


# ------------------------------------------------------------------------------------------ 5. non-finite predictions
def _broken_model(monkeypatch, zero_fov=(), nan_depth=()):
    from iggt_lightning.module import IGGTLitModule

    load = IGGTLitModule.from_checkpoint_file

    def load_broken(*a, **k):
        module = load(*a, **k)
        model = module.model
        forward = model.forward

        def broken(*fa, **fk):
            out = forward(*fa, **fk)
            pe = out["pose_enc"][-1].clone()
            for v in zero_fov:
                pe[:, v, 7:9] = 0.0                          # a degenerate field of view: focal = inf
            out["pose_enc"] = [*out["pose_enc"][:-1], pe]
            d = out["depth"].clone()
            for v in nan_depth:
                d[:, v, :10, :10] = float("nan")
            out["depth"] = d
            return out

        model.forward = broken
        return module

    monkeypatch.setattr(IGGTLitModule, "from_checkpoint_file", load_broken)


def test_non_finite_views_are_reported_and_not_written(ckpt, tmp_path, capsys, monkeypatch):
    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "out"
    _broken_model(monkeypatch, zero_fov=[1], nan_depth=[2])
    before = snapshot(tmp_path, ckpt.parent)
    assert predict(photos, ckpt, out) == 0
    err = capsys.readouterr().err
    assert "view p1.png" in err and "intrinsics" in err and "view p2.png" in err and "depth" in err
    manifest = strict_json(out / "manifest.json")
    assert "intrinsics" in manifest["invalid_views"]["p1.png"] and "depth" in manifest["invalid_views"]["p2.png"]
    assert "p0.png" not in manifest["invalid_views"]
    assert manifest["cameras_omitted"]["views"] == ["p1.png"]
    cams = strict_json(out / "cameras.json")                 # strict JSON: no NaN / Infinity tokens
    assert [v["file_name"] for v in cams["views"]] == ["p0.png", "p2.png"]
    assert all(np.isfinite(v["intrinsic"]).all() and v["intrinsic"][0][0] > 0 for v in cams["views"])
    # images.txt: two lines per image (the pose, then its 2D points)
    lines = [ln.split() for ln in (out / "sparse" / "0" / "images.txt").read_text().splitlines() if not ln.startswith("#")][::2]
    assert [ln[9] for ln in lines] == ["p0.png", "p2.png"]
    cam_lines = [ln for ln in (out / "sparse" / "0" / "cameras.txt").read_text().splitlines() if ln and ln[0] != "#"]
    assert len(cam_lines) == 2 and "inf" not in " ".join(cam_lines).lower() and "nan" not in " ".join(cam_lines).lower()
    pts = (out / "sparse" / "0" / "points3D.txt").read_text().lower()
    assert "nan" not in pts and "inf" not in pts
    assert 0 < manifest["points"] <= 2 * W * H               # view 1's points (a degenerate camera) are left out
    depth = np.load(out / "depth" / "depth.npz")
    assert np.isfinite(depth["depth_p2"]).all() and not depth["valid_p2"][:5, :5].any()
    assert (np.asarray(Image.open(out / "depth" / "p2.png"))[:5, :5] == 0).all()
    assert outside(snapshot(tmp_path, ckpt.parent), out) == outside(before, out)
    # the folder reads back as a scene folder with the two valid views
    from iggt_lightning.data.scene_folder import SceneFolderScenes

    records = SceneFolderScenes(out).scan()
    assert records[0].frames == ["p0.png", "p2.png"]


def test_no_valid_view_fails_and_writes_nothing(ckpt, tmp_path, capsys, monkeypatch):
    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "out"
    _broken_model(monkeypatch, zero_fov=[0, 1, 2])
    before = snapshot(tmp_path, ckpt.parent)
    assert predict(photos, ckpt, out) == 2
    err = capsys.readouterr().err
    assert "no view has a usable prediction" in err and "p0.png" in err and str(out) in err
    assert snapshot(tmp_path, ckpt.parent) == before


# ------------------------------------------------------------------------------------------ 6. COLMAP names
@pytest.mark.parametrize("save_images", [True, False])
def test_colmap_names_hold_spaces_and_match_the_saved_images(save_images, ckpt, tmp_path, capsys):
    photos = make_photos(tmp_path / "photos", names=("my photo 1.jpg", "my_photo_1.png", "tab\there.png"))
    out = tmp_path / "out"
    before = snapshot(tmp_path, ckpt.parent)
    assert predict(photos, ckpt, out, *([] if save_images else ["--no-images"])) == 0
    capsys.readouterr()
    manifest = strict_json(out / "manifest.json")
    names = manifest["colmap_names"]
    lines = [ln for ln in (out / "sparse" / "0" / "images.txt").read_text().splitlines() if not ln.startswith("#")][::2]
    colmap = [ln.split()[9] for ln in lines]
    assert all(len(ln.split()) == 10 for ln in lines)        # COLMAP's reader splits on spaces
    assert len(set(colmap)) == 3 and sorted(colmap) == sorted(names.values())
    assert set(names) == {"my photo 1.jpg", "my_photo_1.png", "tab\there.png"}
    assert " " not in "".join(colmap) and "\t" not in "".join(colmap)
    if save_images:
        assert names["my photo 1.jpg"] == "my_photo_1.png" and names["my_photo_1.png"] == "my_photo_1_1.png"
        assert all((out / "images" / n).is_file() for n in colmap)
        assert sorted(p.name for p in (out / "images").iterdir()) == sorted(colmap)
        cams = strict_json(out / "cameras.json")
        assert all((out / v["image_path"]).is_file() for v in cams["views"])
    else:
        assert names["my photo 1.jpg"] == "my_photo_1.jpg" and not (out / "images").exists()
    assert outside(snapshot(tmp_path, ckpt.parent), out) == outside(before, out)


# ====================================================================================================
# 4. training
# ====================================================================================================
def _callbacks(tmp_path, every: int, record: bool = True) -> list[str]:
    """A user's plain ModelCheckpoint (as in configs/synthetic_tiny.yaml) and a per-step loss recorder."""
    path = tmp_path / "callbacks.yaml"
    text = ("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
            f"      init_args: {{save_last: true, save_top_k: 0, every_n_train_steps: {every}}}\n")
    if record:
        text += (f"    - class_path: tests.cli_helpers.RecordLosses\n"
                 f"      init_args: {{path: {tmp_path / 'losses.jsonl'}}}\n")
    path.write_text(text)
    return ["--config", str(path)]


def test_last_checkpoint_holds_the_final_step_when_max_steps_is_not_a_multiple_of_the_interval(tmp_path):
    from iggt_lightning.lightning_cli import IGGTCLI

    # every 2 steps, 5 steps: Lightning alone would leave last.ckpt at step 4
    cli = IGGTCLI(args=["fit", *tiny_args(tmp_path, steps=5), "--model.preset", "nano", *_callbacks(tmp_path, 2)])
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == cli.trainer.global_step == 5
    trained = cli.model.state_dict()
    assert all(torch.equal(last["state_dict"][k], v) for k, v in trained.items())  # the final weights
    assert [json.loads(r)["step"] for r in (tmp_path / "losses.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]


def _nan_weights(tmp_path):
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.model import IGGTModel

    model = IGGTModel.from_preset("nano", drop_heads=["track"])
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    path = tmp_path / "nan.safetensors"
    save_model(model, path)
    return ["--model.init_checkpoint", str(path)]


@pytest.mark.parametrize("fault, step", [("nan_weights", 0), ("diverging_lr", None)])
def test_training_stops_at_the_first_non_finite_loss_naming_the_step_and_terms(tmp_path, capsys, fault, step):
    extra = _nan_weights(tmp_path) if fault == "nan_weights" else ["--model.lr", "1e30", "--model.warmup_steps", "0"]
    rc = main(["fit", *tiny_args(tmp_path, steps=6), "--model.preset", "nano", *_callbacks(tmp_path, 1), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "non-finite training loss at global step" in err and "training stopped" in err, err
    rows = [json.loads(r) for r in (tmp_path / "losses.jsonl").read_text().splitlines()] \
        if (tmp_path / "losses.jsonl").exists() else []
    # every recorded step (each one checkpointed) had a finite loss; the failing step is the next one
    failed_at = len(rows)
    assert all(r["loss"] == r["loss"] and abs(r["loss"]) != float("inf") for r in rows), rows
    assert f"global step {failed_at}:" in err, err
    if step is not None:
        assert failed_at == step
    assert failed_at < 6                                       # it stopped before the end
    line = err.split("non-finite training loss", 1)[1].splitlines()[0]
    assert "loss=nan" in line or "loss=inf" in line, line
    if fault == "nan_weights":
        for term in ("loss_camera", "loss_depth", "loss_point"):
            assert f"{term}=nan" in line, line
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")) if (tmp_path / "checkpoints").exists() \
        else []
    if failed_at == 0:
        assert ckpts == []                                     # nothing non-finite was saved as last.ckpt
    else:
        last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert last["global_step"] == failed_at                # the last finite step, not a NaN one
