"""`fmnist-sweep` on tiny data: DVC's queue with two workers runs a grid, loses nothing,
reproduces one-at-a-time results, and reports a failed experiment without stopping the others.
Split across machines, two clones of one git remote each run a shard of the grid and push it (to
a bare repository and a real S3 store on 127.0.0.1), and a third gathers what the one-machine
sweep found; a shard killed midway and run again keeps what it finished."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from fmnist.experiments.queue import TAG_ENV, Experiment, dvc_failed, sweep_keys
from fmnist.experiments.report import format_table, table
from fmnist.pipeline.processes import kill_all, spawn, stop_group, tagged

from .conftest import load_stage, write_params
from .s3_store import REMOTE, URL, Server
from .workflow_repo import (
    BIN,
    committed_repo,
    copy_repo,
    dvc,
    git,
    ran_stages,
    run,
    run_experiments_tool,
)

# Real DVC queues, stores or several processes: `make test-system` (and CI) runs these.
pytestmark = pytest.mark.system

GRID = ["models.model_2.lr=0.05,0.2", "models.model_2.hidden_units=4,6"]
# lr 1e6 makes model_0 diverge at once; 0.05 and 0.2 are fine.
WITH_FAILURE = ["models.model_0.lr=0.05,1e6,0.2"]
JOBS = 2


def workers(root: Path) -> list[psutil.Process]:
    """DVC queue workers (and what they run) started for the repository at `root`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            cmd, cwd = " ".join(proc.info["cmdline"] or []), proc.info["cwd"] or ""
            if "dvc" in cmd and ("queue" in cmd or "exec-run" in cmd) and cwd.startswith(str(root)):
                found.append(proc)
    return found


def run_sweep(root: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """Run the tool as a user would, then stop every worker it left, whatever happened."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    args = [arg for o in overrides for arg in ("-S", o)]
    try:
        return subprocess.run(
            [sys.executable, "-m", "fmnist.experiments.sweep", "--jobs", str(JOBS), *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,  # the first experiments train every model at their runtime.threads
        )
    finally:
        subprocess.run(
            [str(BIN / "dvc"), "queue", "stop", "--kill"], cwd=root, env=env, capture_output=True
        )
        left = workers(root)
        _, alive = psutil.wait_procs(left, timeout=20)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)


def shown(root: Path) -> dict[str, list[dict]]:
    """`dvc exp show --json`'s experiments by name (a list, to catch one listed twice)."""
    rows: dict[str, list[dict]] = {}
    for baseline in json.loads(dvc("exp", "show", "--json", cwd=root)):
        for group in baseline.get("experiments") or []:
            for rev in group["revs"]:
                rows.setdefault(rev["name"], []).append(rev)
    return rows


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_data) -> tuple[Path, subprocess.CompletedProcess]:
    base = committed_repo(tmp_path_factory, tiny_data)
    root = copy_repo(base, tmp_path_factory.mktemp("sweep") / "repo")
    return root, run_sweep(root, GRID)


def one_at_a_time(root: Path, dest: Path, lr: float, hidden: int) -> dict:
    """model_2's test metrics when its stages run alone in this process with these params."""
    for folder in ("data", "models"):
        shutil.copytree(root / folder, dest / folder, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["models"]["model_2"].update(lr=lr, hidden_units=hidden)
    write_params(dest / "params.yaml", params)
    cwd = Path.cwd()
    os.chdir(dest)
    try:
        load_stage("train").main(["--model", "model_2"])
        load_stage("evaluate").main(["--model", "model_2"])
    finally:
        os.chdir(cwd)
    scores = json.loads((dest / "data" / "scores" / "model_2.json").read_text())
    return {key: scores[key] for key in ("accuracy", "loss")}


def test_a_grid_with_two_workers_succeeds_and_is_listed_once(swept):
    root, result = swept
    print(result.stdout, result.stderr)  # shown if an assertion below fails
    assert result.returncode == 0, result.stdout + result.stderr
    experiments = shown(root)
    assert len(experiments) == 4
    assert all(len(revs) == 1 for revs in experiments.values())  # each exactly once
    assert all(not revs[0].get("error") for revs in experiments.values())
    grid = set()
    for (rev,) in experiments.values():
        model_2 = rev["data"]["params"]["params.yaml"]["data"]["models"]["model_2"]
        grid.add((model_2["lr"], model_2["hidden_units"]))
    assert grid == {(0.05, 4), (0.05, 6), (0.2, 4), (0.2, 6)}
    for name in experiments:
        assert name in result.stdout  # in the printed table
    csv = (root / "sweep" / "sweep.csv").read_text()
    assert csv.count("\n") == 5 and "runtime.threads" not in csv.splitlines()[0]
    assert (root / "sweep" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert workers(root) == []
    # While it waited, a timed line as each experiment started and ended.
    ended = re.findall(r"^\[\d+:\d\d\] (\S+): success \((\d) of 4 ended\)$", result.stdout, re.M)
    assert sorted(name for name, _ in ended) == sorted(experiments)
    assert sorted(count for _, count in ended) == ["1", "2", "3", "4"]
    assert re.search(r"^\[\d+:\d\d\] \S+: started$", result.stdout, re.M)


def test_push_without_a_dvc_remote_pushes_the_commits_and_succeeds(swept, tmp_path):
    # No DVC remote in this clone: the experiments' commits (params, metrics and plots, all in
    # git) still go to the git remote, and the sweep says that only they went.
    root = copy_repo(swept[0], tmp_path / "repo")
    team = tmp_path / "team.git"
    git("init", "-q", "--bare", str(team), cwd=tmp_path)
    git("remote", "add", "team", str(team), cwd=root)
    args = [arg for o in GRID for arg in ("-S", o)]
    result = run_experiments_tool("sweep", root, *args, "--push", "team", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "already run under this commit, kept" in result.stdout  # nothing trained again
    assert "pushed 4 experiments to team" in result.stdout
    assert "no DVC remote: only their commits (params, metrics, plots) were pushed" in result.stdout
    refs = git("ls-remote", str(team), "refs/exps/*", cwd=root).splitlines()
    assert len(refs) == 4


def test_parallel_workers_keep_the_thread_count_that_params_yaml_sets(swept):
    root, _ = swept
    expected = yaml.safe_load((root / "params.yaml").read_text())["runtime"]["threads"]
    for (rev,) in shown(root).values():
        params = rev["data"]["params"]["params.yaml"]["data"]
        assert params["runtime"]["threads"] == expected  # no param the user did not sweep
        # The experiment's commit holds compare's table, which records each model's threads.
        table = git("show", f"{rev['rev']}:plots/comparison/models.csv", cwd=root)
        rows = {row["model"]: row for row in csv.DictReader(io.StringIO(table))}
        assert int(rows["model_2"]["threads"]) == expected


def test_the_parallel_results_equal_one_at_a_time_runs(swept, tmp_path):
    root, _ = swept
    for name, (rev,) in shown(root).items():
        data = rev["data"]
        model_2 = data["params"]["params.yaml"]["data"]["models"]["model_2"]
        alone = one_at_a_time(root, tmp_path / name, model_2["lr"], model_2["hidden_units"])
        assert data["metrics"]["metrics/test.json"]["data"]["model_2"] == alone


def test_a_diverging_experiment_is_reported_and_the_others_complete(
    tmp_path, tmp_path_factory, tiny_data
):
    root = copy_repo(committed_repo(tmp_path_factory, tiny_data), tmp_path / "repo")
    result = run_sweep(root, WITH_FAILURE)
    assert result.returncode == 1
    assert "1 of 3 experiments did not succeed" in result.stderr
    rows = shown(root)
    failed = [name for name, revs in rows.items() if revs[0].get("error")]
    good = [name for name, revs in rows.items() if not revs[0].get("error")]
    assert len(failed) == 1 and len(good) == 2
    (name,) = failed
    # The reason, from the experiment's own log, next to its name.
    assert f"{name} failed: error: model_0: training loss became nan" in result.stdout
    for other in good:
        metrics = rows[other][0]["data"]["metrics"]["metrics/test.json"]["data"]
        assert 0 <= metrics["model_0"]["accuracy"] <= 1
        # Two workers, and still only model_0's stages ran: the sweep changed no other param.
        log = dvc("queue", "logs", other, cwd=root)
        assert set(ran_stages(log)) == {"train@model_0", "evaluate@model_0", "compare"}, log
    assert workers(root) == []


def test_the_table_lists_swept_params_and_each_models_scores():
    keys = sweep_keys(["models.model_2.lr=0.1,0.2", "params.yaml:models.model_2.epochs=1"])
    assert keys == ["models.model_2.lr", "models.model_2.epochs"]
    scores = {"model_2": {"accuracy": 0.5, "loss": 1.25}}
    experiments = [
        Experiment("a", "Success", {"models.model_2.lr": 0.1}, scores),
        Experiment("b", "Failed", {"models.model_2.lr": 0.2}),
    ]
    text = format_table(table(experiments, keys[:1]))
    header = ["experiment", "state", "models.model_2.lr", "model_2", "accuracy", "model_2", "loss"]
    assert text.splitlines()[0].split() == header
    assert "50.00%" in text and "1.2500" in text
    assert text.splitlines()[2].split()[:3] == ["b", "Failed", "0.2"]


def test_a_run_that_dvc_failed_is_told_from_one_the_pipeline_failed():
    race = "FileExistsError: [Errno 17] File exists: b'/repo/.git/packed-refs.lock'"
    assert dvc_failed(race)
    assert dvc_failed("ERROR: No output logs found for experiment 'tamer-kibe'\n")
    assert dvc_failed("")
    stage = "error: model_0: training loss became nan at batch 1 of 15 in epoch 1 with lr 1e6"
    assert not dvc_failed(f"> python stages/train.py --model model_0\n{stage}\n")


# A grid across machines. Each shard runs its experiments one at a time with params.yaml's thread
# count, as the one-machine sweep above did with two workers: the same params, the same results.
SHARD_ARGS = [a for o in GRID for a in ("-S", o)]


def tool_env(server: Server) -> dict[str, str]:
    """The environment a user runs the tool in: the venv on PATH, the store's credentials."""
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    return dict(os.environ, DVC_NO_ANALYTICS="1", PATH=path, **server.credentials)


def run_tool(root: Path, server: Server, *args: str) -> subprocess.CompletedProcess:
    """Run `fmnist-sweep ARGS` in `root` to its end; stop whatever it left, whatever happened."""
    return run_experiments_tool("sweep", root, *args, env=server.credentials)


def exp_refs(root: Path) -> dict[str, str]:
    """The sweep's experiments in `root`'s git repository: name -> commit."""
    out = git("for-each-ref", "--format=%(refname) %(objectname)", "refs/exps", cwd=root)
    refs = (line.split() for line in out.splitlines())
    return {ref.rsplit("/", 1)[-1]: sha for ref, sha in refs if "/sweep-" in ref}


def clone(origin: Path, root: Path, server: Server) -> Path:
    """A fresh clone of the git remote that pulled the baseline's results from the store."""
    git("clone", "-q", str(origin), str(root), cwd=origin.parent)
    git("config", "user.email", f"{root.name}@example.com", cwd=root)
    git("config", "user.name", root.name, cwd=root)
    dvc("pull", "--run-cache", cwd=root, env=server.credentials)
    return root


@pytest.fixture(scope="module")
def origin(tmp_path_factory, tiny_data, server) -> Path:
    """A bare git repository holding the committed tiny-data run; its results are in the store."""
    work = copy_repo(
        committed_repo(tmp_path_factory, tiny_data), tmp_path_factory.mktemp("shards") / "work"
    )
    dvc("remote", "add", "--default", REMOTE, URL, cwd=work)
    dvc("remote", "modify", REMOTE, "endpointurl", server.store.endpoint, cwd=work)
    git("commit", "-q", "-am", "Share results through the team's S3 remote", cwd=work)
    bare = work.parent / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=work.parent)
    git("push", "-q", str(bare), "main", cwd=work)
    run([sys.executable, "-m", "fmnist.experiments.remote", "push"], work, server.credentials)
    return bare


@dataclass
class Shards:
    """Clone A's shard 1/2, killed after its first experiment and run again; clone B's 2/2."""

    a: Path
    first: dict[str, str]  # A's experiment when it was killed: name -> commit
    rerun: subprocess.CompletedProcess
    b: Path
    b_output: str
    killed_output: str  # A's before the kill

    def __str__(self) -> str:
        rerun = self.rerun.stdout + self.rerun.stderr
        return f"A before the kill:\n{self.killed_output}\nA again:\n{rerun}\nB:\n{self.b_output}"


@pytest.fixture(scope="module")
def shards(origin, server, tmp_path_factory) -> Shards:
    """Both shards at once, as on two machines: B runs and pushes while A is killed and rerun."""
    a = clone(origin, origin.parent / "a", server)
    b = clone(origin, origin.parent / "b", server)
    log = tmp_path_factory.mktemp("shard-b") / "output.log"
    command = [sys.executable, "-m", "fmnist.experiments.sweep", *SHARD_ARGS, "--push", "--shard"]
    with log.open("w") as out:
        other = spawn([*command, "2/2"], cwd=b, env=tool_env(server), stdout=out, stderr=out)
    with (log.parent / "a.log").open("w") as out:  # shown by the tests below if they fail
        tool = spawn([*command, "1/2"], cwd=a, env=tool_env(server), stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 600
        while not exp_refs(a) and tool.poll() is None and time.monotonic() < deadline:
            time.sleep(0.25)
        first = exp_refs(a)
        # As when the machine is lost: the tool and DVC's workers die at once, with no cleanup.
        os.kill(tool.pid, signal.SIGKILL)
        kill_all(tagged(TAG_ENV, str(a.resolve())), grace=0)
        assert len(first) == 1, f"shard 1/2 did not stop after its first experiment: {first}"
        rerun = run_tool(a, server, "--shard", "1/2", "--push", *SHARD_ARGS)
        assert other.wait(timeout=600) == 0, log.read_text()
    finally:
        stop_group(tool)
        stop_group(other)
        for root in (a, b):
            kill_all(tagged(TAG_ENV, str(root.resolve())), grace=1)
    return Shards(a, first, rerun, b, log.read_text(), (log.parent / "a.log").read_text())


@pytest.fixture(scope="module")
def gathered(origin, server, shards) -> tuple[Path, subprocess.CompletedProcess]:
    """A third clone gathers the grid that the two shards pushed."""
    root = clone(origin, origin.parent / "c", server)
    return root, run_tool(root, server, "--gather", *SHARD_ARGS)


def test_a_killed_shard_run_again_keeps_its_finished_experiment_and_runs_the_rest(shards):
    root, rerun = shards.a, shards.rerun
    assert rerun.returncode == 0, shards
    ((name, commit),) = shards.first.items()
    assert f"already run under this commit, kept: {name}" in rerun.stdout, shards
    assert "queued 1:" in rerun.stdout, shards
    refs = exp_refs(root)
    assert refs[name] == commit, shards  # the same experiment: not run again
    assert len(refs) == 2, (refs, str(shards))
    pushed = [line for line in rerun.stdout.splitlines() if line.startswith("pushed ")]
    assert len(pushed) == 1 and pushed[0].startswith("pushed 2 experiments to origin: "), shards
    assert all(n in pushed[0] for n in refs), shards  # the one from before the kill too


def test_the_shards_run_each_combination_once_under_the_one_machine_sweeps_names(shards, swept):
    one, two = set(exp_refs(shards.a)), set(exp_refs(shards.b))
    assert "pushed 2 experiments to origin" in shards.b_output
    assert len(one) == len(two) == 2 and not one & two
    assert one | two == set(shown(swept[0]))  # a combination's name is the same everywhere


def test_the_gather_lists_the_grid_with_the_one_machine_sweeps_metrics(gathered, swept):
    root, result = gathered
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 of the grid's 4 experiments found, 4 pulled from origin" in result.stdout
    here, there = shown(root), shown(swept[0])
    assert set(here) == set(there)
    for name, (rev,) in here.items():
        data, alone = rev["data"], there[name][0]["data"]
        assert data["metrics"] == alone["metrics"]
        assert data["params"]["params.yaml"]["data"] == alone["params"]["params.yaml"]["data"]
    rows = list(csv.DictReader(io.StringIO((root / "sweep" / "sweep.csv").read_text())))
    assert sorted(row["experiment"] for row in rows) == sorted(here)
    assert all(row["state"] == "Success" and row["model_2 accuracy"] != "-" for row in rows)
    assert (root / "sweep" / "sweep.png").is_file()


def test_the_gathered_experiments_came_with_their_weights(gathered):
    root, _ = gathered
    for name, commit in exp_refs(root).items():
        lock = yaml.safe_load(git("show", f"{commit}:dvc.lock", cwd=root))
        (out,) = [o for o in lock["stages"]["train@model_2"]["outs"] if o["path"].endswith(".pth")]
        cached = root / ".dvc" / "cache" / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
        assert cached.is_file(), f"{name}'s weights were not pulled"


def test_a_gather_names_the_combinations_no_shard_pushed(gathered, server):
    root, _ = gathered
    wider = ["-S", "models.model_2.lr=0.05,0.2,0.1", "-S", GRID[1]]  # lr 0.1 never ran
    result = run_tool(root, server, "--gather", *SHARD_ARGS[:2], *wider)
    assert result.returncode == 1
    assert "4 of the grid's 6 experiments found" in result.stdout
    missing = [line for line in result.stdout.splitlines() if "not on origin" in line]
    assert len(missing) == 2
    rows = list(csv.DictReader(io.StringIO((root / "sweep" / "sweep.csv").read_text())))
    assert sorted(r["models.model_2.lr"] for r in rows if r["state"] == "Missing") == ["0.1"] * 2
    assert "2 of 6 experiments are missing" in result.stderr


def test_a_metric_that_is_not_a_number_is_shown_as_it_is_and_the_table_still_comes_out():
    experiments = [
        Experiment("a", "Success", {"models.model_2.lr": 0.1}, {"model_2": {"accuracy": "n/a"}}),
        Experiment("b", "Success", {"models.model_2.lr": 0.2}, {"model_2": {"accuracy": 0.0}}),
    ]
    text = format_table(table(experiments, ["models.model_2.lr"]))
    assert "'n/a'" in text and "0.00%" in text
