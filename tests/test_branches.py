"""Between branches: `dvc metrics diff` and `dvc params diff` see one model's change, and only it.

A branch off the committed tiny-data run halves model_0's learning rate, re-runs and commits.
Metrics are committed to git, so no DVC remote is involved. The pull-request report and the
offline plots page are checked on the same two branches.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .conftest import tiny_params, write_params
from .workflow_repo import MODELS, committed_repo, copy_repo, dvc, git, ran_stages, run

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


def model_of(path: str) -> str:
    """The model a metrics file belongs to: metrics/<kind>/<model>.json."""
    return Path(path).stem


def test_metrics_diff_reports_only_that_model(repo):
    diff = json.loads(dvc("metrics", "diff", "main", "--json", cwd=repo))
    assert {model_of(path) for path in diff} == {"model_0"}
    changes = diff["metrics/models/model_0.json"]
    assert "loss" in changes
    assert changes["loss"]["old"] != changes["loss"]["new"]
    for path, file_changes in diff.items():
        main = json.loads(git("show", f"main:{path}", cwd=repo))
        branch = json.loads((repo / path).read_text())
        for key, change in file_changes.items():
            assert (change["old"], change["new"]) == (main[key], branch[key])


def test_all_metrics_diff_compares_every_model(repo):
    # --all also lists what did not change: the other models are there, with zero change.
    diff = json.loads(dvc("metrics", "diff", "main", "--all", "--json", cwd=repo))
    assert {model_of(path) for path in diff} == set(MODELS)
    for model in ("model_1", "model_2"):
        loss = diff[f"metrics/models/{model}.json"]["loss"]
        assert loss["old"] == loss["new"]


def test_report_has_both_diffs_as_markdown_and_the_charts(repo):
    run([sys.executable, "-m", "fmnist.report", "--base", "main", "--out", "report.md"], repo)
    report = (repo / "report.md").read_text()
    metrics = report.split("## Metrics changed from `main`")[1].split("## Params")[0]
    params = report.split("## Params changed from `main`")[1].split("## Charts")[0]

    rows = [line.split("|")[1:-1] for line in metrics.splitlines() if line.startswith("| ")]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert cells[0][:2] == ["Path", "Metric"]
    assert {model_of(row[0]) for row in cells[1:]} == {"model_0"}
    assert ["metrics/models/model_0.json", "loss"] in [row[:2] for row in cells[1:]]
    rows = [line.split("|")[1:-1] for line in params.splitlines() if line.startswith("| ")]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert cells[1:] == [["params.yaml", "models.model_0.lr", "0.1", "0.05"]]
    assert (repo / "metrics/comparison.md").read_text().strip() in report

    charts = [line for line in report.splitlines() if line.startswith("![")]
    assert len(charts) == 1 + len(MODELS)
    for line in charts:
        path = line.split("](")[1].rstrip(")")
        assert (repo / path).is_file(), path


def test_report_against_its_own_commit_says_nothing_changed(repo):
    report = run([sys.executable, "-m", "fmnist.report", "--base", "HEAD", "--no-images"], repo)
    assert "No metric changed from `HEAD`." in report
    assert "No param changed from `HEAD`." in report
    assert "![" not in report


def test_offline_plots_page_compares_the_branches(repo):
    run([sys.executable, "-m", "fmnist.render_plots", "main"], repo)
    page = (repo / "dvc_plots" / "index.html").read_text()
    assert "<h1>DVC plots: workspace, main</h1>" in page
    # Each image once per revision; each chart (curves, confusion, comparison) draws both.
    images = 2 * len(MODELS) + 2
    assert page.count("<figcaption>main</figcaption>") == images
    assert page.count("<figcaption>workspace</figcaption>") == images
    assert page.count("<figcaption>workspace, main</figcaption>") == 2 * len(MODELS) + 1
