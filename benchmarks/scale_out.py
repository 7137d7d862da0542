"""Benchmark: a 4-experiment sweep with 1 and with 2 queue workers, and train@model_2 in 1 and in
2 processes, on the real data, in a scratch copy of the project.

    python benchmarks/scale_out.py --output benchmarks/scale_out.json

Copies dvc.yaml, params.yaml, stages/ and src/ into a temporary git repository, runs `dvc repro`
there once (the data comes from the first source in params.yaml that has it), then times each
case back to back, so that all figures come from one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from fmnist.experiments.queue import queue as queue_grid
from fmnist.experiments.queue import run_queue, worker_env
from fmnist.pipeline.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
GRID = ["models.model_2.lr=0.05,0.2", "models.model_2.hidden_units=10,20"]


def sh(*cmd: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command in `cwd`, fail loudly, return its stdout."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def scratch_repo(dest: Path) -> None:
    """A git repository holding the project and its pipeline's results, committed."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, dest / name)
    for folder in ("stages", "src"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    sh("git", "init", "-q", "-b", "main", cwd=dest)
    sh("git", "config", "user.email", "bench@example.com", cwd=dest)
    sh("git", "config", "user.name", "bench", cwd=dest)
    dvc = [sys.executable, "-m", "dvc"]
    sh(*dvc, "init", "-q", cwd=dest)
    sh(*dvc, "repro", "-q", cwd=dest, env=worker_env())
    sh("git", "add", "-A", cwd=dest)
    sh("git", "commit", "-q", "-m", "baseline", cwd=dest)


def time_sweep(repo: Path, jobs: int, grid: Sequence[str]) -> dict[str, object]:
    """Queue the grid, run it with `jobs` workers, and return the wall time and outcome."""
    # Each case must train: without this, DVC's run cache would restore the first case's results.
    shutil.rmtree(repo / ".dvc" / "cache" / "runs", ignore_errors=True)
    cwd = Path.cwd()
    os.chdir(repo)
    try:
        env = worker_env()
        names = list(queue_grid(grid, env))
        start = time.perf_counter()
        states = run_queue(names, jobs, env, timeout_s=3600)
        seconds = time.perf_counter() - start
        sh(sys.executable, "-m", "dvc", "queue", "stop", cwd=repo, env=env)
        sh(sys.executable, "-m", "dvc", "exp", "remove", "--all-commits", cwd=repo, env=env)
    finally:
        os.chdir(cwd)
    return {
        "jobs": jobs,
        "threads_per_worker": yaml.safe_load((repo / "params.yaml").read_text())["runtime"][
            "threads"
        ],
        "experiments": len(names),
        "succeeded": sum(state == "Success" for state in states.values()),
        "seconds": round(seconds, 1),
    }


def time_training(repo: Path, processes: int) -> dict[str, object]:
    """Run the train stage for model_2 with `processes` processes; wall time and accuracy."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["runtime"]["processes"] = processes
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PYTHONPATH="src")
    start = time.perf_counter()
    sh(sys.executable, "stages/train.py", "--model", "model_2", cwd=repo, env=env)
    wall = time.perf_counter() - start
    timing = json.loads((repo / "timings" / "model_2.json").read_text())
    sidecar = json.loads((repo / "models" / "model_2.json").read_text())
    final = sidecar["final"]
    return {
        "processes": processes,
        "threads_per_process": sidecar["threads"],
        "stage_seconds": round(wall, 1),
        "train_seconds": timing["train_seconds"],
        "test_accuracy": final["test_accuracy"],
        "test_loss": round(final["test_loss"], 5),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Set up the scratch repository, time every case, print and optionally save the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-S", dest="grid", action="append", help="the sweep (default: 2 x 2)")
    parser.add_argument("--output", help="write the report as JSON here too")
    args = parser.parse_args(argv)
    import torch

    with tempfile.TemporaryDirectory(prefix="fmnist-scale-") as tmp:
        repo = Path(tmp)
        start = time.perf_counter()
        scratch_repo(repo)
        print(f"baseline dvc repro: {time.perf_counter() - start:.1f} s", flush=True)
        report = {
            "environment": {
                "cpu": platform.processor() or platform.machine(),
                "cores": len(os.sched_getaffinity(0)),
                "torch": torch.__version__,
                "load_average_at_start": os.getloadavg()[0],
            },
            "sweep": [time_sweep(repo, jobs, args.grid or GRID) for jobs in (1, 2)],
            "train_model_2": [time_training(repo, n) for n in (1, 2)],
        }
    print(json.dumps(report, indent=2))
    if args.output:
        write_json(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
