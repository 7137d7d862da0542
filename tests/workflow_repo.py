"""A git repository where the pipeline has run once on tiny data and been committed on `main`.

The workflow tests (plots, branches, experiments, report) each copy it, git history and DVC
cache included, instead of running the whole pipeline again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import TinyData, copy_project, tiny_params, write_params

BIN = Path(sys.executable).parent
MODELS = ("model_0", "model_1", "model_2")
FIRST_REPRO_LOG = "first_repro.log"
_BUILT: dict[Path, Path] = {}


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command, fail the test with its output if it fails, and return its stdout."""
    result = run_unchecked(cmd, cwd, env)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def run_unchecked(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a command as `run` does, with `env` added, and return its result whatever it is."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1", **(env or {}))
    # DVC runs each stage's `python` from PATH: make it the interpreter running the tests.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # Import the repository's own copy of the library, the one its dvc.lock hashes, rather than
    # the editable install, which may have changed since the copy was made.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def dvc(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run the venv's DVC in `cwd` and return its stdout."""
    return run([str(BIN / "dvc"), *args], cwd, env)


def git(*args: str, cwd: Path) -> str:
    """Run git in `cwd` and return its stdout."""
    return run(["git", *args], cwd)


def ran_stages(output: str) -> list[str]:
    """Stages that a `dvc repro` or `dvc exp run` output says it ran."""
    return re.findall(r"Running stage '([^']+)'", output)


def committed_repo(factory: pytest.TempPathFactory, tiny: TinyData) -> Path:
    """Return this session's committed repository, running `dvc repro` there the first time."""
    key = factory.getbasetemp()
    if key not in _BUILT:
        root = factory.mktemp("committed-repo")
        git("init", "-q", "-b", "main", cwd=root)
        git("config", "user.email", "test@example.com", cwd=root)
        git("config", "user.name", "test", cwd=root)
        dvc("init", "-q", cwd=root)
        dvc("config", "core.analytics", "false", cwd=root)
        copy_project(root)
        write_params(root / "params.yaml", tiny_params(tiny))
        # Kept where git does not see it, for the tests of what that first run did.
        (root / ".git" / FIRST_REPRO_LOG).write_text(dvc("repro", cwd=root))
        git("add", "-A", cwd=root)
        git("commit", "-q", "-m", "Run the pipeline on tiny data", cwd=root)
        _BUILT[key] = root
    return _BUILT[key]


def copy_repo(source: Path, dest: Path) -> Path:
    """Copy a repository with its git history and DVC cache, for a test to change freely."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


def run_experiments_tool(
    command: str, root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run `fmnist-COMMAND ARGS` (sweep, search) in `root` as a user would, the venv on PATH;
    kill whatever processes of the repository's runs it left, whatever happened."""
    from fmnist.experiments.queue import TAG_ENV
    from fmnist.pipeline.processes import kill_all, tagged

    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    full = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=path, **(env or {}))
    try:
        return subprocess.run(
            [sys.executable, "-m", f"fmnist.experiments.{command}", *args],
            cwd=root,
            env=full,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        kill_all(tagged(TAG_ENV, str(root.resolve())), grace=1)


def kill_queue_processes(root: Path) -> int:
    """SIGKILL every worker and stage of `root`'s queue at once, as a lost machine would end
    them: nothing of theirs records how the run ended. Return how many there were."""
    from fmnist.experiments.queue import TAG_ENV
    from fmnist.pipeline.processes import tagged

    killed: set[int] = set()
    for _ in range(5):  # a worker may start a child while the others die
        pids = tagged(TAG_ENV, str(root.resolve()))
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= set(pids)
        time.sleep(0.2)
    return len(killed)
