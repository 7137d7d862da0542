"""A sweep's grid: DVC's expansion of `-S`, names that every machine computes alike, and shards
that cover the grid exactly once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fmnist.experiments import grid, queue, stop
from fmnist.experiments.grid import combinations, expand, experiment_name, parse_shard, shard
from fmnist.pipeline.errors import PipelineError

GRID = ["models.model_2.lr=0.05,0.1,0.2", "models.model_2.hidden_units=4,6", "runtime.seed=1,2"]


def test_the_grid_is_every_combination_as_dvc_expands_it():
    points = expand(["models.model_0.lr=range(1,3)", "other.yaml:a=x,y", "runtime.device=cuda:1"])
    assert len(points) == 4
    assert ("models.model_0.lr=1", "runtime.device=cuda\\:1", "other.yaml:a=x") in points
    with pytest.raises(PipelineError, match=r"^-S: "):
        expand(["models.model_0.lr=choice(1,"])


@pytest.mark.parametrize("count", [1, 2, 3, 5, 12, 13])
def test_the_shards_cover_the_grid_once_and_differ_in_size_by_one_at_most(count):
    combos = combinations(GRID)
    shards = [shard(combos, k, count) for k in range(1, count + 1)]
    names = [c.name for part in shards for c in part]
    assert sorted(names) == sorted(c.name for c in combos)  # each exactly once
    sizes = [len(part) for part in shards]
    assert max(sizes) - min(sizes) <= 1


def test_every_machine_computes_the_same_names_and_shards_whatever_the_option_order():
    swapped = [GRID[2], GRID[0], GRID[1]]
    assert combinations(GRID) == combinations(swapped)
    assert shard(combinations(GRID), 2, 3) == shard(combinations(swapped), 2, 3)
    names = {c.name for c in combinations(GRID)}
    assert len(names) == 12  # one per combination
    assert all(name.startswith("sweep-") for name in names)


def test_uncommitted_edits_give_other_names_than_the_commit():
    point = ("models.model_0.lr=0.1",)
    assert experiment_name(point) == experiment_name(point, "")
    assert experiment_name(point, "a" * 40) != experiment_name(point)
    assert experiment_name(point, "a" * 40) != experiment_name(point, "b" * 40)


def test_a_shard_is_k_of_n():
    assert parse_shard("2/3") == (2, 3)
    assert parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/2", "3/2", "2", "a/b", "-1/2"):
        with pytest.raises(PipelineError, match="--shard"):
            parse_shard(bad)


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def test_the_workspace_tree_is_empty_when_clean_and_follows_the_edits(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "params.yaml").write_text("lr: 0.1\n")
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "commit", "-qm", "params")
    monkeypatch.chdir(tmp_path)
    assert grid.workspace_tree() == ""
    grid.clean_workspace()
    (tmp_path / "notes.txt").write_text("untracked: not part of any experiment's name")
    assert grid.workspace_tree() == ""
    (tmp_path / "params.yaml").write_text("lr: 0.2\n")
    edited = grid.workspace_tree()
    assert len(edited) == 40
    assert grid.workspace_tree() == edited  # the same edits, the same tree
    assert git(tmp_path, "stash", "list") == ""  # and nothing stashed
    with pytest.raises(PipelineError, match=r"uncommitted changes \(params.yaml\)"):
        grid.clean_workspace()


def test_a_sweep_does_not_start_while_another_runs_in_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = queue.worker_env()
    other = subprocess.Popen(["sleep", "30"], env=env)
    try:
        with pytest.raises(PipelineError, match="a sweep of this repository is running"):
            stop.not_busy(env)
    finally:
        other.kill()
        other.wait()
    stop.not_busy(env)
