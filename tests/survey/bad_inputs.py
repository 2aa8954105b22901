"""Survey of bad inputs and faults, tried against the `iggt` command line as a hostile or careless user would.

    python -m tests.survey.bad_inputs [--json tests/survey/bad_inputs.json] [--only NAME ...] [--code-root DIR]
    python -m pytest -m survey tests/test_bad_input_survey.py      # the same cases as tests, one per case

It is a test of behaviour, not a measurement, so it lives beside the tests; it is left out of the default test run
(``-m "not survey"`` in setup.cfg) because its 124 subprocesses take about 10 minutes on 2 cores.

Each case builds its inputs in a fresh temporary folder, runs one `iggt ...` command in a subprocess and is
classified from what a user sees:

* exec: a command named by a file ran (the marker file it creates appeared);
* escape: a file appeared or changed beside the case folder (each case runs in ``<tmp>/case``, alone in ``<tmp>``);
* data loss: a file that existed before the command (an input) vanished or changed, or a half-written
  output (``.partial``/``.old`` folder, temporary file, or a path of the case's ``absent`` after a refusal)
  stayed behind;
* clear: refused with a non-zero exit, one message naming the file or field (the expected words), no traceback;
* handled: the command succeeded and the result is right (a case-specific check);
* refused: refused an input it should have handled (the case expects success);
* vague: refused, but with a traceback or without naming the file / field, or still running at the timeout
  (``--timeout``, or the case's own ``timeout`` when shorter: a viewer that serves a folder it should refuse);
* silent: succeeded although it should have refused or warned, or its result is wrong.

Commands run with ``PYTHONWARNINGS=ignore`` (library noise), except cases with ``warnings=True``, whose check
reads a warning a user sees.

``--code-root`` runs the cases against another checkout (e.g. an older commit in a git worktree), to compare.
Prints a table and writes JSON (counts per class and per-case details).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MARKER = "PWNED"
CONFIG = str(ROOT / "configs" / "synthetic_tiny.yaml")


@dataclass
class Case:
    name: str
    group: str
    setup: Callable[[Path], list[str]]         # builds the inputs in the folder, returns the iggt arguments
    refuse: tuple[str, ...] = ()                 # a refusal is expected; these words must be in the message
    check: Callable[[Path, str], str | None] | None = None   # success expected: returns a problem or None
    outputs: tuple[str, ...] = ("out", "out.safetensors", "out.pt", "run", "report.json")  # may appear
    absent: tuple[str, ...] = ()                 # a refusal must not leave these behind (an output begun)
    timeout: int | None = None                   # seconds, at most the runner's --timeout (a served viewer)
    warnings: bool = False                       # show Python warnings (the check reads one), as a user sees them


CASES: list[Case] = []


def case(name: str, group: str, refuse: tuple[str, ...] = (), check=None, outputs=None, absent=(), timeout=None,
         warnings=False):
    def add(fn):
        CASES.append(Case(name, group, fn, refuse, check, outputs or Case.outputs, absent, timeout, warnings))
        return fn
    return add


# ------------------------------------------------------------------------------------------------ helpers
def _torch():
    import torch

    return torch


def nano(drop_track: bool = True):
    torch = _torch()
    from iggt_lightning import IGGTModel

    torch.manual_seed(0)
    m = IGGTModel.from_preset("nano", drop_heads=["track"] if drop_track else [])
    # random weights predict a random (often zero) field of view, which predict rightly refuses; pin the
    # camera head to identity poses with a 1 rad field of view so the photo cases reach the export
    cam = m.heads["camera"]
    with torch.no_grad():
        cam.pose_branch.fc2.weight.zero_()
        cam.pose_branch.fc2.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1.0]) / cam.num_iterations)
    return m


def save_ours(d: Path, name: str = "model.safetensors", config_edit=None, raw_config: str | None = None) -> Path:
    from safetensors.torch import save_file

    from iggt_lightning.checkpoints import FORMAT

    m = nano()
    cfg = json.loads(json.dumps(m.config))
    if config_edit:
        config_edit(cfg)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    path = d / name
    if path.suffix == ".safetensors":
        save_file(sd, str(path), metadata={"format": FORMAT, "config": raw_config or json.dumps(cfg)})
    else:
        _torch().save({"format": FORMAT, "config": cfg, "state_dict": sd}, path)
    return path


def evil(d: Path):
    def edit(cfg):
        cfg["heads"]["evil"] = {"class_path": "subprocess.Popen",
                                "init_args": {"args": f"touch {d / MARKER}", "shell": True}}
    return edit


def save_ckpt(d: Path, name: str, hparams: dict, model_config: dict | None = None) -> Path:
    m = nano()
    ckpt = {"state_dict": {f"model.{k}": v for k, v in m.state_dict().items()}, "epoch": 0, "global_step": 0,
            "pytorch-lightning_version": "2.6.6", "hyper_parameters": hparams}
    if model_config is not None:
        ckpt["iggt_model_config"] = model_config
    _torch().save(ckpt, d / name)
    return d / name


class Payload:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def photos(d: Path, n: int = 3, size=(56, 42), name="photos") -> Path:
    from PIL import Image

    folder = d / name
    folder.mkdir(exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", size, (30 + 60 * i, 120, 200 - 50 * i))
        im.paste((250, 250, 20), (4, 4, size[0] // 2, size[1] // 2))
        im.save(folder / f"view{i}.png")
    return folder


def predict(d: Path, inputs: list[str], *extra: str, out: str | None = None) -> list[str]:
    ckpt = save_ours(d)
    return ["predict", *inputs, "-c", str(ckpt), "-o", out or str(d / "out"), "--quiet", *extra]


def fit_args(d: Path, steps: int = 1, every: int | None = None) -> list[str]:
    args = ["--config", CONFIG, "--trainer.default_root_dir", str(d / "run"), "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.logger", "false",
            "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--model.preset", "nano", "--model.drop_heads", "[track]",
            "--model.log_images_every_n_steps", "0", "--model.warmup_steps", "1",
            "--data.init_args.num_train", "8", "--data.init_args.num_val", "2", "--data.init_args.num_test", "2",
            "--data.init_args.image_size", "[56, 56]", "--data.init_args.num_views", "2",
            "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0"]
    return args


def out_image(d: Path, stem: str):
    from PIL import Image

    return Image.open(d / "out" / "images" / f"{stem}.png")


# ------------------------------------------------------------------------------------------------ 1. exec
@case("safetensors config names Popen (predict)", "exec", refuse=("subprocess.Popen", "--trust-checkpoint-code"))
def _(d):
    photos(d)
    return ["predict", str(d / "photos"), "-c", str(save_ours(d, config_edit=evil(d))), "-o", str(d / "out"), "--quiet"]


@case("safetensors config names Popen (convert)", "exec", refuse=("subprocess.Popen",))
def _(d):
    return ["convert", str(save_ours(d, config_edit=evil(d))), str(d / "out.safetensors")]


@case(".pt config names Popen (predict)", "exec", refuse=("subprocess.Popen",))
def _(d):
    photos(d)
    return ["predict", str(d / "photos"), "-c", str(save_ours(d, "model.pt", config_edit=evil(d))), "-o",
            str(d / "out"), "--quiet"]


@case(".ckpt iggt_model_config names Popen (predict)", "exec", refuse=("subprocess.Popen",))
def _(d):
    photos(d)
    cfg = json.loads(json.dumps(nano().config))
    evil(d)(cfg)
    return ["predict", str(d / "photos"), "-c", str(save_ckpt(d, "m.ckpt", {"preset": "nano"}, cfg)), "-o",
            str(d / "out"), "--quiet"]


for _cmd in ("test", "fit", "validate"):
    def _make(cmd):
        @case(f".ckpt hyper_parameters.heads names Popen ({cmd} --ckpt_path)", "exec",
              refuse=("subprocess.Popen", "heads.evil"))
        def _(d):
            heads = {"evil": {"class_path": "subprocess.Popen", "init_args": {"args": f"touch {d / MARKER}",
                                                                               "shell": True}}}
            return [cmd, *fit_args(d), "--ckpt_path", str(save_ckpt(d, "evil.ckpt", {"preset": "nano",
                                                                                      "heads": heads}))]
    _make(_cmd)


@case(".ckpt hyper_parameters _class_path is foreign", "exec", refuse=("subprocess.Popen",))
def _(d):
    return ["test", *fit_args(d), "--ckpt_path",
            str(save_ckpt(d, "evil.ckpt", {"_class_path": "subprocess.Popen", "args": f"touch {d / MARKER}"}))]


@case("pickle payload in .pt (predict)", "exec", refuse=("refused",))
def _(d):
    photos(d)
    _torch().save({"state_dict": {"x": Payload(f"touch {d / MARKER}")}}, d / "p.pt")
    return ["predict", str(d / "photos"), "-c", str(d / "p.pt"), "-o", str(d / "out"), "--quiet"]


@case("pickle payload in .ckpt (test --ckpt_path)", "exec", refuse=("refused",))
def _(d):
    _torch().save({"state_dict": {}, "hyper_parameters": {"x": Payload(f"touch {d / MARKER}")}}, d / "p.ckpt")
    return ["test", *fit_args(d), "--ckpt_path", str(d / "p.ckpt")]


@case("pickle payload in .pt (convert)", "exec", refuse=("refused",))
def _(d):
    _torch().save(Payload(f"touch {d / MARKER}"), d / "p.pt")
    return ["convert", str(d / "p.pt"), str(d / "out.safetensors")]


@case("init_checkpoint whose config names Popen (fit: weights only)", "exec",
      check=lambda d, err: None if (d / "run" / "checkpoints" / "last.ckpt").is_file() else "no checkpoint")
def _(d):
    return ["fit", *fit_args(d), "--model.init_checkpoint", str(save_ours(d, config_edit=evil(d)))]


@case("--trust-checkpoint-code with Popen: still only Head subclasses", "exec", refuse=("not a subclass",))
def _(d):
    photos(d)
    return ["predict", str(d / "photos"), "-c", str(save_ours(d, config_edit=evil(d))), "-o", str(d / "out"),
            "--quiet", "--trust-checkpoint-code"]


# ------------------------------------------------------------------------------------------------ 2. checkpoint files
for _suffix in (".safetensors", ".pt", ".ckpt"):
    for _damage in ("empty", "truncated", "garbage"):
        def _make(suffix, damage):
            @case(f"{damage} {suffix} checkpoint (predict)", "checkpoint file", refuse=(f"model{suffix}",))
            def _(d):
                photos(d)
                if suffix == ".ckpt":
                    path = save_ckpt(d, "model.ckpt", {"preset": "nano"}, nano().config)
                else:
                    path = save_ours(d, f"model{suffix}")
                data = path.read_bytes()
                path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2],
                                  "garbage": os.urandom(5000)}[damage])
                return ["predict", str(d / "photos"), "-c", str(path), "-o", str(d / "out"), "--quiet"]
        _make(_suffix, _damage)


@case("truncated .ckpt (test --ckpt_path FILE)", "checkpoint file", refuse=("bad.ckpt", "truncated"))
def _(d):
    path = save_ckpt(d, "bad.ckpt", {"preset": "nano"}, nano().config)
    path.write_bytes(path.read_bytes()[:3000])
    return ["test", *fit_args(d), "--ckpt_path", str(path)]


@case("missing checkpoint (predict)", "checkpoint file", refuse=("nope.safetensors",))
def _(d):
    photos(d)
    return ["predict", str(d / "photos"), "-c", str(d / "nope.safetensors"), "-o", str(d / "out"), "--quiet"]


@case("a folder as checkpoint (convert)", "checkpoint file", refuse=("folder",))
def _(d):
    (d / "folder").mkdir()
    return ["convert", str(d / "folder"), str(d / "out.safetensors")]


@case("unknown backbone argument in stored config", "checkpoint file", refuse=("widht", "model.safetensors"))
def _(d):
    photos(d)
    return ["predict", str(d / "photos"), "-c",
            str(save_ours(d, config_edit=lambda c: c["backbone"].update(widht=3))), "-o", str(d / "out"), "--quiet"]


@case("stored config heads is a list", "checkpoint file", refuse=("config.heads",))
def _(d):
    return ["convert", str(save_ours(d, config_edit=lambda c: c.update(heads=["depth"]))), str(d / "out.pt")]


@case("malformed config JSON (convert)", "checkpoint file", refuse=("not valid JSON", "model.safetensors"))
def _(d):
    return ["convert", str(save_ours(d, raw_config="{oops")), str(d / "out.pt")]


@case("convert output = its input", "checkpoint file", refuse=("input checkpoint itself",))
def _(d):
    p = save_ours(d)
    return ["convert", str(p), str(p)]


@case("convert output with an unknown suffix", "checkpoint file", refuse=("out.bin",))
def _(d):
    return ["convert", str(save_ours(d)), str(d / "out.bin")]


@case("official-looking dict with wrong shapes (convert, checked on meta)", "checkpoint file",
      refuse=("shape mismatch", "official.pt"))
def _(d):
    torch = _torch()
    torch.save({"aggregator.camera_token": torch.zeros(3), "camera_head.x": torch.zeros(1),
                "aggregator.patch_embed.cls_token": torch.zeros(2)}, d / "official.pt")
    return ["convert", str(d / "official.pt"), str(d / "out.safetensors")]


@case("an unrelated state dict (convert)", "checkpoint file", refuse=("not an official", "other.pt"))
def _(d):
    torch = _torch()
    torch.save({"encoder.weight": torch.zeros(3, 3)}, d / "other.pt")
    return ["convert", str(d / "other.pt"), str(d / "out.safetensors")]


# ------------------------------------------------------------------------------------------------ 3. predict outputs
@case("-o = the input folder with --overwrite", "outputs", refuse=("photos",))
def _(d):
    photos(d)
    return predict(d, [str(d / "photos")], "--overwrite", out=str(d / "photos"))


@case("-o inside the input folder", "outputs", refuse=("photos",), outputs=("photos/out",))
def _(d):
    photos(d)
    return predict(d, [str(d / "photos")], out=str(d / "photos" / "out"))


@case("-o = a folder containing the inputs, --overwrite", "outputs", refuse=("data",))
def _(d):
    (d / "data").mkdir()
    photos(d / "data")
    return predict(d, [str(d / "data" / "photos")], "--overwrite", out=str(d / "data"))


@case("-o .", "outputs", refuse=("'.'",))
def _(d):
    photos(d)
    return predict(d, [str(d / "photos")], out=".")


@case("-o an unrelated existing folder with --overwrite", "outputs", refuse=("mine",))
def _(d):
    photos(d)
    (d / "mine").mkdir()
    (d / "mine" / "thesis.tex").write_text("precious")
    return predict(d, [str(d / "photos")], "--overwrite", out=str(d / "mine"))


@case("-o an existing folder without --overwrite", "outputs", refuse=("--overwrite",))
def _(d):
    photos(d)
    (d / "out").mkdir()
    (d / "out" / "keep.txt").write_text("x")
    return predict(d, [str(d / "photos")])


@case("-o an existing file", "outputs", refuse=("notes.txt",))
def _(d):
    photos(d)
    (d / "notes.txt").write_text("x")
    return predict(d, [str(d / "photos")], "--overwrite", out=str(d / "notes.txt"))


@case("-o = the checkpoint file", "outputs", refuse=("model.safetensors",))
def _(d):
    photos(d)
    return predict(d, [str(d / "photos")], "--overwrite", out=str(d / "model.safetensors"))


def _no_partial(d: Path, err: str) -> str | None:
    left = [p.name for p in d.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    return f"left behind: {left}" if left else None


@case("leftover .partial folder of a dead run is cleaned", "outputs", check=_no_partial,
      outputs=("out", ".out.partial-"))
def _(d):
    photos(d)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = d / f".out.partial-{dead}-abc123"
    stale.mkdir()
    (stale / "points.ply").write_bytes(b"x" * 1000)
    return predict(d, [str(d / "photos")])


for _name, _args, _words in (
        ("--size 0 0 --dry-run", ["--size", "0", "0", "--dry-run"], ("size",)),
        ("--size 0 0", ["--size", "0", "0"], ("size",)),
        ("--size 10 10 (below the patch size)", ["--size", "10", "10"], ("size",)),
        ("--conf-threshold 150 (percentile)", ["--conf-threshold", "150"], ("150",)),
        ("--precision 8", ["--precision", "8"], ("--precision",)),
        ("--device cuda without CUDA", ["--device", "cuda"], ("CUDA",)),
        ("--conf-threshold 150 --dry-run", ["--conf-threshold", "150", "--dry-run"], ("150",))):
    def _make(name, args, words):
        @case(name, "options", refuse=words)
        def _(d):
            photos(d)
            return predict(d, [str(d / "photos")], *args)
    _make(_name, _args, _words)


# ------------------------------------------------------------------------------------------------ 4. photos
@case("empty input folder", "photos", refuse=("empty",))
def _(d):
    (d / "empty").mkdir()
    return predict(d, [str(d / "empty")])


@case("missing input path", "photos", refuse=("nothere.jpg",))
def _(d):
    return predict(d, [str(d / "nothere.jpg")])


@case("garbage bytes named .jpg", "photos", refuse=("bad.jpg",))
def _(d):
    photos(d)
    (d / "photos" / "bad.jpg").write_bytes(os.urandom(3000))
    return predict(d, [str(d / "photos")])


@case("zero-byte .png", "photos", refuse=("zero.png",))
def _(d):
    photos(d)
    (d / "photos" / "zero.png").write_bytes(b"")
    return predict(d, [str(d / "photos")])


@case("truncated JPEG", "photos", refuse=("cut.jpg",))
def _(d):
    from PIL import Image
    import numpy as np

    photos(d)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(d / "full.jpg", quality=95)
    (d / "photos" / "cut.jpg").write_bytes((d / "full.jpg").read_bytes()[:2000])
    (d / "full.jpg").unlink()
    return predict(d, [str(d / "photos")])


def _not_white(stem):
    def check(d, err):
        import numpy as np

        a = np.asarray(out_image(d, stem))
        return None if 50 < a.mean() < 200 else f"saved view mean {a.mean():.0f} (saturated?)"
    return check


@case("16-bit grayscale PNG", "photos", check=_not_white("deep"))
def _(d):
    import numpy as np
    from PIL import Image

    photos(d)
    ramp = (np.linspace(0, 65535, 56)[None].repeat(42, 0)).astype(np.uint16)
    Image.fromarray(ramp).save(d / "photos" / "deep.png")
    return predict(d, [str(d / "photos")])


def _rotated(d, err):
    im = out_image(d, "phone")
    return None if im.size == (42, 56) else f"saved view is {im.size}, a viewer shows (42, 56)"


@case("JPEG with EXIF orientation 6 (phone held upright)", "photos", check=_rotated)
def _(d):
    from PIL import Image

    photos(d)
    im = Image.new("RGB", (56, 42), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(d / "photos" / "phone.jpg", exif=exif)
    return predict(d, [str(d / "photos")])


@case("CMYK JPEG", "photos", check=_not_white("print"))
def _(d):
    from PIL import Image

    photos(d)
    Image.new("CMYK", (56, 42), (0, 120, 200, 40)).save(d / "photos" / "print.jpg")
    return predict(d, [str(d / "photos")])


@case("palette PNG with transparency", "photos", check=_not_white("pal"))
def _(d):
    from PIL import Image

    photos(d)
    im = Image.new("P", (56, 42), 1)
    im.putpalette([255, 255, 255, 60, 90, 160] + [0] * 762)
    im.paste(0, (0, 0, 10, 10))
    im.save(d / "photos" / "pal.png", transparency=0)
    return predict(d, [str(d / "photos")])


@case("grayscale + alpha PNG", "photos", check=_not_white("la"))
def _(d):
    from PIL import Image

    photos(d)
    Image.new("LA", (56, 42), (100, 255)).save(d / "photos" / "la.png")
    return predict(d, [str(d / "photos")])


@case("200-megapixel image (decompression bomb)", "photos", refuse=("huge.png",))
def _(d):
    # a valid PNG header claiming 20000 x 10000 pixels and almost no data: Pillow reads the size first
    photos(d)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    (d / "photos" / "huge.png").write_bytes(png)
    return predict(d, [str(d / "photos")])


@case("photos of different sizes", "photos",
      check=lambda d, err: None if (d / "out" / "manifest.json").is_file() else "no manifest")
def _(d):
    photos(d, 2, (56, 42))
    photos(d, 2, (40, 64), name="other")
    for p in (d / "other").iterdir():
        p.rename(d / "photos" / f"o_{p.name}")
    return predict(d, [str(d / "photos")])


@case("a single photo", "photos", check=lambda d, err: None if (d / "out" / "points.ply").is_file() else "no ply")
def _(d):
    photos(d, 1)
    return predict(d, [str(d / "photos")])


def _colmap_names(d, err):
    text = (d / "out" / "sparse" / "0" / "images.txt").read_text()
    rows = [ln for ln in text.splitlines() if not ln.startswith("#")][::2]   # pose line, then its 2D points
    names = [r.split()[-1] for r in rows]
    bad = [n for n in names if not (d / "out" / "images" / n).is_file()]
    return f"COLMAP names without a file under images/: {bad}" if bad else None


@case("photo names with spaces (COLMAP)", "photos", check=_colmap_names)
def _(d):
    photos(d)
    for p in sorted((d / "photos").iterdir()):
        p.rename(p.with_name(f"my {p.name}"))
    return predict(d, [str(d / "photos")])


@case("the same file name in two folders", "photos",
      check=lambda d, err: None if len(list((d / "out" / "masks").glob("*.png"))) == 4 else "masks overwritten")
def _(d):
    photos(d, 2, name="a")
    photos(d, 2, name="b")
    return predict(d, [str(d / "a"), str(d / "b")])


# ------------------------------------------------------------------------------------------------ 5. training
def _nan_weights(d: Path) -> Path:
    from iggt_lightning.checkpoints import save_model

    m = nano()
    torch = _torch()
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
    save_model(m, d / "nan.safetensors")
    return d / "nan.safetensors"


@case("training from NaN weights", "training", refuse=("step", "nan"))
def _(d):
    return ["fit", *fit_args(d, steps=3), "--model.init_checkpoint", str(_nan_weights(d))]


def _last_is_final(d, err):
    torch = _torch()
    step = torch.load(d / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    return None if step == 7 else f"last.ckpt holds step {step}, the run ended at step 7"


@case("last.ckpt after max_steps not a multiple of the interval", "training", check=_last_is_final)
def _(d):
    # checkpoints every 5 steps, 7 steps, no validation and no epoch end before the last step (as a long epoch)
    (d / "ckpt.yaml").write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                                 "      init_args: {save_last: true, save_top_k: 0, every_n_train_steps: 5}\n")
    return ["fit", *fit_args(d, steps=7), "--config", str(d / "ckpt.yaml"), "--data.init_args.num_train", "100",
            "--trainer.val_check_interval", "50", "--trainer.check_val_every_n_epoch", "null"]


for _args, _words in (
        (["--model.lr_typo", "1"], ("lr_typo",)),
        (["--model.heads", '{"normalz": {}}'], ("normalz",)),
        (["--model.heads", '{"instance": {"fusoin": false}}'], ("fusoin",)),
        (["--model.loss_weights", '{"contrastve": 0}'], ("contrastve",)),
        (["--model.freeze", '["^nothing\\\\."]'], ("freeze",)),
        (["--model.init_checkpoint", "/nonexistent/init.safetensors"], ("init.safetensors",)),
        (["--model.heads", '{"evil": {"class_path": "subprocess.Popen"}}'], ("not a subclass",)),
        (["--data.init_args.image_size", "[50, 50]"], ("50",))):
    def _make(args, words):
        @case(f"fit {' '.join(args)[:60]}", "training", refuse=words)
        def _(d):
            return ["fit", *fit_args(d), *args]
    _make(_args, _words)


for _fault, _words in (("nan_depth", ("depth",)), ("negative_depth", ("depth",)), ("ids_shape", ("instance",)),
                       ("view_sizes", ("view",))):
    def _make(fault, words):
        @case(f"training data with {fault}", "training", refuse=words)
        def _(d):
            return ["fit", *fit_args(d), "--data", "tests.cli_helpers.CorruptDataModule",
                    "--data.fault", fault]
    _make(_fault, _words)


@case("init_checkpoint that does not fit the model", "training", refuse=("init_checkpoint",))
def _(d):
    from iggt_lightning import IGGTModel
    from iggt_lightning.checkpoints import save_model

    save_model(IGGTModel.from_preset("nano", backbone={"embed_dim": 48}), d / "other.safetensors")
    return ["fit", *fit_args(d), "--model.init_checkpoint", str(d / "other.safetensors")]


# ------------------------------------------------------------------------------------------------ 6. datasets
def _scene_folder(d: Path) -> Path:
    from iggt_lightning.data.fixtures import write_fixture

    write_fixture("scene_folder", d / "data")
    return d / "data"


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.rglob(pattern))[0]


@case("dataset depth with NaN and negative values", "datasets", refuse=("depth", "NaN"))
def _(d):
    import numpy as np

    from iggt_lightning.data.fixtures import write_fixture

    write_fixture("infinigen", d / "data")       # float depth (.npy), as Infinigen stores it
    f = sorted((d / "data").rglob("*.npy"))
    f = [x for x in f if "depth" in x.name.lower() or "depth" in str(x.parent).lower()][0]
    a = np.load(f)
    a[: a.shape[0] // 3] = np.nan
    a[-2:] = -1.0
    np.save(f, a)
    return ["data", "check", str(d / "data")]


@case("dataset frame with no valid depth", "datasets", refuse=("depth",))
def _(d):
    import numpy as np
    from PIL import Image

    root = _scene_folder(d)
    f = _first(root, "depth/*.png")
    Image.fromarray(np.zeros(np.asarray(Image.open(f)).shape, np.uint16)).save(f)
    return ["data", "check", str(root)]


@case("dataset image truncated", "datasets", refuse=("images",))
def _(d):
    root = _scene_folder(d)
    f = _first(root, "images/*")
    f.write_bytes(f.read_bytes()[:200])
    return ["data", "check", str(root)]


@case("dataset root missing", "datasets", refuse=("nowhere",))
def _(d):
    return ["data", "check", str(d / "nowhere")]


@case("parity on a file that is not a fixture", "checkpoint file", refuse=("fixture.pt",))
def _(d):
    _torch().save({"a": 1}, d / "fixture.pt")
    return ["parity", str(d / "fixture.pt")]


# ------------------------------------------------------------------------------------------------ stored state
def run_iggt(d: Path, *args: str) -> None:
    """``iggt ARGS`` run in the case folder during a case's setup, to make a genuine file the case then edits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
    p = subprocess.run([sys.executable, "-m", "iggt_lightning", *args], cwd=d, env=env, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"setup: iggt {args[0]} failed: {p.stderr[-1500:]}")


def real_ckpt(d: Path, steps: int = 1) -> dict:
    """A genuine checkpoint: ``iggt fit`` (the survey's tiny run) for ``steps`` steps; -> it loaded."""
    run_iggt(d, "fit", *fit_args(d, steps))
    path = d / "run" / "checkpoints" / "last.ckpt"
    ckpt = _torch().load(path, map_location="cpu", weights_only=True)
    shutil.rmtree(d / "run")
    return ckpt


def hostile_ckpt(d: Path, edit) -> str:
    ckpt = real_ckpt(d)
    edit(ckpt)
    _torch().save(ckpt, d / "hostile.ckpt")
    return str(d / "hostile.ckpt")


def _popen(d: Path) -> dict:
    return {"class_path": "subprocess.Popen", "init_args": {"args": f"touch {d / MARKER}", "shell": True}}


@case("--ckpt_path metric_options.depth.clip_range names Popen (test)", "exec",
      refuse=("hostile.ckpt", "metric_options.depth.clip_range"))
def _(d):
    path = hostile_ckpt(d, lambda c: c["hyper_parameters"].update(metric_options={"depth": {"clip_range": _popen(d)}}))
    return ["test", *fit_args(d), "--ckpt_path", path]


@case("--ckpt_path loss_options num_samples is a YAML string naming Popen (fit)", "exec",
      refuse=("hostile.ckpt", "num_samples"))
def _(d):
    text = f"{{class_path: subprocess.Popen, init_args: {{args: 'touch {d / MARKER}', shell: true}}}}"
    path = hostile_ckpt(d, lambda c: c["hyper_parameters"]["loss_options"]["contrastive"].update(num_samples=text))
    return ["fit", *fit_args(d, 2), "--ckpt_path", path]


def _keeps_documents(d: Path, err: str) -> str | None:
    return None if (d / "Documents" / "thesis.txt").is_file() else "Documents/thesis.txt was deleted"


@case("--ckpt_path ModelCheckpoint last_model_path points at ../../Documents (fit)", "data loss",
      check=_keeps_documents)
def _(d):
    (d / "Documents").mkdir()
    (d / "Documents" / "thesis.txt").write_text("four years of work")

    def edit(c):
        for key, state in c["callbacks"].items():
            if key.startswith("ModelCheckpoint"):
                state["dirpath"] = str(d / "run" / "checkpoints")
                state["last_model_path"] = str(d / "run" / "checkpoints" / ".." / ".." / "Documents")
    return ["fit", *fit_args(d, 2), "--ckpt_path", hostile_ckpt(d, edit)]


@case("--ckpt_path logger version is ../../outside (fit)", "escape", refuse=("hostile.ckpt", "version"))
def _(d):
    def edit(c):
        c["iggt_resume"]["loggers"] = [{"class": "TensorBoardLogger", "name": "tb", "version": "../../../outside"}]
    return ["fit", *fit_args(d, 2), "--trainer.logger", "true", "--ckpt_path", hostile_ckpt(d, edit)]


@case("--ckpt_path freeze is a catastrophic regex (test)", "resources", refuse=("hostile.ckpt", "freeze"))
def _(d):
    path = hostile_ckpt(d, lambda c: c["hyper_parameters"].update(freeze=["^([a-z_.0-9]+)+X$"]))
    return ["test", *fit_args(d), "--ckpt_path", path]


@case("--ckpt_path lr is a string (fit)", "checkpoint file", refuse=("hostile.ckpt", "hyper_parameters.lr"))
def _(d):
    return ["fit", *fit_args(d, 2), "--ckpt_path", hostile_ckpt(d, lambda c: c["hyper_parameters"].update(lr="fast"))]


@case("--ckpt_path loop counter is a string (fit)", "checkpoint file", refuse=("hostile.ckpt", "loops.fit_loop"))
def _(d):
    def edit(c):
        c["loops"]["fit_loop"]["epoch_progress"]["total"]["ready"] = "1"
    return ["fit", *fit_args(d, 2), "--ckpt_path", hostile_ckpt(d, edit)]


@case("604-byte safetensors asks for a 16384-wide, 64-deep model (predict)", "resources",
      refuse=("huge.safetensors", "refusing to allocate"))
def _(d):
    from safetensors.torch import save_file

    from iggt_lightning.checkpoints import FORMAT

    photos(d)
    cfg = {"backbone": {"embed_dim": 16384, "depth": 64, "num_heads": 16, "patch_embed": "conv"},
           "heads": {"camera": {"num_heads": 16}}}
    save_file({"x": _torch().zeros(1)}, str(d / "huge.safetensors"), metadata={"format": FORMAT, "config": json.dumps(cfg)})
    return ["predict", str(d / "photos"), "-c", str(d / "huge.safetensors"), "-o", str(d / "out"), "--quiet"]


@case("safetensors config is JSON nested 100 000 deep (predict)", "resources", refuse=("deep.safetensors", "config"))
def _(d):
    photos(d)
    save_ours(d, "deep.safetensors", raw_config="[" * 100_000 + "]" * 100_000)
    return ["predict", str(d / "photos"), "-c", str(d / "deep.safetensors"), "-o", str(d / "out"), "--quiet"]


# ------------------------------------------------------------------------------------------------ writers vs inputs
# every writer (a dataset prediction, --overwrite, data check --json) keeps off its inputs and off files it did not
# write; a path read from a dataset file never leads outside the dataset
SIZE = (28, 42)          # (H, W) of the fixture datasets: multiples of nano's patch size


def dataset(d: Path, scenes: int = 2, views: int = 2, size=SIZE):
    """A scene-folder dataset at d/data; -> its root and the samples written."""
    from iggt_lightning.data.fixtures import write_fixture

    samples = write_fixture("scene_folder", d / "data", num_scenes=scenes, num_views=views, image_size=size)
    return d / "data", samples


def wrapper_config(d: Path, data: Path) -> str:
    """`iggt predict --config`: a MixedScenes wrapping a SceneFolderScenes over ``data`` (the inputs sit one deep)."""
    (d / "mixed.yaml").write_text(f"""
trainer: {{accelerator: cpu, devices: 1, logger: false, enable_progress_bar: false, enable_model_summary: false}}
model: {{preset: nano, drop_heads: [track], init_checkpoint: {save_ours(d)}}}
data:
  class_path: iggt_lightning.data.SceneDataModule
  init_args:
    predict:
      class_path: iggt_lightning.data.MixedScenes
      init_args:
        datasets:
          - class_path: iggt_lightning.data.SceneFolderScenes
            init_args: {{root: {data}, split: all, num_views: 2, image_size: [{SIZE[0]}, {SIZE[1]}]}}
""")
    return str(d / "mixed.yaml")


def real_prediction(d: Path, name: str = "pred") -> Path:
    """A genuine prediction folder of the survey's photos, written by ``iggt predict``."""
    photos(d)
    run_iggt(d, "predict", str(d / "photos"), "-c", str(save_ours(d)), "-o", str(d / name), "--size", "56", "42",
             "--quiet")
    return d / name


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))          # NaN becomes the token a hand-edited file may hold


@case("wrapper dataset predict: --out = the data, --overwrite true", "writers", refuse=("--out", "input data"))
def _(d):
    data, _ = dataset(d)
    return ["predict", "--config", wrapper_config(d, data), "--out", str(data), "--overwrite", "true"]


@case("wrapper dataset predict: --out inside the data", "writers", refuse=("--out", "inside the input"),
      absent=("data/scene0000/preds",))
def _(d):
    data, _ = dataset(d)
    return ["predict", "--config", wrapper_config(d, data), "--out", str(data / "scene0000" / "preds")]


@case("--overwrite a folder whose manifest.json only copies our format", "writers", refuse=("thesis", "chapter1.tex"))
def _(d):
    from iggt_lightning.inference.output_folder import MANIFEST_FORMAT

    photos(d)
    (d / "thesis").mkdir()
    (d / "thesis" / "chapter1.tex").write_text("years of work")
    (d / "thesis" / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT}))
    return predict(d, [str(d / "photos")], "--overwrite", out=str(d / "thesis"))


@case("--overwrite an earlier prediction holding a user's file", "writers", refuse=("notes.txt", "manifest.json"))
def _(d):
    pred = real_prediction(d)                  # not among the outputs: any change to it is data loss
    (pred / "notes.txt").write_text("added by hand after the prediction")
    return predict(d, [str(d / "photos")], "--overwrite", out=str(pred))


@case("data check --json names a file of the dataset", "writers", refuse=("--json", "dataset being checked"))
def _(d):
    data, _ = dataset(d)
    return ["data", "check", str(data), "--json", str(data / "scene0000" / "cameras.json")]


def _file_name_outside(d: Path) -> Path:
    """views[0].file_name of scene0000 leads to a real photo beside the dataset."""
    from PIL import Image

    data, _ = dataset(d)
    Image.new("RGB", (SIZE[1], SIZE[0]), (255, 0, 0)).save(d / "secret.png")
    edit_json(data / "scene0000" / "cameras.json", lambda c: c["views"][0].update(file_name="../../../secret.png"))
    return data


@case("cameras.json file_name outside the dataset (data check)", "writers",
      refuse=("cameras.json", "views[0].file_name", "outside the dataset"))
def _(d):
    return ["data", "check", str(_file_name_outside(d))]


@case("cameras.json file_name outside the dataset (dataset predict)", "writers",
      refuse=("cameras.json", "views[0].file_name", "outside the dataset"), absent=("preds",))
def _(d):
    data = _file_name_outside(d)
    return ["predict", "--config", wrapper_config(d, data), "--out", str(d / "preds")]


# ------------------------------------------------------------------------------------------------ viewer folders
# `iggt view` on a genuine prediction folder made hostile: refused in one line before the server starts (a case that
# runs into its timeout was served)
def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


PLY_TYPES = {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4", "float": "f4",
             "double": "f8"}


def ply_first_instance(value: int):
    """Point 0's ``instance`` property set to ``value`` (the header gives the record layout)."""
    def edit(folder: Path) -> None:
        path = folder / "points.ply"
        raw = path.read_bytes()
        body = raw.index(b"end_header\n") + len(b"end_header\n")
        props = [ln.split()[1:] for ln in raw[:body].decode().splitlines() if ln.startswith("property ")]
        dtype = np.dtype([(name, "<" + PLY_TYPES[kind]) for kind, name in props])
        first = np.frombuffer(raw[body:body + dtype.itemsize], dtype).copy()
        first["instance"] = value
        path.write_bytes(raw[:body] + first.tobytes() + raw[body + dtype.itemsize:])
    return edit


def ply_vertex_count(count: int):
    def edit(folder: Path) -> None:
        path = folder / "points.ply"
        path.write_bytes(re.sub(rb"element vertex \d+\n", b"element vertex %d\n" % count, path.read_bytes(), 1))
    return edit


def image_path_outside(folder: Path) -> None:
    """views[0].image_path names a real photo beside the prediction folder."""
    view = json.loads((folder / "cameras.json").read_text())["views"][0]
    shutil.copy(folder / view["image_path"], folder.parent / "outside.png")
    edit_json(folder / "cameras.json", lambda c: c["views"][0].update(image_path="../outside.png"))


def set_view(key: str, value):
    return lambda folder: edit_json(folder / "cameras.json", lambda c: c["views"][0].update({key: value}))


def nan_extrinsic(folder: Path) -> None:
    edit_json(folder / "cameras.json", lambda c: c["views"][0]["extrinsic"][0].__setitem__(0, float("nan")))


for _name, _edit, _words in (
        ("image_path ../outside.png", image_path_outside, ("cameras.json", "views[0].image_path")),
        ("points.ply instance id 2e9", ply_first_instance(2_000_000_000), ("points.ply", "instance")),
        ("points.ply element vertex -5", ply_vertex_count(-5), ("points.ply", "element vertex -5")),
        ("cameras.json nested 100 000 deep",
         lambda f: (f / "cameras.json").write_text("[" * 100_000 + "]" * 100_000), ("cameras.json", "nested")),
        ("cameras.json width a string", set_view("width", "wide"), ("cameras.json", "views[0].width")),
        ("cameras.json extrinsic NaN", nan_extrinsic, ("cameras.json", "views[0].extrinsic"))):
    def _make(name, edit, words):
        @case(f"view: {name}", "viewer", refuse=words, timeout=90)
        def _(d):
            folder = real_prediction(d, "scene")
            edit(folder)
            return ["view", str(folder), "--port", free_port()]
    _make(_name, _edit, _words)


# ------------------------------------------------------------------------------------------------ photo bits
# photos reach the model by their significant bits: 10/12-bit data in 16-bit PNGs, 32-bit TIFFs of 8-bit values;
# what cannot be read right is refused (multi-page TIFF, a strip --mode crop would shrink every view for)
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16(path: Path, values, sbit: int | None = None) -> Path:
    """A 16-bit RGB PNG of ``values`` [H, W, 3] (Pillow writes none), with an sBIT chunk stating ``sbit`` bits."""
    h, w, _ = values.shape
    rows = values.astype(">u2").reshape(h, w * 3)
    body = b"".join(b"\0" + row.tobytes() for row in rows)          # filter 0 on every row
    stated = _png_chunk(b"sBIT", bytes([sbit] * 3)) if sbit else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + stated + _png_chunk(b"IDAT", zlib.compress(body)) + _png_chunk(b"IEND", b""))
    return path


def _deep_photo(bits: int):
    """A 56x42 photo of ``bits``-bit samples and its true 8-bit mean (full scale = white)."""
    top = (1 << bits) - 1
    values = np.zeros((42, 56, 3), np.int64)
    values[...] = np.round(np.array([0.65, 0.3, 0.85]) * top)
    values[5:20, 5:30] = top
    return values, float(np.round(values * 255.0 / top).mean())


def brightness(stem: str, true_mean: float, warning: tuple[str, ...] = ()):
    """The exported view's mean is the photo's true 8-bit mean; the warning (if any) names the photo."""
    def check(d, err):
        a = np.asarray(out_image(d, stem).convert("RGB"), np.float64)
        if abs(a.mean() - true_mean) > 3:
            return f"saved view mean {a.mean():.1f}, the photo's is {true_mean:.1f}"
        missing = [w for w in warning if w not in err]
        return f"no warning naming {missing}" if missing else None
    return check


_values12, _mean12 = _deep_photo(12)


@case("12-bit data in a 16-bit PNG with sBIT", "photo bits", check=brightness("deep12", _mean12))
def _(d):
    photos(d)
    png16(d / "photos" / "deep12.png", _values12, sbit=12)
    return predict(d, [str(d / "photos")])


@case("10-bit data in a 16-bit PNG without sBIT (warned)", "photo bits", warnings=True,
      check=lambda d, err: None if all(w in err for w in ("deep10.png", "sBIT")) else "no warning naming deep10.png")
def _(d):
    photos(d)
    png16(d / "photos" / "deep10.png", _deep_photo(10)[0])
    return predict(d, [str(d / "photos")])


_grey32 = np.full((42, 56), 90, np.int32)
_grey32[5:20, 5:30] = 255


@case("32-bit integer TIFF holding 0..255 (warned)", "photo bits", warnings=True,
      check=brightness("grey32", float(_grey32.mean()), ("grey32.tif", "32-bit")))
def _(d):
    from PIL import Image

    photos(d)
    Image.fromarray(_grey32).save(d / "photos" / "grey32.tif")
    return predict(d, [str(d / "photos")])


@case("multi-page TIFF", "photo bits", refuse=("stack.tif", "3 pages"))
def _(d):
    from PIL import Image

    photos(d)
    pages = [Image.new("RGB", (56, 42), (40 * k, 90, 200)) for k in range(3)]
    pages[0].save(d / "photos" / "stack.tif", save_all=True, append_images=pages[1:])
    return predict(d, [str(d / "photos")])


@case("--mode crop with a 2000x3 photo among normal ones", "photo bits", refuse=("wide.png", "2000x3"))
def _(d):
    from PIL import Image

    photos(d)
    Image.new("RGB", (2000, 3), (200, 100, 50)).save(d / "photos" / "wide.png")
    return predict(d, [str(d / "photos")], "--mode", "crop")


# ------------------------------------------------------------------------------------------------ export options
# each --export-option is typed: a misspelt key, a wrong type or range stops predict before any output exists
for _option, _words in (("depth_png_scal=100", ("'depth_png_scal'",)), ("save_images=no", ("save_images",)),
                        ("depth_png_scale=0", ("depth_png_scale",))):
    def _make(option, words):
        @case(f"export option {option}", "options", refuse=words, absent=("out",))
        def _(d):
            photos(d)
            return predict(d, [str(d / "photos")], "--export-option", option)
    _make(_option, _words)


# ------------------------------------------------------------------------------------------------ data check units
# `iggt data check` names what is actually wrong (exit 1, the problems on stdout): depth in another unit, float or
# lossily compressed id maps, a pixel_center that is no number, poses stored camera-to-world
def depth_times(d: Path, factor: float) -> Path:
    """scene0000's depth as float .npy of metres x ``factor`` (100: centimetres) in place of the mm PNGs."""
    root, samples = dataset(d, scenes=1, views=4, size=(56, 84))
    for v, depth in enumerate(samples[0]["depth"].numpy()):
        (root / "scene0000" / "depth" / f"view_{v:02d}.png").unlink()
        np.save(root / "scene0000" / "depth" / f"view_{v:02d}.npy", (depth * factor).astype(np.float32))
    return root


@case("data check: depth in centimetres", "data check", refuse=("view_00.npy", "metres", "centimetres"))
def _(d):
    return ["data", "check", str(depth_times(d, 100.0))]


@case("data check: depth in feet", "data check", refuse=("scene0000", "feet", "depth_scale"))
def _(d):
    return ["data", "check", str(depth_times(d, 1 / 0.3048))]


@case("data check: float instance ids", "data check", refuse=("frame_000010.jpg.npy", "whole numbers"))
def _(d):
    from iggt_lightning.data.fixtures import write_fixture

    write_fixture("scannetpp", d / "data", num_scenes=1, num_views=2, image_size=(56, 84))
    path = d / "data" / "scene0000" / "refined_ins_ids" / "frame_000010.jpg.npy"
    ids = np.load(path).astype(np.float32)
    np.save(path, np.where(ids > 0, ids + 0.4, 0))         # a reader truncating to int merges instances
    return ["data", "check", str(d / "data")]


@case("data check: JPEG-compressed id map saved as .png", "data check", refuse=("view_01.png", "lossily"))
def _(d):
    import io

    from PIL import Image

    root, _ = dataset(d, scenes=1, views=4, size=(56, 84))
    path = root / "scene0000" / "instances" / "view_01.png"
    buf = io.BytesIO()
    Image.fromarray(np.asarray(Image.open(path)).astype(np.uint8)).save(buf, "JPEG", quality=90)
    Image.fromarray(np.asarray(Image.open(buf))).save(path)
    return ["data", "check", str(root)]


@case("data check: pixel_center NaN", "data check", refuse=("cameras.json", "pixel_center"))
def _(d):
    root, _ = dataset(d, scenes=1, views=4, size=(56, 84))
    edit_json(root / "scene0000" / "cameras.json", lambda c: c.update(pixel_center=float("nan")))
    return ["data", "check", str(root)]


def _inverted(extrinsic: list) -> list:
    E = np.asarray(extrinsic, np.float64)
    R, t = E[:, :3], E[:, 3]
    return np.concatenate([R.T, (-R.T @ t)[:, None]], 1).tolist()


@case("data check: camera-to-world poses stored as world-to-camera", "data check",
      refuse=("cameras.json", "extrinsic", "camera-to-world"))
def _(d):
    root, _ = dataset(d, scenes=1, views=4, size=(56, 84))

    def invert_all(c):
        for view in c["views"]:
            view["extrinsic"] = _inverted(view["extrinsic"])
    edit_json(root / "scene0000" / "cameras.json", invert_all)
    return ["data", "check", str(root)]


# ------------------------------------------------------------------------------------------------ training options
# the module's options, loss options included, are checked when it is built: before a step runs
for _args, _words in (
        (["--model.lr=-1e-4"], ("model.lr",)),
        (["--model.warmup_steps=-1"], ("model.warmup_steps",)),
        (["--model.loss_options", '{"contrastive": {"num_samples": 0}}'], ("loss_options.contrastive.num_samples",)),
        (["--model.loss_options", '{"contrastive": {"num_sample": 64}}'],
         ("loss_options.contrastive.num_sample", "unknown")),
        (["--model.loss_weights", '{"camera": 0, "depth": 0, "point": 0, "contrastive": 0}'],
         ("model.loss_weights", "weight 0"))):
    def _make(args, words):
        @case(f"fit option {' '.join(args)}", "training", refuse=words)
        def _(d):
            return ["fit", *fit_args(d), *args]
    _make(_args, _words)


# ------------------------------------------------------------------------------------------------ runner
def snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, int(p.stat().st_mtime_ns)) for p in d.rglob("*") if p.is_file()}


def _message(err: str) -> str:
    """The line a user reads: the one with ``error``, else the last non-empty one."""
    lines = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
    hits = [ln for ln in lines if "error" in ln.lower() and not ln.startswith("(set IGGT_DEBUG")
            and ln.lower() != "errors:"]         # jsonargparse's heading of a nested list, not a message
    return (hits[-1] if hits else lines[-1] if lines else "")[:200]


def outside(d: Path) -> dict[str, tuple[int, int]]:
    """The files beside the case folder (its parent holds nothing else): what a path escape would write."""
    return {k: v for k, v in snapshot(d.parent).items() if not k.startswith(d.name + "/")}


def classify(c: Case, d: Path, before: dict, rc: int, err: str, before_outside: dict | None = None) -> tuple[str, str]:
    if (d / MARKER).exists():
        return "exec", "the command named by the file ran"
    if before_outside is not None and outside(d) != before_outside:
        return "escape", f"wrote outside the case folder: {sorted(set(outside(d)) ^ set(before_outside))[:3]}"
    after = snapshot(d)
    gone = [k for k in before if k not in after or after[k] != before[k]]
    # what a case expects to change: its outputs (a name, or a prefix ending in "-")
    gone = [k for k in gone if not any(k == o or k.startswith(o + "/") or (o.endswith("-") and k.startswith(o))
                                       for o in c.outputs)]
    junk = [k for k in after if (".partial-" in k or ".old-" in k or k.endswith(".tmp"))]
    if gone:
        return "data loss", f"input(s) changed or removed: {gone[:5]}"
    if junk:
        return "data loss", f"half-written output left: {junk[:3]}"
    begun = [a for a in c.absent if (d / a).exists()]
    if c.refuse and rc != 0 and begun:
        return "data loss", f"refused, but left an output begun: {begun}"
    words_ok = all(w.lower() in err.lower() for w in c.refuse)
    if c.refuse:
        if rc == 0:
            return "silent", "succeeded; a refusal naming " + ", ".join(c.refuse) + " was expected"
        if rc < 0:                      # killed at the timeout: it never refused (a viewer serving the input)
            return "vague", f"{err.split(';')[0]}; last line: {_message(err.split('it printed: ', 1)[-1])}"
        if "Traceback" in err or not words_ok:
            return "vague", _message(err)
        return "clear", _message(err)
    if rc != 0:
        # success was expected: a refusal is a failure to handle the input (vague when a traceback shows)
        return ("vague" if "Traceback" in err else "refused"), _message(err)
    problem = c.check(d, err) if c.check else None
    return ("silent", problem) if problem else ("handled", "ok")


def run_case(c: Case, code_root: Path, timeout: int) -> dict:
    top = Path(tempfile.mkdtemp(prefix="iggt-bad-"))
    d = top / "case"
    d.mkdir()
    try:
        sys.path.insert(0, str(code_root))
        cwd = os.getcwd()
        os.chdir(d)
        try:
            args = c.setup(d)
        finally:
            os.chdir(cwd)
            sys.path.remove(str(code_root))
        before, before_outside = snapshot(d), outside(d)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST") and k != "PYTHONWARNINGS"}
        env.update(OMP_NUM_THREADS="1",
                   PYTHONPATH=f"{code_root}{os.pathsep}{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
        if not c.warnings:
            env["PYTHONWARNINGS"] = "ignore"
        limit = min(timeout, c.timeout or timeout)
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "iggt_lightning", *args], cwd=d, env=env, capture_output=True,
                               text=True, timeout=limit)
            rc, err = p.returncode, p.stderr + p.stdout[-2000:]
        except subprocess.TimeoutExpired as ex:
            # what it printed before it was killed (bytes here): a served viewer's URL says it got that far
            said = [x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (ex.stderr, ex.output)]
            rc, err = -9, f"timeout after {limit} s; it printed: {said[0] + said[1][-2000:]}"
        time.sleep(0.3)  # a shell payload runs asynchronously
        verdict, detail = classify(c, d, before, rc, err, before_outside)
        return {"name": c.name, "group": c.group, "verdict": verdict, "rc": rc, "detail": detail,
                "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        shutil.rmtree(top, ignore_errors=True)


def provenance(code_root: Path) -> dict:
    """What a reader needs to tell whether a re-run is comparable: commit, CPU, package versions, load."""
    import platform
    from importlib import metadata

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=code_root, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    packages = {}
    for name in ("torch", "lightning", "jsonargparse", "safetensors", "numpy", "pillow", "av", "viser", "pycolmap"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"commit": git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no")
                                                   else ""),
            "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(), "packages": packages}


VERDICTS = ("clear", "handled", "refused", "vague", "silent", "data loss", "escape", "exec")


def readme_summary(now: dict, before: dict) -> str:
    """The survey sentence of docs/security.md from the two JSONs: this code on every case, and the code before the
    last round of fixes on the cases added for it (links relative to docs/, where the sentence lives)."""
    def counts(payload: dict) -> str:
        shown = [f"{n} {k}" for k, n in payload["counts"].items() if n]
        return ", ".join(shown)

    return (f"{README_BEGIN}\n`python -m tests.survey.bad_inputs` tries {now['tried']} hostile or careless inputs against "
            f"the CLI as a user would and classifies what they see: {counts(now)} "
            f"([tests/survey/bad_inputs.json](../tests/survey/bad_inputs.json), commit {now['commit'][:7]}). The "
            f"{before['tried']} cases added in the last round gave {counts(before)} on the code before it "
            f"([bad_inputs_before_s.json](../tests/survey/bad_inputs_before_s.json), `--code-root` at commit "
            f"{before['commit'][:7]}).\n{README_END}")


README_BEGIN, README_END = "<!-- bad-inputs -->", "<!-- /bad-inputs -->"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=str(HERE / "bad_inputs.json"))
    ap.add_argument("--only", nargs="*", default=None, help="substrings of case names to run")
    ap.add_argument("--names", default=None, help="a file of exact case names, one per line (names may start with --)")
    ap.add_argument("--code-root", default=str(ROOT), help="checkout whose iggt_lightning is tried")
    ap.add_argument("--timeout", type=int, default=240)
    ap.add_argument("--readme", action="store_true", help="only refill the survey sentence (docs/security.md) from the JSONs")
    a = ap.parse_args()
    if a.readme:
        from iggt_lightning.benchmarking import fill_block

        before = json.loads((HERE / "bad_inputs_before_s.json").read_text())
        fill_block(README_BEGIN, README_END, readme_summary(json.loads(Path(a.json).read_text()), before), ROOT)
        return
    names = set(Path(a.names).read_text().splitlines()) if a.names else None
    cases = [c for c in CASES if (not a.only or any(s in c.name for s in a.only)) and (names is None or c.name in names)]
    rows = []
    for i, c in enumerate(cases, 1):
        r = run_case(c, Path(a.code_root).resolve(), a.timeout)
        rows.append(r)
        print(f"[{i:2d}/{len(cases)}] {r['verdict']:9s} {r['seconds']:5.1f}s  {c.name}  -- {r['detail']}", flush=True)
    counts = {k: sum(r["verdict"] == k for r in rows) for k in VERDICTS}
    print("\n| tried | " + " | ".join(counts) + " |\n|---|" + "---|" * len(counts))
    print(f"| {len(rows)} | " + " | ".join(str(v) for v in counts.values()) + " |")
    if a.json:
        root = Path(a.code_root).resolve()
        payload = {"code_root": "." if root == ROOT else str(root), "tried": len(rows), "counts": counts, "cases": rows,
                   "load_average": os.getloadavg(), **provenance(Path(a.code_root))}
        Path(a.json).write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
