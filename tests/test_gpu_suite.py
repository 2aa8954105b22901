"""benchmarks/gpu_suite.sh: it parses (and passes shellcheck where installed), and its CPU fallback runs a
miniature of every step end to end, writing one JSON with each step ran or skipped with a reason and VGGT's
published table beside our numbers. No timing is asserted."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.sh"
STEPS = ("forward", "max_frames", "train_step", "fsdp_fit")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    # one thread per process: the CPU miniature shares its cores with whatever else runs
    env.update(OMP_NUM_THREADS="1", PYTHON=sys.executable, PYTHONWARNINGS="ignore")
    env.pop("IGGT_GPU_SUITE_BUDGET", None)
    return env


def test_script_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck():
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _driver():
    from benchmarks import gpu_suite

    return gpu_suite


def test_cpu_runs_never_target_the_gpu_results():
    suite = _driver()
    assert suite.parse_args(["--cpu"]).json == (ROOT / "benchmarks" / "results" / "gpu_suite_cpu.json").resolve()
    with pytest.raises(SystemExit):
        suite.parse_args(["--cpu", "--json", "benchmarks/gpu_suite.json"])


def test_published_table_is_vggts():
    pub = _driver().PUBLISHED
    assert "facebookresearch/vggt" in pub["source"] and "aggregator" in pub["what"]
    table = dict(zip(pub["frames"], zip(pub["time_s"], pub["memory_gb"])))
    assert table[1] == (0.04, 1.88) and table[100] == (3.12, 21.15) and table[200] == (8.75, 40.63)
    assert len(pub["frames"]) == len(pub["time_s"]) == len(pub["memory_gb"]) == 9


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_suite")
    out = tmp / "suite.json"
    gpu_json = ROOT / "benchmarks" / "gpu_suite.json"
    before = gpu_json.stat().st_mtime_ns if gpu_json.exists() else None
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu", "--threads", "1", "--budget", "120", "--json", str(out)],
                          cwd=tmp, env=_env(), capture_output=True, text=True, timeout=300)
    after = gpu_json.stat().st_mtime_ns if gpu_json.exists() else None
    assert before == after, "a CPU run touched benchmarks/gpu_suite.json"
    assert out.is_file(), proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc, json.loads(out.read_text())


def test_cpu_fallback_runs_every_step(cpu_run):
    proc, payload = cpu_run
    assert payload["profile"] == "cpu" and payload["complete"] is True
    assert list(payload["steps"]) == list(STEPS)
    for name in STEPS:
        step = payload["steps"][name]
        assert step["status"] == "ran" or step.get("reason"), (name, step)
    ran = [n for n in STEPS if payload["steps"][n]["status"] == "ran"]
    # with a 120 s budget the miniature has time for everything (it takes well under a minute)
    assert ran == list(STEPS), {n: payload["steps"][n].get("status") for n in STEPS}
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_forward_rows_sit_beside_the_published_table(cpu_run):
    proc, payload = cpu_run
    pub = payload["published"]
    assert pub["frames"][:2] == [1, 2] and pub["source"].startswith("https://github.com/facebookresearch/vggt")
    rows = payload["steps"]["forward"]["rows"]
    assert {(r["preset"], r["mode"], r["frames"]) for r in rows} == {
        (p, m, f) for p in ("nano", "mini") for m in ("aggregator", "full") for f in (1, 2)}
    for r in rows:
        assert r["status"].startswith("ok"), r
        i = pub["frames"].index(r["frames"])
        assert r["published_time_s"] == pub["time_s"][i] and r["published_memory_gb"] == pub["memory_gb"][i]
        assert r["median_s"] > 0 and r["time_ratio"] == pytest.approx(r["median_s"] / r["published_time_s"])
        assert r["peak_bytes"] >= 0 and "memory_ratio" in r
    table = proc.stdout
    assert "| step | model | what | frames | time s | peak GB | VGGT H100 s | VGGT GB | time x | memory x |" in table
    for title in ("1 forward", "2 max frames", "3 train step", "4 FSDP2 fit"):
        assert f"| {title} |" in table, table


def test_max_frames_train_and_fsdp_report_what_they_did(cpu_run):
    _, payload = cpu_run
    variants = {v["variant"]: v for v in payload["steps"]["max_frames"]["variants"]}
    assert set(variants) == {"exact", "merged"}
    for v in variants.values():
        if v["status"] == "ran":     # merged is "unavailable" (with the error) where the model lacks the option
            assert v["probes"] and v["stop_reason"], v
            assert all(p["status"] in ("fits", "OOM", "over cap", "timeout") for p in v["probes"]), v["probes"]
        else:
            assert v["status"] == "unavailable" and v["reason"], v
    assert variants["exact"]["status"] == "ran"
    train = payload["steps"]["train_step"]
    assert train["loss_kind"] in ("model", "sum-of-means") and train["gradient_checkpointing"] is True
    assert len(train["steps_s"]) >= 1 and train["peak_bytes"] >= 0
    fsdp = payload["steps"]["fsdp_fit"]
    assert "configs/strategies/fsdp.yaml" in fsdp["command"] and "--trainer.max_steps 2" in fsdp["command"]
    assert fsdp["returncode"] == 0 and fsdp["reached_max_steps"] is True
