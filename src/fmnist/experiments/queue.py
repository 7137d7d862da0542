"""The queue runner that grids and searches share: DVC experiments queued, run by DVC's workers,
watched until they end, and read back (state, params, metrics, logs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmnist.experiments.dvc_command import run_dvc
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.paths import METRICS_FILE
from fmnist.pipeline.processes import tagged

DONE = ("Success", "Failed")
# How often to ask DVC for the queue's state: soon at first, for experiments that restore from
# the run-cache in seconds, then every POLL_S (each `dvc queue status` costs a second or two of
# CPU that the experiments would use). And how long queued experiments may find no worker before
# the workers are started again: a worker that is busy starting up can miss `dvc queue
# status`'s ping, and must not be taken for a dead one.
FIRST_POLL_S = 2.0
POLL_S = 10.0
IDLE_S = 30.0
# What a log says when DVC itself, not the experiment, failed: concurrent workers racing for
# git's locks (dvc#8763), or a worker that died before logging anything. Such a run is retried.
DVC_FAILURES = (
    "packed-refs.lock",
    "index is locked",
    "Unable to acquire lock",
    "LockError",
    "No output logs found",
)
# DVC's queue workers are daemons, out of the sweep's process group and re-parented to init; a
# tag in their environment (and so in that of every experiment and stage they start) finds them.
# Its value is the repository's folder: a sweep, or `--stop`, finds those of its own repository.
TAG_ENV = "FMNIST_SWEEP"
STATUS_ATTEMPTS = 3  # DVC's commands fail now and then while the workers hold its locks
STATUS_TIMEOUT_S = 120.0  # ... or hang (dvc#8762): each try is bounded


@dataclass
class Experiment:
    """One queued experiment: its name, state, the values of the swept keys, its metrics."""

    name: str
    status: str = "Queued"
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> metrics
    error: str = ""


def sweep_tag() -> str:
    """The value of TAG_ENV for sweeps in the current repository: its folder."""
    return str(Path.cwd().resolve())


def worker_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the queue's workers: the tag that finds them, each copy's library."""
    # Nothing here changes what an experiment computes: its stages take their threads and
    # kernels from params.yaml alone (runtime.threads, runtime.numerics). Sharing the cores out
    # between workers is a choice DVC sees: sweep `-S runtime.threads=1` with `--jobs 2`.
    env = dict(os.environ if base is None else base)
    # A relative entry, so that each experiment imports the library from its own temporary
    # copy of the repository (the code DVC hashed), not from an install of the workspace.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, ["src", env.get("PYTHONPATH")]))
    env["DVC_NO_ANALYTICS"] = "1"
    env[TAG_ENV] = sweep_tag()
    return env


def queue_alive(env: Mapping[str, str]) -> bool:
    """Whether a process of this repository's queue lives: a worker, or a run it started."""
    # `dvc queue status` misses a worker that is busy starting up; the processes do not lie.
    tag = env.get(TAG_ENV)
    return bool(tag) and bool(tagged(TAG_ENV, tag))


def split_override(override: str) -> tuple[str, str]:
    """`[file:]key=value` as (key, value); the value may hold `:` and `=` (a URL, `cuda:1`)."""
    target, _, value = override.partition("=")
    # DVC's expansion of a grid escapes `:`, `,`, spaces and the like with a backslash.
    return target.rsplit(":", 1)[-1].strip(), re.sub(r"\\(.)", r"\1", value)


def queue(overrides: Sequence[str], name: str, env: Mapping[str, str]) -> None:
    """Queue one experiment named `name` with these `-S` values, one value each."""
    # DVC queues a name that an experiment already has, then drops the new run's result while
    # the queue reports it a success: callers queue only names that no experiment has.
    args = [arg for override in overrides for arg in ("-S", override)]
    out = run_dvc("exp", "run", "--queue", "--name", name, *args, env=env)
    if f"Queued experiment '{name}'" not in out:
        raise PipelineError(f"`dvc exp run --queue --name {name}` queued nothing:\n{out}")


def queue_status(env: Mapping[str, str]) -> tuple[dict[str, str], int]:
    """Each queued experiment's state by name, and how many workers are active or idle."""
    out = run_dvc("queue", "status", env=env, attempts=STATUS_ATTEMPTS, timeout_s=STATUS_TIMEOUT_S)
    states, workers = {}, 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[-1] in ("Queued", "Running", *DONE):
            states[parts[1]] = parts[-1]
        match = re.match(r"Worker status: (\d+) active, (\d+) idle", line.strip())
        if match:
            workers = int(match[1]) + int(match[2])
    return states, workers


def clock(seconds: float) -> str:
    """Elapsed seconds as m:ss (h:mm:ss past an hour), for progress lines."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Progress:
    """Tells, one line each, when an experiment starts and ends, timed from the sweep's start."""

    total: int
    start: float = field(default_factory=time.monotonic)
    last: dict[str, str] = field(default_factory=dict)

    def lines(self, states: Mapping[str, str], now: float | None = None) -> list[str]:
        """The lines for what changed since the last call (a state seen again says nothing)."""
        stamp = clock((time.monotonic() if now is None else now) - self.start)
        said = []
        for name, state in states.items():
            if self.last.get(name) == state:
                continue
            self.last[name] = state
            if state == "Running":
                said.append(f"[{stamp}] {name}: started")
            elif state in (*DONE, "Lost"):
                ended = sum(s in (*DONE, "Lost") for s in self.last.values())
                said.append(f"[{stamp}] {name}: {state.lower()} ({ended} of {self.total} ended)")
        return said


def run_queue(
    names: Sequence[str],
    jobs: int,
    env: Mapping[str, str],
    timeout_s: float,
    seen: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> dict[str, str]:
    """Start `jobs` workers and wait until every experiment in `names` has ended (or is lost).

    `seen` is kept up to date with each experiment's last known state, for a caller that is
    interrupted meanwhile; `progress` prints a line as each experiment starts and ends.
    """
    # DVC's workers can stop while experiments are still queued (dvc#10562, seen with
    # --jobs > 1); an experiment is then never run. Start them again when that happens, and
    # call an experiment that twice more finds no worker to run it lost, as is one that DVC
    # says runs while no process of the queue lives.
    run_dvc("queue", "start", "--jobs", str(jobs), env=env)
    deadline = time.monotonic() + timeout_s
    restarts, idle_since, wait = 0, None, min(FIRST_POLL_S, POLL_S)
    while True:
        states, workers = queue_status(env)
        mine = {name: states.get(name, "Lost") for name in names}
        if seen is not None:
            seen.update(mine)
        for line in progress.lines(mine) if progress is not None else []:
            print(line, flush=True)
        if all(state in (*DONE, "Lost") for state in mine.values()):
            return mine
        now = time.monotonic()
        if workers or queue_alive(env):
            idle_since = None
        elif idle_since is None:
            idle_since = now
        if idle_since is not None and now - idle_since >= IDLE_S:
            # Nothing of the queue lives. A `Running` entry is then one that a worker took as it
            # stopped and never ran: no worker will ever run it. Queued ones get new workers.
            queued = any(state == "Queued" for state in mine.values())
            if restarts == 2 or not queued:
                return {n: s if s in DONE else "Lost" for n, s in mine.items()}
            run_dvc("queue", "start", "--jobs", str(jobs), env=env)
            restarts, idle_since = restarts + 1, None
        if time.monotonic() > deadline:
            late = ", ".join(f"{n} ({s})" for n, s in mine.items() if s not in DONE)
            raise PipelineError(
                f"the sweep did not end within {timeout_s:.0f} s (--timeout-s): {late} "
                "unfinished, stopped"
            )
        time.sleep(wait)
        wait = min(POLL_S, wait * 1.5)


def _dig(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def collect(names: Sequence[str], keys: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    """Each finished experiment's swept params and per-model metrics, from `dvc exp show`."""
    found: dict[str, Any] = {}
    shown = run_dvc(
        "exp", "show", "--json", env=env, attempts=STATUS_ATTEMPTS, timeout_s=STATUS_TIMEOUT_S
    )
    for baseline in json.loads(shown):
        for group in baseline.get("experiments") or []:
            for rev in group["revs"]:
                # A failed experiment is listed too, with an error and its baseline's data.
                if rev.get("name") not in names or rev.get("error") or not rev.get("data"):
                    continue
                data = rev["data"]
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                # One file holds every model's test metrics, each under the model's name.
                entry = (data.get("metrics") or {}).get(str(METRICS_FILE), {})
                metrics = dict(entry.get("data") or {})
                if rev["name"] in found:
                    raise PipelineError(f"`dvc exp show` lists experiment {rev['name']} twice")
                found[rev["name"]] = ({key: _dig(params, key) for key in keys}, metrics)
    return found


def queue_log(name: str, env: Mapping[str, str]) -> str:
    """An experiment's output as `dvc queue logs` shows it (or DVC's reason for having none)."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "queue", "logs", name],
        capture_output=True,
        text=True,
        env=env,
    )
    return result.stdout + result.stderr


def dvc_failed(log: str) -> bool:
    """Tell a run that DVC failed (worth retrying) from one where the experiment failed."""
    return not log.strip() or any(marker in log for marker in DVC_FAILURES)


def failure_reason(log: str) -> str:
    """The error line of a failed experiment's log, or the end of the log."""
    errors = [line.strip() for line in log.splitlines() if line.strip().startswith("error:")]
    if errors:
        return errors[0]
    tail = [line for line in log.splitlines() if line.strip()][-5:]
    return "\n".join(tail) or "no log"


def sweep_keys(overrides: Sequence[str]) -> list[str]:
    """The param keys a list of `-S key=v1,v2` overrides sets, in order (file prefixes dropped)."""
    keys = []
    for override in overrides:
        key = override.split("=", 1)[0].split(":")[-1].strip()
        if key and key not in keys:
            keys.append(key)
    return keys


def experiment_names(env: Mapping[str, str], git_remote: str | None = None) -> set[str]:
    """Names of the experiments of the current commit: here, or on a git remote."""
    out = run_dvc(
        "exp",
        "list",
        *([git_remote] if git_remote else []),
        "--name-only",
        env=env,
        attempts=STATUS_ATTEMPTS,
        timeout_s=STATUS_TIMEOUT_S,
    )
    return {line.strip() for line in out.splitlines() if line.strip()}
