"""The speed benchmark runs end to end on tiny data and reports what it promises."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from .conftest import ROOT


def test_benchmark_times_both_loops_and_writes_the_report(project, tiny_data, capsys):
    raw = project / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, content in tiny_data.raw.items():
        (raw / name).write_bytes(content)
    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "benchmarks/train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    out = project / "bench.json"
    argv = ["--epochs", "1", "--models", "model_0", "model_2", "--output", str(out)]
    assert module.main([*argv, "--numerics", "portable"]) == 0

    report = json.loads(out.read_text())
    env = report["environment"]
    assert env["torch"] and env["default_threads"] >= 1 and env["cpu"] and env["device"] == "cpu"
    assert (env["numerics"], env["kernels"]) == ("portable", "AVX2")
    assert [m["model"] for m in report["models"]] == ["model_0", "model_2"]
    for row in report["models"]:
        assert row["epochs"] == 1 and row["batch_size"] == 16
        for side in ("lesson", "project"):
            assert row[side]["seconds"] > 0 and row[side]["samples_per_second"] > 0
            assert 0 <= row[side]["test_accuracy"] <= 1
        # Both from the unrounded seconds: project/lesson, and its inverse.
        assert row["time_ratio"] * row["speedup"] == pytest.approx(1, rel=0.01)
    # Same seed, same batches, same arithmetic: the linear model ends up the same both ways.
    linear = report["models"][0]
    assert linear["project"]["threads"] == 1  # runtime.threads of the tiny params
    assert linear["project"]["test_accuracy"] == linear["lesson"]["test_accuracy"]
    assert abs(linear["project"]["test_loss"] - linear["lesson"]["test_loss"]) < 1e-5
    table = capsys.readouterr().out
    assert "| model_0 (linear) | fp32 |" in table and "| model_2 (tinyvgg) | " in table


def test_by_default_the_benchmark_times_each_numerics_mode_in_its_own_process(
    project, tiny_data, capsys
):
    raw = project / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, content in tiny_data.raw.items():
        (raw / name).write_bytes(content)
    out = project / "bench.json"
    argv = ["--epochs", "1", "--models", "model_2", "--output", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/train_speed.py"), *argv],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    runs = report["numerics"]
    assert set(runs) == {"portable", "native"}
    assert runs["portable"]["environment"]["kernels"] == "AVX2"
    assert runs["native"]["environment"]["numerics"] == "native"
    from fmnist.tools.benchmark import format_numerics_table

    table = format_numerics_table(runs)
    assert table in done.stdout and "| model_2 (tinyvgg) | fp32 |" in table


def test_the_layout_benchmark_times_both_layouts_in_each_mode_in_its_own_process(project):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/conv_layout.py"), "--rounds", "1", "--steps", "2"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines()[2:]]
    assert [(mode.split()[0], layout.strip()) for mode, layout, *_ in rows] == [
        ("portable", "contiguous"),
        ("portable", "channels_last"),
        ("native", "contiguous"),
        ("native", "channels_last"),
    ]
    assert "(AVX2)" in rows[0][0]  # the portable mode ran its pinned kernels
    assert all(float(median) > 0 and float(best) > 0 for *_, median, best in rows)


def test_pipeline_timing_runs_each_stage_command_without_dvc(
    tmp_path, tiny_data, capsys, monkeypatch
):
    spec = importlib.util.spec_from_file_location("pipeline", ROOT / "benchmarks/pipeline.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pipeline", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    out, work = tmp_path / "timings.json", tmp_path / "work"
    # --tiny: the suite's own tiny data, made by the benchmark, as `compare`'s timing is quoted.
    argv = ["--tiny", "--models", "model_0", "--device", "cpu"]
    assert module.main([*argv, "--workdir", str(work), "--output", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["device"] == "cpu"
    stages = [row["stage"] for row in report["stages"]]
    assert stages == ["download", "prepare", "train@model_0", "evaluate@model_0", "compare"]
    for row in report["stages"]:
        assert row["wall_s"] > 0 and row["peak_mb"] > 10
        assert (row["train_s"] is not None) == (row["stage"] == "train@model_0")
    train = report["stages"][2]
    assert 0 < train["train_s"] < train["wall_s"]
    # The stages ran in the scratch folder, from the copy of params with the overrides.
    assert (work / "models" / "model_0.pth").is_file()
    assert not (work / "models" / "model_1.pth").exists()
    table = capsys.readouterr().out
    assert "| train@model_0 |" in table and "| **total** |" in table
