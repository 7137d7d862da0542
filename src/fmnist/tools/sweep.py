"""Run a grid of experiments with DVC's queue and parallel workers, then compare them.

    fmnist-sweep --jobs 2 -S 'models.model_2.lr=0.05,0.1' -S 'models.model_0.lr=0.1,0.2'

queues every combination (`dvc exp run --queue`), each as an experiment named after its values,
starts `dvc queue start --jobs N`, waits for every experiment to end (printing a line as each
starts and ends), prints a table of the swept params and each model's test accuracy and loss, draws
them, and shows the log (`dvc queue logs`) of any experiment that failed. A combination that
already ran under the commit is kept, not run again. On Ctrl-C, SIGTERM, its time limit or an
error, it stops what it started: the queue's workers and every experiment they run. `fmnist-sweep
--stop` does the same for a sweep whose tool was killed.

Across machines or CI jobs, `--shard K/N` runs the K-th of N shares of the grid, `--push` sends
what ran to a git remote (and its outputs and the run-cache to the DVC remote), and `--gather`
fetches the whole grid from there and prints the same table. A tool: no stage imports it."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmnist.pipeline.atomic import write_text
from fmnist.pipeline.cli import command_parser, entry_point, positive_int_arg
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.paths import METRICS_FILE
from fmnist.pipeline.processes import kill_all, tagged
from fmnist.tools.dvc_command import run_dvc
from fmnist.tools.grid import (
    NAME_PATTERN,
    clean_workspace,
    combinations,
    parse_shard,
    shard,
    workspace_tree,
)

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
KILL_GRACE_S = 2.0  # SIGTERM, then SIGKILL: a worker on SIGTERM would wait for its experiment
KILL_ROUNDS = 3  # a worker may start one more process while it is being stopped
STOP_WAIT_S = 15.0  # for idle workers to leave after `dvc queue stop`
STATUS_ATTEMPTS = 3  # DVC's commands fail now and then while the workers hold its locks
STATUS_TIMEOUT_S = 120.0  # ... or hang (dvc#8762): each try is bounded
CLEANUP_TIMEOUT_S = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


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
    # call an experiment that twice more finds no worker to run it lost.
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
        running = any(state == "Running" for state in mine.values())
        now = time.monotonic()
        if running or workers:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        if idle_since is not None and now - idle_since >= IDLE_S:
            if restarts == 2:
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


def stop_processes(tag: str) -> list[int]:
    """Kill every process that carries the sweep tag `tag`; return the pids that survived."""
    for _ in range(KILL_ROUNDS):
        pids = tagged(TAG_ENV, tag)
        if not pids:
            return []
        kill_all(pids, grace=KILL_GRACE_S)
    return tagged(TAG_ENV, tag)


def drop(names: Sequence[str], states: Mapping[str, str], env: Mapping[str, str]) -> None:
    """Take these entries out of DVC's queue (never their experiments); none may be running."""
    # With its processes gone, a running experiment stays `Running` in DVC's records until
    # `queue kill` marks it failed; only then can `queue remove` drop it.
    if not names:
        return
    bound = {"env": env, "check": False, "timeout_s": CLEANUP_TIMEOUT_S}
    if running := [name for name in names if states.get(name) == "Running"]:
        run_dvc("queue", "kill", "--force", *running, **bound)
    run_dvc("queue", "remove", *names, **bound)


def clear_queue(names: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Take the unfinished experiments among `names` out of DVC's queue; return them."""
    states, _ = queue_status(env)
    running = [name for name in names if states.get(name) == "Running"]
    queued = [name for name in names if states.get(name) == "Queued"]
    drop([*running, *queued], states, env)
    return [*running, *queued]


def stop_workers(env: Mapping[str, str]) -> list[int]:
    """End the sweep's idle workers as DVC does, then kill what is left; return survivors."""
    run_dvc("queue", "stop", env=env, check=False, timeout_s=CLEANUP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_WAIT_S
    while tagged(TAG_ENV, env[TAG_ENV]) and time.monotonic() < deadline:
        time.sleep(0.5)
    return stop_processes(env[TAG_ENV])


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ignore Ctrl-C, SIGTERM and SIGHUP for the block (a bounded cleanup that must finish)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (*STOP_SIGNALS, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def protect_secret_copies(root: Path = Path(".dvc") / "tmp" / "exps") -> list[Path]:
    """Make DVC's copies of config.local that stopped experiments left readable by us alone."""
    # Each queued experiment runs in a copy of the workspace under .dvc/tmp/exps, the --local
    # config (the store's secret) included, written with the umask's mode; a killed experiment
    # leaves its copy behind.
    fixed = []
    for path in root.glob("**/config.local"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o077:
                path.chmod(0o600)
                fixed.append(path)
    return fixed


def stop_sweep(names: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Kill the sweep's workers and experiments and clear its queue; return what was stopped."""
    with uninterrupted():
        survivors = stop_processes(env[TAG_ENV])
        stopped = clear_queue(names, env)
        protect_secret_copies()
    if survivors:
        raise PipelineError(f"processes {survivors} of the sweep did not stop")
    return stopped


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


def _number(value: Any) -> float | None:
    """A metric as a number, or None when it is missing or not a number (a hand-edited file)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _cell(value: Any, shown: Callable[[float], str]) -> str:
    """A metric as the table shows it: a number through `shown`, `-` when missing, else as is."""
    if value is None:
        return "-"
    number = _number(value)
    return repr(value) if number is None else shown(number)


def table(experiments: Sequence[Experiment], keys: Sequence[str]) -> list[list[str]]:
    """Rows of text: experiment, state, the swept params, then each model's accuracy and loss."""
    models = sorted({m for e in experiments for m in e.metrics})
    header = ["experiment", "state", *keys]
    header += [f"{m} {what}" for m in models for what in ("accuracy", "loss")]
    rows = [header]
    for e in experiments:
        row = [e.name, e.status, *(str(e.params.get(k, "-")) for k in keys)]
        for model in models:
            scores = e.metrics.get(model, {})
            acc, loss = scores.get("accuracy"), scores.get("loss")
            row += [_cell(acc, lambda a: f"{100 * a:.2f}%"), _cell(loss, lambda v: f"{v:.4f}")]
        rows.append(row)
    return rows


def format_table(rows: list[list[str]]) -> str:
    """Align a list of rows into columns: names to the left, values to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def draw(experiments: Sequence[Experiment], keys: Sequence[str], path: Path) -> None:
    """Draw each finished experiment's test accuracy for the swept models as bars (a PNG)."""
    from fmnist.pipeline.figures import new_figure, save_figure  # matplotlib: only to draw

    done = [e for e in experiments if e.metrics]
    models = sorted({m for e in done for m in e.metrics})
    swept = [m for m in models if any(k.startswith(f"models.{m}.") for k in keys)]
    models = swept or models  # the others' bars would be the same in every experiment
    fig = new_figure((max(6.0, 2.2 * len(done)), 4.5))  # room for names of 16 characters
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        accuracies = [_number(e.metrics.get(model, {}).get("accuracy")) for e in done]
        values = [float("nan") if a is None else 100 * a for a in accuracies]
        ax.bar([x + i * width for x in range(len(done))], values, width, label=model)
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(done))])
    labels = [
        "\n".join([e.name, *(f"{k.split('.')[-1]}={e.params.get(k)}" for k in keys)]) for e in done
    ]
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Sweep: test accuracy by experiment")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    save_figure(fig, path)


def write_csv(rows: list[list[str]], path: Path) -> None:
    """Write the table as CSV."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    write_text(path, buffer.getvalue())


def summarise(
    names: Sequence[str],
    states: Mapping[str, str],
    queued: Mapping[str, Sequence[str]],
    keys: Sequence[str],
    env: Mapping[str, str],
) -> list[Experiment]:
    """Each experiment's state, swept params, metrics and error, from DVC and the queued values."""
    logs = {name: queue_log(name, env) for name in names if states.get(name) == "Failed"}
    found = collect(names, keys, env)
    experiments = []
    for name in names:
        e = Experiment(name=name, status=states.get(name, "Lost"))
        if name in found:
            e.params, e.metrics = found[name]
        elif e.status == "Success":
            e.status, e.error = "Lost", "finished, but `dvc exp show` does not list it"
        elif e.status == "Lost":
            e.error = "the queue no longer lists it, or no worker would run it"
        if e.status == "Failed":
            e.error = failure_reason(logs[name])
        if not e.params:  # not in `dvc exp show`: the values it was queued with
            values = dict(split_override(o) for o in queued.get(name, []))
            e.params = {key: values.get(key, "-") for key in keys}
        experiments.append(e)
    return experiments


def report(experiments: Sequence[Experiment], keys: Sequence[str], out: Path | None) -> None:
    """Print the table and each experiment's error; write the CSV and the chart under `out`."""
    rows = table(experiments, keys)
    print(f"\n{format_table(rows)}", end="")
    for e in experiments:
        if e.error:
            print(f"{e.name} {e.status.lower()}: {e.error}")
    if out is None:
        return
    csv_path, chart = out / "sweep.csv", out / "sweep.png"
    write_csv(rows, csv_path)
    if any(e.metrics for e in experiments):
        draw(experiments, keys, chart)
        print(f"wrote {csv_path} and {chart}")
    else:  # an older sweep's chart must not pass for this one's
        chart.unlink(missing_ok=True)
        print(f"wrote {csv_path} (no chart: no experiment has metrics)")


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


def forget(names: Sequence[str], env: Mapping[str, str]) -> None:
    """Drop DVC's queue entries of these names left by earlier runs (never their experiments)."""
    # Only called with no worker of this repository alive: a `Running` entry is a dead run's.
    for _ in range(KILL_ROUNDS):  # one name may have several entries; each round drops one
        states, _ = queue_status(env)
        stale = [name for name in names if name in states]
        if not stale:
            return
        drop(stale, states, env)
    states, _ = queue_status(env)
    if left := [name for name in names if name in states]:
        raise PipelineError(f"could not clear DVC's queue entries of {', '.join(left)}")


def not_busy(env: Mapping[str, str]) -> None:
    """Fail if a sweep of this repository still runs (its workers would race this one's)."""
    if pids := tagged(TAG_ENV, env[TAG_ENV]):
        raise PipelineError(
            f"a sweep of this repository is running (processes {', '.join(map(str, pids))}): "
            "wait for it to end, or stop it with `fmnist-sweep --stop`"
        )


def has_dvc_remote(remote: str | None) -> bool:
    """Whether there is a DVC remote for outputs: `remote`, which must exist, or a default one."""
    # Read from DVC's merged config (config.local included), not `dvc remote default`, which
    # prints "No default remote set" to stdout when there is none.
    from dvc.repo import Repo

    with Repo() as repo:
        if remote is None:
            return bool(repo.config["core"].get("remote"))
        if remote not in repo.config["remote"]:
            raise PipelineError(
                f"no DVC remote named {remote!r} (`dvc remote list` shows those there are)"
            )
        return True


def share(
    names: Sequence[str],
    git_remote: str,
    remote: str | None,
    env: Mapping[str, str],
    outputs: bool,
) -> None:
    """Push experiments to a git remote, and (`outputs`) their outputs and run-cache to DVC's."""
    if not names:
        print(f"nothing new to push to {git_remote}")
        return
    # `dvc exp push` reads the DVC remote from each experiment's committed .dvc/config (and the
    # clone's config.local): a remote added to .dvc/config after the commit is not seen.
    run_dvc(
        "exp",
        "push",
        *(["-r", remote] if remote else []),
        *([] if outputs else ["--no-cache"]),
        git_remote,
        *names,
        env=env,
        attempts=STATUS_ATTEMPTS,
        timeout_s=STATUS_TIMEOUT_S,
    )
    print(f"pushed {len(names)} experiments to {git_remote}: {', '.join(names)}", flush=True)
    if not outputs:
        print("no DVC remote: only their commits (params, metrics, plots) were pushed")
        return
    # The run-cache, with what restoring each run needs, so that another machine that runs one
    # of these combinations, or the same stage, restores it instead of training again.
    from fmnist.tools.remote import push

    push(remote)


def sweep(
    overrides: Sequence[str],
    jobs: int,
    timeout_s: float,
    out: Path | None,
    part: tuple[int, int] = (1, 1),
    git_remote: str | None = None,
    remote: str | None = None,
) -> list[Experiment]:
    """Run a grid (or shard `part` of it), print its table, write the CSV and chart under `out`.

    A combination whose experiment exists under this commit (here, or on `git_remote`) is not
    run again. With `git_remote`, the experiments are pushed there at the end.
    """
    env = worker_env()
    not_busy(env)
    # Before anything runs: a misnamed DVC remote is an error now, not after the training.
    outputs = has_dvc_remote(remote) if git_remote else False
    index, count = part
    if count > 1 or git_remote:
        clean_workspace()
    combos = combinations(overrides, workspace_tree())
    mine = shard(combos, index, count)
    keys = sweep_keys(overrides)
    queued = {c.name: list(c.overrides) for c in mine}
    names = list(queued)
    portion = f"shard {index}/{count}: {len(names)} of " if count > 1 else ""
    print(f"{portion}the grid's {len(combos)} experiments: {', '.join(names)}", flush=True)
    here = experiment_names(env)
    pushed = experiment_names(env, git_remote) & set(names) if git_remote else set()
    if fetch := sorted(pushed - here):  # run and pushed by an earlier try of this shard
        pull = ("exp", "pull", "--no-cache", git_remote, *fetch)
        run_dvc(*pull, env=env, attempts=STATUS_ATTEMPTS, timeout_s=STATUS_TIMEOUT_S)
        here |= set(fetch)
    done = [name for name in names if name in here]
    todo = [name for name in names if name not in here]
    if done:
        print(
            f"already run under this commit, kept: {', '.join(done)} "
            "(`dvc exp remove NAME` to run one again)",
            flush=True,
        )
    states = dict.fromkeys(done, "Success")
    seen = {**dict.fromkeys(todo, "Queued"), **states}
    start = time.perf_counter()
    # A killed run leaves its entries in DVC's queue, `Running` ones even for an experiment that
    # finished, which `dvc exp show` then lists twice: drop them all (the experiments stay).
    forget(names, env)
    try:
        if todo:
            for name in todo:
                queue(queued[name], name, env)
            print(f"queued {len(todo)}: {', '.join(todo)}", flush=True)
            print(f"running them with {jobs} worker{'s' if jobs > 1 else ''}", flush=True)
            # Nothing but `dvc queue status` runs while the workers do: `dvc exp show` fails now
            # and then when it runs meanwhile, and takes git locks the workers need (dvc#8763).
            progress = Progress(len(todo))
            states.update(run_queue(todo, jobs, env, timeout_s, seen, progress))
            logs = {n: queue_log(n, env) for n in todo if states[n] == "Failed"}
            retry = [name for name in todo if name in logs and dvc_failed(logs[name])]
            if retry:
                forget(retry, env)
                for name in retry:
                    queue(queued[name], name, env)
                    print(f"{name} failed in DVC, not in the pipeline: queued it again")
                    seen[name] = "Queued"
                states.update(run_queue(retry, jobs, env, timeout_s, seen, progress))
    except BaseException:
        # Ctrl-C, SIGTERM, the time limit or an error: end every process the sweep started,
        # keep what finished, and report the rest as stopped.
        print("stopping the sweep's workers and experiments", file=sys.stderr, flush=True)
        stopped = stop_sweep(todo, env)
        states = {n: seen[n] if seen.get(n) in DONE else "Stopped" for n in names}
        with contextlib.suppress(PipelineError):  # what finished, if DVC still answers
            experiments = summarise(names, states, queued, keys, env)
            report(experiments, keys, out)
            if git_remote:  # a cancelled CI job keeps what it finished
                finished = [e.name for e in experiments if e.metrics and e.name not in pushed]
                share(finished, git_remote, remote, env, outputs)
        print(f"stopped {len(stopped)} experiments: {', '.join(stopped) or 'none'}", flush=True)
        raise
    if todo and (survivors := stop_workers(env)):
        raise PipelineError(f"processes {survivors} of the sweep's workers did not stop")
    experiments = summarise(names, states, queued, keys, env)
    report(experiments, keys, out)
    print(f"ran {len(todo)} in {time.perf_counter() - start:.1f} s", flush=True)
    if git_remote:
        finished = [e.name for e in experiments if e.metrics and e.name not in pushed]
        share(finished, git_remote, remote, env, outputs)
    return experiments


def gather(
    overrides: Sequence[str], git_remote: str, remote: str | None, out: Path | None
) -> list[Experiment]:
    """Fetch a grid's experiments that shards pushed to `git_remote`; print and write the table."""
    env = worker_env()
    combos = combinations(overrides)
    names = [c.name for c in combos]
    queued = {c.name: list(c.overrides) for c in combos}
    start = time.perf_counter()
    there = experiment_names(env, git_remote) & set(names)
    here = experiment_names(env) & set(names)
    if fetch := sorted(there - here):
        run_dvc(
            "exp",
            "pull",
            *(["-r", remote] if remote else []),
            *([] if has_dvc_remote(remote) else ["--no-cache"]),
            git_remote,
            *fetch,
            env=env,
            attempts=STATUS_ATTEMPTS,
            timeout_s=STATUS_TIMEOUT_S,
        )
    found = there | here
    print(
        f"{len(found)} of the grid's {len(names)} experiments found, {len(fetch)} pulled "
        f"from {git_remote}, in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    states = {name: "Success" if name in found else "Missing" for name in names}
    keys = sweep_keys(overrides)
    experiments = summarise(names, states, queued, keys, env)
    for e in experiments:
        if e.status == "Missing":
            e.error = f"not on {git_remote}: no shard has pushed it yet"
    report(experiments, keys, out)
    return experiments


def stop_repository_sweeps() -> None:
    """End every worker and experiment of sweeps in this repository (for a killed sweep tool)."""
    env = worker_env()
    with uninterrupted():
        survivors = stop_processes(env[TAG_ENV])
        states, _ = queue_status(env)
        # Only the entries a sweep queued: an experiment queued by hand keeps running.
        states = {name: state for name, state in states.items() if NAME_PATTERN.fullmatch(name)}
        running = [name for name, state in states.items() if state == "Running"]
        drop(running, states, env)  # their processes are gone
        protect_secret_copies()
    if survivors:
        raise PipelineError(f"processes {survivors} did not stop")
    print(
        f"stopped the sweep workers of {env[TAG_ENV]}; removed from the queue: "
        f"{', '.join(running) or 'nothing'}"
    )
    queued = [name for name, state in states.items() if state == "Queued"]
    if queued:
        print(f"still queued (`dvc queue remove --queued` drops them): {', '.join(queued)}")


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def parser() -> argparse.ArgumentParser:
    """The command line: -S overrides as DVC takes them, workers, time limit, output."""
    p = command_parser(__doc__, prog="fmnist-sweep")
    p.add_argument(
        "-S",
        "--set-param",
        dest="overrides",
        action="append",
        help="KEY=V1,V2,...: as for `dvc exp run --queue -S`; every combination is run",
    )
    p.add_argument(
        "--stop",
        action="store_true",
        help="instead: kill the workers and experiments of sweeps in this repository",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=positive_int_arg,
        default=1,
        help="parallel queue workers; each experiment keeps runtime.threads (sweep it to share)",
    )
    p.add_argument("--timeout-s", type=float, default=6 * 3600, help="give up after this long")
    p.add_argument("--out", type=Path, default=Path("sweep"), help="folder for sweep.csv/png")
    split = p.add_argument_group("a grid across machines or CI jobs (at a committed state)")
    split.add_argument(
        "--shard",
        metavar="K/N",
        type=parse_shard,
        default=(1, 1),
        help="run only the K-th of N shares of the grid (every machine gets the same -S values)",
    )
    split.add_argument(
        "--push",
        metavar="GIT_REMOTE",
        nargs="?",
        const="origin",
        help="push each finished experiment there (default origin), its outputs and the "
        "run-cache to the DVC remote",
    )
    split.add_argument(
        "--gather",
        metavar="GIT_REMOTE",
        nargs="?",
        const="origin",
        help="instead of running: fetch the grid's experiments from there (default origin), "
        "and print and write their table",
    )
    split.add_argument(
        "-r", "--remote", help="the DVC remote for --push and --gather (default: the default one)"
    )
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.stop:
        stop_repository_sweeps()
        return
    if not args.overrides:
        raise PipelineError("give at least one -S KEY=V1,V2,... (or --stop)")
    # SIGTERM (a CI job cancelled, `kill`) and SIGHUP (a closed terminal, a lost ssh session)
    # stop the sweep as Ctrl-C does, through its cleanup.
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _terminated)
    if args.gather:
        if args.push or args.shard != (1, 1):
            raise PipelineError("--gather runs nothing: give it without --shard and --push")
        experiments = gather(args.overrides, args.gather, args.remote, args.out)
    else:
        experiments = sweep(
            args.overrides,
            args.jobs,
            args.timeout_s,
            args.out,
            args.shard,
            args.push,
            args.remote,
        )
    failed = [e.name for e in experiments if e.status != "Success"]
    if failed:
        what = "are missing" if args.gather else "did not succeed"
        raise PipelineError(
            f"{len(failed)} of {len(experiments)} experiments {what}: {', '.join(failed)}"
        )


if __name__ == "__main__":
    main()
