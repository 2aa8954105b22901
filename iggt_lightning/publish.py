"""``iggt publish RUN_OR_CKPT DIR``: a Hugging Face Hub-ready model folder (docs/hub.md).

DIR gets ``model.safetensors`` (our format, :func:`~iggt_lightning.checkpoints.save_model`), ``config.json`` (the
model config stored in it, byte for byte the same data) and ``README.md``, a model card: YAML front matter
(``library_name``, ``license``, ``tags``, ``pipeline_tag``, ``base_model`` when the run started from a Hub id), the
model, the training config and data (the run's ``config.yaml`` and the checkpoint's hyper-parameters), the metrics
of the run's results files (``iggt test --results FILE``) and a list of what could not be found.

RUN_OR_CKPT is a checkpoint file or a run folder (its ``checkpoints/last.ckpt``); the run of a checkpoint under
``RUN/checkpoints/`` is ``RUN``. DIR must not exist or be empty; it is written as a temporary folder beside it and
renamed into place, so it is complete or absent. No input is written to.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoints import CheckpointError

MAX_TEXT = 1_000_000          # bytes of a config.yaml / results file read into the card (they are a few kB)
LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")
_ABS_PATH = re.compile(r"(?<![\w.~:/-])/(?:[\w.@+-]+/)+[\w.@+-]*")


class PublishError(CheckpointError):
    """A refused source or destination; the message names the path."""


@dataclass
class Sources:
    """What the card is made from: the checkpoint, its run folder, the run's config.yaml and results files."""

    ckpt: Path
    run: Path | None = None
    config_yaml: Path | None = None
    results: list[Path] = field(default_factory=list)

    def inputs(self) -> list[tuple[str, Path]]:
        return [("checkpoint", self.ckpt)] + ([("run config", self.config_yaml)] if self.config_yaml else []) \
            + [("results file", r) for r in self.results]


def find_sources(src: str | os.PathLike, results=()) -> Sources:
    """RUN_OR_CKPT -> :class:`Sources`; ``results``: results files given explicitly (else the run's own)."""
    src = Path(src)
    if src.is_dir():
        ckpt, run = src / "checkpoints" / "last.ckpt", src
        if not ckpt.is_file():
            raise PublishError(f"{src}: a run folder must hold checkpoints/last.ckpt; it does not, so give the "
                               "checkpoint file to publish instead")
    elif src.is_file():
        ckpt = src
        run = src.parent.parent if src.parent.name == "checkpoints" else None
    else:
        raise PublishError(f"{src}: no such checkpoint file or run folder")
    config = run / "config.yaml" if run is not None and (run / "config.yaml").is_file() else None
    given = [Path(r) for r in results]
    for r in given:
        if not r.is_file():
            raise PublishError(f"--results {r}: no such file")
    found = given or (_run_results(run) if run is not None else [])
    return Sources(ckpt, run, config, found)


def _run_results(run: Path) -> list[Path]:
    """The results files ``iggt test/validate --results`` left at the top of the run folder."""
    out = []
    for path in sorted(run.glob("*.json")):
        try:
            read_results(path)
        except PublishError:
            continue            # another JSON file of the run (not a results file)
        out.append(path)
    return out


def read_results(path: Path) -> dict:
    """A results file of ``iggt test/validate --results``: ``{"subcommand", "metrics": {name: number}, ...}``."""
    if path.stat().st_size > MAX_TEXT:
        raise PublishError(f"{path}: {path.stat().st_size:,} bytes is not a results file (a few kB)")
    try:
        data = json.loads(path.read_text(errors="replace"))
    except (json.JSONDecodeError, RecursionError) as err:
        raise PublishError(f"{path}: not a results file of `iggt test --results` (not JSON: {err})") from None
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                                and not isinstance(v, bool) for k, v in metrics.items()):
        raise PublishError(f"{path}: not a results file of `iggt test --results` (expected a 'metrics' mapping of "
                           "name -> number)")
    return data


# ---------------------------------------------------------------------------- reading the checkpoint
def _plain(obj, depth: int = 0):
    """Plain YAML-able data: containers, strings, numbers; anything else as its text (files are data)."""
    if depth > 20:
        return "..."
    if isinstance(obj, dict):
        return {str(k): _plain(v, depth + 1) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, depth + 1) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def lightning_info(ckpt: Path) -> dict | None:
    """A Lightning checkpoint's hyper-parameters, epoch and step (tensors memory-mapped, nothing built); None for
    a file in our or the official format."""
    from .checkpoints import load_tensor_file

    if ckpt.suffix == ".safetensors":
        return None
    obj = load_tensor_file(ckpt, mmap=True)
    if not (isinstance(obj, dict) and "state_dict" in obj and "hyper_parameters" in obj):
        return None
    hp = obj.get("hyper_parameters")
    return {"hyper_parameters": _plain(hp) if isinstance(hp, dict) else {}, "epoch": _plain(obj.get("epoch")),
            "global_step": _plain(obj.get("global_step")),
            "lightning": _plain(obj.get("pytorch-lightning_version"))}


def read_run_config(path: Path) -> tuple[str, dict]:
    """(text, parsed) of a run's config.yaml, read as data (``yaml.safe_load``)."""
    import yaml

    if path.stat().st_size > MAX_TEXT:
        raise PublishError(f"{path}: {path.stat().st_size:,} bytes is not a run's config.yaml (a few kB)")
    text = path.read_text(errors="replace")
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as err:
        raise PublishError(f"{path}: not valid YAML ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(data, dict):
        raise PublishError(f"{path}: expected a mapping (LightningCLI's saved config); got {type(data).__name__}")
    return text, data


# ---------------------------------------------------------------------------- the destination
def check_destination(dst: Path, sources: Sources) -> Path:
    """DIR must be new or an empty folder, apart from every input, and not the current directory."""
    from .inference.output_folder import refuse_overlap

    real = refuse_overlap(dst, sources.inputs(), "the output folder")
    cwd = Path(os.path.realpath(os.getcwd()))
    if real == cwd or real in cwd.parents:
        raise PublishError(f"the output folder {dst} is the current directory or holds it; choose a new folder")
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise PublishError(f"the output folder {dst} exists and is not a folder; choose a new folder")
    if dst.is_dir() and any(dst.iterdir()):
        raise PublishError(f"the output folder {dst} exists and is not empty; choose a new or empty folder "
                           "(nothing is overwritten)")
    return real


def _move_into_place(tmp: Path, dst: Path) -> None:
    """Rename the finished folder onto ``dst`` (absent or an empty folder: rename refuses anything else)."""
    try:
        os.rename(tmp, dst)
    except OSError as err:
        raise PublishError(f"the output folder {dst} changed while publishing ({err.strerror}); nothing was "
                           "written there") from None


# ---------------------------------------------------------------------------- publish
@dataclass
class Card:
    """The parts of the model card, and what could not be found or should be checked before uploading."""

    title: str
    source: str                   # the checkpoint's file name (not its path: the card is public)
    repo_id: str | None
    license: str | None
    config: dict
    params: int
    info: dict | None = None
    run_config: tuple[str, dict] | None = None
    results: list[tuple[Path, dict]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def publish(src: str | os.PathLike, dst: str | os.PathLike, *, license: str | None = None, results=(),
            repo_id: str | None = None, trust_code: bool = False) -> Card:
    """Write the Hub-ready folder ``dst`` from a checkpoint or run folder (module docstring)."""
    from .checkpoints import inspect_checkpoint, load_model, save_model
    from .hub import parse_hub_id

    if license is not None and not LICENSE.fullmatch(license):
        raise PublishError(f"--license {license!r}: expected a Hub licence identifier such as apache-2.0, mit, "
                           "cc-by-nc-4.0 or other")
    if repo_id is not None and (parse_hub_id(repo_id) is None or parse_hub_id(repo_id).repo != repo_id):
        raise PublishError(f"--repo-id {repo_id!r}: expected OWNER/NAME")
    sources = find_sources(src, results)
    dst = Path(dst)
    check_destination(dst, sources)
    stored = inspect_checkpoint(sources.ckpt, trust_code=trust_code)     # our config, checked as data
    model = load_model(sources.ckpt, trust_code=trust_code)
    card = Card(repo_id or dst.resolve().name, sources.ckpt.name, repo_id, license, {},
                sum(t.numel() for t in model.state_dict().values()))
    _gather(card, sources)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.publish-{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)          # our own leftover of this pid, never anything else
    tmp.mkdir()
    try:
        post = stored.get("postprocess")
        save_model(model, tmp / "model.safetensors", postprocess=post)
        card.config = _stored_config(tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(card.config, indent=2) + "\n")
        (tmp / "README.md").write_text(render_card(card))
        _move_into_place(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return card


def _stored_config(path: Path) -> dict:
    """The model config exactly as ``save_model`` stored it in the file's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {})["config"])


def _gather(card: Card, s: Sources) -> None:
    """Fill the card's training config, data and metrics; note what is missing or suspicious."""
    card.info = lightning_info(s.ckpt)
    if card.info is None:
        card.missing.append(f"training hyper-parameters, epoch and step ({s.ckpt.name} is not a Lightning "
                            "checkpoint)")
    if s.config_yaml is not None:
        card.run_config = read_run_config(s.config_yaml)
        _compare_model_section(card, s.config_yaml)
    else:
        card.missing.append("the training config and data (no config.yaml in the run folder"
                            + ("" if s.run else f"; {s.ckpt} is not under RUN/checkpoints/") + ")")
    for path in s.results:
        data = read_results(path)
        card.results.append((path, data))
        card.warnings += _stale_results(path, data, s.ckpt)
    if not s.results:
        card.missing.append("evaluation metrics (no results file: run `iggt test ... --ckpt_path CKPT --results "
                            "RUN/results.json` and publish again, or pass --results FILE)")
    if card.license is None:
        card.missing.append("a licence (no --license: the card says `license: other`; check the licence of the "
                            "weights the run started from)")
    if card.repo_id is None:
        card.missing.append("the Hub id (no --repo-id: the usage lines say OWNER/NAME)")
    local = sorted(set(_ABS_PATH.findall(_card_text(card))))
    if local:
        card.warnings.append(f"the card quotes local paths ({', '.join(local[:5])}"
                             + (f" and {len(local) - 5} more" if len(local) > 5 else "")
                             + "); edit README.md before uploading if they are private")


def _card_text(card: Card) -> str:
    parts = [json.dumps(card.info or {}), card.run_config[0] if card.run_config else ""]
    return "\n".join(parts + [json.dumps(d) for _, d in card.results])


def _compare_model_section(card: Card, path: Path) -> None:
    """config.yaml's model section should be the checkpoint's hyper-parameters (else it is another run's)."""
    section = card.run_config[1].get("model")
    hp = (card.info or {}).get("hyper_parameters")
    if not isinstance(section, dict) or not hp:
        return
    norm = lambda v: json.dumps(_plain(v), sort_keys=True)  # noqa: E731 (tuples and lists compare equal)
    differ = sorted(k for k in set(section) & set(hp) if norm(section[k]) != norm(hp[k]))
    if differ:
        card.warnings.append(f"{path}: its model section differs from the checkpoint's hyper-parameters in "
                             f"{', '.join(differ)} (is it the config of another run?); the card shows both")


def _stale_results(path: Path, data: dict, ckpt: Path) -> list[str]:
    """Whether a results file describes the published checkpoint."""
    out = []
    used = data.get("ckpt_path")
    same = used == "last" and ckpt.name == "last.ckpt"
    if isinstance(used, str) and not same and Path(used).is_file():
        same = os.path.samefile(used, ckpt)
    if not same:
        out.append(f"{path}: measured with ckpt_path {used!r}, which is not {ckpt} as far as can be told; the card "
                   "says so beside its metrics")
    elif ckpt.stat().st_mtime > path.stat().st_mtime:
        out.append(f"{path}: older than {ckpt} (the checkpoint changed after it was measured); the card says so")
    return out


# ---------------------------------------------------------------------------- the card
def _tags(config: dict) -> list[str]:
    heads = set(config.get("heads") or {})
    tags = ["iggt-lightning", "3d-reconstruction"]
    tags += [t for h, t in (("camera", "camera-pose-estimation"), ("depth", "depth-estimation"),
                            ("point", "point-cloud"), ("instance", "instance-segmentation"),
                            ("track", "point-tracking")) if h in heads]
    return tags


def front_matter(card: Card) -> dict:
    from .hub import parse_hub_id

    meta = {"library_name": "iggt-lightning", "license": card.license or "other", "tags": _tags(card.config),
            "pipeline_tag": "image-to-3d"}
    init = ((card.info or {}).get("hyper_parameters") or {}).get("init_checkpoint")
    ref = parse_hub_id(init) if isinstance(init, str) and not Path(init).exists() else None
    if ref is not None:
        meta["base_model"] = ref.repo
    return meta


def _number(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _yaml_block(data) -> str:
    import yaml

    return "```yaml\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=None).rstrip() + "\n```\n"


def render_card(card: Card) -> str:
    """The model card: YAML front matter, then Markdown."""
    import yaml

    repo = card.repo_id or "OWNER/NAME"
    heads = list((card.config.get("heads") or {}))
    lines = ["---", yaml.safe_dump(front_matter(card), sort_keys=False).rstrip(), "---", "",
             f"# {card.title}", "",
             f"An iggt-lightning model: {card.params:,} parameters, heads {', '.join(heads) or 'none'}. Weights in "
             "`model.safetensors` (iggt-lightning's format: the model config travels in its metadata; `config.json` "
             f"holds the same config for reading), written by `iggt publish` from `{card.source}`.", "",
             "## Use", "", "```bash", f"iggt predict PHOTOS/ -c {repo} -o OUT/", "```", "",
             "```python", "from iggt_lightning.checkpoints import load_model", "",
             f'model = load_model("{repo}")', "```", "",
             "## Model", "", _yaml_block(card.config)]
    lines += ["## Training", ""]
    if card.info:
        lines += [f"Checkpoint at epoch {card.info['epoch']}, step {card.info['global_step']} (Lightning "
                  f"{card.info['lightning']}). Hyper-parameters:", "", _yaml_block(card.info["hyper_parameters"])]
    if card.run_config:
        text, data = card.run_config
        lines += ["### Data", ""]
        section = data.get("data")
        lines += [_yaml_block(section) if section is not None else "The run's config has no `data` section.\n"]
        lines += ["### The run's config.yaml", "", "```yaml", text.rstrip(), "```", ""]
    lines += ["## Evaluation", ""]
    for path, data in card.results:
        lines += [f"From `{path.name}` (`iggt {data.get('subcommand', '?')}`, ckpt_path `{data.get('ckpt_path')}`, "
                  f"torch {data.get('torch', '?')}):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_number(v)} |" for k, v in sorted(data["metrics"].items())]
        lines += [""]
    notes = card.missing + card.warnings
    if notes:
        lines += ["## Not found or to check", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the command
def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="iggt publish", description="Write a Hugging Face Hub-ready model folder: "
                                "model.safetensors (our format), config.json and a model card README.md with the "
                                "training config, data and metrics. Upload it with `hf upload OWNER/NAME DIR`.")
    p.add_argument("source", metavar="RUN_OR_CKPT", help="a checkpoint (.ckpt, or our .safetensors/.pt), or a run "
                   "folder (its checkpoints/last.ckpt)")
    p.add_argument("dst", metavar="DIR", help="the folder to write; must not exist or be empty")
    p.add_argument("--license", default=None, help="the card's licence identifier (e.g. apache-2.0, mit, "
                   "cc-by-nc-4.0); default: other, and a note to set it")
    p.add_argument("--results", action="append", default=[], metavar="FILE", help="a results file of `iggt test "
                   "--results` (repeatable); default: the run folder's own *.json results files")
    p.add_argument("--repo-id", default=None, metavar="OWNER/NAME", help="the Hub id the folder is for (the card's "
                   "title and usage lines)")
    p.add_argument("--trust-checkpoint-code", action="store_true", help="let the checkpoint's stored config import "
                   "head classes that are not registered (runs code named by the file: only for files you trust)")
    a = p.parse_args(argv)
    try:
        card = publish(a.source, a.dst, license=a.license, results=a.results, repo_id=a.repo_id,
                       trust_code=a.trust_checkpoint_code)
    except (ValueError, FileNotFoundError, OSError) as err:   # CheckpointError, PublishError, ...
        if os.environ.get("IGGT_DEBUG"):
            raise
        print(f"iggt publish: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {a.dst}: model.safetensors ({card.params:,} values), config.json, README.md")
    for note in card.missing:
        print(f"iggt publish: not found: {note}", file=sys.stderr)
    for note in card.warnings:
        print(f"iggt publish: warning: {note}", file=sys.stderr)
    return 0
