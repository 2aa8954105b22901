"""The exporter registry: the built-ins are the writers of every output file, the heads and post-processors write
none, the dry run's file list comes from the exporters, an exporter runs only when what it consumes is present,
options are typed by their dataclass, a name read from a file is never imported, and the viewer takes its
instances layer from the exporters' declarations."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from iggt_lightning.exporters import (Exporter, FilePlan, available_exporters, export_option, get_exporter,
                                      register_exporter, unregister_exporter)
from iggt_lightning.inference.options import ExportOptionError, option_table, resolve_export_options
from iggt_lightning.inference.scene import View, identity_transform
from iggt_lightning.inference.writer import export_scene, scene_file_names
from iggt_lightning.plugin import Plugin
from iggt_lightning.registry import UntrustedCodeError, available_heads, available_postprocessors

BUILTINS = ["depth_maps", "masks", "ply", "glb", "images", "cameras_json", "colmap", "transforms", "instances3d"]


@pytest.fixture
def registered():
    """Register test exporters; unregistered afterwards whatever happens."""
    names = []

    def add(name, cls):
        names.append(name)
        return register_exporter(name, cls)

    yield add
    for name in names:
        unregister_exporter(name)


def test_the_builtins_are_registered_in_write_order_and_no_plugin_writes_a_file():
    assert list(available_exporters())[:len(BUILTINS)] == BUILTINS
    builtins = {n: c for n, c in {**available_heads(), **available_postprocessors()}.items()
                if c.__module__.startswith("iggt_lightning.heads.")}       # not the tests' own plugins
    assert {"depth", "tracking", "open_vocab"} <= set(builtins)
    for name, cls in builtins.items():
        assert cls.export is Plugin.export, f"{name} writes files itself; an exporter should"


def test_dry_run_files_come_from_the_exporters(registered):
    before = scene_file_names(["a.png"], "bin", [(64, 48)])
    assert {"manifest.json", "points.ply", "cameras.json", "sparse/0/images.bin", "transforms.json",
            "images/a.png"} <= set(before)

    class Marker(Exporter):
        consumes = ("cameras",)

        @classmethod
        def files(cls, plan, options):
            return [f"marker/{len(plan.image_names or [])}.txt"]

    registered("marker", Marker)
    assert scene_file_names(["a.png"], "bin", [(64, 48)]) == [*before, "marker/1.txt"]
    assert "images/a.png" not in scene_file_names(None)                    # --no-images


def test_options_are_typed_by_the_dataclass_and_owned_once(registered):
    @dataclass(frozen=True)
    class Opts:
        level: int = export_option(2, "a level", low=0, high=9)
        label: str | None = export_option(None, "a label", optional=True)

    class Levelled(Exporter):
        consumes = ("special_output",)
        Options = Opts

        @classmethod
        def files(cls, plan, options):
            return [f"levels/{s}.{options.level}" for s in plan.stems]

    registered("levelled", Levelled)
    plugin = [("p", type("P", (Plugin,), {"outputs": ("special_output",)}))]
    assert resolve_export_options({"level": "7"}, plugin)["level"] == 7
    assert Levelled({"level": 3, "other": 1}).options == Opts(3, None)
    assert Levelled.planned(FilePlan(stems=["v"], options={"level": "5"})) == ["levels/v.5"]
    with pytest.raises(ExportOptionError, match=r"^export option level: expected an integer in \[0, 9\]; got 'x'"):
        resolve_export_options({"level": "x"}, plugin)
    with pytest.raises(ExportOptionError, match="'level' is unknown"):     # no plugin produces what it consumes
        resolve_export_options({"level": 1}, [])
    assert option_table(plugin)["level"][1] == "the exporter 'levelled'"

    class Clash(Exporter):
        consumes = ("cloud",)
        Options = Opts

    registered("clash", Clash)
    with pytest.raises(ExportOptionError, match="declared by both the exporter 'levelled' and the exporter 'clash'"):
        option_table(plugin)

    @dataclass(frozen=True)
    class Untyped:
        level: int = 2                                       # not an export_option(...): no help, no range

    class Bad(Exporter):
        Options = Untyped

    with pytest.raises(ExportOptionError, match="exporter 'bad': option level is no export_option"):
        register_exporter("bad", Bad)
    assert "bad" not in available_exporters()


def test_a_name_read_from_a_file_is_never_imported():
    assert get_exporter("ply", trust_code=False).__name__ == "PlyCloud"
    assert get_exporter("iggt_lightning.exporters.scene_files.PlyCloud", trust_code=False).__name__ == "PlyCloud"
    with pytest.raises(UntrustedCodeError, match="names exporter class 'os.system', which is not a registered"):
        get_exporter("os.system", trust_code=False, source="manifest.json")
    with pytest.raises(ValueError, match="not a subclass of iggt_lightning.exporters.Exporter"):
        get_exporter("os.system", trust_code=True)
    with pytest.raises(ValueError, match="unknown exporter 'nope'"):
        get_exporter("nope")


class DepthOnly(Plugin):
    """Describes nothing: a model whose only output is a depth map (no cameras, no cloud)."""

    outputs = ("depth", "depth_conf")


def test_an_exporter_runs_only_when_what_it_consumes_is_present(tmp_path):
    S, H, W = 2, 8, 12
    views = [View(f"v{i}.png", f"v{i}", f"v{i}.png", identity_transform(W, H)) for i in range(S)]
    outputs = {"depth": torch.rand(1, S, H, W, 1) + 0.5, "depth_conf": torch.ones(1, S, H, W)}
    manifest = export_scene(tmp_path / "out", [("depth", DepthOnly())], outputs, 0, views, torch.rand(S, 3, H, W))
    assert manifest["exporters"] == ["depth_maps"]              # no cloud, no cameras, no photos: nothing else
    assert sorted(manifest["files"]) == ["depth/depth.npz", "depth/v0.png", "depth/v1.png", "manifest.json"]
    assert manifest["points"] == 0 and "colmap" not in manifest


def test_the_viewer_reads_the_instances_layer_the_exporters_declare(tmp_path):
    from iggt_lightning import viewer

    assert viewer.instance_layer(tmp_path).file == "masks/instances.json"     # no manifest: every registered one
    (tmp_path / "manifest.json").write_text(json.dumps({"exporters": ["ply", "not.installed.Exporter"]}))
    assert viewer.instance_layer(tmp_path) is None                 # masks did not write it; nothing is imported
    (tmp_path / "manifest.json").write_text(json.dumps({"exporters": ["masks"]}))
    layer = viewer.instance_layer(tmp_path)
    assert (layer.file, layer.attribute, layer.colour_layer) == ("masks/instances.json", "instance", "instances")
    (tmp_path / "manifest.json").write_text(json.dumps({"exporters": "masks"}))
    with pytest.raises(viewer.ViewerError, match="manifest.json.*exporters"):
        viewer.instance_layer(tmp_path)
    assert np.array_equal(viewer.visible_mask(None, {}, 3), np.ones(3, bool))


def test_an_installed_package_registers_its_exporter_through_the_entry_point_group(tmp_path, monkeypatch):
    from iggt_lightning.exporters import base

    (tmp_path / "iggt_ep_exporter.py").write_text(
        "from iggt_lightning.exporters import Exporter\n\n"
        "class Marker(Exporter):\n    consumes = ('cloud',)\n\n"
        "    @classmethod\n    def files(cls, plan, options):\n        return ['marker.txt']\n")
    dist = tmp_path / "iggt_ep_exporter-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: iggt-ep-exporter\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[iggt_lightning.exporters]\nmarker = iggt_ep_exporter:Marker\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        base.load_entry_points(refresh=True)
        assert available_exporters()["marker"].__module__ == "iggt_ep_exporter"
        assert base._SOURCES["marker"] == "entry point iggt_ep_exporter:Marker (iggt-ep-exporter)"
        assert "marker.txt" in scene_file_names(None)
    finally:
        unregister_exporter("marker")
