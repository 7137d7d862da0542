"""Between branches: `dvc metrics diff` and `dvc params diff` see one model's change, and only it.

A branch off the committed tiny-data run halves model_0's learning rate, re-runs and commits.
Metrics are committed to git, so no DVC remote is involved. The pull-request report, its
accuracy gate, `dvc plots diff` and the offline plots page are checked on the same two branches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import tiny_params, write_params
from .vega_specs import problems
from .workflow_repo import BIN, MODELS, committed_repo, copy_repo, dvc, git, ran_stages, run

# Real DVC queues, stores or several processes: `make test-system` (and CI) runs these.
pytestmark = pytest.mark.system

BRANCH = "lower-lr"


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_data) -> Path:
    """A copy of the committed run with a branch that changes models.model_0.lr and re-ran."""
    base = committed_repo(tmp_path_factory, tiny_data)
    root = copy_repo(base, tmp_path_factory.mktemp("branches") / "repo")
    git("checkout", "-q", "-b", BRANCH, cwd=root)
    write_params(root / "params.yaml", tiny_params(tiny_data, model_0={"lr": 0.05}))
    (root / "repro.log").write_text(dvc("repro", cwd=root))
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "Halve model_0's learning rate", cwd=root)
    return root


def test_the_branch_reran_only_model_0(repo):
    ran = ran_stages((repo / "repro.log").read_text())
    assert sorted(ran) == ["compare", "evaluate@model_0", "train@model_0"]


def test_params_diff_reports_only_the_changed_key(repo):
    diff = json.loads(dvc("params", "diff", "main", "--json", cwd=repo))
    assert list(diff) == ["params.yaml"]
    assert list(diff["params.yaml"]) == ["models.model_0.lr"]
    change = diff["params.yaml"]["models.model_0.lr"]
    assert (change["old"], change["new"]) == (0.1, 0.05)


def model_of(key: str) -> str:
    """The model a metric belongs to: `model_0.accuracy` -> `model_0`."""
    return key.split(".")[0]


def test_metrics_diff_reports_only_that_models_test_metrics(repo):
    diff = json.loads(dvc("metrics", "diff", "main", "--json", cwd=repo))
    assert list(diff) == ["metrics/test.json"]
    changes = diff["metrics/test.json"]
    assert sorted(changes) == ["model_0.accuracy", "model_0.loss"]  # no timing, no run fact
    assert changes["model_0.loss"]["old"] != changes["model_0.loss"]["new"]
    main = json.loads(git("show", "main:metrics/test.json", cwd=repo))["model_0"]
    branch = json.loads((repo / "metrics/test.json").read_text())["model_0"]
    for key, change in changes.items():
        name = key.removeprefix("model_0.")
        assert (change["old"], change["new"]) == (main[name], branch[name])
    # As a user reads it: a header and one row per changed metric.
    table = dvc("metrics", "diff", "main", cwd=repo).strip().splitlines()
    assert len(table) == 3 and all(line.startswith("metrics/test.json") for line in table[1:])


def test_all_metrics_diff_compares_every_model(repo):
    # --all also lists what did not change: the other models are there, with zero change.
    diff = json.loads(dvc("metrics", "diff", "main", "--all", "--json", cwd=repo))
    assert {model_of(key) for key in diff["metrics/test.json"]} == set(MODELS)
    for model in ("model_1", "model_2"):
        loss = diff["metrics/test.json"][f"{model}.loss"]
        assert loss["old"] == loss["new"]


def _report(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmnist.tools.change_report", "--base", "main", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"),
    )


def test_report_has_both_diffs_as_markdown_and_the_charts(repo):
    report_command = [sys.executable, "-m", "fmnist.tools.change_report"]
    run([*report_command, "--base", "main", "--out", "report.md"], repo)
    report = (repo / "report.md").read_text()
    results = report.split("## Results")[1].split("## Test accuracy")[0]
    accuracy = report.split("## Test accuracy against `main`")[1].split("## Metrics")[0]
    metrics = report.split("## Metrics changed from `main`")[1].split("## Params")[0]
    params = report.split("## Params changed from `main`")[1].split("## Charts")[0]

    assert "| model | architecture |" in results
    rows = [line for line in results.splitlines() if line.startswith("| model_")]
    assert [row.split("|")[1].strip() for row in rows] == list(MODELS)
    rows = [line.split("|")[1:-1] for line in metrics.splitlines() if line.startswith("| ")]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert cells[0][:2] == ["Path", "Metric"]
    assert {model_of(row[1]) for row in cells[1:]} == {"model_0"}
    assert ["metrics/test.json", "model_0.loss"] in [row[:2] for row in cells[1:]]
    rows = [line.split("|")[1:-1] for line in params.splitlines() if line.startswith("| ")]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert cells[1:] == [["params.yaml", "models.model_0.lr", "0.1", "0.05"]]
    verdicts = {
        line.split("|")[1].strip(): line.split("|")[5].strip()
        for line in accuracy.splitlines()
        if line.startswith("| model_")
    }
    assert verdicts == {"model_0": "dropped", "model_1": "ok", "model_2": "ok"}

    charts = [line for line in report.splitlines() if line.startswith("![")]
    assert len(charts) == 1 + len(MODELS)
    for line in charts:
        path = line.split("](")[1].rstrip(")")
        assert (repo / path).is_file(), path


def test_the_gate_fails_a_drop_past_the_threshold_naming_the_model_and_the_drop(repo):
    main = json.loads(git("show", "main:metrics/test.json", cwd=repo))["model_0"]
    branch = json.loads((repo / "metrics/test.json").read_text())["model_0"]
    drop = 100 * (main["accuracy"] - branch["accuracy"])
    assert drop > 1.0  # the tiny branch's lower learning rate costs model_0 accuracy

    failed = _report(repo, "--fail-on-regression", "--no-images")
    assert failed.returncode == 1
    (message,) = failed.stderr.strip().splitlines()
    assert message.startswith(f"error: model_0 lost {drop:.2f} percentage points of test accuracy")
    assert message.endswith("; gate.max_accuracy_drop allows at most 1")
    assert "# Pipeline report" in failed.stdout  # the report is still written


def test_the_gate_passes_a_drop_within_the_threshold(repo, tiny_data):
    # The threshold is read through params.yaml, yet no stage declares it: nothing re-runs.
    params = tiny_params(tiny_data, model_0={"lr": 0.05})
    params["gate"]["max_accuracy_drop"] = 25.0
    write_params(repo / "params.yaml", params)
    try:
        assert json.loads(dvc("status", "--json", cwd=repo)) == {}
        passed = _report(repo, "--fail-on-regression", "--no-images")
        assert passed.returncode == 0, passed.stderr
        assert "| model_0 |" in passed.stdout and "| ok |" in passed.stdout
    finally:
        git("checkout", "params.yaml", cwd=repo)


def test_report_against_its_own_commit_says_nothing_changed(repo):
    command = [sys.executable, "-m", "fmnist.tools.change_report", "--base", "HEAD", "--no-images"]
    report = run(command, repo)
    assert "No metric changed from `HEAD`." in report
    assert "No param changed from `HEAD`." in report
    assert "![" not in report


def test_plots_diff_overlays_both_branches_in_charts_that_read_at_a_glance(repo):
    shown = json.loads(dvc("plots", "diff", "main", "--json", cwd=repo))
    assert not shown.get("errors")
    charts = {name: entries for name, entries in shown["data"].items() if name.endswith(".csv")}
    assert len(charts) == 4 * len(MODELS) + 4  # per model, 3 comparisons and class counts
    for name, (entry,) in charts.items():
        assert entry["revisions"] == ["workspace", "main"]
        assert {row["rev"] for row in entry["content"]["data"]["values"]} == {"workspace", "main"}
        assert problems(name, entry["content"]) == []


def test_offline_plots_page_compares_the_branches(repo):
    run([sys.executable, "-m", "fmnist.tools.plots_page", "main"], repo)
    page = (repo / "dvc_plots" / "index.html").read_text()
    assert "<h1>DVC plots: workspace, main</h1>" in page
    # Each image once per revision; each chart draws both.
    images = 2 * len(MODELS) + 2
    assert page.count("<figcaption>main</figcaption>") == images
    assert page.count("<figcaption>workspace</figcaption>") == images
    assert page.count("<figcaption>workspace, main</figcaption>") == 4 * len(MODELS) + 5
