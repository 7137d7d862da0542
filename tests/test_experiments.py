"""`dvc exp run -S` on tiny data: one model's stages re-run and the experiment's metrics differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .workflow_repo import MODELS, committed_repo, copy_repo, dvc, git, ran_stages

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
    assert exp[tinyvgg]["model_2"]["parameters"] > base[tinyvgg]["model_2"]["parameters"]
    assert exp[tinyvgg]["model_2"]["loss"] != base[tinyvgg]["model_2"]["loss"]
    for path in ("metrics/models/model_0.json", "metrics/models/model_1.json"):
        assert exp[path] == base[path]
    # The run's results are applied to the workspace, and the committed baseline is untouched.
    assert json.loads((repo / tinyvgg).read_text()) == exp[tinyvgg]
    assert json.loads(git("show", f"HEAD:{tinyvgg}", cwd=repo)) == base[tinyvgg]


def test_exp_show_names_metric_columns_by_model_and_metric_alone(shown, repo):
    # DVC prefixes a column with its file's path only when two files share the name.
    _, metrics = shown[EXPERIMENT]
    names = [
        f"{model}.{key}" for data in metrics.values() for model, m in data.items() for key in m
    ]
    assert len(names) == len(set(names))
    expected = {
        f"{m}.{key}" for m in MODELS for key in ("accuracy", "loss", "parameters", "train_seconds")
    }
    assert expected <= set(names)
    header = dvc("exp", "show", "--csv", cwd=repo).splitlines()[0].split(",")
    assert expected <= set(header)
    assert not [column for column in header if ".json:" in column]


def test_a_second_identical_experiment_is_restored_from_the_run_cache(shown, repo):
    # Back to the baseline's value, then the experiment's again: both ran before, so DVC
    # restores every stage's outputs from its run-cache and trains nothing.
    for value, name in ((4, "main"), (8, EXPERIMENT)):
        output = dvc("exp", "run", "-S", f"{KEY}={value}", cwd=repo)
        assert ran_stages(output) == []
        for stage in ("train@model_2", "evaluate@model_2", "compare"):
            assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in output
        tinyvgg = "metrics/models/model_2.json"
        assert json.loads((repo / tinyvgg).read_text()) == shown[name][1][tinyvgg]
