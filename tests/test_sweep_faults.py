"""`fmnist-sweep` under faults: Ctrl-C, its time limit and a killed tool leave no worker or
training running and nothing in DVC's queue; the thread count is a param that DVC tracks; the
report survives values with `:` and never passes an old chart for a new one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmnist.experiments import grid, queue, report, share, stop, sweep
from fmnist.experiments.grid import combinations
from fmnist.experiments.queue import TAG_ENV, split_override
from fmnist.pipeline.paths import METRICS_FILE
from fmnist.pipeline.processes import Owned, kill_all, spawn, stop_group, tagged

from .test_faults import wait_for
from .workflow_repo import (
    BIN,
    committed_repo,
    copy_repo,
    dvc,
    kill_queue_processes,
    ran_stages,
    run_experiments_tool,
)

# Real DVC queues, stores or several processes: `make test-system` (and CI) runs these.
pytestmark = pytest.mark.system

GRID = ["models.model_2.lr=0.05,0.2", "models.model_2.hidden_units=4,6"]
STOP_WITHIN_S = 10.0


def patch_everywhere(monkeypatch: pytest.MonkeyPatch, name: str, value: object) -> None:
    """Replace `name` in every module of the experiments package that has it (each imported it)."""
    for module in (grid, queue, report, share, stop, sweep):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, value)


def sweep_processes(root: Path) -> list[int]:
    """Every process a sweep in `root` started: workers, `exec-run`s and stages."""
    return tagged(TAG_ENV, str(root.resolve()))


def training(root: Path) -> bool:
    """Whether a stage of the sweep is training right now."""
    for pid in sweep_processes(root):
        owned = Owned.of(pid)
        if owned is not None and any("stages/train.py" in part for part in owned.cmdline):
            return True
    return False


def unfinished(root: Path) -> list[str]:
    """Lines of `dvc queue status` for experiments still queued or running."""
    out = dvc("queue", "status", cwd=root)
    return [line for line in out.splitlines() if line.split()[-1:] in (["Queued"], ["Running"])]


def start_sweep(root: Path, *args: str) -> subprocess.Popen[str]:
    """Start the tool in `root` as a user would, in the background."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    command = [sys.executable, "-m", "fmnist.experiments.sweep", "--jobs", "2", *args]
    return spawn(
        [*command, *(a for o in GRID for a in ("-S", o))],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def gone_within(root: Path, seconds: float) -> list[int]:
    """Wait up to `seconds` for the sweep's processes to end; return those still alive."""
    deadline = time.monotonic() + seconds
    while (left := sweep_processes(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture
def repo(tmp_path, tmp_path_factory, tiny_data):
    """A copy of the committed tiny-data repository; its sweep processes end with the test."""
    root = copy_repo(committed_repo(tmp_path_factory, tiny_data), tmp_path / "repo")
    try:
        yield root
    finally:
        kill_all(sweep_processes(root), grace=1)


def test_ctrl_c_stops_every_worker_and_training_and_empties_the_queue(repo):
    tool = start_sweep(repo)
    try:
        wait_for(lambda: training(repo), "an experiment to train", timeout_s=240)
        tool.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        assert gone_within(repo, STOP_WITHIN_S) == []
        stdout, stderr = tool.communicate(timeout=60)
        print(f"exited {time.monotonic() - interrupted:.1f} s after Ctrl-C")
    finally:
        stop_group(tool)
    assert tool.returncode == 130, stdout + stderr
    assert "error: interrupted" in stderr
    assert "stopped" in stdout and "Stopped" in stdout  # the table says which
    assert unfinished(repo) == []
    assert sweep_processes(repo) == []


def test_a_closed_terminal_sighup_stops_every_worker_and_empties_the_queue(repo):
    tool = start_sweep(repo)
    try:
        wait_for(lambda: training(repo), "an experiment to train", timeout_s=240)
        tool.send_signal(signal.SIGHUP)
        assert gone_within(repo, STOP_WITHIN_S) == []
        stdout, stderr = tool.communicate(timeout=60)
    finally:
        stop_group(tool)
    assert tool.returncode == 128 + signal.SIGHUP, stdout + stderr
    assert unfinished(repo) == []


def test_stop_drops_only_the_entries_a_sweep_queued(monkeypatch, tmp_path, capsys):
    # An experiment queued by hand (`dvc exp run --queue -n my-own`, `dvc queue start`) runs
    # in a worker that carries no sweep tag: --stop neither kills it nor takes it off the queue.
    monkeypatch.chdir(tmp_path)
    calls: list[tuple[str, ...]] = []
    listing = (
        "Task     Name              Created    Status\n"
        "abc1234  my-own            04:27 AM   Running\n"
        "abc1235  sweep-0123456789  04:27 AM   Running\n"
        "abc1236  sweep-9876543210  04:27 AM   Queued\n"
        "\nWorker status: 1 active, 0 idle\n"
    )

    def dvc_call(*args: str, **options) -> str:
        calls.append(args)
        return listing if args[:2] == ("queue", "status") else ""

    patch_everywhere(monkeypatch, "run_dvc", dvc_call)
    patch_everywhere(monkeypatch, "stop_processes", lambda tag: [])
    stop.stop_repository_sweeps()
    assert ("queue", "kill", "--force", "sweep-0123456789") in calls
    assert ("queue", "remove", "sweep-0123456789") in calls
    assert not [call for call in calls if "my-own" in call]
    out = capsys.readouterr().out
    assert "removed from the queue: sweep-0123456789" in out
    assert "still queued (`dvc queue remove --queued` drops them): sweep-9876543210" in out


def test_the_time_limit_stops_every_worker_and_empties_the_queue(repo):
    tool = start_sweep(repo, "--timeout-s", "8")
    try:
        stdout, stderr = tool.communicate(timeout=120)
        ended = time.monotonic()
    finally:
        stop_group(tool)
    assert tool.returncode == 1, stdout + stderr
    assert "did not end within 8 s" in stderr and "stopped" in stderr
    assert "dvc queue stop --kill" not in stderr  # advice that would not have stopped them
    assert gone_within(repo, max(0.0, STOP_WITHIN_S - (time.monotonic() - ended))) == []
    assert unfinished(repo) == []


def test_a_killed_tools_workers_are_stopped_by_stop(repo):
    tool = start_sweep(repo)
    try:
        wait_for(lambda: training(repo), "an experiment to train", timeout_s=240)
        tool.kill()  # no cleanup can run: DVC's workers are daemons and go on
        tool.communicate(timeout=30)
        assert sweep_processes(repo) != []
    finally:
        stop_group(tool)
    stop = run_experiments_tool("sweep", repo, "--stop", timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert sweep_processes(repo) == []
    assert not any(line.split()[-1] == "Running" for line in unfinished(repo))


def test_experiments_whose_workers_die_under_a_live_sweep_run_again(repo):
    # One worker, killed as it trains: never mid-commit, where it would leave git's locks.
    tool = start_sweep(repo, "--jobs", "1")
    try:
        wait_for(lambda: training(repo), "an experiment to train", timeout_s=240)
        # DVC's entries of the experiments they ran say `Running` for ever: nothing of theirs
        # lives to say otherwise, and no worker will take them again.
        assert kill_queue_processes(repo) > 0
        stdout, stderr = tool.communicate(timeout=900)
    finally:
        stop_group(tool)
    assert tool.returncode == 0, stdout + stderr
    assert "lost by DVC's queue, not in the pipeline: queued it again" in stdout
    listed = json.loads(dvc("exp", "show", "--json", cwd=repo))
    done = [r["name"] for b in listed for g in b.get("experiments") or [] for r in g["revs"]]
    assert len(done) == len(set(done)) == len(combinations(GRID))  # each once
    assert "Success" in stdout and not {"Failed", "Lost"} & set(stdout.split())
    assert unfinished(repo) == []


def test_two_thread_counts_are_two_runs_for_dvc(repo):
    # The committed params run one thread: two and three are new runs, each trained.
    first = dvc("exp", "run", "-S", "runtime.threads=2", cwd=repo)
    second = dvc("exp", "run", "-S", "runtime.threads=3", cwd=repo)
    for output in (first, second):
        assert "train@model_2" in ran_stages(output)  # trained, not restored from the other
    assert json.loads((repo / "models" / "model_2.json").read_text())["threads"] == 3
    again = dvc("exp", "run", "-S", "runtime.threads=2", cwd=repo)
    assert ran_stages(again) == []  # the same params: the 2-thread run, restored
    assert "Stage 'train@model_2' is cached" in again


def test_an_override_splits_at_its_first_equals_sign():
    assert split_override("params.yaml:data.sources=http://127.0.0.1:8000/") == (
        "data.sources",
        "http://127.0.0.1:8000/",
    )
    assert split_override("runtime.device=cuda:1") == ("runtime.device", "cuda:1")


GOOD, BAD = (c.name for c in combinations(["runtime.device=cpu,cuda:1"]))


def fake_dvc(monkeypatch, shown: list[dict]) -> None:
    """Make the sweep's DVC answer as after a grid of `runtime.device=cpu,cuda:1`."""
    status = (
        "Task     Name              Created    Status\n"
        f"abc1234  {GOOD}  04:27 AM   Success\n"
        f"abc1235  {BAD}  04:27 AM   Failed\n\n"
        "Worker status: 0 active, 0 idle\n"
    )
    started = []

    def dvc(*args: str, **options) -> str:
        if args[:3] == ("exp", "run", "--queue"):
            return f"Queued experiment '{args[4]}' for future execution.\n"
        if args[:2] == ("queue", "start"):
            started.append(args)
        if args[:2] == ("queue", "status"):
            return status if started else "No experiment tasks in the queue.\n"
        if args[:2] == ("exp", "show"):
            return json.dumps([{"experiments": [{"revs": shown}]}] if shown else [])
        return ""

    patch_everywhere(monkeypatch, "run_dvc", dvc)
    patch_everywhere(monkeypatch, "workspace_tree", lambda: "")
    patch_everywhere(monkeypatch, "queue_log", lambda name, env: "error: no such device cuda:1\n")
    patch_everywhere(monkeypatch, "POLL_S", 0)


def test_a_value_with_a_colon_reaches_the_table_and_the_csv(tmp_path, monkeypatch, capsys):
    metrics = {"data": {"model_2": {"accuracy": 0.5, "loss": 1.25}}}
    good = {
        "name": GOOD,
        "data": {
            "params": {"params.yaml": {"data": {"runtime": {"device": "cpu", "threads": 1}}}},
            "metrics": {str(METRICS_FILE): metrics},
        },
    }
    fake_dvc(monkeypatch, [good])
    monkeypatch.chdir(tmp_path)
    experiments = sweep.sweep(["runtime.device=cpu,cuda:1"], 1, 5, tmp_path / "out")
    assert [(e.name, e.status) for e in experiments] == [(GOOD, "Success"), (BAD, "Failed")]
    out = capsys.readouterr().out
    assert "cuda:1" in out and "50.00%" in out
    assert f"{BAD} failed: error: no such device cuda:1" in out
    csv = (tmp_path / "out" / "sweep.csv").read_text().splitlines()
    assert csv[0] == "experiment,state,runtime.device,model_2 accuracy,model_2 loss"
    assert csv[2] == f"{BAD},Failed,cuda:1,-,-"
    assert (tmp_path / "out" / "sweep.png").is_file()


def test_no_chart_is_claimed_or_left_over_when_nothing_has_metrics(tmp_path, monkeypatch, capsys):
    fake_dvc(monkeypatch, [])
    monkeypatch.chdir(tmp_path)
    stale = tmp_path / "out" / "sweep.png"
    stale.parent.mkdir()
    stale.write_bytes(b"an older sweep's chart")
    sweep.sweep(["runtime.device=cpu,cuda:1"], 1, 5, tmp_path / "out")
    out = capsys.readouterr().out
    assert "sweep.png" not in out and "no chart" in out
    assert not stale.exists()
    assert (tmp_path / "out" / "sweep.csv").is_file()


def test_a_killed_runs_leftover_entry_of_a_finished_experiment_is_dropped(
    tmp_path, monkeypatch, capsys
):
    # A run killed just after an experiment ended leaves its queue entry `Running`; `dvc exp
    # show` would then list the experiment twice, once from its commit and once from the entry.
    calls: list[tuple[str, ...]] = []
    entries = {GOOD: "Running"}
    shown = [{"name": GOOD, "data": {"params": {}, "metrics": {}}}]

    def dvc(*args: str, **options) -> str:
        calls.append(args)
        if args[:2] == ("exp", "list"):
            return f"{GOOD}\n{BAD}\n"  # both ran before
        if args[:2] == ("queue", "remove"):
            for name in args[2:]:
                entries.pop(name, None)
        if args[:2] == ("queue", "status"):
            rows = [f"abc1234  {name}  04:27 AM   {state}" for name, state in entries.items()]
            return "\n".join(["Task  Name  Created  Status", *rows, "", "Worker status: 0 active"])
        if args[:2] == ("exp", "show"):
            revs = shown + [{"name": n, "data": {"params": {}, "metrics": {}}} for n in entries]
            return json.dumps([{"experiments": [{"revs": revs}]}])
        return ""

    patch_everywhere(monkeypatch, "run_dvc", dvc)
    patch_everywhere(monkeypatch, "workspace_tree", lambda: "")
    monkeypatch.chdir(tmp_path)
    sweep.sweep(["runtime.device=cpu,cuda:1"], 1, 5, tmp_path / "out")
    assert ("queue", "kill", "--force", GOOD) in calls
    assert ("queue", "remove", GOOD) in calls
    assert not any(call[:3] == ("exp", "run", "--queue") for call in calls)  # nothing ran again
    assert "already run under this commit, kept" in capsys.readouterr().out


def test_a_stop_leaves_no_copy_of_the_secret_readable_by_others(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd" / ".dvc" / "config.local"
    copy.parent.mkdir(parents=True)
    copy.write_text("['remote \"local-store\"']\n    secret_access_key = s3cr3t\n")
    copy.chmod(0o644)  # as DVC's copy of a killed experiment's workspace was found
    assert stop.protect_secret_copies() == [Path(".dvc/tmp/exps/tmpab12cd/.dvc/config.local")]
    assert copy.stat().st_mode & 0o777 == 0o600
