"""The bad-input survey (tests/survey/bad_inputs.py) as tests.

Every case is a test marked ``survey``: it runs one ``iggt`` command in a subprocess on hostile or careless input
and must end "clear" (one message naming the file or field) or "handled" (the right result). The 124 cases take
about 10 minutes on 2 cores, so the default run deselects them (setup.cfg); run them with
``python -m pytest -m survey tests/test_bad_input_survey.py`` (or ``python -m tests.survey.bad_inputs``, which also
writes the JSON the docs sentence is rendered from).

The tests that always run check what the docs say about the survey: the sentence in docs/security.md is its JSON,
the JSON covers every case defined now (by name), and no case ended as a failure a user would suffer."""
import json
import subprocess
from pathlib import Path

import pytest

from iggt_lightning.benchmarking import text_holding
from tests.survey import bad_inputs

ROOT = Path(__file__).resolve().parents[1]
SURVEY = ROOT / "tests" / "survey"
FAILURES = ("vague", "silent", "data loss", "escape", "exec", "refused")


def _json(name: str) -> dict:
    return json.loads((SURVEY / name).read_text())


def test_the_docs_sentence_is_the_survey_json():
    now, before = _json("bad_inputs.json"), _json("bad_inputs_before_s.json")
    assert bad_inputs.readme_summary(now, before) in text_holding(bad_inputs.README_BEGIN, ROOT)


def test_the_recorded_survey_ran_every_case_defined_now_and_none_failed():
    now = _json("bad_inputs.json")
    assert sorted(r["name"] for r in now["cases"]) == sorted(c.name for c in bad_inputs.CASES)
    assert now["tried"] == len(now["cases"])
    assert {k: sum(r["verdict"] == k for r in now["cases"]) for k in bad_inputs.VERDICTS} == now["counts"]
    assert not any(now["counts"][k] for k in FAILURES), [r for r in now["cases"] if r["verdict"] in FAILURES]
    commit = now["commit"]
    assert not commit.endswith("-dirty"), "the recorded survey ran on a checkout with uncommitted changes"
    is_ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=ROOT).returncode
    if is_ancestor == 128:
        pytest.skip("not a git checkout with history")
    assert is_ancestor == 0, f"the survey JSON records commit {commit}, not an ancestor of HEAD"


def test_case_names_are_unique():
    names = [c.name for c in bad_inputs.CASES]
    assert len(names) == len(set(names))


@pytest.mark.survey
@pytest.mark.parametrize("case", bad_inputs.CASES, ids=lambda c: c.name)
def test_case(case):
    row = bad_inputs.run_case(case, ROOT, timeout=240)
    assert row["verdict"] in ("clear", "handled"), f"{row['verdict']}: {row['detail']}"
