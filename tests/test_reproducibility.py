"""Same params, same machine, same bytes: the tiny pipeline run twice from scratch by `dvc repro`
in two separate git repositories gives identical outputs, timings aside."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import copy_project, tiny_params, write_params

TIMING_KEYS = {"train_seconds", "samples_per_second"}
OUTPUT_DIRS = ("data/prepared", "data/predictions", "models", "metrics", "plots")
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
    found = {}
    for folder in OUTPUT_DIRS:
        for path in (root / folder).rglob("*"):
            if path.is_file():
                found[str(path.relative_to(root))] = path
    return found


def _without_timing(name: str, data: bytes) -> object:
    """The content of an output with its timing fields removed (or its bytes, if it has none)."""
    text = data.decode("utf-8", errors="replace")
    if not any(key in text for key in TIMING_KEYS):
        return data
    if name.endswith(".json"):  # {model: {key: value}}
        data = json.loads(text)
        return {m: {k: v for k, v in d.items() if k not in TIMING_KEYS} for m, d in data.items()}
    if name.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]
    raise AssertionError(f"{name}: timing fields in a file this test cannot compare")


def test_two_runs_from_scratch_give_the_same_bytes(two_runs):
    first, second = (_files(root) for root in two_runs)
    assert sorted(first) == sorted(second)
    kinds = {Path(name).suffix for name in first}
    assert {".pth", ".pt", ".json", ".csv", ".png"} <= kinds
    differ = [
        name
        for name in sorted(first)
        if _without_timing(name, first[name].read_bytes())
        != _without_timing(name, second[name].read_bytes())
    ]
    assert differ == []


def test_timings_live_only_in_the_timing_files(two_runs):
    with_timing = {
        name
        for name, path in _files(two_runs[0]).items()
        if path.suffix in (".json", ".csv", ".md")
        and any(key in path.read_text() for key in TIMING_KEYS)
    }
    expected = {f"metrics/train/{m}.json" for m in MODELS} | {"plots/comparison/models.csv"}
    assert with_timing == expected


def test_dvc_records_the_same_hashes_for_every_output_but_timings(two_runs):
    def outs(root: Path) -> dict[str, str]:
        lock = yaml.safe_load((root / "dvc.lock").read_text())
        return {
            out["path"]: out["md5"]
            for stage in lock["stages"].values()
            for out in stage.get("outs", [])
        }

    first, second = (outs(root) for root in two_runs)
    assert sorted(first) == sorted(second)
    timing = {path for path in first if path.startswith("metrics/train/")}
    timing |= {"plots/comparison/models.csv"}
    same = {path for path in first if first[path] == second[path]}
    assert set(first) - timing <= same
    assert "models/model_2.pth" in same and "data/prepared" in same
    assert "metrics/models/model_2.json" in same
