"""Run DVC's own command line from a tool, with this interpreter, as a user would."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping

from fmnist.pipeline.errors import PipelineError

RETRY_PAUSE_S = 2.0


def run_dvc(
    *args: str, env: Mapping[str, str] | None = None, check: bool = True, attempts: int = 1
) -> str:
    """Run `dvc ARGS` in the current folder; return its stdout, or fail with its stderr.

    With `attempts` above 1, a failed command is run again after a pause, up to that many times
    in all: for commands that fail now and then while DVC's queue workers hold its locks.
    """
    for attempt in range(1, attempts + 1):
        result = subprocess.run(
            [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=env
        )
        if result.returncode == 0 or not check:
            return result.stdout
        if attempt < attempts:
            time.sleep(RETRY_PAUSE_S)
    tries = f" ({attempts} tries)" if attempts > 1 else ""
    raise PipelineError(f"`dvc {' '.join(args)}` failed{tries}: {result.stderr.strip()}")
