"""What a sweep says while it waits: a line as each experiment starts and ends, with the time."""

from __future__ import annotations

from fmnist.tools import sweep
from fmnist.tools.sweep import Progress, clock

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
    states = sweep.run_queue(["a", "b"], 1, {}, timeout_s=5, progress=Progress(2))
    assert states == {"a": "Success", "b": "Success"}
    lines = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert lines == ["a: started", "a: success (1 of 2 ended)", "b: success (2 of 2 ended)"]
