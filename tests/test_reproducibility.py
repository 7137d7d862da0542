"""Same params, same machine, same bytes: the tiny pipeline run twice from scratch by `dvc repro`
in two separate git repositories gives identical outputs; timings are in none of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import copy_project, tiny_params, write_params

TIMING_KEYS = {"train_seconds", "samples_per_second"}
OUTPUT_DIRS = ("data/prepared", "data/predictions", "data/scores", "models", "plots")
MODELS = ("model_0", "model_2")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # DVC runs each stage's `python` from PATH: make it the interpreter running the tests.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _dvc(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "dvc"), *args]


def _new_repo(root: Path, params: dict) -> None:
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "config", "user.email", "test@example.com"],
        ["git", "config", "user.name", "test"],
        _dvc("init", "-q"),
        _dvc("config", "core.analytics", "false"),
    ):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True, env=_env())
    copy_project(root)
    write_params(root / "params.yaml", params)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_data) -> tuple[Path, Path]:
    """Two repositories with the same project and params, each reproduced once from scratch."""
    params = tiny_params(tiny_data)
    # One linear model and the convolutional one: model_1 adds run time, not coverage.
    params["models"] = {name: params["models"][name] for name in MODELS}
    roots = [tmp_path_factory.mktemp(f"run{i}") for i in (1, 2)]
    for root in roots:
        _new_repo(root, params)
    # Both at once: the runs share nothing, and two cores finish them in about the time of one.
    procs = [
        subprocess.Popen(
            _dvc("repro"),
            cwd=root,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for root in roots
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    return roots[0], roots[1]


def _files(root: Path) -> dict[str, Path]:
    found = {"metrics/test.json": root / "metrics/test.json"}
    for folder in OUTPUT_DIRS:
        for path in (root / folder).rglob("*"):
            if path.is_file():
                found[str(path.relative_to(root))] = path
    return found


def test_two_runs_from_scratch_give_the_same_bytes(two_runs):
    first, second = (_files(root) for root in two_runs)
    assert sorted(first) == sorted(second)
    kinds = {Path(name).suffix for name in first}
    assert {".pth", ".pt", ".json", ".csv", ".png"} <= kinds
    differ = [n for n in sorted(first) if first[n].read_bytes() != second[n].read_bytes()]
    assert differ == []


def test_timings_live_in_no_output_only_in_the_untracked_log(two_runs):
    with_timing = {
        name
        for name, path in _files(two_runs[0]).items()
        if path.suffix in (".json", ".csv", ".md")
        and any(key in path.read_text() for key in TIMING_KEYS)
    }
    assert with_timing == set()
    for model in MODELS:
        timing = json.loads((two_runs[0] / "timings" / f"{model}.json").read_text())
        assert set(timing) == TIMING_KEYS


def test_dvc_records_the_same_hashes_for_every_output(two_runs):
    def outs(root: Path) -> dict[str, str]:
        lock = yaml.safe_load((root / "dvc.lock").read_text())
        return {
            out["path"]: out["md5"]
            for stage in lock["stages"].values()
            for out in stage.get("outs", [])
        }

    first, second = (outs(root) for root in two_runs)
    assert first == second
    expected = {
        "models/model_2.pth",
        "data/prepared",
        "metrics/test.json",
        "plots/train/model_2.csv",
    }
    assert expected <= set(first)
