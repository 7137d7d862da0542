"""`fmnist-search` on tiny data: every trial a DVC experiment run by the queue, a study shared
by two clones on a real PostgreSQL server, a worker killed mid-trial, and pruning.

System tests: real DVC queues, several processes and a database server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fmnist.experiments.queue import TAG_ENV
from fmnist.pipeline.processes import Owned, kill_all, spawn, stop_group, tagged

from .postgres import running_postgres
from .workflow_repo import (
    BIN,
    committed_repo,
    copy_repo,
    dvc,
    git,
    kill_queue_processes,
    run_experiments_tool,
)

pytestmark = pytest.mark.system

SPACE = ["-P", "models.model_2.lr=log:0.02:0.5", "-P", "models.model_2.hidden_units=int:2:8"]
RUN_TIMEOUT_S = 900


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    return dict(os.environ, DVC_NO_ANALYTICS="1", PATH=path, **(extra or {}))


def search(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `fmnist-search ARGS` in `root` to its end; kill whatever it left, whatever happened."""
    return run_experiments_tool("search", root, *args, env=env, timeout=RUN_TIMEOUT_S)


def study_of(root: Path, name: str = "search", url: str | None = None, env: dict | None = None):
    """The study as Optuna stored it (the repository's SQLite file unless `url`)."""
    import optuna

    if env:
        os.environ.update(env)
    return optuna.load_study(study_name=name, storage=url or f"sqlite:///{root}/search/study.db")


def exp_names(root: Path) -> list[str]:
    """The names of the experiments of HEAD, as `dvc exp show` lists them (duplicates kept)."""
    names = []
    for baseline in json.loads(dvc("exp", "show", "--json", cwd=root)):
        for group in baseline.get("experiments") or []:
            names += [rev["name"] for rev in group["revs"]]
    return names


def slow_repo(base: Path, dest: Path) -> Path:
    """A copy whose model_2 trains 300 epochs of the tiny data (seconds): time to act mid-trial."""
    root = copy_repo(base, dest)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["models"]["model_2"]["epochs"] = 300
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git("commit", "-q", "-am", "model_2: 300 epochs", cwd=root)
    return root


@pytest.fixture
def base(tmp_path_factory, tiny_data) -> Path:
    """The committed tiny-data run that every test here copies."""
    return committed_repo(tmp_path_factory, tiny_data)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_data) -> tuple[Path, subprocess.CompletedProcess]:
    base = committed_repo(tmp_path_factory, tiny_data)
    root = copy_repo(base, tmp_path_factory.mktemp("search") / "repo")
    return root, search(root, "--trials", "6", "--jobs", "2", "--seed", "3", *SPACE)


def test_six_trials_with_two_jobs_are_six_dvc_experiments_of_the_study(searched):
    from optuna.trial import TrialState

    root, result = searched
    assert result.returncode == 0, result.stdout + result.stderr
    trials = study_of(root).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    names = [t.user_attrs["experiment"] for t in trials]
    assert names == [f"search-{n:03d}" for n in range(6)]
    assert sorted(exp_names(root)) == names  # each once in `dvc exp show`
    for t in trials:  # each trial ran the values Optuna proposed
        assert {"models.model_2.lr", "models.model_2.hidden_units"} == set(t.params)
    assert "best: trial" in result.stdout and "`dvc exp apply search-" in result.stdout
    csv = (root / "search" / "search.csv").read_text().splitlines()
    assert len(csv) == 7 and csv[0].startswith("trial,state,model_2.lr,model_2.hidden_units")
    assert (root / "search" / "history.png").read_bytes()[:4] == b"\x89PNG"
    assert tagged(TAG_ENV, str(root.resolve())) == []  # every worker ended


def test_the_best_trials_experiment_applied_reproduces_its_metric(searched):
    root, _ = searched
    best = study_of(root).best_trial
    dvc("exp", "apply", best.user_attrs["experiment"], cwd=root)
    metrics = json.loads((root / "metrics" / "test.json").read_text())
    assert metrics["model_2"]["accuracy"] == pytest.approx(best.value, abs=1e-9)
    params = yaml.safe_load((root / "params.yaml").read_text())["models"]["model_2"]
    assert params["hidden_units"] == best.params["models.model_2.hidden_units"]
    assert params["lr"] == pytest.approx(best.params["models.model_2.lr"])


def training_trial(root: Path) -> int | None:
    """The pid of a train stage running in one of DVC's copies of `root`, if any."""
    for pid in tagged(TAG_ENV, str(root.resolve())):
        owned = Owned.of(pid)
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if owned and "stages/train.py" in owned.cmdline and "/.dvc/tmp/exps/" in cwd:
            return pid
    return None


def search_until_training(root: Path, args: list[str], log_path: Path) -> subprocess.Popen:
    """Start `fmnist-search ARGS` in `root`, its output to `log_path`; return once a trial's
    train stage runs (the tool is stopped if it ends or none starts within 300 s)."""
    with log_path.open("w") as log:
        tool = spawn(
            [sys.executable, "-m", "fmnist.experiments.search", *args],
            cwd=root,
            env=tool_env(),
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 300
        while training_trial(root) is None:
            assert tool.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no trial started training"
            time.sleep(0.5)
    except BaseException:
        stop_group(tool)
        raise
    return tool


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_killed_worker_leaves_a_trial_that_is_failed_and_asked_again(base, tmp_path):
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    root = slow_repo(base, tmp_path / "repo")
    args = ["--trials", "2", "--jobs", "1", "--heartbeat-s", "1", "-P", SPACE[1]]
    tool = search_until_training(root, args, tmp_path / "first.log")
    try:
        # As when the machine is lost: the tool and DVC's workers die at once, no clean-up.
        os.kill(tool.pid, signal.SIGKILL)
        kill_all(tagged(TAG_ENV, str(root.resolve())), grace=0)
    finally:
        stop_group(tool)
    assert [t.state for t in study_of(root).get_trials()] == [TrialState.RUNNING]

    again = search(root, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = study_of(root).get_trials()
    states = {t.number: t.state for t in trials}
    assert states[0] == TrialState.FAIL  # its heartbeat stopped
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    retried = [t for t in complete if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 0]
    assert len(retried) == 1 and retried[0].params == trials[0].params  # asked again, as it was
    names = [t.user_attrs["experiment"] for t in complete]
    assert len(set(names)) == 2 and set(names) <= set(exp_names(root))


def test_a_trial_that_dvcs_queue_loses_under_a_live_search_runs_again_under_its_name(
    base, tmp_path
):
    from optuna.trial import TrialState

    root = slow_repo(base, tmp_path / "repo")
    log_path = tmp_path / "search.log"
    tool = search_until_training(root, ["--trials", "1", "-P", SPACE[1]], log_path)
    try:
        # The worker and the trial's stages die, the search lives: DVC's entry says `Running`
        # for ever, as when a worker takes a trial while it stops for an empty queue.
        assert kill_queue_processes(root) > 0
        assert tool.wait(timeout=RUN_TIMEOUT_S) == 0, log_path.read_text()
    finally:
        stop_group(tool)
        kill_all(tagged(TAG_ENV, str(root.resolve())), grace=1)
    out = log_path.read_text()
    assert "trial 0 (search-000) was lost by DVC's queue: queued it again" in out
    assert [t.state for t in study_of(root).get_trials()] == [TrialState.COMPLETE]
    assert exp_names(root) == ["search-000"]


def test_pruning_stops_a_trial_that_falls_behind_and_ends_its_processes(base, tmp_path):
    from optuna.trial import TrialState

    root = slow_repo(base, tmp_path / "repo")
    # With this seed the trials draw lr 0.2, 1e-4, 0.2, 1e-4: at epoch 1 the slow ones' loss is
    # behind the first trial's, and the median pruner stops them.
    space = ["-P", "models.model_2.lr=choice:0.2,0.0001"]
    options = ["--prune", "--trials", "4", "--seed", "5", "--objective", "model_2.loss"]
    result = search(root, *options, *space)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = study_of(root).get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, result.stdout
    for t in pruned:
        assert t.params["models.model_2.lr"] == 0.0001
        assert 1 in t.intermediate_values  # judged from its first epoch on
        assert t.user_attrs["experiment"] not in exp_names(root)  # stopped: no experiment
        assert f"({t.user_attrs['experiment']}) pruned after epoch" in result.stdout
    assert tagged(TAG_ENV, str(root.resolve())) == []  # no process of it left


def test_two_clones_share_one_study_on_postgresql_and_a_third_gathers_it(base, tmp_path):
    from optuna.trial import TrialState

    with running_postgres(tmp_path) as db:
        origin = tmp_path / "origin.git"
        git("init", "-q", "--bare", "-b", "main", str(origin), cwd=tmp_path)
        git("push", "-q", str(origin), "main", cwd=base)
        clones = []
        for name in ("a", "b", "c"):
            git("clone", "-q", str(origin), str(tmp_path / name), cwd=tmp_path)
            git("config", "user.email", f"{name}@example.com", cwd=tmp_path / name)
            git("config", "user.name", name, cwd=tmp_path / name)
            # The outputs, as a `dvc pull` from the team's remote would bring them.
            shutil.copytree(base / ".dvc" / "cache", tmp_path / name / ".dvc" / "cache")
            dvc("checkout", "-q", cwd=tmp_path / name)
            clones.append(tmp_path / name)
        args = ["--storage", db.url, "--trials", "8", "--seed", "11", "--push", *SPACE]
        logs = {clone.name: (tmp_path / f"{clone.name}.log").open("w") for clone in clones[:2]}
        workers = [
            spawn(
                [sys.executable, "-m", "fmnist.experiments.search", *args],
                cwd=clone,
                env=tool_env(db.env),
                stdout=logs[clone.name],
                stderr=logs[clone.name],
            )
            for clone in clones[:2]
        ]
        try:
            for worker, clone in zip(workers, clones, strict=False):
                assert worker.wait(timeout=RUN_TIMEOUT_S) == 0, (
                    tmp_path / f"{clone.name}.log"
                ).read_text()
        finally:
            for worker, clone in zip(workers, clones, strict=False):
                stop_group(worker)
                kill_all(tagged(TAG_ENV, str(clone.resolve())), grace=1)

        trials = study_of(tmp_path, url=db.url, env=db.env).get_trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == 8
        names = [t.user_attrs["experiment"] for t in complete]
        assert len(set(names)) == 8  # each trial number run once
        ran = {clone.name: set(exp_names(clone)) & set(names) for clone in clones[:2]}
        assert ran["a"] and ran["b"] and ran["a"] | ran["b"] == set(names)  # both worked
        pushed = git("ls-remote", str(origin), "refs/exps/*", cwd=tmp_path).splitlines()
        assert len(pushed) == 8

        gathered = search(clones[2], "--gather", "--storage", db.url, env=db.env)
        assert gathered.returncode == 0, gathered.stdout + gathered.stderr
        assert "8 of study search's 8 experiments found, 8 pulled from origin" in gathered.stdout
        assert sorted(exp_names(clones[2])) == sorted(names)
        for name in names:
            assert name in gathered.stdout
