"""Fail when the committed dvc.lock does not match the committed code and params.

A stale lock records results that the code and params on the same commit would not give. The
check needs no data, so CI runs it on a fresh clone before pulling or training anything: from
`dvc status`, it keeps the changes that missing data cannot explain. DVC's own
`dvc repro --dry --allow-missing` does not do here: it takes a directory dependency that holds
other stages' cached outputs (compare's `data/predictions`, whose `.gitignore` is in git) for
modified when those outputs are merely not pulled.

    fmnist-lock-check        # exit 1 naming the stale stages and why, else 0
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from fmnist.pipeline.cli import command_parser, entry_point
from fmnist.pipeline.errors import PipelineError

# States of an output or dependency that only say its data is not in this clone.
_ABSENT = {"deleted", "not in cache"}


def _within(path: str, folder: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(folder))


def stale_reasons(status: dict[str, Any], missing_outputs: Sequence[str]) -> dict[str, list[str]]:
    """From `dvc status` data, the stages whose code, params or committed files changed, and why."""
    # A dependency counts as missing when it is absent, or holds a cached output that is.
    stale: dict[str, list[str]] = {}
    for stage, changes in status.items():
        reasons = []
        for change in changes:
            if change == "changed command" or change == "always changed":
                reasons.append(change.removeprefix("changed "))
                continue
            if not isinstance(change, dict):
                continue
            for kind, entries in change.items():
                for path, state in entries.items():
                    if isinstance(state, dict):  # params: {"models.model_0.lr": "modified"}
                        reasons += [f"param {key} {value}" for key, value in state.items()]
                    elif state in _ABSENT or (
                        kind == "changed deps"
                        and any(_within(out, path) for out in missing_outputs)
                    ):
                        continue
                    else:
                        reasons.append(f"{path} {state}")
        if reasons:
            stale[stage] = reasons
    return stale


def check_lock() -> dict[str, list[str]]:
    """Compare the workspace's code, params and committed outputs with dvc.lock."""
    from dvc.repo import Repo

    with Repo() as repo:
        missing = [
            out.def_path
            for stage in repo.index.stages
            for out in stage.outs
            if out.use_cache and not out.exists
        ]
        return stale_reasons(repo.status(), missing)


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    """Check dvc.lock against the workspace's code and params."""
    command_parser(__doc__, prog="fmnist-lock-check").parse_args(argv)
    stale = check_lock()
    if stale:
        details = "; ".join(f"{stage} ({', '.join(why)})" for stage, why in stale.items())
        raise PipelineError(
            f"dvc.lock is stale: {details}; run `dvc repro` and commit dvc.lock with the results"
        )
    print("dvc.lock matches the code and params")


if __name__ == "__main__":
    main()
