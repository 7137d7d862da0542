"""What the sweep tells its user, checked against DVC's queue output without running DVC: the
queue's states are answered from recorded `dvc queue status` texts."""

from __future__ import annotations

import os
import subprocess
import sys

from fmnist.experiments import queue as runner


def fake_queue(monkeypatch, statuses: list[str]) -> list[tuple[str, ...]]:
    """Make the sweep's DVC calls answer `queue status` with `statuses` in turn; record calls."""
    calls: list[tuple[str, ...]] = []

    def dvc(*args: str, **options) -> str:
        calls.append(args)
        if args[:2] == ("queue", "status"):
            return statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return ""

    monkeypatch.setattr(runner, "run_dvc", dvc)
    monkeypatch.setattr(runner, "POLL_S", 0)
    monkeypatch.setattr(runner, "IDLE_S", 0)
    return calls


def status(*rows: tuple[str, str], workers: int) -> str:
    lines = ["Task     Name        Created    Status"]
    lines += [f"abc1234  {name}  04:27 AM   {state}" for name, state in rows]
    return "\n".join([*lines, "", f"Worker status: {workers} active, 0 idle"])


def test_workers_that_stop_with_experiments_queued_are_started_again(monkeypatch):
    stalled = status(("a", "Success"), ("b", "Queued"), workers=0)
    done = status(("a", "Success"), ("b", "Success"), workers=1)
    calls = fake_queue(monkeypatch, [stalled, done])
    assert runner.run_queue(["a", "b"], 2, {}, timeout_s=5) == {"a": "Success", "b": "Success"}
    assert calls.count(("queue", "start", "--jobs", "2")) == 2


def test_an_experiment_no_worker_will_run_is_reported_lost(monkeypatch):
    calls = fake_queue(monkeypatch, [status(("a", "Failed"), ("b", "Queued"), workers=0)])
    assert runner.run_queue(["a", "b", "c"], 2, {}, timeout_s=5) == {
        "a": "Failed",
        "b": "Lost",
        "c": "Lost",  # not even in the queue any more
    }
    assert calls.count(("queue", "start", "--jobs", "2")) == 3


def test_an_entry_said_running_with_no_process_of_the_queue_alive_is_lost_at_once(monkeypatch):
    # A worker that took it as it stopped: no new worker will run it, so none is started.
    calls = fake_queue(monkeypatch, [status(("a", "Success"), ("b", "Running"), workers=0)])
    assert runner.run_queue(["a", "b"], 2, {}, timeout_s=5) == {"a": "Success", "b": "Lost"}
    assert calls.count(("queue", "start", "--jobs", "2")) == 1


def test_a_running_entry_whose_worker_misses_the_ping_is_waited_for(monkeypatch, tmp_path):
    # A worker busy starting up may not answer `dvc queue status`; its process still lives.
    tag = str(tmp_path)
    alive = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, runner.TAG_ENV: tag},
    )
    try:
        running = status(("a", "Running"), workers=0)
        calls = fake_queue(monkeypatch, [running, running, status(("a", "Success"), workers=0)])
        states = runner.run_queue(["a"], 1, {runner.TAG_ENV: tag}, timeout_s=5)
    finally:
        alive.kill()
        alive.wait()
    assert states == {"a": "Success"}
    assert calls.count(("queue", "start", "--jobs", "1")) == 1
