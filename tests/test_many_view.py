"""The backbone's many-view mode: token merging in the global attention (iggt_lightning/layers/token_merge.py)."""
import json

import pytest
import torch

from iggt_lightning import IGGTModel
from iggt_lightning.checkpoints import load_model, save_model
from iggt_lightning.data import SyntheticScenes
from iggt_lightning.layers import token_merge
from iggt_lightning.layers.block import Block
from iggt_lightning.layers.rope import RotaryPositionEmbedding2D, grid_positions
from iggt_lightning.layers.token_merge import GlobalAttention, Layout, merged_block, parse_global_attention, plan_merge

DENSE = ("depth", "world_points", "part_feat")


def nano(global_attention=None, seed: int = 0, **backbone) -> IGGTModel:
    torch.manual_seed(seed)
    if global_attention is not None:
        backbone["global_attention"] = global_attention
    return IGGTModel.from_preset("nano", backbone=backbone).eval()


@pytest.fixture(scope="module")
def scene() -> torch.Tensor:
    """8 rendered views (images with the redundancy merging relies on, unlike uniform noise), [1, 8, 3, 56, 56]."""
    return SyntheticScenes(1, num_views=8, image_size=(56, 56), seed=3)[0]["images"][None]


@pytest.fixture(scope="module")
def exact(scene):
    with torch.no_grad():
        return nano()(scene)


def run(model: IGGTModel, images: torch.Tensor) -> dict:
    with torch.no_grad():
        return model(images)


def rel(out: dict, ref: dict, key: str) -> float:
    a, b = (out[key][-1], ref[key][-1]) if key == "pose_enc" else (out[key], ref[key])
    return float((a - b).abs().max() / b.abs().max())


def test_exact_is_the_default_and_changes_nothing(scene, exact):
    default = nano()
    assert default.backbone.global_attention == GlobalAttention() and default.backbone.global_attention.kind == "exact"
    assert "global_attention" not in default.config["backbone"]
    named = nano({"kind": "exact"})
    assert named.config["backbone"]["global_attention"] == {"kind": "exact"}
    out = run(named, scene)
    for key in (*DENSE, "depth_conf", "world_points_conf"):
        assert torch.equal(out[key], exact[key]), key
    assert all(torch.equal(a, b) for a, b in zip(out["pose_enc"], exact["pose_enc"]))


def test_ratio_zero_is_exact_bit_for_bit(scene, exact):
    out = run(nano({"kind": "merged", "ratio": 0.0}), scene)
    for key in DENSE:
        assert torch.equal(out[key], exact[key]), key
    assert torch.equal(out["pose_enc"][-1], exact["pose_enc"][-1])


def test_merged_is_close_to_exact_and_a_wrong_unmerge_is_not(scene, exact, monkeypatch):
    model = nano({"kind": "merged", "ratio": 0.5})
    out = run(model, scene)
    for key in (*DENSE, "depth_conf"):
        assert out[key].shape == exact[key].shape and torch.isfinite(out[key]).all(), key
    errors = {k: rel(out, exact, k) for k in (*DENSE, "pose_enc")}
    # max|d|/max|ref| measured here: depth 1.5e-5, world_points 1.6e-4, part_feat 2.9e-5, pose_enc 0.034 (the
    # camera tokens of random weights are almost all attention output, ~0 at init); the bars leave ~2x. The
    # rolled unmerge below measured depth 4.1e-5, part_feat 8.4e-5, pose_enc 0.23.
    bars = {"depth": 3e-5, "world_points": 4e-4, "part_feat": 6e-5, "pose_enc": 0.08}
    assert all(errors[k] < bars[k] for k in bars), errors
    assert all(errors[k] > 0 for k in bars), errors  # merging did happen

    # the same bars catch an unmerge that hands each token its neighbour's merged token
    unmerge = token_merge.TokenMerge.unmerge
    monkeypatch.setattr(token_merge.TokenMerge, "unmerge", lambda self, x: unmerge(self, x).roll(1, dims=1))
    broken = run(model, scene)
    assert any(rel(broken, exact, k) >= bars[k] for k in bars), {k: rel(broken, exact, k) for k in bars}


def test_later_start_and_other_knobs_run(scene):
    model, images = nano(), scene[:, :4]
    ref = run(model, images)
    errors = []
    for spec in ({"start_block": 2}, {"select": "random", "seed": 3}, {"salient": 0.5}, {"similarity": "keys"},
                 {"scope": "frame"}, {"proportional": False}):
        model.backbone.global_attention = parse_global_attention({"kind": "merged", "ratio": 0.75, **spec}, 4)
        out = run(model, images)
        assert all(torch.isfinite(out[k]).all() for k in DENSE), spec
        errors.append(rel(out, ref, "world_points"))
    assert all(0 < e < 1e-2 for e in errors), errors


def _block_and_copies(frames: int = 3, h: int = 4, w: int = 5, special: int = 5, dim: int = 32):
    torch.manual_seed(0)
    block = Block(dim, 4, init_values=1.0, qk_norm=True, rope=RotaryPositionEmbedding2D(100)).eval()
    P = special + h * w
    x = torch.randn(1, 1, P, dim).expand(1, frames, P, dim).reshape(1, frames * P, dim).clone()
    pos = grid_positions(frames, h, w, special, "cpu").reshape(1, frames * P, 2)
    return block, x, pos, Layout(frames, P, special, h, w)


def test_proportional_attention_is_exact_when_merged_tokens_are_copies():
    # every frame a copy of the first: each source is merged with identical tokens at its own grid position
    block, x, pos, layout = _block_and_copies()
    with torch.no_grad():
        ref = block(x, pos=pos)
        for ratio in (0.5, 0.9):
            cfg = parse_global_attention({"kind": "merged", "ratio": ratio})
            assert plan_merge(x, layout, cfg).merged
            assert torch.allclose(merged_block(block, x, pos, layout, cfg), ref, atol=1e-5, rtol=0)
            # without the log-count bias a merged token weighs as one key: not exact
            plain = parse_global_attention({"kind": "merged", "ratio": ratio, "proportional": False})
            assert (merged_block(block, x, pos, layout, plain) - ref).abs().max() > 1e-2


@pytest.mark.parametrize("scope", ["all", "frame"])
def test_merge_bookkeeping(scope):
    B, S, h, w, K, C = 2, 4, 4, 6, 5, 16
    P, n = K + h * w, h * w
    layout = Layout(S, P, K, h, w)
    feats = torch.randn(B, S * P, C)
    cfg = parse_global_attention({"kind": "merged", "ratio": 0.75, "salient": 0.5, "scope": scope})
    tm = plan_merge(feats, layout, cfg)
    n_keep = n - round(0.75 * n)
    assert tm.size == P + (S - 1) * (K + n_keep)
    assert torch.equal(tm.counts.sum(1), torch.full((B,), float(S * P)))
    frame_of = torch.arange(S * P) // P
    is_special = (torch.arange(S * P) % P) < K
    for b in range(B):
        dst, slot = tm.dst[b], tm.slot[b]
        assert torch.equal(slot[dst], torch.arange(tm.size))          # a destination is its own merged token
        assert (tm.counts[b, slot[is_special]] == 1).all()           # camera/register tokens absorb nothing
        assert torch.equal(slot[:P], torch.arange(P))               # the reference frame is kept whole
        src = torch.ones(S * P, dtype=torch.bool)
        src[dst] = False
        target_frame = frame_of[dst[slot[src]]]
        assert not is_special[dst[slot[src]]].any()                 # sources join patch tokens only
        if scope == "frame":
            assert ((target_frame == 0) | (target_frame == frame_of[src])).all()
        # the most similar of the allowed destinations
        f = torch.nn.functional.normalize(feats[b], dim=-1)
        s = f[src] @ f[dst].T
        s[:, is_special[dst]] = -2
        if scope == "frame":
            s[(frame_of[dst][None] != 0) & (frame_of[dst][None] != frame_of[src][:, None])] = -2
        assert torch.equal(slot[src], s.argmax(1))
    x = torch.randn(B, S * P, 3)
    merged = tm.merge(x)
    assert torch.allclose(merged * tm.counts[..., None],
                          torch.zeros_like(merged).index_put_((torch.arange(B)[:, None], tm.slot), x, accumulate=True))
    assert torch.equal(tm.unmerge(merged), merged.gather(1, tm.slot[..., None].expand(-1, -1, 3)))
    pos = grid_positions(S, h, w, K, "cpu").reshape(1, S * P, 2)
    assert torch.equal(tm.positions(pos.expand(B, -1, -1)), pos[0][tm.dst])  # a merged token keeps its position


def test_backward_with_gradient_checkpointing(scene):
    model = nano({"kind": "merged", "ratio": 0.75, "start_block": 1}, gradient_checkpointing=True).train()
    out = model(scene[:, :3])
    (out["depth"].mean() + out["pose_enc"][-1].pow(2).mean()).backward()
    grads = [p.grad for p in model.backbone.global_blocks.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("spec, message", [
    ("merged", r"backbone\.global_attention must be a mapping"),
    ({"ratio": 0.9}, r"global_attention\.kind must be one of \['exact', 'merged'\]; got None"),
    ({"kind": "fast"}, r"global_attention\.kind must be one of \['exact', 'merged'\]; got 'fast'"),
    ({"kind": "exact", "ratio": 0.5}, r"unknown key\(s\) \['ratio'\] for kind 'exact'; expected keys: \['kind'\]"),
    ({"kind": "merged", "rate": 0.5},
     r"unknown key\(s\) \['rate'\] for kind 'merged'; expected keys: \['kind', 'ratio'"),
    ({"kind": "merged", "ratio": 1.0}, r"global_attention\.ratio must be a number in \[0, 1\)"),
    ({"kind": "merged", "ratio": -0.1}, r"global_attention\.ratio must be a number in \[0, 1\)"),
    ({"kind": "merged", "ratio": "0.9"}, r"global_attention\.ratio must be a number"),
    ({"kind": "merged", "ratio": True}, r"global_attention\.ratio must be a number"),
    ({"kind": "merged", "start_block": 4}, r"global_attention\.start_block must be an integer in \[0, 3\].*4 blocks"),
    ({"kind": "merged", "start_block": 1.5}, r"global_attention\.start_block must be an integer"),
    ({"kind": "merged", "select": "salient"}, r"global_attention\.select must be one of \['grid', 'random'\]"),
    ({"kind": "merged", "salient": 2}, r"global_attention\.salient must be a number in \[0, 1\]"),
    ({"kind": "merged", "similarity": "queries"}, r"global_attention\.similarity must be one of \['tokens', 'keys'\]"),
    ({"kind": "merged", "scope": "local"}, r"global_attention\.scope must be one of \['all', 'frame'\]"),
    ({"kind": "merged", "proportional": 1}, r"global_attention\.proportional must be true or false"),
    ({"kind": "merged", "seed": -1}, r"global_attention\.seed must be an integer >= 0"),
])
def test_config_errors_name_the_field(spec, message):
    with pytest.raises(ValueError, match=message):
        IGGTModel.from_preset("nano", backbone={"global_attention": spec})


def test_config_round_trips(tmp_path, scene):
    spec = {"kind": "merged", "ratio": 0.9}
    model = IGGTModel.from_preset("tiny", backbone={"global_attention": spec})
    stored = model.config["backbone"]["global_attention"]
    assert stored == {**GlobalAttention(kind="merged").to_dict(), "ratio": 0.9}   # in full: today's defaults kept
    assert spec == {"kind": "merged", "ratio": 0.9}                                 # the caller's dict untouched
    assert json.loads(json.dumps(model.config)) == model.config
    assert IGGTModel(**model.config).config == model.config
    assert parse_global_attention(stored) == model.backbone.global_attention

    small = nano({"kind": "merged", "ratio": 0.5, "start_block": 1, "scope": "frame"})
    for name in ("m.pt", "m.safetensors"):
        save_model(small, tmp_path / name)
        loaded = load_model(tmp_path / name).eval()
        assert loaded.config["backbone"] == small.config["backbone"]
        assert loaded.backbone.global_attention == small.backbone.global_attention
        assert torch.equal(run(loaded, scene[:, :3])["depth"], run(small, scene[:, :3])["depth"])


def test_yaml_and_lightning_module(tmp_path):
    from iggt_lightning.lightning_cli import IGGTCLI

    cfg = tmp_path / "many_view.yaml"
    cfg.write_text("model:\n  preset: nano\n  backbone:\n    global_attention:\n      kind: merged\n"
                   "      ratio: 0.8\n      start_block: 1\ntrainer:\n  logger: false\n  accelerator: cpu\n")
    module = IGGTCLI(args=["--config", str(cfg), "--trainer.default_root_dir", str(tmp_path)], run=False).model
    ga = module.model.backbone.global_attention
    assert (ga.kind, ga.ratio, ga.start_block) == ("merged", 0.8, 1)
    assert module.model.config["backbone"]["global_attention"]["ratio"] == 0.8


def test_benchmark_script_runs_small(tmp_path):
    from benchmarks import many_view as bench

    out = tmp_path / "mv.json"
    assert bench.main(["--preset", "nano", "--size", "28x28", "--views", "3", "--error-views", "2", "--repeats", "1",
                       "--warmup", "0", "--ratios", "0", "0.5", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert [m for m, _ in payload["modes"]] == ["exact", "merged 0", "merged 0.5"]
    assert [r["mode"] for r in payload["error"]] == ["merged 0", "merged 0.5"]
    assert all(payload["error"][0][k]["max_abs"] == 0 for k in bench.OUTPUTS)     # ratio 0 is exact
    speed = payload["speed"][0]
    assert speed["status"] == "ok" and {"speedup", "memory_ratio"} <= set(speed["modes"]["merged 0.5"])
