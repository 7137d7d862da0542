r"""Search params with Optuna, every trial a DVC experiment of this pipeline run by DVC's queue.

    fmnist-search --trials 8 --jobs 2 --objective model_2.accuracy \
        -P models.model_2.lr=log:0.01:0.3 -P models.model_2.hidden_units=int:4:16

Optuna's TPE sampler proposes each trial from the ones before (with `--jobs`, pending trials
count as guesses: its constant liar), and each trial is queued as `dvc exp run` of its values,
named after the study and its number (`search-007`), the same name on every machine. Each is
restored from the run-cache if it ran anywhere before, listed by `make experiments`, and brought
into the workspace with `dvc exp apply`. `--prune` reports each epoch's test accuracy (or loss)
from the running trial's live curve to Optuna's median pruner, which stops trials that fall
behind; their processes end, and Optuna records them as pruned.

The study lives in `search/study.db` (SQLite, git-ignored). `--storage postgresql://USER@HOST/DB`
shares one study between machines or CI jobs: each runs the same command, every trial number
runs once, and a worker that dies leaves a trial that the others mark failed (its heartbeat
stops) and ask again. `--push` and `--gather` share the trials' experiments as fmnist-sweep's
do. The password goes in ~/.pgpass or PGPASSWORD, never on the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import subprocess
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmnist.experiments.dvc_command import run_dvc
from fmnist.experiments.grid import clean_workspace
from fmnist.experiments.queue import (
    DONE,
    FIRST_POLL_S,
    IDLE_S,
    POLL_S,
    TAG_ENV,
    clock,
    collect,
    experiment_names,
    failure_reason,
    queue,
    queue_alive,
    queue_log,
    queue_status,
    worker_env,
)
from fmnist.experiments.report import format_table, short_key
from fmnist.experiments.share import fetch, has_dvc_remote, share
from fmnist.experiments.space import Dimension, parse_objective, parse_space
from fmnist.experiments.stop import (
    CLEANUP_TIMEOUT_S,
    drop,
    not_busy,
    protect_secret_copies,
    stop_on_signals,
    stop_processes,
    stop_workers,
    uninterrupted,
)
from fmnist.pipeline.atomic import write_text
from fmnist.pipeline.cli import command_parser, entry_point, positive_int_arg
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.processes import Owned, kill_all, tagged

SEARCH_DIR = Path("search")
DEFAULT_STORAGE = f"sqlite:///{SEARCH_DIR}/study.db"
STUDY_NAME = re.compile(r"[a-z][a-z0-9-]{0,38}[a-z0-9]")
HEARTBEAT_S = 10.0  # a trial whose worker is silent for 3 heartbeats is failed and asked again
SEARCH_POLL_S = 3.0  # with --prune, the live curves are read at least this often
IDLE_POLLS = 10  # polls with queued trials and no worker before the workers are started again
RUNS_DIR = Path(".dvc") / "tmp" / "exps" / "run"  # DVC's record of each queued run
STORAGE_ATTEMPTS = 5
REQUEUES = 2  # times a trial that DVC's queue lost is queued again before it counts as failed


def trial_name(study: str, number: int) -> str:
    """The DVC experiment of trial `number`: the same name on every machine of the study."""
    return f"{study}-{number:03d}"


@dataclass
class Pending:
    """A trial of this worker in DVC's queue: the Optuna trial, its values, what it reported."""

    trial: Any
    values: dict[str, Any]
    seen_training: bool = False
    reported: int = 0  # epochs reported to the pruner
    polls_missing: int = 0
    stranded_since: float | None = None  # `Running` in DVC's queue with no process of it alive
    requeued: int = 0


@dataclass
class Search:
    """What one `fmnist-search` run needs: the space, the objective, the study and the queue."""

    dimensions: list[Dimension]
    objective: str
    trials: int
    jobs: int
    seed: int
    prune: bool
    study: Any
    storage: Any
    env: dict[str, str]
    pending: dict[str, Pending] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.objective.split(".", 1)[0]

    @property
    def metric(self) -> str:
        return self.objective.split(".", 1)[1]


# -- the study ---------------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """A storage URL as messages show it: never its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"//[^@/]*@", "//***@", url)


def open_storage(url: str, heartbeat_s: float) -> Any:
    """Optuna's storage at `url`, with heartbeats; one line if it cannot be reached."""
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Trials run in DVC's queue, not in Study.optimize: the Heartbeat thread records them.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise PipelineError(f"--storage {shown_url(url)}: not a database URL") from None
    if parsed.password:
        raise PipelineError(
            "--storage: a password in the URL is on the command line, where every user of this "
            "machine can read it; put it in ~/.pgpass or PGPASSWORD instead"
        )
    engine: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine["connect_args"] = {"timeout": 60}  # several processes may write one file
    elif parsed.get_backend_name() == "postgresql":
        engine["connect_args"] = {"connect_timeout": 10}
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=max(1, round(heartbeat_s)),
                grace_period=max(3, round(3 * heartbeat_s)),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=3
                ),
            )
        except IntegrityError:
            # Workers that start together on a new database race to create Optuna's tables;
            # the losers find them made a moment later.
            if attempt + 1 < STORAGE_ATTEMPTS:
                time.sleep(1.0 + attempt)
                continue
            raise PipelineError(
                f"cannot open the study storage {shown_url(url)}: its tables could not be made"
            ) from None
        except (SQLAlchemyError, ImportError, OSError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise PipelineError(
                f"cannot open the study storage {shown_url(url)}: {reason.replace(url, '***')}"
            ) from None
    raise AssertionError("unreachable")


def head_commit() -> str:
    """The commit this repository's experiments are based on."""
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def pruner(trials: int) -> Any:
    """Optuna's median pruner: a trial stops when, at some epoch, it is worse than the median of
    the finished trials at that epoch; it judges from the first epoch, once a quarter of the
    budget (at least one trial, at most five) has finished."""
    import optuna

    return optuna.pruners.MedianPruner(
        n_startup_trials=max(1, min(5, trials // 4)), n_warmup_steps=0
    )


def open_study(
    name: str,
    storage: Any,
    direction: str,
    dimensions: Sequence[Dimension],
    objective: str,
    prune_after: Any = None,
) -> Any:
    """Create or join study `name`; refuse one made for another space, objective or commit."""
    import optuna

    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=direction,
        load_if_exists=True,
        pruner=prune_after or optuna.pruners.NopPruner(),
    )
    want = {
        "objective": objective,
        "space": [d.spec() for d in dimensions],
        "commit": head_commit(),
    }
    have = study.user_attrs
    for key, value in want.items():
        if key not in have:
            study.set_user_attr(key, value)
        elif have[key] != value:
            raise PipelineError(
                f"study {name!r} searches {key} {have[key]!r}, not {value!r}: give the same "
                "options (and commit) to join it, or another --study"
            )
    if study.direction.name.lower() != direction:
        raise PipelineError(f"study {name!r} is to {study.direction.name.lower()}, not {direction}")
    return study


def make_sampler(seed: int, number: int, budget: int) -> Any:
    """TPE, seeded by the study's seed and the trial's number: one worker proposes the same
    trials every time, and workers sharing a study never propose from the same seed."""
    import optuna

    # TPE draws its first trials at random (10 by Optuna's default, more than a search of 8
    # has): a third of the budget, at least 2, leaves the rest to learn from them.
    return optuna.samplers.TPESampler(
        seed=seed * 100_003 + number,
        constant_liar=True,
        n_startup_trials=min(10, max(2, budget // 3)),
    )


def counted(study: Any) -> tuple[int, int]:
    """The study's finished trials (complete or pruned), and those not failed (any state)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    alive = sum(t.state != TrialState.FAIL for t in trials)
    return finished, alive


def wants_trial(study: Any, budget: int) -> bool:
    """Whether to ask for a trial: the budget has room, or a failed trial waits to be re-asked."""
    from optuna.trial import TrialState

    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return bool(waiting) or counted(study)[1] < budget


def in_budget(study: Any, number: int, budget: int) -> bool:
    """Whether trial `number` is among the first `budget` trials that did not fail."""
    from optuna.trial import TrialState

    before = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number < number and t.state != TrialState.FAIL
    ]
    return len(before) < budget


class Heartbeat:
    """Records a heartbeat for this worker's running trials every interval, from a thread, so
    that a slow DVC command never lets them pass for a dead worker's."""

    def __init__(self, storage: Any, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.done.wait(self.interval):
            with self.lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                with contextlib.suppress(Exception):  # the trial ended meanwhile
                    self.storage.record_heartbeat(trial_id)

    def add(self, trial_id: int) -> None:
        self.storage.record_heartbeat(trial_id)
        with self.lock:
            self.trial_ids.add(trial_id)

    def remove(self, trial_id: int) -> None:
        with self.lock:
            self.trial_ids.discard(trial_id)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=5)


# -- trials in DVC's queue ---------------------------------------------------------------------


def ask(search: Search, heartbeat: Heartbeat) -> str | None:
    """Ask Optuna for the next trial and queue its experiment; None when the budget is spent."""
    from optuna.trial import TrialState

    trial = search.study.ask()
    if not in_budget(search.study, trial.number, search.trials):
        trial.set_user_attr("error", "over the study's budget of trials")
        search.study.tell(trial, state=TrialState.FAIL)
        return None
    # Params are drawn here, from a sampler seeded by this very trial's number.
    search.study.sampler = make_sampler(search.seed, trial.number, search.trials)
    heartbeat.add(trial._trial_id)
    values = {d.key: d.suggest(trial) for d in search.dimensions}
    name = trial_name(search.study.study_name, trial.number)
    trial.set_user_attr("experiment", name)
    try:
        queue(overrides(values), name, search.env)
    except BaseException:
        heartbeat.remove(trial._trial_id)
        search.study.tell(trial, state=TrialState.FAIL)
        raise
    search.pending[name] = Pending(trial, values)
    shown = ", ".join(f"{short_key(k)}={_shown(v)}" for k, v in values.items())
    print(f"trial {trial.number} ({name}): {shown}", flush=True)
    return name


def overrides(values: Mapping[str, Any]) -> list[str]:
    """A trial's values as `dvc exp run -S` overrides."""
    return [f"{key}={value!r}" for key, value in values.items()]


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_workspace(name: str) -> Path | None:
    """The temporary copy of the repository where DVC runs queued experiment `name`."""
    for info in RUNS_DIR.glob("*/*.run"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(info.read_text())
            if record.get("name") == name and record.get("root_dir"):
                return Path(record["root_dir"])
    return None


def processes_in(root: Path, tag: str) -> list[int]:
    """Our tagged processes working in `root` (a trial's copy of the repository)."""
    found = []
    for pid in tagged(TAG_ENV, tag):
        with contextlib.suppress(OSError):
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            if cwd == root or root in cwd.parents:
                found.append(pid)
    return found


def training(root: Path, model: str, tag: str) -> bool:
    """Whether `model`'s train stage runs in `root` right now."""
    for pid in processes_in(root, tag):
        owned = Owned.of(pid)
        if owned is not None and "stages/train.py" in owned.cmdline and model in owned.cmdline:
            return True
    return False


def curve(root: Path, model: str, metric: str) -> list[float]:
    """The test `metric` after each epoch so far, from the train stage's live curve."""
    path = root / "plots" / "train" / f"{model}.csv"
    with contextlib.suppress(OSError, ValueError, KeyError):
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        return [float(row[f"test_{metric}"]) for row in rows]
    return []


def prune_check(search: Search, name: str, pending: Pending) -> bool:
    """Report the running trial's new epochs to the pruner; True if it should stop now."""
    root = trial_workspace(name)
    if root is None:
        return False
    # Before its train stage starts, the copy holds the baseline's committed curve: read the
    # curve only once the stage is seen running (DVC deletes the old one before it starts).
    if not pending.seen_training:
        pending.seen_training = training(root, search.model, search.env[TAG_ENV])
        if not pending.seen_training:
            return False
    # One epoch at a time, as if reported live: the pruner judges each epoch, not only the last
    # one read (a poll may find several new).
    values = curve(root, search.model, search.metric)
    for epoch in range(pending.reported, len(values)):
        pending.trial.report(values[epoch], epoch + 1)
        pending.reported = epoch + 1
        if pending.trial.should_prune():
            return True
    return False


def stop_trial(name: str, states: Mapping[str, str], env: Mapping[str, str]) -> None:
    """End one running trial: DVC's run of it, every process in its copy, its queue entry."""
    root = trial_workspace(name)
    with uninterrupted():
        run_dvc("queue", "kill", "--force", name, env=env, check=False, timeout_s=CLEANUP_TIMEOUT_S)
        if root is not None:
            deadline = time.monotonic() + CLEANUP_TIMEOUT_S
            while (left := processes_in(root, env[TAG_ENV])) and time.monotonic() < deadline:
                kill_all(left, grace=1.0)
        drop([name], {**states, name: "Failed"}, env)


def settle(search: Search, name: str, state: str, heartbeat: Heartbeat) -> None:
    """Tell Optuna how a trial's experiment ended: its objective, or why it failed."""
    from optuna.trial import TrialState

    pending = search.pending.pop(name)
    trial = pending.trial
    heartbeat.remove(trial._trial_id)
    value = None
    if state == "Success":
        found = collect([name], [], search.env)
        metrics = found.get(name, ({}, {}))[1]
        value = (metrics.get(search.model) or {}).get(search.metric)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            trial.set_user_attr("error", f"metrics file has no number for {search.objective}")
            value = None
    else:
        reason = failure_reason(queue_log(name, search.env)) if state == "Failed" else state
        trial.set_user_attr("error", reason)
    if value is None:
        search.study.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial.number} ({name}) failed: {trial.user_attrs.get('error')}", flush=True)
    else:
        search.study.tell(trial, float(value))
        print(f"trial {trial.number} ({name}): {search.objective} {value:.4f}", flush=True)


def requeue(search: Search, name: str, states: Mapping[str, str], heartbeat: Heartbeat) -> None:
    """Queue again, under its name, a trial that DVC's queue lost: DVC says it runs, but no
    worker or stage of this repository lives (a worker that stopped as it took the trial)."""
    pending = search.pending[name]
    drop([name], states, search.env)
    if pending.requeued >= REQUEUES:
        settle(search, name, "Lost", heartbeat)
        return
    pending.requeued += 1
    # Its epochs already reported stay reported: the same values run again, with the same seed.
    pending.stranded_since, pending.seen_training = None, False
    queue(overrides(pending.values), name, search.env)
    print(
        f"trial {pending.trial.number} ({name}) was lost by DVC's queue: queued it again",
        flush=True,
    )


def prune(search: Search, name: str, states: Mapping[str, str], heartbeat: Heartbeat) -> None:
    """Stop a trial the pruner gave up on, and record it as pruned with what it reported."""
    from optuna.trial import TrialState

    pending = search.pending.pop(name)
    stop_trial(name, states, search.env)
    heartbeat.remove(pending.trial._trial_id)
    search.study.tell(pending.trial, state=TrialState.PRUNED)
    print(
        f"trial {pending.trial.number} ({name}) pruned after epoch {pending.reported}", flush=True
    )


def run_search(search: Search, timeout_s: float, heartbeat_s: float = HEARTBEAT_S) -> None:
    """Ask, queue and settle trials until the study has its trials, or the time is up."""
    import optuna

    start = time.monotonic()
    idle, wait = 0, FIRST_POLL_S
    most = SEARCH_POLL_S if search.prune else POLL_S
    with Heartbeat(search.storage, heartbeat_s) as heartbeat:
        try:
            while True:
                optuna.storages.fail_stale_trials(search.study)
                if counted(search.study)[0] >= search.trials and not search.pending:
                    return
                asked = False
                while len(search.pending) < search.jobs and wants_trial(
                    search.study, search.trials
                ):
                    if ask(search, heartbeat) is None:
                        break
                    asked = True
                if asked:
                    wait = FIRST_POLL_S
                if time.monotonic() - start > timeout_s:
                    raise PipelineError(f"the search did not end within {timeout_s:.0f} s")
                if not search.pending:  # the others' trials fill the budget: wait for them
                    time.sleep(most)
                    continue
                states, workers = queue_status(search.env)
                alive = bool(workers) or queue_alive(search.env)
                # Workers leave when the queue has been empty a while; start them when trials
                # wait with none, and again if none has come after IDLE_POLLS polls.
                if any(states.get(n) == "Queued" for n in search.pending) and not alive:
                    if idle % IDLE_POLLS == 0:
                        run_dvc("queue", "start", "--jobs", str(search.jobs), env=search.env)
                    idle += 1
                else:
                    idle = 0
                for name, pending in list(search.pending.items()):
                    state = states.get(name)
                    if state != "Running" or alive:
                        pending.stranded_since = None
                    if state is None:
                        pending.polls_missing += 1
                        if pending.polls_missing >= 3:
                            settle(search, name, "Lost", heartbeat)
                    elif state in DONE:
                        settle(search, name, state, heartbeat)
                    elif state == "Running" and not alive:
                        if pending.stranded_since is None:
                            pending.stranded_since = time.monotonic()
                        elif time.monotonic() - pending.stranded_since >= IDLE_S:
                            requeue(search, name, states, heartbeat)
                    elif state == "Running" and search.prune and prune_check(search, name, pending):
                        prune(search, name, states, heartbeat)
                time.sleep(wait)
                wait = min(most, wait * 1.5)
        except BaseException:
            print("stopping the search's workers and trials", flush=True)
            abandon(search, heartbeat)
            raise


def abandon(search: Search, heartbeat: Heartbeat) -> None:
    """End this worker's trials after an error, a signal or the time limit: processes, queue
    entries, and the trials themselves (failed, so that no other worker waits for them)."""
    from optuna.trial import TrialState

    with uninterrupted():
        stop_processes(search.env[TAG_ENV])
        with contextlib.suppress(PipelineError):
            states, _ = queue_status(search.env)
            drop([n for n in search.pending if n in states], states, search.env)
        protect_secret_copies()
        for name, pending in list(search.pending.items()):
            heartbeat.remove(pending.trial._trial_id)
            with contextlib.suppress(Exception):
                pending.trial.set_user_attr("error", "stopped")
                search.study.tell(pending.trial, state=TrialState.FAIL)
            del search.pending[name]


# -- results -----------------------------------------------------------------------------------


def rows(study: Any, dimensions: Sequence[Dimension], objective: str) -> list[list[str]]:
    """The trials as text: number, state, each param, the objective, the experiment."""
    head = ["trial", "state", *(short_key(d.key) for d in dimensions), objective, "experiment"]
    table = [head]
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("error") == "over the study's budget of trials":
            continue
        values = [_shown(t.params[d.key]) if d.key in t.params else "-" for d in dimensions]
        value = "-" if t.value is None else f"{t.value:.4f}"
        table.append(
            [
                str(t.number),
                t.state.name.lower(),
                *values,
                value,
                t.user_attrs.get("experiment", ""),
            ]
        )
    return table


def best_line(study: Any) -> str:
    """The best trial, and the command that brings its experiment into the workspace."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return "no trial has finished yet"
    best = study.best_trial
    name = best.user_attrs.get("experiment", "")
    return (
        f"best: trial {best.number} ({name}), {best.value:.4f}; `dvc exp apply {name}` applies it"
    )


def draw(study: Any, out: Path) -> list[Path]:
    """The optimisation history, and the importance of each param (from 3 finished trials)."""
    import optuna
    from optuna.trial import TrialState

    from fmnist.pipeline.figures import new_figure, save_figure  # matplotlib: only to draw

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return []
    drawn = []
    fig = new_figure((7, 4))
    ax = fig.add_subplot()
    numbers = [t.number for t in done]
    values = [t.value for t in done]
    pick = max if study.direction.name == "MAXIMIZE" else min
    best = [pick(values[: i + 1]) for i in range(len(values))]
    ax.plot(numbers, values, "o", label="trial")
    ax.step(numbers, best, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(study.user_attrs.get("objective", "objective"))
    ax.set_title(f"Study {study.study_name}: objective by trial")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "history.png")
    drawn.append(out / "history.png")
    if len(done) >= 3:
        with contextlib.suppress(RuntimeError, ValueError, ZeroDivisionError):
            # fANOVA, seeded: Optuna's default (PED-ANOVA) judges from the best tenth of the
            # trials, which a search of a few trials does not have.
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            importance = optuna.importance.get_param_importances(study, evaluator=evaluator)
            fig = new_figure((7, 0.5 * len(importance) + 1.5))
            ax = fig.add_subplot()
            names = [short_key(k) for k in importance][::-1]
            bars = ax.barh(names, list(importance.values())[::-1], color="#4c72b0")
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in list(importance.values())[::-1]])
            ax.set_xlim(0, 1.15)
            ax.set_xlabel("importance (fANOVA, share of the objective's variance)")
            ax.set_title(f"Study {study.study_name}: param importance")
            fig.tight_layout()
            save_figure(fig, out / "importance.png")
            drawn.append(out / "importance.png")
    return drawn


def report(study: Any, dimensions: Sequence[Dimension], objective: str, out: Path) -> None:
    """Print the trials and the best one; write the CSV and the charts under `out`."""
    table = rows(study, dimensions, objective)
    print(f"\n{format_table(table)}{best_line(study)}")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(table)
    write_text(out / "search.csv", buffer.getvalue())
    charts = draw(study, out)
    print(f"wrote {out / 'search.csv'}" + "".join(f", {chart}" for chart in charts))


def own_names(study: Any) -> list[str]:
    """The experiments of the study's finished trials."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t.user_attrs["experiment"] for t in done if "experiment" in t.user_attrs]


# -- the command -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The command line: the space, the objective, the budget, the study, sharing."""
    p = command_parser(__doc__, prog="fmnist-search")
    p.add_argument(
        "-P",
        "--param",
        dest="space",
        action="append",
        default=[],
        metavar="KEY=SPEC",
        help="a param to search: KEY=log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH, choice:A,B,...",
    )
    p.add_argument(
        "--objective",
        default="model_2.accuracy",
        help="MODEL.METRIC to optimise (model_2.accuracy)",
    )
    p.add_argument("--direction", choices=("maximize", "minimize"), help="default: by the metric")
    p.add_argument("--trials", type=positive_int_arg, default=8, help="finished trials wanted")
    p.add_argument("-j", "--jobs", type=positive_int_arg, default=1, help="trials run at once")
    p.add_argument("--seed", type=int, default=42, help="the sampler's seed")
    p.add_argument("--prune", action="store_true", help="stop trials that fall behind, by epoch")
    p.add_argument("--timeout-s", type=float, default=6 * 3600, help="give up after this long")
    p.add_argument("--study", default="search", help="the study's name (and its trials')")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL, no password")
    p.add_argument(
        "--heartbeat-s",
        type=float,
        default=HEARTBEAT_S,
        help="a trial silent for three of these is failed and asked again",
    )
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    p.add_argument("--out", type=Path, default=SEARCH_DIR, help="folder for search.csv and charts")
    p.add_argument("--stop", action="store_true", help="instead: end this repository's trials")
    p.add_argument("--push", metavar="GIT_REMOTE", nargs="?", const="origin", help="as the sweep's")
    p.add_argument(
        "--gather",
        metavar="GIT_REMOTE",
        nargs="?",
        const="origin",
        help="instead of running: fetch the study's experiments from there, print the table",
    )
    p.add_argument("-r", "--remote", help="the DVC remote for --push and --gather")
    return p


def stop_repository_searches(study: Any) -> None:
    """End this repository's search workers and drop the study's entries from DVC's queue."""
    env = worker_env()
    names = {t.user_attrs.get("experiment") for t in study.get_trials(deepcopy=False)}
    with uninterrupted():
        survivors = stop_processes(env[TAG_ENV])
        states, _ = queue_status(env)
        mine = [name for name in states if name in names and states[name] in ("Running", "Queued")]
        drop(mine, states, env)
        protect_secret_copies()
    if survivors:
        raise PipelineError(f"processes {survivors} did not stop")
    print(f"stopped the search workers of {env[TAG_ENV]}; removed: {', '.join(mine) or 'nothing'}")


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if not STUDY_NAME.fullmatch(args.study):
        raise PipelineError(
            f"--study {args.study!r}: lower-case letters, digits and dashes, 2 to 40 characters"
        )
    models = _models(args.params)
    objective, direction = parse_objective(args.objective, models)
    direction = args.direction or direction
    storage = open_storage(args.storage, args.heartbeat_s)
    if args.stop or args.gather:
        study = _load_study(args.study, storage)
        if args.stop:
            stop_repository_searches(study)
            return
        gather(study, args.gather, args.remote, args.out)
        return
    dimensions = parse_space(args.space, args.params)
    shared = not args.storage.startswith("sqlite") or args.push
    if shared:  # other machines run the commit: it must be what runs here
        clean_workspace()
    stop_on_signals()
    env = worker_env()
    not_busy(env)
    outputs = has_dvc_remote(args.remote) if args.push else False
    study = open_study(
        args.study,
        storage,
        direction,
        dimensions,
        objective,
        pruner(args.trials) if args.prune else None,
    )
    clash = _old_experiments(study, env)
    if clash:
        raise PipelineError(
            f"experiments {', '.join(clash)} exist from another study named {args.study!r}: "
            "`dvc exp remove` them, or choose another --study"
        )
    forget_stale_entries(study, env)
    search = Search(
        dimensions=dimensions,
        objective=objective,
        trials=args.trials,
        jobs=args.jobs,
        seed=args.seed,
        prune=args.prune,
        study=study,
        storage=storage,
        env=env,
    )
    started = time.monotonic()
    print(
        f"study {args.study} in {shown_url(args.storage)}: {args.trials} trials of "
        f"{objective} ({direction}), {args.jobs} at a time",
        flush=True,
    )
    try:
        run_search(search, args.timeout_s, args.heartbeat_s)
    finally:
        survivors = stop_workers(env)
        if args.push:
            mine = [n for n in own_names(study) if n in experiment_names(env)]
            share(mine, args.push, args.remote, env, outputs)
    if survivors:
        raise PipelineError(f"processes {survivors} of the search's workers did not stop")
    print(f"searched for {clock(time.monotonic() - started)}", flush=True)
    report(study, dimensions, objective, args.out)


def gather(study: Any, git_remote: str, remote: str | None, out: Path) -> None:
    """Fetch the study's experiments that workers pushed to `git_remote`; print the table."""
    env = worker_env()
    names = own_names(study)
    found = fetch(names, git_remote, remote, env, f"study {study.study_name}'s")
    dimensions = [_dimension(spec) for spec in study.user_attrs.get("space", [])]
    report(study, dimensions, study.user_attrs.get("objective", "objective"), out)
    if missing := sorted(set(names) - found):
        raise PipelineError(f"not on {git_remote}: {', '.join(missing)}")


def _dimension(spec: str) -> Dimension:
    from fmnist.experiments.space import parse_dimension

    return parse_dimension(spec)


def _load_study(name: str, storage: Any) -> Any:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise PipelineError(f"no study {name!r} in that storage") from None


def _models(params_file: Path) -> list[str]:
    import yaml

    try:
        return list(yaml.safe_load(params_file.read_text())["models"])
    except (OSError, KeyError, TypeError) as exc:
        raise PipelineError(f"{params_file}: no models section ({exc})") from None


def forget_stale_entries(study: Any, env: Mapping[str, str]) -> None:
    """Drop queue entries of the study's trials that an earlier, killed run left `Running`."""
    # No process of this repository's searches runs (`not_busy` said so): they are records only.
    pattern = re.compile(rf"{re.escape(study.study_name)}-\d{{3,}}")
    states, _ = queue_status(env)
    stale = [n for n, s in states.items() if pattern.fullmatch(n) and s in ("Running", "Queued")]
    drop(stale, states, env)


def _old_experiments(study: Any, env: Mapping[str, str]) -> list[str]:
    """Experiments under this commit named like the study's trials, that no trial of it made."""
    pattern = re.compile(rf"{re.escape(study.study_name)}-\d{{3,}}")
    ours = {t.user_attrs.get("experiment") for t in study.get_trials(deepcopy=False)}
    here = experiment_names(env)
    return sorted(n for n in here if pattern.fullmatch(n) and n not in ours)


if __name__ == "__main__":
    main()
