"""The GitHub Actions workflow installs, tests, runs the pipeline and reports on pull requests."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess

import pytest
import yaml

from .conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "pipeline.yml"
DOC = yaml.safe_load(WORKFLOW.read_text())
(JOB,) = DOC["jobs"].values()
STEPS = JOB["steps"]
PR_ONLY = "github.event_name == 'pull_request'"


def runs() -> list[str]:
    """The shell scripts of the job's `run` steps, in order."""
    return [step["run"] for step in STEPS if "run" in step]


def step_using(action: str) -> dict:
    (step,) = [s for s in STEPS if s.get("uses", "").split("@")[0] == action]
    return step


def index_of(pattern: str) -> int:
    """Index of the first step whose script matches `pattern`."""
    return next(i for i, s in enumerate(STEPS) if re.search(pattern, s.get("run", "")))


def test_it_runs_on_pushes_and_pull_requests():
    triggers = DOC.get("on", DOC.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "push" in triggers and "pull_request" in triggers


def test_checkout_fetches_the_history_that_the_diff_against_the_base_needs():
    assert step_using("actions/checkout")["with"]["fetch-depth"] == 0


def test_python_311_with_a_pip_cache():
    setup = step_using("actions/setup-python")["with"]
    assert str(setup["python-version"]) == "3.11"
    assert setup["cache"] == "pip"
    assert (ROOT / setup["cache-dependency-path"]).is_file()


def test_steps_install_the_data_then_test_then_run_the_pipeline_then_report():
    order = [
        index_of(r"apt-get install .*dataset-fashion-mnist"),
        index_of(r"\bmake setup\b"),
        index_of(r"\bmake test\b"),
        index_of(r"\bmake repro\b"),
        index_of(r"python -m fmnist\.report .*--out report\.md"),
        index_of(r"cml comment create report\.md"),
    ]
    assert order == sorted(order)
    assert STEPS.index(step_using("iterative/setup-cml")) < order[-1]


def test_the_report_is_for_pull_requests_against_their_base_branch():
    report_steps = [s for s in STEPS if "fmnist.report" in s.get("run", "")]
    publish = STEPS[index_of(r"cml comment create")]
    for step in [*report_steps, publish, step_using("iterative/setup-cml")]:
        assert step["if"] == PR_ONLY
    for step in report_steps:
        assert step["env"]["BASE_REF"] == "${{ github.base_ref }}"
        assert '--base "origin/$BASE_REF"' in step["run"]
    assert "GITHUB_STEP_SUMMARY" in publish["run"]
    assert publish["env"]["REPO_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert JOB.get("permissions", DOC.get("permissions"))["pull-requests"] == "write"


def test_the_accuracy_gate_runs_last_on_pull_requests():
    gate = STEPS[index_of(r"fmnist\.report .*--fail-on-regression")]
    assert gate is STEPS[-1] and gate["if"] == PR_ONLY
    assert STEPS.index(gate) > index_of(r"cml comment create")


def test_make_targets_and_modules_it_calls_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, flags=re.MULTILINE))
    called = {t for script in runs() for t in re.findall(r"\bmake ([a-z-]+)", script)}
    assert called and called <= targets
    modules = {m for script in runs() for m in re.findall(r"python -m ([\w.]+)", script)}
    assert modules == {"fmnist.report"}
    for module in modules:
        assert importlib.util.find_spec(module) is not None


def test_run_scripts_are_valid_bash():
    for script in runs():
        # Expressions are substituted before the shell sees the script.
        plain = re.sub(r"\$\{\{.*?\}\}", "x", script)
        result = subprocess.run(["bash", "-n"], input=plain, capture_output=True, text=True)
        assert result.returncode == 0, f"{script}\n{result.stderr}"


def test_actionlint_finds_nothing():
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed")
    result = subprocess.run([actionlint, str(WORKFLOW)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
