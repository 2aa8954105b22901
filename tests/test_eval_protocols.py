"""The evaluation protocols of configs/eval/: each config runs on fixtures of its dataset layout through
`iggt test --results`, the report puts the results beside published.yaml; and the pieces they rely on
(class names from label files, ignore_classes, VGGT's pose protocol, the depth clip, the CO3D conversion)."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from iggt_lightning.cli import main
from iggt_lightning.data import CO3DScenes, ScanNetScenes, check_sample
from iggt_lightning.data.fixtures import write_fixture
from iggt_lightning.data.frames import DatasetError, Frame
from iggt_lightning.data.multiview import assemble
from iggt_lightning.data.synthetic import CLASS_NAMES
from iggt_lightning.metrics import CameraMetrics, DepthMetrics

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "configs" / "eval"
PUBLISHED = yaml.safe_load((EVAL / "published.yaml").read_text())
CONFIGS = sorted(p.stem for p in EVAL.glob("*.yaml") if p.stem != "published")
SIZE = (84, 126)
NYU = ["wall", "chair", "refridgerator", "box"]       # what the fixture's label table maps the synthetic names to


def _report():
    from benchmarks import eval_report

    return eval_report.main


def _label_table(path: Path) -> None:
    rows = ["id\traw_category\tnyu40class"] + [f"{i}\t{n}\t{NYU[i % len(NYU)]}" for i, n in enumerate(CLASS_NAMES)]
    path.write_text("\n".join(rows) + "\n")


def _fixtures(tmp: Path) -> dict[str, str]:
    """The data paths of the configs, pointed at fixtures of their layouts."""
    write_fixture("scannet", tmp / "scannet" / "frames", num_scenes=2, num_views=4, image_size=SIZE, seed=1)
    (tmp / "scannet" / "scannetv2_val.txt").write_text("scene0000\nscene0001\n")
    _label_table(tmp / "scannet" / "scannetv2-labels.combined.tsv")
    gt = write_fixture("scannetpp", tmp / "insscene15k" / "scannetpp", num_scenes=6, num_views=4, image_size=SIZE)
    for s in gt:
        names = {str(i + 1): n for i, n in enumerate(s["class_names"])}
        (tmp / "insscene15k" / "scannetpp" / s["scene_id"] / "instance_labels.json").write_text(json.dumps(names))
    write_fixture("co3d", tmp / "co3d", num_scenes=2, num_views=4, image_size=SIZE)
    (tmp / "co3d" / "annotations").rename(tmp / "co3d_anno")
    write_fixture("pose_list", tmp / "re10k", num_scenes=2, num_views=4, image_size=SIZE)
    (tmp / "re10k" / "annotations").mkdir()
    (tmp / "re10k" / "annotations.jgz").rename(tmp / "re10k" / "annotations" / "test.jgz")
    return {"/data": str(tmp)}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaldata")
    _fixtures(tmp)
    return tmp


def test_every_eval_config_has_its_published_numbers():
    assert set(CONFIGS) == set(PUBLISHED), "each configs/eval/*.yaml needs an entry in published.yaml and back"
    for name in CONFIGS:
        text = (EVAL / f"{name}.yaml").read_text()
        assert "published.yaml" in text.split("seed_everything")[0], f"{name}.yaml must say where its numbers are"


@pytest.mark.parametrize("name", CONFIGS)
def test_eval_config_runs_on_fixtures_and_reports(name, data_root, tmp_path):
    cfg = yaml.safe_load((EVAL / f"{name}.yaml").read_text().replace("/data/", f"{data_root}/"))
    # what a CPU test can run: the fast clusterer, the colour encoder (no CLIP weights here); edited in the
    # file, as the config asks (a command-line override of postprocess would replace the whole mapping)
    post = cfg["model"].get("postprocess", {})
    if "tracking" in post:
        post["tracking"]["clusterer"] = "torch"
    if "open_vocab" in post:
        post["open_vocab"]["encoder"] = "colour"
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    test_args = cfg["data"]["init_args"]["test"]["init_args"]
    data = "--data.init_args.test.init_args."
    args = ["test", "--config", str(config), "--results", str(tmp_path / "results.json"),
            "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
            "--model.preset", "nano", "--data.init_args.num_workers", "0",
            f"{data}num_views", "3", f"{data}image_size", "[56, 84]", f"{data}min_views", "2", f"{data}split", "all"]
    if "categories" in test_args:
        args += [f"{data}categories", "[toycategory]"]
    assert main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"] == [str(config)] and results["subcommand"] == "test"
    for number in PUBLISHED[name]["numbers"]:          # every published metric is measured, and is a number
        assert number["metric"] in results["metrics"], (name, number["metric"], sorted(results["metrics"]))
        assert math.isfinite(results["metrics"][number["metric"]]), (name, number["metric"])
    assert _report()([str(tmp_path / "results.json"), "--json", str(tmp_path / "report.json")]) == 0
    rows = json.loads((tmp_path / "report.json").read_text())["report"][0]["rows"]
    first = PUBLISHED[name]["numbers"][0]
    assert rows[0]["ours"] == pytest.approx(results["metrics"][first["metric"]] * first["scale"])
    assert rows[0]["difference"] == pytest.approx(rows[0]["ours"] - first["published"])


def test_results_file_may_not_be_an_input(data_root, tmp_path, capsys):
    text = (EVAL / "co3d_camera.yaml").read_text().replace("/data/", f"{data_root}/")
    config = tmp_path / "c.yaml"
    config.write_text(text)
    rc = main(["test", "--config", str(config), "--results", str(config), "--model.preset", "nano",
               "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
               "--data.init_args.test.init_args.categories", "[toycategory]",
               "--data.init_args.test.init_args.min_views", "2", "--data.init_args.num_workers", "0"])
    assert rc == 2 and "is one of this run's inputs" in capsys.readouterr().err
    assert config.read_text() == text


# -- class names from label files ----------------------------------------------------------------------------

def test_class_names_follow_the_renumbered_ids():
    ids = [np.array([[0, 9], [5, 5]]), np.array([[9, 0], [0, 0]])]
    frames = [Frame(image=np.zeros((2, 2, 3), np.uint8), intrinsics=np.eye(3), extrinsics=np.eye(3, 4),
                    depth=np.ones((2, 2), np.float32), instance_ids=i, name=f"{k}") for k, i in enumerate(ids)]
    s = assemble(frames, "s", labels={5: "chair", 9: "wall", 7: "lamp"})
    assert s["class_names"] == ["chair", "wall"]                       # id 5 -> 1, id 9 -> 2; 7 is not seen
    assert s["instance_ids"][0].tolist() == [[0, 2], [1, 1]]


def test_scannet_labels_and_label_map(tmp_path):
    gt = write_fixture("scannet", tmp_path / "sn", num_scenes=1, num_views=3, image_size=SIZE)[0]
    _label_table(tmp_path / "labels.tsv")
    ds = ScanNetScenes(tmp_path / "sn", split="all", num_views=3, image_size=SIZE, view_sampling="sequential",
                       labels_file=["{scene}_vh_clean.aggregation.json", "{scene}.aggregation.json"])
    s = check_sample(ds[0])
    assert s["class_names"] == gt["class_names"][:int(s["instance_ids"].max())]
    mapped = ScanNetScenes(tmp_path / "sn", split="all", num_views=3, image_size=SIZE, view_sampling="sequential",
                           labels_file="{scene}.aggregation.json", label_map=str(tmp_path / "labels.tsv"))[0]
    assert mapped["class_names"] == [NYU[CLASS_NAMES.index(n) % len(NYU)] for n in s["class_names"]]
    with pytest.raises(DatasetError, match="no labels file; looked for"):
        ScanNetScenes(tmp_path / "sn", split="all", num_views=3, image_size=SIZE, labels_file="missing.json")[0]
    with pytest.raises(DatasetError, match="needs the columns 'raw_category' and 'eigen13class'"):
        ScanNetScenes(tmp_path / "sn", split="all", labels_file="{scene}.aggregation.json",
                      label_map=str(tmp_path / "labels.tsv"), label_map_columns=("raw_category", "eigen13class"))
    with pytest.raises(DatasetError, match="scene\\(s\\) of 'scenes' not under"):
        ScanNetScenes(tmp_path / "sn", split="all", scenes=["scene0000", "scene0042"])


def test_ignore_classes_equal_ignore_ids():
    from iggt_lightning.heads.postprocessors.tracking import InstanceTracking

    torch.manual_seed(0)
    gt = torch.randint(0, 4, (1, 2, 8, 8))
    pred = torch.randint(0, 4, (1, 2, 8, 8))
    outputs = {"instance_masks": pred, "instance_scores": [torch.rand(3)]}
    batch = {"instance_ids": gt, "class_names": [["chair", "Wall", "table"]]}
    by_class = InstanceTracking(ignore_classes=["wall"])
    by_id = InstanceTracking(ignore_ids=[2])
    results = []
    for t in (by_class, by_id):
        m = t.build_metrics()
        t.update_metrics(m, outputs, batch)
        results.append({k: float(v) for metric in m.values() for k, v in metric.compute().items()})
    assert results[0] == results[1] and "ap50_objects" in results[0]
    with pytest.raises(ValueError, match="needs the batch's class_names"):
        m = by_class.build_metrics()
        by_class.update_metrics(m, outputs, {"instance_ids": gt})


# -- VGGT's camera protocol ------------------------------------------------------------------------------------

def _random_extrinsics(rng: np.random.Generator, n: int) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    R = Rotation.random(n, random_state=rng).as_matrix()
    t = rng.normal(size=(n, 3))
    return np.concatenate([R, t[:, :, None]], 2)


def _vggt_errors(E: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Written from VGGT's evaluation as documented (test_co3d.py): pairs i < j of rel = E_i inv(E_j);
    rotation error from quaternions, translation by sign-free direction angle; max of the two."""
    from scipy.spatial.transform import Rotation

    def rel(M, i, j):
        A, B = np.eye(4), np.eye(4)
        A[:3], B[:3] = M[i], M[j]
        return A @ np.linalg.inv(B)

    out = []
    for i in range(len(E)):
        for j in range(i + 1, len(E)):
            p, g = rel(E, i, j), rel(G, i, j)
            qp, qg = Rotation.from_matrix(p[:3, :3]).as_quat(), Rotation.from_matrix(g[:3, :3]).as_quat()
            loss = max(1 - float(qp @ qg) ** 2, 1e-15)
            r = math.degrees(math.acos(1 - 2 * loss))
            tp, tg = p[:3, 3] / (np.linalg.norm(p[:3, 3]) + 1e-15), g[:3, 3] / (np.linalg.norm(g[:3, 3]) + 1e-15)
            t = math.degrees(math.acos(math.sqrt(1 - max(1 - float(tp @ tg) ** 2, 1e-15))))
            out.append(max(r, min(t, abs(180 - t))))
    return np.array(out)


def _vggt_auc(errors: np.ndarray, T: int) -> float:
    hist, _ = np.histogram(errors, bins=np.arange(T + 1))
    return float(np.mean(np.cumsum(hist / len(errors))))


def test_camera_metrics_follow_vggt_per_category_and_per_scene():
    rng = np.random.default_rng(0)
    scenes, ids = [], []
    for k in range(6):
        G = _random_extrinsics(rng, 5)
        noise = _random_extrinsics(rng, 5)
        P = G.copy()
        P[:, :, :3] = np.einsum("nij,njk->nik", G[:, :, :3], np.eye(3) + 0.15 * (noise[:, :, :3] - np.eye(3)))
        P[:, :, :3] = np.linalg.qr(P[:, :, :3])[0] * np.sign(np.linalg.det(np.linalg.qr(P[:, :, :3])[0]))[:, None, None]
        P[:, :, 3] += 0.2 * rng.normal(size=(5, 3))
        scenes.append((P, G))
        ids.append(f"cat{k % 2}/seq{k}")
    for aggregate in ("category", "scene"):
        m = CameraMetrics(pairs="unordered", aggregate=aggregate, auc_thresholds=(30, 5))
        for (P, G), name in zip(scenes, ids):
            m.update(torch.from_numpy(P)[None], torch.from_numpy(G)[None], [name])
        got = m.compute()
        groups: dict[str, list] = {}
        for (P, G), name in zip(scenes, ids):
            groups.setdefault(name.split("/")[0] if aggregate == "category" else name, []).append(_vggt_errors(P, G))
        for T in (30, 5):
            want = np.mean([_vggt_auc(np.concatenate(e), T) for e in groups.values()])
            assert float(got[f"auc@{T}"]) == pytest.approx(want, abs=1e-9), (aggregate, T)
    with pytest.raises(ValueError, match="needs the scenes' ids"):
        CameraMetrics(aggregate="scene").update(torch.from_numpy(scenes[0][0]), torch.from_numpy(scenes[0][1]))


def test_camera_auc_last_bin_is_closed():
    m = CameraMetrics(pairs="unordered")
    assert float(m.auc(torch.tensor([30.0], dtype=torch.float64), 30)) == pytest.approx(1 / 30)
    assert float(m.auc(torch.tensor([0.0, 1e6], dtype=torch.float64), 30)) == pytest.approx(0.5)


def test_depth_clip_range_clamps_the_aligned_prediction():
    target = torch.full((1, 4, 4), 50.0)
    target[0, 0, 0] = 0.05
    pred = target.clone()
    pred[0, 0, 0] = 0.01          # after median alignment 0.01; clipped to 0.1
    plain, clipped = DepthMetrics(), DepthMetrics(clip_range=(0.1, 100.0))
    plain.update(pred, target)
    clipped.update(pred, target)
    assert float(plain.compute()["abs_rel"]) == pytest.approx((0.04 / 0.05) / 16)
    assert float(clipped.compute()["abs_rel"]) == pytest.approx((0.05 / 0.05) / 16)
    with pytest.raises(ValueError, match="clip_range must be"):
        DepthMetrics(clip_range=(1.0, 0.5))


def test_metric_options_are_checked_against_build_metrics():
    from iggt_lightning.module import IGGTLitModule

    m = IGGTLitModule(preset="nano", metric_options={"camera": {"pairs": "unordered", "aggregate": "scene"}})
    assert m.test_metrics["camera"]["camera"].aggregate == "scene"
    with pytest.raises(ValueError, match="metric_options.depth: DepthHead.build_metrics.*does not take"):
        IGGTLitModule(preset="nano", metric_options={"depth": {"clip": [0.1, 100]}})
    with pytest.raises(ValueError, match="'nope' is not a head or post-processor"):
        IGGTLitModule(preset="nano", metric_options={"nope": {}})


# -- CO3D annotations --------------------------------------------------------------------------------------

def test_co3d_reader_converts_pytorch3d_cameras_and_skips_far_sequences(tmp_path):
    gt = write_fixture("co3d", tmp_path, num_scenes=2, num_views=3, image_size=SIZE, seed=4)
    path = tmp_path / "annotations" / "toycategory_test.jgz"
    data = json.loads(gzip.open(path, "rt").read())
    data["scene0001"][0]["T"] = [1e5, 1.0, 1.0]                    # VGGT drops sequences with such a frame
    with gzip.open(path, "wt") as f:
        json.dump(data, f)
    ds = CO3DScenes(tmp_path, split="all", num_views=3, image_size=SIZE, view_sampling="sequential")
    assert [r.name for r in ds.scenes] == ["toycategory/scene0000"]
    assert ds.skipped[-1][0] == "toycategory/scene0001"
    s = check_sample(ds[0])
    torch.testing.assert_close(s["extrinsics"], gt[0]["extrinsics"], atol=1e-5, rtol=0)
    torch.testing.assert_close(s["intrinsics"], gt[0]["intrinsics"], atol=1e-4, rtol=0)
    with pytest.raises(DatasetError, match="no annotation file for categories \\['apple'\\]"):
        CO3DScenes(tmp_path, split="all", categories=["apple"])
