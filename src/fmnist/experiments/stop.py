"""Stopping only what a sweep or search started: its queue workers, the experiments they run,
and their queue entries, on any signal, without an interruption halfway."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from fmnist.experiments.dvc_command import run_dvc
from fmnist.experiments.grid import (
    NAME_PATTERN,
)
from fmnist.experiments.queue import TAG_ENV, queue_status, worker_env
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.processes import kill_all, tagged

KILL_GRACE_S = 2.0  # SIGTERM, then SIGKILL: a worker on SIGTERM would wait for its experiment
KILL_ROUNDS = 3  # a worker may start one more process while it is being stopped
STOP_WAIT_S = 15.0  # for idle workers to leave after `dvc queue stop`
CLEANUP_TIMEOUT_S = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


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


def stop_on_signals() -> None:
    """Have SIGTERM (a cancelled CI job, `kill`) and SIGHUP (a closed terminal, a lost ssh
    session) end a sweep or search as Ctrl-C does, through its clean-up."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _terminated)
