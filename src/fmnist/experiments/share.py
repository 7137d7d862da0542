"""Sharing experiments between machines: `--push` to a git remote (with outputs and run-cache to
the DVC remote) and `--gather`, which fetches a grid that shards pushed."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from fmnist.experiments.dvc_command import run_dvc
from fmnist.experiments.grid import (
    combinations,
)
from fmnist.experiments.queue import (
    STATUS_ATTEMPTS,
    STATUS_TIMEOUT_S,
    Experiment,
    experiment_names,
    sweep_keys,
    worker_env,
)
from fmnist.experiments.report import report, summarise
from fmnist.pipeline.errors import PipelineError


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
    from fmnist.experiments.remote import push

    push(remote)


def fetch(
    names: Sequence[str], git_remote: str, remote: str | None, env: Mapping[str, str], what: str
) -> set[str]:
    """Pull those of `names` that `git_remote` has and this clone lacks; return all found."""
    start = time.perf_counter()
    there = experiment_names(env, git_remote) & set(names)
    here = experiment_names(env) & set(names)
    if pulled := sorted(there - here):
        run_dvc(
            "exp",
            "pull",
            *(["-r", remote] if remote else []),
            *([] if has_dvc_remote(remote) else ["--no-cache"]),
            git_remote,
            *pulled,
            env=env,
            attempts=STATUS_ATTEMPTS,
            timeout_s=STATUS_TIMEOUT_S,
        )
    found = there | here
    print(
        f"{len(found)} of {what} {len(names)} experiments found, {len(pulled)} pulled "
        f"from {git_remote}, in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    return found


def gather(
    overrides: Sequence[str], git_remote: str, remote: str | None, out: Path | None
) -> list[Experiment]:
    """Fetch a grid's experiments that shards pushed to `git_remote`; print and write the table."""
    env = worker_env()
    combos = combinations(overrides)
    names = [c.name for c in combos]
    queued = {c.name: list(c.overrides) for c in combos}
    found = fetch(names, git_remote, remote, env, "the grid's")
    states = {name: "Success" if name in found else "Missing" for name in names}
    keys = sweep_keys(overrides)
    experiments = summarise(names, states, queued, keys, env)
    for e in experiments:
        if e.status == "Missing":
            e.error = f"not on {git_remote}: no shard has pushed it yet"
    report(experiments, keys, out)
    return experiments
