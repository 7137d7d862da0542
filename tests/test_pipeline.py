"""End to end: the real `dvc repro` in a temporary git repository, on tiny generated data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from .conftest import tiny_params, write_params
from .workflow_repo import FIRST_REPRO_LOG, committed_repo, copy_repo, dvc, git, ran_stages

MODELS = ("model_0", "model_1", "model_2")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_data) -> Path:
    """A copy of the git repository where `dvc repro` ran once on tiny data, and its log."""
    source = committed_repo(tmp_path_factory, tiny_data)
    return copy_repo(source, tmp_path_factory.mktemp("e2e") / "repo")


def test_repro_runs_every_stage_and_writes_every_output(repo):
    ran = ran_stages((repo / ".git" / FIRST_REPRO_LOG).read_text())
    assert ran[:2] == ["download", "prepare"]
    assert ran[-1] == "compare"
    expected = {f"train@{m}" for m in MODELS} | {f"evaluate@{m}" for m in MODELS}
    assert set(ran[2:-1]) == expected

    outputs = [
        "data/prepared/train.pt",
        "plots/data/classes.csv",
        "plots/data/samples.png",
        "plots/comparison/models.csv",
        "plots/comparison/epochs.csv",
        "plots/comparison/steps.csv",
        "plots/comparison/accuracy.png",
        "metrics/test.json",
    ]
    for m in MODELS:
        outputs += [
            f"models/{m}.pth",
            f"models/{m}.json",
            f"plots/train/{m}.csv",
            f"plots/steps/{m}.csv",
            f"timings/{m}.json",
            f"data/scores/{m}.json",
            f"plots/per_class/{m}.csv",
            f"plots/confusion/{m}.csv",
            f"data/predictions/{m}.csv",
            f"plots/images/{m}_confusion.png",
            f"plots/images/{m}_predictions.png",
        ]
    missing = [path for path in outputs if not (repo / path).is_file()]
    assert missing == []

    metrics = json.loads((repo / "metrics/test.json").read_text())
    # Nested, so that DVC names columns `model_2.loss`; test scores only, no run facts.
    assert metrics == {
        m: {"accuracy": metrics[m]["accuracy"], "loss": metrics[m]["loss"]} for m in MODELS
    }
    scores = json.loads((repo / "data/scores/model_2.json").read_text())
    assert scores["device"] == "cpu" and scores["accuracy"] == metrics["model_2"]["accuracy"]
    curves = (repo / "plots/train/model_0.csv").read_text().splitlines()
    assert curves[0] == "epoch,train_loss,train_accuracy,test_loss,test_accuracy"
    assert len(curves) == 3  # header + 2 epochs
    confusion = (repo / "plots/confusion/model_1.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted,count,share" and len(confusion) == 1 + 10 * 10
    predictions = (repo / "data/predictions/model_1.csv").read_text().splitlines()
    assert predictions[0] == "actual,predicted" and len(predictions) == 61


def test_every_stage_saved_its_run_cache_and_only_metrics_and_plots_are_in_git(repo):
    # One entry per stage under .dvc/cache/runs/<2 hex>/<stage key>/.
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    entries = list((repo / ".dvc" / "cache" / "runs").glob("*/*"))
    assert len(stages) == 9 and len(entries) == len(stages)
    tracked = set(git("ls-files", "models", "metrics/test.json", "plots", "data", cwd=repo).split())
    assert "models/model_0.json" not in tracked and "models/model_0.pth" not in tracked
    assert "data/scores/model_0.json" not in tracked
    assert {"metrics/test.json", "plots/confusion/model_0.csv"} <= tracked


def test_tiny_data_is_learnable(repo):
    # The tiny classes are easy: a working pipeline beats chance by far.
    metrics = json.loads((repo / "metrics/test.json").read_text())
    assert metrics["model_0"]["accuracy"] > 0.5


def test_metrics_and_plots_commands_see_everything(repo):
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo))
    files = next(iter(shown.values()))["data"]
    assert list(files) == ["metrics/test.json"]
    assert set(files["metrics/test.json"]["data"]) == set(MODELS)

    plots = json.loads(dvc("plots", "show", "--json", cwd=repo))
    assert not plots.get("errors")
    names = set(plots["data"])
    expected = {f"plots/{kind}/{m}.csv" for m in MODELS for kind in ("train", "steps", "confusion")}
    expected |= {
        f"plots/images/{m}_{kind}.png" for m in MODELS for kind in ("confusion", "predictions")
    }
    expected |= {
        "plots/comparison/models.csv",
        "plots/comparison/accuracy.png",
        "plots/data/samples.png",
    }
    assert expected <= names

    out = repo / "plots_html"
    dvc("plots", "show", "-o", str(out), cwd=repo)
    page = (out / "index.html").read_text()
    for name in expected:
        assert re.sub(r"[/.]", "_", name) in page, name  # each plot's element id


def test_a_second_repro_runs_nothing(repo):
    output = dvc("repro", cwd=repo)
    assert ran_stages(output) == []
    assert "Data and pipelines are up to date" in output


def test_changing_the_accuracy_gate_reruns_nothing(repo, tiny_data):
    params = tiny_params(tiny_data)
    params["gate"]["max_accuracy_drop"] = 5.0
    write_params(repo / "params.yaml", params)
    assert json.loads(dvc("status", "--json", cwd=repo)) == {}


def test_editing_a_tool_reruns_nothing_and_editing_the_library_reruns_its_stages(repo):
    # Tools and experiments (src/fmnist/tools/, src/fmnist/experiments/) are no stage's
    # dependency; the pipeline library is.
    edited = [
        *(repo / "src/fmnist/tools").glob("*.py"),
        *(repo / "src/fmnist/experiments").glob("*.py"),
        repo / "src/fmnist/pipeline/figures.py",
    ]
    originals = {path: path.read_text() for path in edited}
    try:
        for path in edited[:-1]:
            path.write_text(originals[path] + "\n# edited\n")
        assert json.loads(dvc("status", "--json", cwd=repo)) == {}
        edited[-1].write_text(originals[edited[-1]] + "\n# edited\n")
        assert set(json.loads(dvc("status", "--json", cwd=repo))) == {"compare"}
    finally:
        for path, text in originals.items():
            path.write_text(text)
    assert json.loads(dvc("status", "--json", cwd=repo)) == {}


def test_changing_one_learning_rate_reruns_exactly_its_stages(repo, tiny_data):
    write_params(repo / "params.yaml", tiny_params(tiny_data, model_2={"lr": 0.05}))
    status = dvc("status", "--json", cwd=repo)
    assert set(json.loads(status)) == {"train@model_2", "compare"}
    ran = ran_stages(dvc("repro", cwd=repo))
    assert sorted(ran) == ["compare", "evaluate@model_2", "train@model_2"]


def test_a_retrain_that_reproduces_the_weights_changes_nothing_downstream(repo):
    # Every output of train is byte-identical from run to run; the timing is in no output.
    before = (repo / "models/model_0.pth").read_bytes()
    assert ran_stages(dvc("repro", "-f", "-s", "train@model_0", cwd=repo)) == ["train@model_0"]
    assert (repo / "models/model_0.pth").read_bytes() == before
    assert json.loads(dvc("status", "--json", cwd=repo)) == {}
    assert json.loads((repo / "timings/model_0.json").read_text())["train_seconds"] > 0


def test_metrics_show_is_one_row_of_the_metrics_folder_without_an_empty_cell(repo):
    assert sorted(p.name for p in (repo / "metrics").iterdir()) == ["test.json"]
    table = dvc("metrics", "show", cwd=repo).rstrip("\n").splitlines()
    assert len(table) == 2  # a header and one row: metrics/test.json
    assert table[1].split()[0] == "metrics/test.json"
    header, row = (line.split() for line in table)
    assert len(row) == len(header) and "-" not in row
    assert header[1:] == [f"{m}.{key}" for m in MODELS for key in ("accuracy", "loss")]
