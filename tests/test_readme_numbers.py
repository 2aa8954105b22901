"""Figures quoted in the README come from committed benchmark JSON: the main-job table is
benchmarks/main_job.json rendered by benchmarks/main_job.py (never typed by hand)."""
import importlib.util
import json
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
