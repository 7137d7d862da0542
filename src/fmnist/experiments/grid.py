"""A sweep's grid: its combinations as DVC expands `-S` values, their names, and shards of it.

Every machine given the same `-S` values, at the same commit, computes the same combinations,
the same experiment name for each, and the same split into shards, with nothing to exchange
beforehand: that is what lets shards run apart and a gather find their experiments afterwards.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from fmnist.pipeline.errors import PipelineError

DEFAULT_PARAMS = "params.yaml"
NAME_PREFIX = "sweep"
# The names this tool gives, and only those: --stop and the clean-up touch no other entry.
NAME_PATTERN = re.compile(rf"{NAME_PREFIX}-[0-9a-f]{{10}}")


@dataclass(frozen=True)
class Combination:
    """One point of the grid: its `-S` overrides, one value each, and its experiment's name."""

    overrides: tuple[str, ...]  # `key=value`, or `file:key=value` outside params.yaml
    name: str


def expand(overrides: Sequence[str]) -> list[tuple[str, ...]]:
    """Every combination of the `-S` values, with DVC's own parser (the syntax of `dvc exp run`)."""
    # DVC's parser, not a copy of it: `range(...)`, `choice(...)`, quoting and escapes mean
    # exactly what they mean to `dvc exp run --queue -S`.
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    try:
        sweeps = get_hydra_sweeps(to_path_overrides(list(overrides)))
    except (InvalidArgumentError, ValueError) as exc:
        raise PipelineError(f"-S: {exc}") from None
    except Exception as exc:  # hydra's parse errors have no common public base
        if type(exc).__module__.startswith("hydra"):
            raise PipelineError(f"-S: {exc}") from None
        raise
    return [
        tuple(
            value if path == DEFAULT_PARAMS else f"{path}:{value}"
            for path, values in combination.items()
            for value in values
        )
        for combination in sweeps
    ]


def workspace_tree() -> str:
    """'' when git's tracked files match HEAD; else the git tree of the workspace's state."""
    # `git stash create` records the workspace as a commit without touching it or the stash
    # list; its tree depends on the content alone, so the same edits give the same tree.
    if not changed_files():  # `git status` also refreshes the index, which `stash create` needs
        return ""
    stash = _git("stash", "create")
    return _git("rev-parse", f"{stash}^{{tree}}") if stash else ""


def experiment_name(overrides: Sequence[str], tree: str = "") -> str:
    """The name of a combination's experiment: a digest of its values (and an edited workspace)."""
    # Under a commit, a combination is one experiment, whatever its shard or the order of the
    # `-S` options. With uncommitted edits, the digest takes in the workspace's tree, so that an
    # experiment of other edits is never taken for this one.
    key = json.dumps([sorted(overrides), tree])
    return f"{NAME_PREFIX}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def combinations(overrides: Sequence[str], tree: str = "") -> list[Combination]:
    """The grid's combinations in a fixed order (by their values), each with its name."""
    points = sorted({tuple(sorted(point)) for point in expand(overrides)})
    return [Combination(point, experiment_name(point, tree)) for point in points]


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` as (K, N), with 1 <= K <= N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise PipelineError(f"--shard: expected K/N with 1 <= K <= N (as 2/3), got {text!r}")
    return int(match[1]), int(match[2])


def shard(grid: Sequence[Combination], index: int, count: int) -> list[Combination]:
    """Shard `index` of `count` (from 1): every count-th combination, so sizes differ by <= 1."""
    return [c for i, c in enumerate(grid) if i % count == index - 1]


def clean_workspace() -> None:
    """Fail unless git's tracked files match HEAD: other machines see only what is committed."""
    if changed := changed_files():
        files = ", ".join(changed[:5])
        raise PipelineError(
            f"uncommitted changes ({files}): commit them first, as the other machines run the "
            "commit, and a gather finds experiments by it"
        )


def changed_files() -> list[str]:
    """The tracked files whose content differs from HEAD's, in the index or the workspace."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return [line[3:] for line in status.splitlines()]


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"`git {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout.rstrip()
