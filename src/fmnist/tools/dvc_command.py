"""Run DVC's own command line from a tool, with this interpreter, as a user would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

from fmnist.pipeline.errors import PipelineError


def run_dvc(*args: str, env: Mapping[str, str] | None = None, check: bool = True) -> str:
    """Run `dvc ARGS` in the current folder; return its stdout, or fail with its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=env
    )
    if check and result.returncode != 0:
        raise PipelineError(f"`dvc {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout
