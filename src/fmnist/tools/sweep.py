"""Run a grid of experiments with DVC's queue and parallel workers, then compare them.

    fmnist-sweep --jobs 2 -S 'models.model_2.lr=0.05,0.1' -S 'models.model_0.lr=0.1,0.2'

queues every combination (`dvc exp run --queue -S ... -S ...`) with `runtime.threads` set to its
share of the cores, starts `dvc queue start --jobs N`, waits for every experiment to end, prints
a table of the swept params and each model's test accuracy and loss, draws them, and shows the
log (`dvc queue logs`) of any experiment that failed. On Ctrl-C, SIGTERM, its time limit or an
error, it stops what it started: the queue's workers and every experiment they run.
`fmnist-sweep --stop` does the same for a sweep whose tool was killed. A tool: no stage imports it.
"""

from __future__ import annotations

import argparse
import ast
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmnist.pipeline.atomic import write_text
from fmnist.pipeline.cli import command_parser, entry_point, positive_int_arg
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.paths import METRICS_FILE
from fmnist.pipeline.processes import kill_all, tagged
from fmnist.tools.dvc_command import run_dvc

DONE = ("Success", "Failed")
# How often to ask DVC for the queue's state (each `dvc queue status` costs a second or two of
# CPU that the experiments would use), and how many polls in a row (half a minute) may find
# queued experiments with no worker before the workers are started again: a worker that is busy
# starting up can miss `dvc queue status`'s ping, and must not be taken for a dead one.
POLL_S = 10.0
IDLE_POLLS = 3
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
THREADS_KEY = "runtime.threads"
KILL_GRACE_S = 2.0  # SIGTERM, then SIGKILL: a worker on SIGTERM would wait for its experiment
KILL_ROUNDS = 3  # a worker may start one more process while it is being stopped
STOP_WAIT_S = 15.0  # for idle workers to leave after `dvc queue stop`
STATUS_ATTEMPTS = 3  # DVC's commands fail now and then while the workers hold its locks
STATUS_TIMEOUT_S = 120.0  # ... or hang (dvc#8762): each try is bounded
CLEANUP_TIMEOUT_S = 60.0


@dataclass
class Experiment:
    """One queued experiment: its name, state, the values of the swept keys, its metrics."""

    name: str
    status: str = "Queued"
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> metrics
    error: str = ""


def run_threads(jobs: int, threads: int = 0) -> int:
    """Torch threads for each experiment: `threads`, or the cores shared out between `jobs`."""
    return threads or max(1, len(os.sched_getaffinity(0)) // jobs)


def sweep_tag() -> str:
    """The value of TAG_ENV for sweeps in the current repository: its folder."""
    return str(Path.cwd().resolve())


def worker_env(
    jobs: int, threads: int = 0, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for `jobs` queue workers: the cores shared out, the library of each copy."""
    env = dict(os.environ if base is None else base)
    # The stages take their thread count from runtime.threads, which the sweep sets (DVC tracks
    # it, so a run-cache entry never stands for a run with another count). OMP_NUM_THREADS only
    # keeps the rest (DVC, data loading) from starting a thread per core in every worker.
    env["OMP_NUM_THREADS"] = str(run_threads(jobs, threads))
    # A relative entry, so that each experiment imports the library from its own temporary
    # copy of the repository (the code DVC hashed), not from an install of the workspace.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, ["src", env.get("PYTHONPATH")]))
    env["DVC_NO_ANALYTICS"] = "1"
    env[TAG_ENV] = sweep_tag()
    return env


def with_threads(overrides: Sequence[str], threads: int) -> list[str]:
    """The overrides with `runtime.threads=threads` added, unless 0 or swept themselves."""
    # 0: one worker with every core, as `dvc repro` runs: params.yaml's own setting holds, so
    # an experiment re-runs only the stages of what it changes.
    if not threads or THREADS_KEY in sweep_keys(overrides):
        return list(overrides)
    return [*overrides, f"{THREADS_KEY}={threads}"]


def split_override(override: str) -> tuple[str, str]:
    """`[file:]key=value` as (key, value); the value may hold `:` and `=` (a URL, `cuda:1`)."""
    target, _, value = override.partition("=")
    return target.rsplit(":", 1)[-1].strip(), value


def queue(overrides: Sequence[str], env: Mapping[str, str]) -> dict[str, list[str]]:
    """Queue one experiment per combination of the `-S` values; return each one's `-S` values."""
    args = [arg for override in overrides for arg in ("-S", override)]
    out = run_dvc("exp", "run", "--queue", *args, env=env)
    queued, pending = {}, []
    for line in out.splitlines():
        if match := re.match(r"Queueing with overrides '(.*)'\.$", line):
            files = ast.literal_eval(match[1])  # {'params.yaml': ['key=value', ...]}
            pending = [
                value if file == "params.yaml" else f"{file}:{value}"
                for file, values in files.items()
                for value in values
            ]
        elif match := re.match(r"Queued experiment '([^']+)'", line):
            queued[match[1]] = pending
    if not queued:
        raise PipelineError(f"`dvc exp run --queue` queued nothing:\n{out}")
    return queued


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


def run_queue(
    names: Sequence[str],
    jobs: int,
    env: Mapping[str, str],
    timeout_s: float,
    seen: dict[str, str] | None = None,
) -> dict[str, str]:
    """Start `jobs` workers and wait until every experiment in `names` has ended (or is lost).

    `seen` is kept up to date with each experiment's last known state, for a caller that is
    interrupted meanwhile.
    """
    # DVC's workers can stop while experiments are still queued (dvc#10562, seen with
    # --jobs > 1); an experiment is then never run. Start them again when that happens, and
    # call an experiment that twice more finds no worker to run it lost.
    run_dvc("queue", "start", "--jobs", str(jobs), env=env)
    deadline = time.monotonic() + timeout_s
    idle = restarts = 0
    while True:
        states, workers = queue_status(env)
        mine = {name: states.get(name, "Lost") for name in names}
        if seen is not None:
            seen.update(mine)
        if all(state in (*DONE, "Lost") for state in mine.values()):
            return mine
        running = any(state == "Running" for state in mine.values())
        idle = idle + 1 if not running and workers == 0 else 0
        if idle >= IDLE_POLLS and restarts == 2:
            return {n: s if s in DONE else "Lost" for n, s in mine.items()}
        if idle >= IDLE_POLLS:
            run_dvc("queue", "start", "--jobs", str(jobs), env=env)
            idle, restarts = 0, restarts + 1
        if time.monotonic() > deadline:
            late = ", ".join(f"{n} ({s})" for n, s in mine.items() if s not in DONE)
            raise PipelineError(
                f"the sweep did not end within {timeout_s:.0f} s (--timeout-s): {late} "
                "unfinished, stopped"
            )
        time.sleep(POLL_S)


def stop_processes(tag: str) -> list[int]:
    """Kill every process that carries the sweep tag `tag`; return the pids that survived."""
    for _ in range(KILL_ROUNDS):
        pids = tagged(TAG_ENV, tag)
        if not pids:
            return []
        kill_all(pids, grace=KILL_GRACE_S)
    return tagged(TAG_ENV, tag)


def clear_queue(names: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Take the unfinished experiments among `names` out of DVC's queue; return them."""
    # With their processes gone, a running experiment stays `Running` in DVC's records until
    # `queue kill` marks it failed; only then (or while queued) can `queue remove` drop it.
    states, _ = queue_status(env)
    running = [name for name in names if states.get(name) == "Running"]
    if running:
        run_dvc(
            "queue", "kill", "--force", *running, env=env, check=False, timeout_s=CLEANUP_TIMEOUT_S
        )
    queued = [name for name in names if states.get(name) == "Queued"]
    if running or queued:
        run_dvc(
            "queue", "remove", *running, *queued, env=env, check=False, timeout_s=CLEANUP_TIMEOUT_S
        )
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
    """Ignore Ctrl-C and SIGTERM for the block (a bounded cleanup that must finish)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def stop_sweep(names: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Kill the sweep's workers and experiments and clear its queue; return what was stopped."""
    with uninterrupted():
        survivors = stop_processes(env[TAG_ENV])
        stopped = clear_queue(names, env)
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
            row += [
                "-" if acc is None else f"{100 * acc:.2f}%",
                "-" if loss is None else f"{loss:.4f}",
            ]
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
    fig = new_figure((max(6.0, 1.6 * len(done)), 4.5))
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        values = [100 * e.metrics.get(model, {}).get("accuracy", float("nan")) for e in done]
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


def sweep(
    overrides: Sequence[str], jobs: int, threads: int, timeout_s: float, out: Path | None
) -> list[Experiment]:
    """Queue, run and collect a grid; print its table; write the CSV and chart under `out`."""
    env = worker_env(jobs, threads)
    each = run_threads(jobs, threads) if threads or jobs > 1 else 0
    overrides = with_threads(overrides, each)
    queued = queue(overrides, env)
    names = list(queued)
    keys = sweep_keys(overrides)
    print(f"queued {len(names)} experiments: {', '.join(names)}", flush=True)
    if each:
        print(
            f"running them with {jobs} workers of {each} threads each ({THREADS_KEY})", flush=True
        )
    else:
        print(f"running them with 1 worker, {THREADS_KEY} as params.yaml sets it", flush=True)
    start = time.perf_counter()
    seen = dict.fromkeys(names, "Queued")
    try:
        # Nothing but `dvc queue status` runs while the workers do: `dvc exp show` fails now and
        # then when it runs meanwhile, and takes git locks that the workers need too (dvc#8763).
        states = run_queue(names, jobs, env, timeout_s, seen)
        logs = {name: queue_log(name, env) for name, state in states.items() if state == "Failed"}
        retry = [name for name in names if name in logs and dvc_failed(logs[name])]
        for name in retry:
            requeued = queue(queued[name], env)
            queued.update(requeued)
            (again,) = requeued
            print(f"{name} failed in DVC, not in the pipeline: queued it again as {again}")
            names[names.index(name)] = again
            seen[again] = "Queued"
        if retry:
            states.update(run_queue(names, jobs, env, timeout_s, seen))
    except BaseException:
        # Ctrl-C, SIGTERM, the time limit or an error: end every process the sweep started,
        # keep what finished, and report the rest as stopped.
        print("stopping the sweep's workers and experiments", file=sys.stderr, flush=True)
        stopped = stop_sweep(names, env)
        states = {n: seen[n] if seen.get(n) in DONE else "Stopped" for n in names}
        with contextlib.suppress(PipelineError):  # what finished, if DVC still answers
            report(summarise(names, states, queued, keys, env), keys, out)
        print(f"stopped {len(stopped)} experiments: {', '.join(stopped) or 'none'}", flush=True)
        raise
    survivors = stop_workers(env)
    if survivors:
        raise PipelineError(f"processes {survivors} of the sweep's workers did not stop")
    experiments = summarise(names, states, queued, keys, env)
    report(experiments, keys, out)
    print(f"{len(names)} experiments in {time.perf_counter() - start:.1f} s")
    return experiments


def stop_repository_sweeps() -> None:
    """End every worker and experiment of sweeps in this repository (for a killed sweep tool)."""
    env = worker_env(1)
    with uninterrupted():
        survivors = stop_processes(env[TAG_ENV])
        states, _ = queue_status(env)
        running = [name for name, state in states.items() if state == "Running"]
        if running:  # their processes are gone: mark them failed, then drop them
            bound = {"env": env, "check": False, "timeout_s": CLEANUP_TIMEOUT_S}
            run_dvc("queue", "kill", "--force", *running, **bound)
            run_dvc("queue", "remove", *running, **bound)
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
    """The command line: -S overrides as DVC takes them, workers, threads, time limit, output."""
    p = command_parser(__doc__.split("\n")[0], prog="fmnist-sweep")
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
    p.add_argument("-j", "--jobs", type=positive_int_arg, default=1, help="parallel queue workers")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help=f"{THREADS_KEY} of every experiment (default: the cores divided by --jobs)",
    )
    p.add_argument("--timeout-s", type=float, default=6 * 3600, help="give up after this long")
    p.add_argument("--out", type=Path, default=Path("sweep"), help="folder for sweep.csv/png")
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.stop:
        stop_repository_sweeps()
        return
    if not args.overrides:
        raise PipelineError("give at least one -S KEY=V1,V2,... (or --stop)")
    if args.threads < 0:
        raise PipelineError("--threads: expected an integer >= 0 (0: the cores divided by --jobs)")
    # SIGTERM (a CI job cancelled, `kill`) stops the sweep as Ctrl-C does, through its cleanup.
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    experiments = sweep(args.overrides, args.jobs, args.threads, args.timeout_s, args.out)
    failed = [e.name for e in experiments if e.status != "Success"]
    if failed:
        raise PipelineError(
            f"{len(failed)} of {len(experiments)} experiments did not succeed: {', '.join(failed)}"
        )


if __name__ == "__main__":
    main()
