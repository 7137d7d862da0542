"""A stage dies with the `dvc repro` that runs it: killed DVC, no orphan training on to overwrite
what a later run writes. System test: real DVC, a real train stage in its own process tree."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from .workflow_repo import BIN, committed_repo, copy_repo, run_unchecked

# Real DVC queues, stores or several processes: `make test-system` (and CI) runs these.
pytestmark = pytest.mark.system

QUIET_S = 30  # how long nothing under models/ and plots/ may change after the stage is gone


def snapshot(root: Path) -> dict[str, str]:
    """Every file under models/ and plots/, by path, with the md5 of its bytes."""
    found = {}
    for folder in ("models", "plots"):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                found[str(path.relative_to(root))] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


def stage_processes(root: Path) -> list[psutil.Process]:
    """The train stage's processes for the repository at `root`, wherever they were re-parented."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(proc.info["cmdline"] or [])
            if "stages/train.py" in cmd and (proc.info["cwd"] or "").startswith(str(root)):
                found.append(proc)
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_stage_dies_with_the_dvc_that_runs_it_and_writes_nothing_after(
    tmp_path, tmp_path_factory, tiny_data, sig
):
    root = copy_repo(committed_repo(tmp_path_factory, tiny_data), tmp_path / "repo")
    # Long enough to be killed mid-training: many epochs of the tiny data.
    run_unchecked([str(BIN / "dvc"), "params", "diff"], root)  # DVC ready before the clock
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace("epochs: 2", "epochs: 400", 3))
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env["PYTHONPATH"] = str(root / "src")
    env["SHELL"] = "/bin/sh"  # as on a machine with no $SHELL (CI, containers): dash on Debian
    dvc = subprocess.Popen(
        [str(BIN / "dvc"), "repro", "train@model_2"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a group of its own, as in a terminal: only DVC is signalled
    )
    try:
        deadline = time.monotonic() + 120
        while not (root / "plots" / "train" / "model_2.csv").exists() or not stage_processes(root):
            assert time.monotonic() < deadline, "the stage never started training"
            assert dvc.poll() is None, "dvc repro ended before it could be killed"
            time.sleep(0.2)
        # The curves are rewritten after each epoch: training is under way.
        before_mtime = (root / "plots" / "train" / "model_2.csv").stat().st_mtime_ns
        while (root / "plots" / "train" / "model_2.csv").stat().st_mtime_ns == before_mtime:
            assert time.monotonic() < deadline, "no epoch ended"
            time.sleep(0.1)
        os.kill(dvc.pid, sig)
        dvc.wait(timeout=30)
        gone_by = time.monotonic() + 5
        while stage_processes(root) and time.monotonic() < gone_by:
            time.sleep(0.1)
        assert stage_processes(root) == [], "the stage outlived dvc"
        after = snapshot(root)
        time.sleep(QUIET_S)
        assert snapshot(root) == after
    finally:
        for proc in stage_processes(root):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dvc.pid, signal.SIGKILL)
        dvc.wait(timeout=30)
