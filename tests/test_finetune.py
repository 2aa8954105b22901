"""Fine-tuning an official-format checkpoint with a new head (configs/finetune_new_head.yaml), end to end.

The head below is written from docs/writing-a-head.md alone: a per-pixel depth-discontinuity head with its own
loss term and metric. It is not registered, so a checkpoint naming it loads only with trust_code=True.
"""
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics import Metric

from iggt_lightning.cli import main
from iggt_lightning.head import Head, HeadInput

from .test_checkpoints import _official_from_model, _perturbed_nano
from .test_cli_training import tiny_args

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = str(ROOT / "configs" / "finetune_new_head.yaml")


def depth_edges(depth: torch.Tensor, valid: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth [..., H, W] -> (edge [..., H, W]: |log-depth step| to the right or lower neighbour above
    ``threshold``, known [..., H, W]: the pixel and both neighbours are valid)."""
    log = depth.clamp(min=1e-6).log()
    edge = torch.zeros_like(valid)
    known = valid.clone()
    edge[..., :, :-1] |= (log[..., :, 1:] - log[..., :, :-1]).abs() > threshold
    edge[..., :-1, :] |= (log[..., 1:, :] - log[..., :-1, :]).abs() > threshold
    known[..., :, :-1] &= valid[..., :, 1:]
    known[..., :-1, :] &= valid[..., 1:, :]
    known[..., :, -1] = False      # no right or lower neighbour to compare with
    known[..., -1, :] = False
    return edge & known, known


class EdgeF1(Metric):
    """F1 of predicted depth edges (probability > 0.5) against the ground-truth ones over known pixels."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor) -> None:
        target, known = depth_edges(depth, valid, self.threshold)
        pred = logits > 0
        self.tp = self.tp + (pred & target & known).sum()
        self.fp = self.fp + (pred & ~target & known).sum()
        self.fn = self.fn + (~pred & target & known).sum()

    def compute(self) -> dict:
        return {"edge_f1": 2 * self.tp / (2 * self.tp + self.fp + self.fn).clamp(min=1)}


class EdgeHead(Head):
    requires = ("depth",)              # reads the depth head's map
    outputs = ("depth_edges",)         # [B, S, H, W] logits of "a depth discontinuity starts here"
    loss_terms = ("edges",)            # loss_weights.edges, loss_options.edges.threshold

    def __init__(self, dim_in: int, patch_size: int = 14, hidden: int = 8, layer: int = -1, threshold: float = 0.05):
        super().__init__()
        self.patch_size, self.threshold = patch_size, threshold
        self.token_layers = (layer,)
        self.proj = nn.Linear(dim_in, hidden)
        self.refine = nn.Sequential(nn.Conv2d(hidden + 1, hidden, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(hidden, 1, 3, padding=1))

    def forward(self, inp: HeadInput) -> dict:
        B, S, H, W = inp.shape
        tokens = self.proj(inp.patch_tokens(self.token_layers[0]))                # [B*S, h*w, hidden]
        grid = tokens.transpose(1, 2).reshape(B * S, -1, H // self.patch_size, W // self.patch_size)
        grid = F.interpolate(grid, size=(H, W), mode="bilinear", align_corners=False)
        log_depth = inp.outputs["depth"].reshape(B * S, 1, H, W).clamp(min=1e-6).log()
        log_depth = log_depth - log_depth.mean((-2, -1), keepdim=True)            # scale-free
        return {"depth_edges": self.refine(torch.cat([grid, log_depth], 1)).reshape(B, S, H, W)}

    def loss(self, outputs: dict, batch: dict, active: dict) -> dict:
        if "edges" not in active:
            return {}
        target, known = depth_edges(batch["depth"], batch["valid_mask"], active["edges"].get("threshold",
                                                                                            self.threshold))
        logits = outputs["depth_edges"][known]
        if not logits.numel():
            return {"loss_edges": outputs["depth_edges"].sum() * 0}
        target = target[known].float()
        rate = target.mean().clamp(1e-3, 1 - 1e-3)        # edges are rare: weigh them up to balance the classes
        return {"loss_edges": F.binary_cross_entropy_with_logits(logits, target, pos_weight=(1 - rate) / rate)}

    def build_metrics(self) -> dict:
        return {"edge_f1": EdgeF1(self.threshold)}

    def update_metrics(self, metrics: dict, outputs: dict, batch: dict) -> None:
        metrics["edge_f1"].update(outputs["depth_edges"], batch["depth"], batch["valid_mask"])


class SaveHeadAtStart(Callback):
    """Writes the named head's state dict as training starts (after init_checkpoint was applied)."""

    def __init__(self, head: str, path: str) -> None:
        self.head, self.path = head, path

    def on_train_start(self, trainer, pl_module) -> None:
        torch.save({k: v.clone() for k, v in pl_module.model.heads[self.head].state_dict().items()}, self.path)


@pytest.fixture
def official_file(tmp_path):
    """A nano model with every weight moved off its initial value, saved under the official IGGT key names."""
    model = _perturbed_nano(seed=5)
    path = tmp_path / "iggt_official.pt"
    torch.save({"model": _official_from_model(model)}, path)
    return path, model


def test_official_checkpoint_plus_a_new_head_trains_only_the_new_head(tmp_path, official_file):
    from iggt_lightning.checkpoints import load_model
    from iggt_lightning.registry import UntrustedCodeError

    path, source = official_file
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {save_last: true, save_top_k: 0, every_n_train_steps: 50}\n"
        "    - class_path: tests.test_finetune.SaveHeadAtStart\n"
        f"      init_args: {{head: edges, path: {tmp_path / 'edges_at_start.pt'}}}\n")
    args = [*tiny_args(tmp_path / "run", steps=3), "--model.preset", "nano", "--config", FINETUNE,
            "--config", str(callbacks), "--model.heads", '{"edges": {"class_path": "tests.test_finetune.EdgeHead"}}',
            "--model.init_checkpoint", str(path)]
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger.addHandler(handler)
    try:
        assert main(["fit", *args]) == 0
    finally:
        logger.removeHandler(handler)
    loaded = next(m for m in lines if m.startswith(f"init_checkpoint {path}"))
    assert "tensors of new head(s) ['edges'] freshly initialised" in loaded, loaded
    assert "tensors of dropped head(s) ['track'] not loaded" in loaded, loaded   # synthetic_tiny drops it
    edge_params = sum(p.numel() for p in EdgeHead(dim_in=2 * 32).parameters())     # nano: 32-wide tokens
    assert any(m.startswith(f"trainable: {edge_params:,} of ") for m in lines), lines

    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    trained = {k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    file_state = source.state_dict()
    backbone = [k for k in file_state if k.startswith("backbone.")]
    assert backbone and all(torch.equal(trained[k], file_state[k]) for k in backbone)
    # the pretrained heads have weight-0 terms: frozen, their parameters are the file's
    for name, _ in source.named_parameters():
        if name.startswith(("heads.camera.", "heads.depth.", "heads.point.", "heads.instance.")):
            assert torch.equal(trained[name], file_state[name]), name
    at_start = torch.load(tmp_path / "edges_at_start.pt", weights_only=True)
    assert at_start.keys() == {k[len("heads.edges."):] for k in trained if k.startswith("heads.edges.")}
    changed = [k for k, v in at_start.items() if not torch.equal(trained[f"heads.edges.{k}"], v)]
    assert changed == list(at_start), f"unchanged new-head tensors: {set(at_start) - set(changed)}"

    # the run's checkpoint names a head that is not registered: data, unless the user trusts it
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(UntrustedCodeError, match="names head class 'tests.test_finetune.EdgeHead'"):
        load_model(last)
    model = load_model(last, trust_code=True).eval()
    assert isinstance(model.heads["edges"], EdgeHead)
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        out = model(torch.rand(1, 2, 3, 56, 56))
    assert out["depth_edges"].shape == (1, 2, 56, 56) and torch.isfinite(out["depth_edges"]).all()


def test_the_snippet_stacks_on_the_official_size_config(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / "configs" / "iggt_large.yaml"), "--config", FINETUNE, "--print_config"])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: iggt_lightning.data.SyntheticDataModule" in printed
    assert "freeze:\n  - backbone" in printed and "class_path: iggt_normals.NormalsHead" in printed
    assert "drop_heads:\n  - track" in printed and "contrastive: 0.0" in printed


def test_the_official_iggt_file_fits_the_snippets_model_on_the_meta_device():
    """The real-size case, keys and shapes only: official IGGT's 2,053 entries against iggt-large without its
    point-track head plus a new head. Everything loads but the track head (dropped) and the new head (fresh)."""
    from iggt_lightning.checkpoints import match_state_dict, rename_official_state_dict
    from iggt_lightning.model import build_model

    from .test_checkpoints import MANIFESTS, _fake_official, _read_manifest

    official = _fake_official(_read_manifest(MANIFESTS["iggt"][0]))
    with torch.device("meta"):
        model = build_model("iggt-large", drop_heads=["track"],
                            heads={"edges": {"class_path": "tests.test_finetune.EdgeHead"}})
    renamed, names = rename_official_state_dict(official)
    out, fresh, ignored = match_state_dict(model, renamed, new_heads_ok=True, drop_heads=["track"], file_names=names)
    assert list(fresh) == ["edges"] and list(ignored) == ["track"]
    assert set(out) == {k for k in model.state_dict() if not k.startswith("heads.edges.")}
    # without drop_heads the file's track head is refused, named
    with pytest.raises(ValueError, match=r"head\(s\) \['track'\] .* list them in model.drop_heads"):
        match_state_dict(model, renamed, new_heads_ok=True, file_names=names)
