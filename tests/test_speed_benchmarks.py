"""The speed benchmarks run (tiny sizes, no official checkout needed) and their tables in the docs are their JSON."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from iggt_lightning import benchmarking
from iggt_lightning.benchmarking import official

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str):
    """A benchmark script as a module (benchmarks/ is a package beside tests/, on the path as the rootdir)."""
    return importlib.import_module(f"benchmarks.{name}")


def test_vs_official_without_a_checkout_times_ours_alone(tmp_path):
    out = tmp_path / "vs.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.vs_official", "--configs", "28x28:1,2",
                          "--repeats", "1", "--threads", "1", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "no --official checkout given" in run.stdout
    payload = json.loads(out.read_text())
    assert not payload["official_checkout_given"]
    assert [r["views"] for r in payload["results"]] == [1, 2]
    assert all(r["ours"]["median_s"] > 0 and "official" not in r for r in payload["results"])


def test_official_builder_refuses_a_folder_that_is_not_a_checkout(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkout of lifuguan/IGGT_official"):
        official.import_official(tmp_path)
    with pytest.raises(ValueError, match="no official counterpart"):
        official.build_pair("nano", tmp_path, tmp_path)


def test_forward_plot_and_memory_slopes(tmp_path):
    out, png = tmp_path / "f.json", tmp_path / "views.png"
    run = subprocess.run([sys.executable, "-m", "benchmarks.forward", "--preset", "nano", "--views",
                          "1", "2", "3", "--sizes", "28x28", "--repeats", "1", "--threads", "1", "--json", str(out),
                          "--plot", str(png)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(out.read_text())["results"]
    assert [r["views"] for r in rows] == [1, 2, 3]
    assert "mib_per_view" not in rows[0] and all("mib_per_view" in r for r in rows[1:])
    assert rows[2]["mib_per_view"] == pytest.approx((rows[2]["peak_mib"] - rows[1]["peak_mib"]) / 1)


def test_memory_fit_recovers_a_line_and_flags_a_bend():
    forward = _module("forward")
    rows = [{"model": "ours", "height": 8, "width": 8, "views": v, "peak_mib": 100 + 5 * v, "median_s": 1.0}
            for v in (8, 16, 32, 64)]
    rows.append({"model": "official", "height": 8, "width": 8, "views": 8, "peak_mib": 1.0, "median_s": 1.0})
    (fit,) = forward.memory_fits(rows)          # one official point: no fit
    assert fit["mib_per_view"] == pytest.approx(5) and fit["base_mib"] == pytest.approx(100)
    assert fit["max_residual_mib"] == pytest.approx(0, abs=1e-9)
    rows[3]["peak_mib"] = 100 + 5 * 64 + 600    # a super-linear last point shows as a large residual
    assert forward.memory_fits(rows)[0]["max_residual_mib"] > 100


def test_clustering_benchmark_scales_and_renders(tmp_path):
    out = tmp_path / "c.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.clustering", "--views", "2", "--size", "28",
                          "42", "--scaling-views", "1", "3", "--repeat", "1", "--threads", "1", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    payload = json.loads(out.read_text())
    assert payload["agreement"]["pixels"] == 2 * 28 * 42
    assert payload["agreement"]["rows"][0]["ari_vs_truth"] > 0.5   # well-separated features cluster correctly
    assert [r["pixels"] for r in payload["scaling"]["rows"]] == [28 * 42, 3 * 28 * 42]
    table = _module("clustering").readme_table(payload)
    assert table.count("\n| 3 | 0.00 |") == 1 and table.startswith("<!-- clustering.json")


@pytest.mark.parametrize("name,json_name", [("vs_official", "vs_official.json"), ("forward", "forward_views.json"),
                                            ("many_view", "many_view.json"), ("clustering", "clustering.json"),
                                            ("kernels", "kernels.json"), ("bf16", "bf16.json"),
                                            ("headroom", "headroom.json")])
def test_readme_blocks_are_their_json(name, json_name):
    mod = _module(name)
    payload = json.loads((ROOT / "benchmarks" / json_name).read_text())
    assert mod.readme_table(payload) in benchmarking.text_holding(mod.BEGIN, ROOT)   # its docs page


def test_kernels_benchmark_counts_and_times_every_component(tmp_path):
    """A miniature of benchmarks/kernels.py: peaks measured, every component counted and timed in every setting."""
    out = tmp_path / "k.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.kernels", "--preset", "nano", "--size", "28", "28",
                          "--repeats", "1", "--threads", "1", "--json", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    payload = json.loads(out.read_text())
    kernels = _module("kernels")
    assert payload["peak_gflops"]["blas_fp32"] > 0
    assert set(payload["gflop"]) == {"backbone", "camera", "depth", "point", "track", "instance"}
    assert payload["gflop"]["depth"] > 0 and payload["gflop"]["instance"] > 0
    assert set(payload["seconds"]) == set(kernels.SETTINGS)
    assert all(s["total"] > 0 for s in payload["seconds"].values())
    assert "| total |" in kernels.readme_table(payload)


def test_headroom_benchmark_splits_products_from_the_rest(tmp_path):
    """A miniature of benchmarks/headroom.py without a compiler: the products' time and arithmetic per precision,
    and the Winograd probe computing the convolution it is compared with."""
    out = tmp_path / "h.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.headroom", "--preset", "nano", "--size", "28", "28",
                          "--views", "2", "--repeats", "1", "--threads", "1", "--winograd-size", "16",
                          "--winograd-channels", "32", "--no-compile", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    payload = json.loads(out.read_text())
    for p in ("fp32", "bf16"):
        fw = payload["forward"][p]
        assert 0 < fw["products_s"] < fw["total_s"] and fw["rest_s"] == pytest.approx(fw["total_s"] - fw["products_s"])
        assert fw["products_gflop"] > 0 and fw["busiest"][0]["seconds"] >= fw["busiest"][-1]["seconds"]
    assert [w["frames"] for w in payload["winograd"]] == [1, 2]
    assert all(w["max_rel_diff"] < 1e-5 for w in payload["winograd"])     # the transforms compute the convolution
    assert "compile" not in payload and "| the rest s |" in _module("headroom").readme_table(payload)


def test_winograd_transforms_of_the_headroom_probe_are_the_convolution():
    """(c)'s transforms against F.conv2d directly, odd channel counts and a bias included."""
    import torch

    from iggt_lightning.layers.fast_conv import winograd_weight

    headroom = _module("headroom")
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(2, 5, 8, 12, generator=g), torch.randn(7, 5, 3, 3, generator=g), torch.randn(7, generator=g)
    xp = torch.nn.functional.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
    v = headroom.winograd_input(xp, 2, 3)
    m = torch.bmm(v, winograd_weight(w))
    y = headroom.winograd_output(m, 2, 2, 3, b).permute(0, 3, 1, 2)
    ref = torch.nn.functional.conv2d(x, w, b, padding=1)
    assert (y - ref).abs().max() / ref.abs().max() < 1e-5


def test_a_block_is_refilled_in_the_one_page_that_holds_it(tmp_path):
    begin, end = "<!-- x.json: python -m benchmarks.x --readme -->", "<!-- /x.json -->"
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# doorway\n")
    page = tmp_path / "docs" / "x.md"
    page.write_text(f"intro\n{begin}\nold\n{end}\nafter\n")
    benchmarking.fill_block(begin, end, f"{begin}\nnew\n{end}", tmp_path)
    assert page.read_text() == f"intro\n{begin}\nnew\n{end}\nafter\n"
    assert benchmarking.text_holding(begin, tmp_path) == page.read_text()
    (tmp_path / "README.md").write_text(f"{begin}\nstale copy\n{end}\n")      # two holders: which one is true?
    with pytest.raises(SystemExit, match=r"exactly one .* found in README.md, docs/x.md"):
        benchmarking.fill_block(begin, end, f"{begin}\nnew\n{end}", tmp_path)
    with pytest.raises(SystemExit, match="found in none of README.md, docs/"):
        benchmarking.text_holding("<!-- y.json -->", tmp_path)
    page.write_text(f"{begin}\nno end marker\n")
    (tmp_path / "README.md").write_text("# doorway\n")
    with pytest.raises(SystemExit, match="no .* block to fill"):
        benchmarking.fill_block(begin, end, f"{begin}\nnew\n{end}", tmp_path)
    assert page.read_text() == f"{begin}\nno end marker\n"                     # nothing half-written


def test_context_parallel_benchmark_runs_and_its_docs_block_is_its_json(tmp_path):
    """A miniature of benchmarks/context_parallel.py (nano, 28x28, 3 views: 1p x 1t, 1p x 2t, 2p x 1t); the
    docs block is the committed JSON's table, or says it was not measured yet."""
    cp = _module("context_parallel")
    out = tmp_path / "cp.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.context_parallel", "--preset", "nano", "--size", "28x28",
                          "--views", "3", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    payload = json.loads(out.read_text())
    (row,) = payload["results"]
    runs = {r["name"]: r for r in row["runs"]}
    assert list(runs) == ["1p x 1t", "1p x 2t", "2p x 1t"] and all(r["status"] == "ok" for r in runs.values())
    split = runs["2p x 1t"]
    assert [p["views"] for p in split["per_process"]] == [2, 1]
    assert all(p["peak_rss_mib"] > 0 for p in split["per_process"])
    assert max(split["max_rel_diff"].values()) < 1e-5 and "max_rel_diff" not in runs["1p x 1t"]
    assert payload["environment"]["cpu_model"] is not None and payload["threads_per_process"]["2p x 1t"] == 1
    assert cp.table(payload).startswith(cp.BEGIN)
    committed = ROOT / "benchmarks" / "context_parallel.json"
    text = benchmarking.text_holding(cp.BEGIN, ROOT)
    if committed.is_file():
        assert cp.table(json.loads(committed.read_text())) in text
    else:
        assert f"{cp.BEGIN}\nNot measured yet" in text
