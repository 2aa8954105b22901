"""Figures quoted in the README come from committed benchmark JSON: the main-job table is
benchmarks/main_job.json rendered by benchmarks/main_job.py, the ablation table benchmarks/ablation.json rendered
by benchmarks/ablation.py (never typed by hand)."""
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_main_job_table_is_its_json():
    spec = importlib.util.spec_from_file_location("main_job", ROOT / "benchmarks" / "main_job.py")
    main_job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main_job)
    payload = json.loads((ROOT / "benchmarks" / "main_job.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert main_job.readme_table(payload) in readme
    assert payload["last_ckpt_step"] == 520          # the config's max_steps: --ckpt_path last is the final model


def test_the_ablation_table_is_its_json():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    payload = json.loads((ROOT / "benchmarks" / "ablation.json").read_text())
    assert ablation.readme_table(payload) in (ROOT / "README.md").read_text()
    assert sorted(r["variant"] for r in payload["rows"]) == sorted(ablation.variants(ablation.CONFIG))
    assert all("error" not in r and r["steps"] == 520 for r in payload["rows"])


def test_the_survey_sentence_is_its_json():
    spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "benchmarks" / "bad_inputs.py")
    bad_inputs = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bad_inputs       # its dataclasses look their module up there
    spec.loader.exec_module(bad_inputs)
    now = json.loads((ROOT / "benchmarks" / "bad_inputs.json").read_text())
    before = json.loads((ROOT / "benchmarks" / "bad_inputs_before_s.json").read_text())
    assert bad_inputs.readme_summary(now, before) in (ROOT / "README.md").read_text()
    # every case of the survey ran, and none of them is a failure a user would suffer
    assert now["tried"] == len(bad_inputs.CASES) == len(now["cases"])
    assert not any(now["counts"][k] for k in ("vague", "silent", "data loss", "escape", "exec", "refused"))
