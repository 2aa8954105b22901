"""Numerical parity with the official IGGT forward on the fixtures in tests/data/reference (fp32 strict and fp64)."""
import copy

import pytest
import torch

from iggt_lightning import parity
from iggt_lightning.cli import main

from .conftest import reference_file

FIXTURES = ["parity_tiny.pt", "parity_small_dino.pt"]


@pytest.fixture(scope="module", params=FIXTURES)
def fixture_and_model(request):
    fx = parity.load_fixture(str(reference_file(request.param)))
    return fx, parity.build_model(fx)


def test_fp32_strict_then_fp64(fixture_and_model):
    fx, model = fixture_and_model
    rows = parity.run_parity(fx, strict=True, model=model)
    failed = [(r.name, r.value) for r in rows if not r.ok]
    assert not failed, parity.format_rows(rows)
    names = {r.name for r in rows}
    # every output and intermediate the fixture stores was compared
    assert {"pose_enc[3]", "depth", "world_points", "part_feat", "aggregator[23]", "patch_embed_tokens",
            "point_feat.out2", "track_iters[1]", "track_head_iters1.vis", "track", "vis", "conf"} <= names
    assert parity.worst_well_conditioned(rows) < parity.STRICT_BAR

    rows64 = parity.run_parity(fx, fp64=True, model=model)  # same weights, cast to float64
    failed = [(r.name, r.value) for r in rows64 if not r.ok]
    assert not failed, parity.format_rows(rows64)
    track = next(r for r in rows64 if r.name == "track (fp64 ref)")
    assert track.value < parity.FP64_TRACK_PX


def test_tampered_reference_fails(fixture_and_model):
    fx, model = fixture_and_model
    bad = copy.copy(fx)
    bad["outputs"] = dict(fx["outputs"])
    bad["outputs"]["depth"] = fx["outputs"]["depth"] * (1 + 1e-3)
    rows = parity.run_parity(bad, model=model.float())
    assert [r.name for r in rows if not r.ok] == ["depth"]


def test_cli_parity_passes_and_prints_worst_ratio(capsys):
    code = main(["parity", str(reference_file("parity_tiny.pt")), "--strict"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[-1].startswith("worst well-conditioned max|d|/max|ref|:")
    assert float(out[-1].split(":")[1]) < 2e-5


def test_fixture_recipe_is_checked(tmp_path):
    fx = torch.load(reference_file("parity_tiny.pt"), weights_only=True)
    fx["recipe"] = "something else"
    path = tmp_path / "other.pt"
    torch.save(fx, path)
    with pytest.raises(ValueError, match="recipe"):
        parity.load_fixture(str(path))
