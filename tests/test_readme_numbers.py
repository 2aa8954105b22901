"""Figures quoted in the README come from committed benchmark JSON: the main-job table is
benchmarks/main_job.json rendered by benchmarks/main_job.py, the ablation table benchmarks/ablation.json rendered
by benchmarks/ablation.py (never typed by hand)."""
import json
import re
import subprocess
from pathlib import Path

import pytest

from benchmarks import ablation, main_job
from iggt_lightning.benchmarking import text_holding

ROOT = Path(__file__).resolve().parents[1]


def _main_job():
    return main_job, json.loads((ROOT / "benchmarks" / "main_job.json").read_text())


def test_the_main_job_table_is_its_json():
    main_job, payload = _main_job()
    assert main_job.readme_table(payload) in (ROOT / "README.md").read_text()
    runs = payload["runs"]
    assert len({r["seed"] for r in runs}) == len(runs) >= 3          # a spread, not one run
    assert all(r["last_ckpt_step"] == 520 for r in runs)  # the config's max_steps: --ckpt_path last is the final model
    assert {r["test_scenes"] for r in runs} == {main_job._test_scenes()}      # the whole test split, as configured
    assert payload["summary"] == main_job.summarize(runs)                     # the spread is computed, not typed
    env = payload["environment"]
    # what a user needs to tell whether their machine is of the same kind
    assert re.fullmatch(r"[0-9a-f]{40}", env["commit"]) and not env["uncommitted_changes"]
    assert env["cpu_model"] and env["torch_cpu_capability"] and not env["isa_overrides"]
    assert {"torch", "lightning", "numpy", "pycocotools"} <= set(env["packages"])


def test_the_second_clone_checks_are_their_json():
    """The README's agreement rows: runs from second clean clones, compared with main_job.json by the script."""
    main_job, payload = _main_job()
    checks = main_job.recorded_checks()
    assert [what for what, _ in checks] == [what for _, what in main_job.CHECKS]     # both were run
    assert main_job.readme_checks(checks) in (ROOT / "README.md").read_text()
    for _, check in checks:
        assert check["agreement"] == main_job.agreement(check, payload)         # against the table as it is now
        assert not check["environment"]["uncommitted_changes"]


def test_the_main_job_json_was_measured_from_this_history():
    main_job, payload = _main_job()
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        pytest.skip("git is not installed")
    if head.returncode:
        pytest.skip("not a git checkout")
    ancestor = subprocess.run(["git", "-C", str(ROOT), "merge-base", "--is-ancestor", payload["environment"]["commit"],
                               "HEAD"], capture_output=True, text=True)
    assert ancestor.returncode == 0, f"main_job.json's commit is not in this branch's history: {ancestor.stderr}"


def test_the_main_job_json_measured_the_code_as_it_is():
    """The JSON's first training steps, run again now: a change that alters what training computes (data,
    losses, a speed setting leaking into training) moves them by far more than another CPU kind does
    (float rounding: about 1e-4 relative after 3 steps), and then the main job must be run again."""
    main_job, payload = _main_job()
    now = main_job.fingerprint()
    recorded = payload["fingerprint"]
    worst = max(abs(a - b) / max(abs(b), 1e-6) for key in main_job.FINGERPRINT_KEYS
                for a, b in zip(now[key], recorded[key], strict=True))
    assert worst <= 2e-3, (f"the main job's first {recorded['steps']} training steps changed (largest relative "
                           f"difference {worst:.2e}): re-run python -m benchmarks.main_job\nnow: {now}\n"
                           f"recorded: {recorded}")


def _text_holding(begin: str) -> str:
    """The one page (README.md or docs/*.md) holding the block that starts with ``begin``: where the script refills it."""
    return text_holding(begin, ROOT)


def test_the_ablation_table_is_its_json():
    payload = json.loads((ROOT / "benchmarks" / "ablation.json").read_text())
    assert ablation.readme_table(payload) in _text_holding(ablation.BEGIN)     # docs/training.md
    assert sorted(r["variant"] for r in payload["rows"]) == sorted(ablation.variants(ablation.CONFIG))
    assert all("error" not in r and r["steps"] == 520 for r in payload["rows"])


def test_the_long_video_table_is_its_json_and_covers_what_the_docs_claim():
    from benchmarks import long_video

    payload = json.loads((ROOT / "benchmarks" / "long_video.json").read_text())
    assert long_video.table(payload) in _text_holding(long_video.BEGIN)          # docs/long-videos.md
    rows = payload["scaling"]["rows"]
    assert max(r["frames"] for r in rows if (r.get("windowed") or {}).get("status") == "ok") >= 1000
    assert any((r.get("exact") or {}).get("status") == "ok" for r in rows)       # exact where it fits
    runs = payload["accuracy"]["runs"]
    assert {"oracle long/windowed", "oracle long/no_association", "oracle short/exact"} <= set(runs)
    assert all(r["status"] == "ok" for r in runs.values())
