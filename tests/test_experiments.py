"""`dvc exp run -S` on tiny data: one model's stages re-run and the experiment's metrics differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .workflow_repo import committed_repo, copy_repo, dvc, git, ran_stages

EXPERIMENT = "wider-tinyvgg"
KEY = "models.model_2.hidden_units"


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_data) -> Path:
    """A copy of the committed run after `dvc exp run -S models.model_2.hidden_units=8`."""
    base = committed_repo(tmp_path_factory, tiny_data)
    root = copy_repo(base, tmp_path_factory.mktemp("experiments") / "repo")
    (root / "exp.log").write_text(dvc("exp", "run", "-n", EXPERIMENT, "-S", f"{KEY}=8", cwd=root))
    return root


@pytest.fixture(scope="module")
def shown(repo) -> dict:
    """`dvc exp show --json` for the baseline and its experiment: name -> (params, metrics)."""
    rows = {}
    for baseline in json.loads(dvc("exp", "show", "--json", cwd=repo)):
        if baseline["rev"] == "workspace":
            continue
        for entry in [baseline, *(r for e in baseline["experiments"] or [] for r in e["revs"])]:
            data = entry["data"]
            params = data["params"]["params.yaml"]["data"]
            metrics = {path: m["data"] for path, m in data["metrics"].items()}
            rows[entry["name"]] = (params, metrics)
    return rows


def test_the_experiment_ran_only_model_2s_stages(repo):
    ran = ran_stages((repo / "exp.log").read_text())
    assert sorted(ran) == ["compare", "evaluate@model_2", "train@model_2"]


def test_exp_show_lists_the_experiment_under_its_baseline(shown):
    assert set(shown) == {"main", EXPERIMENT}
    base_params, _ = shown["main"]
    exp_params, _ = shown[EXPERIMENT]
    assert base_params["models"]["model_2"]["hidden_units"] == 4
    assert exp_params["models"]["model_2"]["hidden_units"] == 8
    base_params["models"]["model_2"].pop("hidden_units")
    exp_params["models"]["model_2"].pop("hidden_units")
    assert exp_params == base_params  # nothing else changed


def test_the_experiments_metrics_differ_from_the_baseline_for_model_2_only(shown, repo):
    _, base = shown["main"]
    _, exp = shown[EXPERIMENT]
    tinyvgg = "metrics/models/model_2.json"
    assert exp[tinyvgg]["parameters"] > base[tinyvgg]["parameters"]  # wider conv layers
    assert exp[tinyvgg]["loss"] != base[tinyvgg]["loss"]
    for path in ("metrics/models/model_0.json", "metrics/models/model_1.json"):
        assert exp[path] == base[path]
    # The run's results are applied to the workspace, and the committed baseline is untouched.
    assert json.loads((repo / tinyvgg).read_text()) == exp[tinyvgg]
    assert json.loads(git("show", f"HEAD:{tinyvgg}", cwd=repo)) == base[tinyvgg]
