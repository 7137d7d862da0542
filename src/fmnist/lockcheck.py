"""Fail when the committed dvc.lock does not match the committed code and params.

A stale lock records results that the code and params on the same commit would not give. It
needs no data: `dvc repro --dry --allow-missing` ignores outputs that are only missing locally,
so on a fresh clone it lists just the stages whose code, params or data changed.

    python -m fmnist.lockcheck        # exit 1 naming the stale stages, else 0
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Sequence

from fmnist.cli import entry_point
from fmnist.errors import PipelineError

# A dry run names the stages it would run; with their inputs absent it fails on the first one.
_WOULD_RUN = re.compile(r"Running stage '([^']+)'|failed to reproduce '([^']+)'")


def stale_stages() -> list[str]:
    """Return the stages that `dvc repro` would run because their code, params or data changed."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--dry", "--allow-missing"],
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    stages = [a or b for a, b in _WOULD_RUN.findall(output)]
    if result.returncode != 0 and not stages:
        raise PipelineError(f"`dvc repro --dry --allow-missing` failed: {output.strip()}")
    return list(dict.fromkeys(stages))


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    """Check dvc.lock against the workspace's code and params."""
    argparse.ArgumentParser(prog="python -m fmnist.lockcheck", description=__doc__).parse_args(argv)
    stale = stale_stages()
    if stale:
        raise PipelineError(
            f"dvc.lock is stale: {', '.join(stale)} changed since it was written; "
            "run `dvc repro` and commit dvc.lock with the results"
        )
    print("dvc.lock matches the code and params")


if __name__ == "__main__":
    main()
