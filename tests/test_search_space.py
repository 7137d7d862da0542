"""fmnist-search's input and its study, without DVC: the space, the objective, the storage URL,
and the budget rule that makes every trial number count once."""

from __future__ import annotations

import socket

import pytest

from fmnist.experiments.search import (
    in_budget,
    open_storage,
    shown_url,
    trial_name,
    wants_trial,
)
from fmnist.experiments.space import parse_dimension, parse_objective, parse_space
from fmnist.pipeline.errors import PipelineError

from .conftest import tiny_params, write_params


@pytest.mark.parametrize(
    ("text", "kind", "ends"),
    [
        ("models.model_2.lr=log:0.01:0.3", "log", [0.01, 0.3]),
        ("models.model_2.lr=float:0.01:0.3", "float", [0.01, 0.3]),
        ("models.model_2.hidden_units=int:4:16", "int", [4, 16]),
        ("models.model_2.batch_size=choice:16,32,64", "choice", [16, 32, 64]),
        ("models.model_2.compute_dtype=choice:fp32,bf16", "choice", ["fp32", "bf16"]),
    ],
)
def test_a_dimension_reads_as_the_docs_write_it(text, kind, ends):
    dimension = parse_dimension(text)
    assert dimension.kind == kind and dimension.ends() == ends
    assert parse_dimension(dimension.spec()) == dimension  # the study records the spec


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("models.model_2.lr", "expected KEY=log:LOW:HIGH"),
        ("models.model_2.lr=normal:0:1", "expected KEY=log:LOW:HIGH"),
        ("models.model_2.lr=log:0.3:0.01", "LOW must be below HIGH"),
        ("models.model_2.lr=log:0:0.3", "a log range needs LOW above 0"),
        ("models.model_2.lr=float:a:1", "'a' is not a number"),
        ("models.model_2.lr=float:0:inf", "not a finite number"),
        ("models.model_2.hidden_units=int:1.5:4", "whole numbers"),
        ("models.model_2.batch_size=choice:16", "two or more different choices"),
    ],
)
def test_a_bad_dimension_is_one_line(text, says):
    with pytest.raises(PipelineError) as raised:
        parse_dimension(text)
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_the_space_is_checked_against_params_yaml_before_anything_runs(tmp_path, tiny_data):
    params = write_params(tmp_path / "params.yaml", tiny_params(tiny_data))
    space = parse_space(["models.model_2.lr=log:0.01:0.3"], params)
    assert [d.key for d in space] == ["models.model_2.lr"]
    cases = {
        "models.model_2.colour=choice:red,blue": "no such key",
        "models.model_2=choice:1,2": "a section, not a value",
        "models.model_2.hidden_units=int:0:8": "models.model_2.hidden_units",  # params' bounds
        "models.model_2.arch=choice:tinyvgg,resnet": "resnet",
    }
    for text, says in cases.items():
        with pytest.raises(PipelineError) as raised:
            parse_space([text], params)
        assert says in str(raised.value) and "\n" not in str(raised.value), text
    with pytest.raises(PipelineError, match="a key given twice"):
        parse_space(["models.model_2.lr=log:0.01:0.3", "models.model_2.lr=float:0.1:0.2"], params)


def test_the_objective_names_a_model_and_a_metric_and_its_direction_follows():
    models = ["model_0", "model_2"]
    assert parse_objective("model_2.accuracy", models) == ("model_2.accuracy", "maximize")
    assert parse_objective("model_0.loss", models) == ("model_0.loss", "minimize")
    for bad in ("model_9.accuracy", "model_2.f1", "accuracy"):
        with pytest.raises(PipelineError):
            parse_objective(bad, models)


def test_a_storage_url_never_shows_or_takes_a_password(tmp_path):
    assert (
        shown_url("postgresql://me:s3cret@db:5432/studies") == "postgresql://me:***@db:5432/studies"
    )
    with pytest.raises(PipelineError) as raised:
        open_storage("postgresql://me:s3cret@127.0.0.1:5432/studies", 10)
    assert "s3cret" not in str(raised.value) and "~/.pgpass" in str(raised.value)


def test_an_unreachable_database_is_one_line_before_anything_runs():
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PipelineError) as raised:
        open_storage(f"postgresql://me@127.0.0.1:{port}/studies", 10)
    message = str(raised.value)
    assert message.startswith(f"cannot open the study storage postgresql://me@127.0.0.1:{port}")
    assert "refused" in message.lower() and "\n" not in message  # the server's answer, not ours


def test_the_budget_counts_trials_in_number_order_and_not_the_failed(tmp_path):
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(f"sqlite:///{tmp_path}/study.db", 10)
    study = optuna.create_study(study_name="budget", storage=storage)
    first, second = study.ask(), study.ask()
    assert in_budget(study, first.number, 2) and in_budget(study, second.number, 2)
    third = study.ask()
    assert not in_budget(study, third.number, 2)  # two earlier trials fill a budget of 2
    study.tell(first, state=TrialState.FAIL)  # a failed trial frees its place
    assert in_budget(study, third.number, 2)
    study.tell(second, 1.0)
    study.tell(third, 2.0)
    assert not wants_trial(study, 2)
    study.enqueue_trial({"x": 1})  # a stale trial asked again waits: it is wanted anyway
    assert wants_trial(study, 2)


def test_trial_names_are_the_study_and_the_number():
    assert trial_name("lr-search", 7) == "lr-search-007"
    assert trial_name("lr-search", 1234) == "lr-search-1234"


def test_the_charts_show_the_history_and_which_param_mattered(tmp_path):
    import optuna

    from fmnist.experiments.search import draw

    storage = open_storage(f"sqlite:///{tmp_path}/study.db", 10)
    study = optuna.create_study(study_name="charts", storage=storage, direction="maximize")
    # The objective follows the batch size alone; the learning rate is noise.
    for i, (batch, lr) in enumerate([(32, 0.05), (64, 0.06), (32, 0.1), (64, 0.12), (32, 0.08)]):
        study.enqueue_trial({"models.model_2.batch_size": batch, "models.model_2.lr": lr})
        trial = study.ask()
        trial.suggest_categorical("models.model_2.batch_size", [32, 64])
        trial.suggest_float("models.model_2.lr", 0.03, 0.15, log=True)
        study.tell(trial, 0.89 - 0.0001 * i if batch == 32 else 0.86)
    drawn = draw(study, tmp_path)
    assert drawn == [tmp_path / "history.png", tmp_path / "importance.png"]
    importance = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )
    assert next(iter(importance)) == "models.model_2.batch_size"
