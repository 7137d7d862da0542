"""A fixed mistake restores, not retrains: on a clone whose dvc.lock came from another run.

Every output of a train stage is byte-identical from run to run (its timing is in no output), so
the clone's own run records the same hashes as the committed lock and fills its cache with the
objects that lock names. When a bad param fails a stage, DVC has already removed the stage's
outputs; with the param put back, `dvc repro` restores them from the cache instead of training.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import tiny_params, write_params
from .workflow_repo import BIN, committed_repo, dvc, git, ran_stages, run_unchecked

# Real DVC queues, stores or several processes: `make test-system` (and CI) runs these.
pytestmark = pytest.mark.system

CACHED = "Stage 'train@model_2' is cached - skipping run, checking out outputs"


@pytest.fixture(scope="module")
def clone(tmp_path_factory, tiny_data) -> Path:
    """A git clone of the committed run, without its DVC cache, reproduced once."""
    source = committed_repo(tmp_path_factory, tiny_data)
    root = tmp_path_factory.mktemp("restore") / "clone"
    git("clone", "-q", str(source), str(root), cwd=source.parent)
    ran = ran_stages(dvc("repro", cwd=root))
    assert "train@model_2" in ran  # nothing in this clone's cache yet: everything ran
    return root


def test_the_clones_run_records_the_hashes_of_the_committed_lock(clone):
    assert git("status", "--porcelain", cwd=clone) == ""  # dvc.lock and every output unchanged


def test_a_stage_failed_on_a_bad_param_is_restored_once_the_param_is_back(clone, tiny_data):
    weights = (clone / "models/model_2.pth").read_bytes()
    write_params(clone / "params.yaml", tiny_params(tiny_data, model_2={"lr": -0.1}))
    failed = run_unchecked([str(BIN / "dvc"), "repro"], clone)
    assert failed.returncode != 0
    assert "models.model_2.lr" in failed.stdout + failed.stderr
    assert not (clone / "models/model_2.pth").exists()  # DVC removed the outputs first

    git("checkout", "params.yaml", cwd=clone)
    output = dvc("repro", cwd=clone)
    assert ran_stages(output) == []
    assert CACHED in output
    assert (clone / "models/model_2.pth").read_bytes() == weights
    assert git("status", "--porcelain", cwd=clone) == ""
