"""Time every stage of the pipeline, as dvc.yaml runs it, without DVC.

    python benchmarks/pipeline.py                         # every stage, params.yaml as it is
    python benchmarks/pipeline.py --device cuda --models model_2 --output timings.json
    python benchmarks/pipeline.py --tiny                  # the test suite's tiny data instead

Runs each stage's `cmd` from dvc.yaml in order (foreach stages expanded, one per model) in a
scratch folder, so that the workspace's outputs and dvc.lock stay as they are, and it works on
a machine that has torch but no DVC. Prints one row per stage: wall seconds, the training
seconds that a train stage reports, and the stage process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from fmnist.pipeline.paths import TIMINGS_DIR
from fmnist.tools.tinydata import tiny_params, write_tiny_data

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")


@dataclass(frozen=True)
class Timing:
    """One stage's run: its name, wall time, training time (train stages) and peak memory."""

    stage: str
    wall_s: float
    train_s: float | None
    peak_mb: float


def resolve(dotted: str, scope: Mapping[str, Any]) -> Any:
    """The value that `name.key` names in `scope`, as DVC's `${name.key}` reads it."""
    node: Any = scope
    for part in dotted.strip().split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise SystemExit(f"dvc.yaml: nothing to fill ${{{dotted}}} with")
        node = node[part]
    return node


def interpolate(text: str, scope: Mapping[str, Any]) -> str:
    """Fill every `${...}` in a dvc.yaml string from `scope`."""
    return PLACEHOLDER.sub(lambda match: str(resolve(match[1], scope)), text)


def stage_commands(
    dvc_yaml: Mapping[str, Any], params: Mapping[str, Any]
) -> Iterator[tuple[str, str]]:
    """Each stage's name and command, in dvc.yaml's order, with foreach stages expanded."""
    for name, stage in dvc_yaml["stages"].items():
        if "foreach" not in stage:
            yield name, interpolate(stage["cmd"], params)
            continue
        items = stage["foreach"]
        if isinstance(items, str):  # `${models}`: a params value
            reference = PLACEHOLDER.fullmatch(items.strip())
            if reference is None:
                raise SystemExit(f"dvc.yaml: foreach {items!r} is not a ${{...}} reference")
            items = resolve(reference[1], params)
        pairs = items.items() if isinstance(items, Mapping) else enumerate(items)
        for key, item in pairs:
            scope = {**params, "key": key, "item": item}
            yield f"{name}@{key}", interpolate(stage["do"]["cmd"], scope)


def run_stage(
    command: str, params_file: Path, cwd: Path, env: Mapping[str, str]
) -> tuple[float, float]:
    """Run one stage command with `--params`; return its wall seconds and peak memory in MB."""
    words = shlex.split(command)
    if words[0] == "exec":  # shell syntax: DVC's shell replaces itself with the stage
        words = words[1:]
    argv = [sys.executable if part == "python" else part for part in words]
    argv += ["--params", str(params_file)]
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, env=dict(env))
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"`{command}` failed with status {process.returncode}")
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = usage.ru_maxrss / 1e6 if sys.platform == "darwin" else usage.ru_maxrss * 1024 / 1e6
    return wall, peak


def train_seconds(workdir: Path, stage: str) -> float | None:
    """The training seconds a train stage recorded, or None for other stages."""
    if not stage.startswith("train@"):
        return None
    model = stage.split("@", 1)[1]
    record = json.loads((workdir / TIMINGS_DIR / f"{model}.json").read_text())
    return float(record["train_seconds"])


def time_pipeline(params: dict[str, Any], workdir: Path) -> list[Timing]:
    """Run every stage of dvc.yaml in `workdir` with `params`; return their timings in order."""
    shutil.copytree(ROOT / "stages", workdir / "stages", dirs_exist_ok=True)
    params_file = workdir / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    timings = []
    for stage, command in stage_commands(dvc_yaml, params):
        print(f"running {stage}: {command}", file=sys.stderr, flush=True)
        wall, peak = run_stage(command, params_file, workdir, env)
        timings.append(Timing(stage, wall, train_seconds(workdir, stage), peak))
    return timings


def table(timings: Sequence[Timing]) -> str:
    """The timings as a Markdown table, with a total row."""
    lines = ["| stage | wall s | training s | peak MB |", "|---|--:|--:|--:|"]
    for t in timings:
        train = "" if t.train_s is None else f"{t.train_s:.2f}"
        lines.append(f"| {t.stage} | {t.wall_s:.2f} | {train} | {t.peak_mb:.0f} |")
    total = sum(t.wall_s for t in timings)
    trained = sum(t.train_s or 0 for t in timings)
    lines.append(f"| **total** | **{total:.2f}** | {trained:.2f} | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the overrides, time the pipeline in a scratch folder, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="parameters file")
    parser.add_argument("--device", help="override runtime.device (auto, cpu, cuda, mps)")
    parser.add_argument("--models", nargs="+", help="time only these models (default: all)")
    parser.add_argument(
        "--workdir", type=Path, help="run here and keep the outputs (default: a temporary folder)"
    )
    parser.add_argument("--output", type=Path, help="write the timings as JSON here too")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="run on the test suite's tiny generated data and params instead of --params",
    )
    args = parser.parse_args(argv)
    if args.tiny:
        with tempfile.TemporaryDirectory(prefix="fmnist-tiny-") as source:
            params = tiny_params(write_tiny_data(Path(source)))
            return _time_and_report(args, params, parser)
    params = yaml.safe_load(args.params.read_text())
    return _time_and_report(args, params, parser)


def _time_and_report(
    args: argparse.Namespace, params: dict[str, Any], parser: argparse.ArgumentParser
) -> int:
    """Apply the overrides, time the pipeline in a scratch folder, print and save the table."""
    if args.device:
        params["runtime"]["device"] = args.device
    if args.models:
        unknown = sorted(set(args.models) - set(params["models"]))
        if unknown:
            parser.error(f"--models: not in {args.params}: {', '.join(unknown)}")
        params["models"] = {name: params["models"][name] for name in args.models}
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        timings = time_pipeline(params, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="fmnist-pipeline-") as scratch:
            timings = time_pipeline(params, Path(scratch))
    print(table(timings))
    if args.output:
        report = {"device": params["runtime"]["device"], "stages": [asdict(t) for t in timings]}
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
