"""`python -m fmnist.tools.lockcheck` on a fresh clone, with no data: a stale dvc.lock fails CI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import tiny_params, write_params
from .workflow_repo import committed_repo, git, run_unchecked


@pytest.fixture
def clone(tmp_path_factory, tiny_data, tmp_path) -> Path:
    """A `git clone` of the committed tiny-data run: code, params and lock, but no DVC cache."""
    source = committed_repo(tmp_path_factory, tiny_data)
    git("clone", "-q", str(source), str(tmp_path / "clone"), cwd=tmp_path)
    return tmp_path / "clone"


def lockcheck(root: Path):
    return run_unchecked([sys.executable, "-m", "fmnist.tools.lockcheck"], root, timeout=120)


def test_a_lock_that_matches_passes_without_any_data(clone):
    result = lockcheck(clone)
    assert result.returncode == 0, result.stderr
    assert "dvc.lock matches the code and params" in result.stdout
    assert not (clone / "data" / "prepared").exists()  # no data was needed


def test_a_param_changed_without_rerunning_fails_naming_the_stage(clone, tiny_data):
    write_params(clone / "params.yaml", tiny_params(tiny_data, model_1={"lr": 0.2}))
    result = lockcheck(clone)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("error: dvc.lock is stale: train@model_1")


def test_code_changed_without_rerunning_fails(clone):
    models = clone / "src" / "fmnist" / "pipeline" / "models.py"
    models.write_text(models.read_text() + "\n# a change that dvc.lock has not seen\n")
    result = lockcheck(clone)
    assert result.returncode == 1
    assert "error: dvc.lock is stale: train@" in result.stderr


def test_a_committed_result_that_differs_from_the_lock_fails(clone):
    # For example a stage re-run by hand whose new lock entry was never committed.
    metrics = clone / "metrics/test.json"
    metrics.write_text(metrics.read_text() + "\n")
    result = lockcheck(clone)
    assert result.returncode == 1
    assert "compare (metrics/test.json modified)" in result.stderr
