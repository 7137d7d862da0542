"""Run DVC's own command line from a tool, with this interpreter, as a user would."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping

from fmnist.pipeline.errors import PipelineError

RETRY_PAUSE_S = 2.0
TIMEOUT_S = 600.0


def run_dvc(
    *args: str,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    attempts: int = 1,
    timeout_s: float = TIMEOUT_S,
) -> str:
    """Run `dvc ARGS` in the current folder; return its stdout, or fail with its stderr.

    With `attempts` above 1, a failed command is run again after a pause, up to that many times
    in all: for commands that fail now and then while DVC's queue workers hold its locks.
    """
    for attempt in range(1, attempts + 1):
        returncode, out, err = _run([sys.executable, "-m", "dvc", *args], env, timeout_s)
        if returncode == 0 or not check:
            return out
        if attempt < attempts:
            time.sleep(RETRY_PAUSE_S)
    tries = f" ({attempts} tries)" if attempts > 1 else ""
    raise PipelineError(f"`dvc {' '.join(args)}` failed{tries}: {err.strip()}")


def _run(
    command: list[str], env: Mapping[str, str] | None, timeout_s: float
) -> tuple[int, str, str]:
    """Run `command`; return its status, stdout and stderr, read from files rather than pipes."""
    # `dvc queue start` leaves daemons (its workers) that inherit its stdout and stderr: with
    # pipes, reading them to the end would wait for the workers to end too.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise PipelineError(
                f"`{' '.join(command[2:])}` did not end within {timeout_s:.0f} s"
            ) from None
        out.seek(0)
        err.seek(0)
        return (
            result.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )
