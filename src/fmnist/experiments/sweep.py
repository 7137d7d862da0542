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
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fmnist.experiments.dvc_command import run_dvc
from fmnist.experiments.grid import (
    clean_workspace,
    combinations,
    parse_shard,
    shard,
    workspace_tree,
)
from fmnist.experiments.queue import (
    DONE,
    STATUS_ATTEMPTS,
    STATUS_TIMEOUT_S,
    Experiment,
    Progress,
    dvc_failed,
    experiment_names,
    queue,
    queue_log,
    queue_status,
    run_queue,
    sweep_keys,
    worker_env,
)
from fmnist.experiments.report import report, summarise
from fmnist.experiments.share import gather, has_dvc_remote, share
from fmnist.experiments.stop import (
    forget,
    not_busy,
    stop_on_signals,
    stop_repository_sweeps,
    stop_sweep,
    stop_workers,
)
from fmnist.pipeline.cli import command_parser, entry_point, positive_int_arg
from fmnist.pipeline.errors import PipelineError


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
            # Failed in DVC, or stranded: DVC says it runs, but no process of the queue lives (a
            # worker took it as it stopped). Lost ones that left the queue were removed by hand.
            listed = queue_status(env)[0] if "Lost" in states.values() else {}
            stranded = [n for n in todo if states[n] == "Lost" and listed.get(n) == "Running"]
            retry = [
                name
                for name in todo
                if name in stranded or (name in logs and dvc_failed(logs[name]))
            ]
            if retry:
                forget(retry, env)
                for name in retry:
                    queue(queued[name], name, env)
                    why = "lost by DVC's queue" if name in stranded else "failed in DVC"
                    print(f"{name} {why}, not in the pipeline: queued it again", flush=True)
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
    stop_on_signals()
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
