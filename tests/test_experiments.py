"""`dvc exp run -S` on tiny data: one model's stages re-run and the experiment's metrics differ;
after a sweep, the experiments table (`make experiments`) fits a terminal."""

from __future__ import annotations

import itertools
import json
import shlex
from pathlib import Path

import pytest
import yaml

from .conftest import PARAMS_HEADER, ROOT
from .workflow_repo import BIN, MODELS, committed_repo, copy_repo, dvc, git, ran_stages, run

# Real DVC queues, stores or several processes: `make test-system` (and CI) runs these.
pytestmark = pytest.mark.system

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


def test_params_yaml_still_points_to_its_explanations_after_the_experiment(repo):
    from .test_docs import CONFIGURATION, documented_keys, params_keys

    rewritten = (repo / "params.yaml").read_text()
    assert yaml.safe_load(rewritten)["models"]["model_2"]["hidden_units"] == 8  # DVC wrote it
    header = rewritten.splitlines()[0]
    assert header == PARAMS_HEADER and "docs/configuration.md" in header
    assert (repo / "docs" / "configuration.md").read_text() == CONFIGURATION
    assert set(params_keys(yaml.safe_load(rewritten))) <= set(documented_keys(CONFIGURATION))


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
    assert list(exp) == list(base) == ["metrics/test.json"]
    base, exp = base["metrics/test.json"], exp["metrics/test.json"]
    assert exp["model_2"]["loss"] != base["model_2"]["loss"]
    for model in ("model_0", "model_1"):
        assert exp[model] == base[model]
    # The run's results are applied to the workspace, and the committed baseline is untouched.
    assert json.loads((repo / "metrics/test.json").read_text()) == exp
    assert json.loads(git("show", "HEAD:metrics/test.json", cwd=repo)) == base


def test_exp_show_names_metric_columns_by_model_and_metric_alone(shown, repo):
    # DVC prefixes a column with its file's path only when two files share the name.
    _, metrics = shown[EXPERIMENT]
    names = [
        f"{model}.{key}" for data in metrics.values() for model, m in data.items() for key in m
    ]
    assert len(names) == len(set(names))
    expected = {f"{m}.{key}" for m in MODELS for key in ("accuracy", "loss")}
    assert set(names) == expected  # test metrics only: no timing, no run fact
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
        assert (
            json.loads((repo / "metrics/test.json").read_text())
            == shown[name][1]["metrics/test.json"]
        )


SWEEP = {"models.model_2.lr": (0.05, 0.2), "models.model_2.hidden_units": (4, 6)}


def experiments_command() -> list[str]:
    """`make experiments`'s command, as the Makefile writes it, with this venv's Python."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nexperiments:")[1].splitlines()[1].strip().lstrip("@")
    recipe = recipe.replace("$(EXP_FLAGS)", "").replace("$(BIN)/python", str(BIN / "python"))
    return shlex.split(recipe)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_data) -> Path:
    """A copy of the committed run after 4 experiments that change two params of model_2."""
    root = copy_repo(
        committed_repo(tmp_path_factory, tiny_data), tmp_path_factory.mktemp("sw") / "r"
    )
    for values in itertools.product(*SWEEP.values()):
        settings = [f"{key}={value}" for key, value in zip(SWEEP, values, strict=True)]
        dvc("exp", "run", *itertools.chain.from_iterable(("-S", s) for s in settings), cwd=root)
    return root


def test_the_experiments_table_after_a_sweep_is_readable_at_100_columns(swept):
    table = run(experiments_command(), swept, env={"COLUMNS": "100"}).splitlines()
    assert table and max(len(line) for line in table) <= 100, "\n".join(table)
    assert "…" not in "\n".join(table)
    header = table[0].split()
    # The changed params and the accuracy and loss of the model they change; nothing that
    # changes on every run, and no column named by a file's path.
    assert header == [
        "experiment",
        "state",
        "model_2.hidden_units",
        "model_2.lr",
        "model_2",
        "acc",
        "model_2",
        "loss",
    ]
    rows = [line.split() for line in table[1:]]
    assert rows[0][0] == "main" and len(rows) == 5
    for row in rows[1:]:
        assert row[1] == "Success" and len(row) == 6, row
        assert 0 <= float(row[4].rstrip("%")) <= 100
