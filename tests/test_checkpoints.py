"""Official IGGT / VGGT-1B checkpoints <-> IGGTModel: key accounting, strictness, file formats, safety.

The 1 B-parameter presets are only ever built on the meta device; every test with real tensors uses the
few-MB ``nano`` preset, whose "official" state dict is made by inverting ``OFFICIAL_PREFIXES``.
"""
import json
import math
import os

import pytest
import torch

from iggt_lightning import checkpoints as ckpt
from iggt_lightning.checkpoints import (
    FORMAT,
    OFFICIAL_PREFIXES,
    CheckpointError,
    convert,
    convert_official_state_dict,
    drop_rule,
    load_model,
    official_kind,
    read_file,
    rename_official_key,
    save_model,
)
from iggt_lightning.model import IGGTModel

from .conftest import reference_file

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}

# name -> (manifest, preset, entries, dropped per rule, float-entry total, parameter total)
# The float-entry total also counts the 30 BatchNorm running_mean/running_var buffers of IGGT's
# part_adaptor (30 x 256 = 7,680 values), which are not parameters.
MANIFESTS = {
    "iggt": ("manifest_iggt.tsv", "iggt-large", 2053, {"dino-mask-token": 1, "part-head-dead-dpt-base": 16},
             1_299_482_150, 1_299_474_470),
    "vggt": ("manifest_vggt.tsv", "vggt-large", 1797, {"dino-mask-token": 1},
             1_256_537_516, 1_256_537_516),
}


# ----------------------------------------------------------------------------------------- helpers
def _read_manifest(name: str):
    """-> list of (key, shape tuple, dtype) from a ``name<TAB>shape<TAB>dtype`` manifest."""
    entries = []
    for line in reference_file(name).read_text().splitlines():
        if not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in shape.strip().strip("()").split(",") if d.strip())
        entries.append((key, dims, dtype.strip()))
    return entries


def _fake_official(entries) -> dict:
    """A fake official state dict of meta tensors with the manifest's shapes and dtypes."""
    return {k: torch.empty(shape, dtype=_DTYPES[dtype], device="meta") for k, shape, dtype in entries}


_META_MODELS: dict = {}


def _meta_model(preset: str) -> IGGTModel:
    if preset not in _META_MODELS:
        with torch.device("meta"):
            _META_MODELS[preset] = IGGTModel.from_preset(preset)
    return _META_MODELS[preset]


def _to_official_key(key: str) -> str:
    for src, dst in OFFICIAL_PREFIXES:
        if key.startswith(dst):
            return src + key[len(dst):]
    raise AssertionError(f"model key {key!r} has no official prefix")


def _official_from_model(model: torch.nn.Module) -> dict:
    """Invert the prefix mapping over the model's own state dict (real tensors, cloned)."""
    return {_to_official_key(k): v.detach().clone() for k, v in model.state_dict().items()}


def _perturbed_nano(seed: int = 0) -> IGGTModel:
    """A nano model whose every float entry (parameters and BN stats) is moved off its initial value, so a
    loaded copy can only match it if the values really came from the file."""
    torch.manual_seed(seed)
    model = IGGTModel.from_preset("nano")
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.add_(0.01 * torch.randn(v.shape, generator=gen))
    return model.eval()


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def _assert_same_outputs(x, y, path="out"):
    if torch.is_tensor(x):
        assert torch.is_tensor(y) and x.shape == y.shape and torch.equal(x, y), path
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), path
        for k in x:
            _assert_same_outputs(x[k], y[k], f"{path}[{k!r}]")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)):
            _assert_same_outputs(u, v, f"{path}[{i}]")
    else:
        assert x == y, path


@pytest.fixture(scope="module")
def nano():
    return _perturbed_nano()


@pytest.fixture(scope="module")
def nano_official(nano):
    return _official_from_model(nano)


@pytest.fixture(scope="module")
def nano_io(nano):
    """(input, outputs of ``nano`` in eval mode) for forward-equality checks."""
    torch.manual_seed(123)
    x = torch.rand(1, 2, 3, 56, 56)
    with torch.no_grad():
        out = nano(x)
    return x, out


# ------------------------------------------------------------------ 1. the manifests map completely
@pytest.mark.parametrize("which", sorted(MANIFESTS))
def test_manifest_maps_completely(which):
    manifest, preset, n_entries, drops, float_total, param_total = MANIFESTS[which]
    entries = _read_manifest(manifest)
    assert len(entries) == n_entries
    assert len({k for k, _, _ in entries}) == n_entries  # no duplicate keys in the manifest

    model = _meta_model(preset)
    ours = model.state_dict()
    hits: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for key, shape, dtype in entries:
        new = rename_official_key(key)
        if new is None:
            rule = drop_rule(key)
            assert rule is not None, key
            dropped[rule] = dropped.get(rule, 0) + 1
            continue
        assert drop_rule(key) is None, key
        assert new in ours, f"{key} -> {new} is not a model key"
        assert tuple(ours[new].shape) == shape, f"{key}: manifest {shape} vs model {tuple(ours[new].shape)}"
        assert ours[new].dtype == _DTYPES[dtype], f"{key}: manifest {dtype} vs model {ours[new].dtype}"
        hits[new] = hits.get(new, 0) + 1

    assert dropped == drops
    assert sum(dropped.values()) + len(hits) == n_entries
    assert all(n == 1 for n in hits.values()), [k for k, n in hits.items() if n > 1]
    assert set(hits) == set(ours), f"unmapped model keys: {sorted(set(ours) - set(hits))[:10]}"
    assert len(ours) == n_entries - sum(drops.values())

    # Parameter totals of the official checkpoint.
    def numel(shape):
        return math.prod(shape)

    floats = [(k, s) for k, s, d in entries if d.startswith("float") or d.startswith("bfloat")]
    assert sum(numel(s) for _, s in floats) == float_total
    bn_stats = [(k, s) for k, s in floats if k.endswith(("running_mean", "running_var"))]
    assert sum(numel(s) for _, s in floats) - sum(numel(s) for _, s in bn_stats) == param_total

    # What we keep is exactly the model's parameters plus its buffers.
    dropped_numel = sum(numel(s) for k, s, d in entries if rename_official_key(k) is None)
    assert sum(p.numel() for p in model.parameters()) == param_total - dropped_numel

    # The whole-dict conversion agrees and returns exactly the model's key set.
    fake = _fake_official(entries)
    converted = convert_official_state_dict(fake, model)
    assert set(converted) == set(ours)
    for key, value in fake.items():
        new = rename_official_key(key)
        if new is not None:
            assert converted[new] is value


# -------------------------------------------------------------------------------- 2. official_kind
@pytest.mark.parametrize("which", sorted(MANIFESTS))
def test_official_kind_of_manifests(which):
    manifest, preset, *_ = MANIFESTS[which]
    keys = [k for k, _, _ in _read_manifest(manifest)]
    assert official_kind(keys) == preset
    assert official_kind(_fake_official(_read_manifest(manifest))) == preset  # a dict works too


def test_official_kind_refuses_unrelated_models():
    sd = torch.nn.Linear(3, 4).state_dict()
    with pytest.raises(CheckpointError, match="not an official") as err:
        official_kind(sd)
    assert "weight" in str(err.value)  # it shows what the keys look like
    # half an official checkpoint is not one either
    with pytest.raises(CheckpointError, match="not an official"):
        official_kind(["aggregator.camera_token", "aggregator.register_token"])
    with pytest.raises(CheckpointError, match="not an official"):
        official_kind([])


def test_official_kind_of_nano(nano_official):
    assert official_kind(nano_official) == "iggt-large"  # the key set has a part_head
    no_parts = {k: v for k, v in nano_official.items() if not k.startswith(("part_head.", "part_adaptor."))}
    assert official_kind(no_parts) == "vggt-large"


# ------------------------------------------------------------------------------------ 3. strictness
def test_convert_nano_roundtrip(nano, nano_official):
    out = convert_official_state_dict(nano_official, nano)
    assert set(out) == set(nano.state_dict())
    fresh = IGGTModel.from_preset("nano")
    fresh.load_state_dict(out, strict=True)
    _assert_same_state(fresh, nano)


def test_missing_key_is_an_error(nano, nano_official):
    gone = "camera_head.trunk.0.norm1.weight"
    sd = dict(nano_official)
    del sd[gone]
    with pytest.raises(CheckpointError) as err:
        convert_official_state_dict(sd, nano)
    msg = str(err.value)
    assert "missing" in msg
    assert rename_official_key(gone) in msg
    assert "1 model key(s) missing" in msg


def test_unknown_key_is_an_error(nano, nano_official):
    sd = dict(nano_official)
    sd["camera_head.bogus.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        convert_official_state_dict(sd, nano)
    msg = str(err.value)
    assert "camera_head.bogus.weight" in msg and "heads.camera.bogus.weight" in msg
    assert "missing" not in msg  # nothing else is wrong


def test_key_without_any_rule_is_an_error(nano, nano_official):
    sd = dict(nano_official)
    sd["something_else.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="something_else.weight.*matches no mapping rule"):
        convert_official_state_dict(sd, nano)


def test_shape_mismatch_is_an_error(nano, nano_official):
    key = "aggregator.camera_token"
    sd = dict(nano_official)
    good = tuple(sd[key].shape)
    bad = good[:-1] + (good[-1] + 1,)
    sd[key] = torch.zeros(bad)
    with pytest.raises(CheckpointError) as err:
        convert_official_state_dict(sd, nano)
    msg = str(err.value)
    assert key in msg and str(bad) in msg and str(good) in msg
    assert "shape mismatch" in msg


def test_several_problems_are_reported_together(nano, nano_official):
    sd = dict(nano_official)
    del sd["aggregator.register_token"]
    sd["track_head.bogus"] = torch.zeros(1)
    sd["aggregator.camera_token"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        convert_official_state_dict(sd, nano)
    msg = str(err.value)
    assert "backbone.register_token" in msg and "track_head.bogus" in msg and "aggregator.camera_token" in msg
    # the mismatched key is also reported missing (it was not converted)
    assert "2 model key(s) missing" in msg


def test_drop_rules_are_silent(nano, nano_official):
    """Keys dropped by a named rule never reach the model, whatever their shape."""
    sd = dict(nano_official)
    extra = {"aggregator.patch_embed.mask_token": torch.zeros(1, 1024),
             "part_head.norm.weight": torch.zeros(7),
             "part_head.projects.0.weight": torch.zeros(2, 2),
             "part_head.resize_layers.3.bias": torch.zeros(5)}
    sd.update(extra)
    assert {drop_rule(k) for k in extra} == {"dino-mask-token", "part-head-dead-dpt-base"}
    out = convert_official_state_dict(sd, nano)
    assert set(out) == set(nano.state_dict())
    # ...but the rules are anchored: look-alike keys are not dropped
    assert drop_rule("part_head.normalize.weight") is None
    assert drop_rule("depth_head.norm.weight") is None
    assert rename_official_key("depth_head.norm.weight") == "heads.depth.dpt.norm.weight"


# ---------------------------------------------------------------------------------- 4. file formats
def _writers():
    from safetensors.torch import save_file

    return {
        "flat.pt": lambda sd, p: torch.save(sd, p),
        "wrapped.pth": lambda sd, p: torch.save({"model": sd, "epoch": 3}, p),
        "ddp.pt": lambda sd, p: torch.save({"module." + k: v for k, v in sd.items()}, p),
        "weights.safetensors": lambda sd, p: save_file({k: v.contiguous() for k, v in sd.items()}, str(p)),
    }


@pytest.mark.parametrize("name", sorted(_writers()))
def test_load_official_files(tmp_path, nano, nano_official, name):
    path = tmp_path / name
    _writers()[name](nano_official, path)
    sd, meta = read_file(path)
    assert meta == {}
    assert set(sd) == set(nano_official)
    model = load_model(path, preset="nano")
    assert isinstance(model, IGGTModel)
    _assert_same_state(model, nano)
    # the test is meaningful: a freshly built nano differs from the perturbed one
    fresh = IGGTModel.from_preset("nano").state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in nano.state_dict().items() if v.is_floating_point())


def test_load_official_file_strict(tmp_path, nano_official):
    sd = dict(nano_official)
    del sd["point_head.scratch.output_conv2.0.bias"]
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="missing"):
        load_model(path, preset="nano")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_and_load_our_format(tmp_path, nano, nano_io, suffix):
    dst = tmp_path / f"nano{suffix}"
    save_model(nano, dst)
    assert sorted(os.listdir(tmp_path)) == [dst.name]  # no temp file left behind
    sd, meta = read_file(dst)
    assert meta["format"] == FORMAT
    assert json.dumps(meta["config"], sort_keys=True) == json.dumps(nano.config, sort_keys=True)

    loaded = load_model(dst)  # no preset: the config comes from the file
    assert json.dumps(loaded.config, sort_keys=True) == json.dumps(nano.config, sort_keys=True)
    _assert_same_state(loaded, nano)

    loaded.eval()
    x, a = nano_io
    with torch.no_grad():
        b = loaded(x)
    assert {"pose_enc", "depth", "world_points", "part_feat"} <= set(a)
    _assert_same_outputs(a, b)


def test_our_format_detects_a_wrong_state_dict(tmp_path, nano):
    sd = {k: v.clone() for k, v in nano.state_dict().items()}
    sd.pop("backbone.camera_token")
    sd["heads.camera.bogus"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save({"format": FORMAT, "config": nano.config, "state_dict": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert "backbone.camera_token" in str(err.value) and "heads.camera.bogus" in str(err.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_convert_is_atomic(tmp_path, nano, nano_official, suffix):
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    src = src_dir / "official.pth"
    torch.save({"model": nano_official}, src)
    dst = out_dir / f"converted{suffix}"  # the folder does not exist yet
    model = convert(src, dst, preset="nano")
    _assert_same_state(model, nano)
    assert sorted(os.listdir(out_dir)) == [dst.name]
    assert sorted(os.listdir(src_dir)) == [src.name]
    _assert_same_state(load_model(dst), nano)


def test_our_format_shape_mismatch(tmp_path, nano):
    sd = {k: v.clone() for k, v in nano.state_dict().items()}
    sd["backbone.camera_token"] = torch.zeros(1)
    path = tmp_path / "bad_shape.pt"
    torch.save({"format": FORMAT, "config": nano.config, "state_dict": sd}, path)
    with pytest.raises(CheckpointError, match="backbone.camera_token"):
        load_model(path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_file_honours_umask(tmp_path, nano):
    old = os.umask(0o022)
    try:
        dst = tmp_path / "perm.safetensors"
        save_model(nano, dst)
    finally:
        os.umask(old)
    assert dst.stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, nano, monkeypatch):
    dst = tmp_path / "model.pt"
    dst.write_bytes(b"old contents")

    def broken_save(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(nano, dst)
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]
    assert dst.read_bytes() == b"old contents"


# -------------------------------------------------------------------------------------- 5. safety
_EXECUTED: list = []


def _payload(tag):
    """Would run on unpickling if the loader allowed arbitrary globals."""
    _EXECUTED.append(tag)
    return tag


class Sneaky:
    """A custom object inside a checkpoint; unpickling it calls ``_payload``."""

    def __init__(self, tag="sneaky"):
        self.tag = tag

    def __reduce__(self):
        return (_payload, (self.tag,))


def test_pickled_objects_are_refused(tmp_path, nano_official):
    path = tmp_path / "evil.pt"
    torch.save({"model": nano_official, "extra": Sneaky("evil")}, path)
    _EXECUTED.clear()
    with pytest.raises(CheckpointError, match=r"could run code, so it is refused") as err:
        load_model(path, preset="nano")
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError):
        load_model(path)
    with pytest.raises(CheckpointError):
        read_file(path)
    assert _EXECUTED == []  # nothing ran

    # Control: the same file does run code when unpickled without weights_only.
    torch.load(path, weights_only=False)
    assert _EXECUTED == ["evil"]
    _EXECUTED.clear()


def test_non_state_dict_files_are_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1), 3], path)
    with pytest.raises(CheckpointError, match="expected a state dict of tensors"):
        load_model(path, preset="nano")
    path = tmp_path / "mixed.pt"
    torch.save({"model": {"a": torch.zeros(1), "b": 3}}, path)
    with pytest.raises(CheckpointError, match="expected a state dict of tensors"):
        load_model(path, preset="nano")
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError):
        load_model(path, preset="nano")


def test_missing_path(tmp_path):
    for name in ("nope.pt", "nope.safetensors"):
        with pytest.raises(FileNotFoundError):
            load_model(tmp_path / name)
        with pytest.raises(FileNotFoundError):
            convert(tmp_path / name, tmp_path / "out.safetensors", preset="nano")
    with pytest.raises(CheckpointError, match="is a folder; expected a checkpoint file"):
        load_model(tmp_path)  # a folder is not a checkpoint file
    assert sorted(os.listdir(tmp_path)) == []


def test_module_exports():
    assert ckpt.CheckpointError is CheckpointError and issubclass(CheckpointError, ValueError)
