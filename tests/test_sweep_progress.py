"""What a sweep says while it waits: a line as each experiment starts and ends, with the time."""

from __future__ import annotations

from fmnist.experiments import queue as runner
from fmnist.experiments.queue import Experiment, Progress, clock
from fmnist.experiments.report import accuracy_axis, experiments_table, sweep_figure

from .test_sweep_messages import fake_queue, status


def test_a_line_as_each_experiment_starts_and_ends_timed_from_the_start():
    progress = Progress(total=2, start=100.0)
    assert progress.lines({"a": "Queued", "b": "Queued"}, now=101) == []
    assert progress.lines({"a": "Running", "b": "Queued"}, now=103) == ["[0:03] a: started"]
    assert progress.lines({"a": "Running", "b": "Queued"}, now=150) == []  # nothing new
    assert progress.lines({"a": "Success", "b": "Running"}, now=172.9) == [
        "[1:12] a: success (1 of 2 ended)",
        "[1:12] b: started",
    ]
    # Ended between two polls, never seen running: the end is still told.
    assert progress.lines({"a": "Success", "b": "Failed"}, now=3800) == [
        "[1:01:40] b: failed (2 of 2 ended)"
    ]


def test_clock():
    assert [clock(s) for s in (0, 59.9, 61, 3599, 3600)] == [
        "0:00",
        "0:59",
        "1:01",
        "59:59",
        "1:00:00",
    ]


def test_waiting_for_the_queue_prints_the_progress(monkeypatch, capsys):
    polls = [
        status(("a", "Queued"), ("b", "Queued"), workers=1),
        status(("a", "Running"), ("b", "Queued"), workers=1),
        status(("a", "Success"), ("b", "Success"), workers=1),
    ]
    fake_queue(monkeypatch, polls)
    states = runner.run_queue(["a", "b"], 1, {}, timeout_s=5, progress=Progress(2))
    assert states == {"a": "Success", "b": "Success"}
    lines = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert lines == ["a: started", "a: success (1 of 2 ended)", "b: success (2 of 2 ended)"]


def test_the_sweep_chart_starts_its_axis_near_the_data_and_labels_each_bar():
    keys = ["models.model_2.lr"]
    experiments = [
        Experiment(f"lr-{lr}", "Success", {keys[0]: lr}, {"model_2": {"accuracy": acc}})
        for lr, acc in ((0.05, 0.8512), (0.1, 0.8541), (0.2, 0.8593))
    ]
    experiments.append(Experiment("lr-9", "Failed", {keys[0]: 9}))  # no bar, no label
    fig = sweep_figure(experiments, keys)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert 84.0 <= low < 85.12 and 85.93 < high <= 87.0  # differences of 0.3 points show
    labels = [text.get_text() for text in ax.texts]
    assert labels == ["85.12", "85.41", "85.93"]
    assert "axis from 84.6" in ax.get_ylabel()


def test_the_accuracy_axis():
    assert accuracy_axis([]) == (0.0, 100.0)
    assert accuracy_axis([float("nan"), 50.0]) == (49.5, 50.5)
    assert accuracy_axis([10.0, 90.0]) == (0.0, 100.0)


def _rev(name: str, lr: float, accuracy: float, state: str | None = "success") -> dict:
    params = {"runtime": {"seed": 42}, "models": {"model_0": {"lr": 0.1}, "model_2": {"lr": lr}}}
    metrics = {
        "model_0": {"accuracy": 0.8293, "loss": 0.4906},
        "model_2": {"accuracy": accuracy, "loss": 0.33},
    }
    return {
        "executor": {"state": state} if state else None,
        "name": name,
        "revs": [
            {
                "rev": "0" * 40,
                "name": name,
                "data": {
                    "params": {"params.yaml": {"data": params}},
                    "metrics": {"metrics/test.json": {"data": metrics}},
                    "deps": {"models/model_2.pth": {"hash": name}},  # differs: never shown
                },
            }
        ],
    }


def test_make_experiments_shows_only_the_changed_params_and_the_moved_models():
    head = _rev("main", 0.1, 0.8831)["revs"][0]
    shown = [
        {**head, "rev": "workspace"},
        {
            **head,
            "rev": "a" * 40,
            "experiments": [_rev("lr-a", 0.05, 0.8702), _rev("lr-b", 0.2, 0.89, None)],
        },
    ]
    table = experiments_table(shown).splitlines()
    assert table == [
        "experiment  state    model_2.lr  model_2 acc  model_2 loss",
        "main                        0.1       88.31%        0.3300",
        "lr-a        Success        0.05       87.02%        0.3300",
        "lr-b        Success         0.2       89.00%        0.3300",
    ]
