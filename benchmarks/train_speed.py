"""Benchmark: the project's training engine against the lesson's DataLoader loop, per model,
with the portable numerics (the pipeline's default) and the machine's native ones.

    python benchmarks/train_speed.py                      # every model in params.yaml
    python benchmarks/train_speed.py --epochs 1 --models model_0 model_2
    python benchmarks/train_speed.py --numerics portable  # one mode, in this process

Reads the raw IDX files under <data-root>/FashionMNIST/raw (run `dvc repro download` first)
and each model's hyperparameters from params.yaml. Each mode runs in a process of its own, since
torch reads its kernel settings once, when it loads. Prints a Markdown table, and with --output
writes the report as JSON (benchmarks/results.json holds the run docs/performance.md quotes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fmnist.pipeline import numerics
from fmnist.pipeline.atomic import write_json
from fmnist.pipeline.params import COMPUTE_DTYPES, NUMERICS, PORTABLE, load_params

log = logging.getLogger("fmnist.benchmark")


def each_mode(argv: Sequence[str], modes: Sequence[str], repeat: int, output: str | None) -> int:
    """Run this benchmark per numerics mode, each in its own process, `repeat` rounds of them in
    turn; print and write each mode's run with the median project time."""
    from fmnist.tools.benchmark import format_numerics_table, median_run

    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-") as tmp:
        # Round after round, the modes in turn: a machine whose speed drifts (other jobs, clock)
        # then weighs on each mode alike.
        for round_ in range(repeat):
            for mode in modes:
                out = Path(tmp) / f"{mode}-{round_}.json"
                cmd = [sys.executable, __file__, *argv, "--numerics", mode, "--output", str(out)]
                subprocess.run(cmd, check=True)
                runs[mode].append(json.loads(out.read_text()))
    reports = {mode: median_run(reports) for mode, reports in runs.items()}
    report = {
        "environment": reports[modes[0]]["environment"],
        "repeat": repeat,
        "numerics": reports,
    }
    if output:
        write_json(output, report)
    print(format_numerics_table(reports))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Time each requested model both ways, print the table, and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    parser.add_argument("--models", nargs="+", help="models to time (default: all)")
    parser.add_argument("--epochs", type=int, help="override every model's epochs")
    parser.add_argument("--data-root", default="data", help="folder holding FashionMNIST/raw")
    parser.add_argument("--device", help="override runtime.device for the project's engine")
    parser.add_argument(
        "--compute-dtype", choices=COMPUTE_DTYPES, help="override every model's compute dtype"
    )
    parser.add_argument(
        "--numerics",
        choices=NUMERICS,
        action="append",
        help="time this mode only, in this process (default: each mode in its own process)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of every mode, in turn; each model's median run is reported (default 1)",
    )
    parser.add_argument("--output", help="write the report as JSON here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    modes = list(dict.fromkeys(args.numerics or NUMERICS))
    if len(modes) > 1:
        if args.repeat < 1:
            parser.error("--repeat must be > 0")
        given = list(sys.argv[1:] if argv is None else argv)
        return each_mode(_without(given, ("--output", "--repeat")), modes, args.repeat, args.output)
    (mode,) = modes
    if mode == PORTABLE and args.compute_dtype not in (None, "fp32"):
        parser.error("the portable numerics compute in fp32 only")

    params = load_params(args.params)
    names = args.models or list(params.models)
    models = [params.model(name) for name in names]  # fails early on an unknown name
    if args.epochs is not None:
        if args.epochs <= 0:
            parser.error("--epochs must be > 0")
        models = [dataclasses.replace(m, epochs=args.epochs) for m in models]
    if args.compute_dtype is not None:
        models = [dataclasses.replace(m, compute_dtype=args.compute_dtype) for m in models]

    numerics.pin(mode, params.runtime.threads)  # before torch loads, as the stages do
    from fmnist.pipeline.runtime import resolve_device
    from fmnist.tools import benchmark

    kernels = numerics.verify(mode, setting="--numerics")
    device = resolve_device(args.device or params.runtime.device)
    lesson_data = benchmark.lesson_datasets(args.data_root)
    splits = benchmark.splits_from(lesson_data)
    results = []
    for model_params in models:
        name, epochs = model_params.name, model_params.epochs
        log.info(
            "%s: %d epochs, engine on %s (%s numerics), then lesson loop",
            name,
            epochs,
            device,
            mode,
        )
        results.append(
            benchmark.compare_model(
                model_params,
                lesson_data,
                splits,
                seed=params.runtime.seed,
                device=device,
                eval_batch_size=params.eval.batch_size,
                threads=params.runtime.threads,
            )
        )
        log.info("%s: %.1fx faster", model_params.name, results[-1]["speedup"])
    environment = {**benchmark.environment(device), "numerics": mode, "kernels": kernels}
    report = {"environment": environment, "models": results}
    if args.output:
        write_json(args.output, report)
    print(benchmark.format_table(results))
    print(json.dumps(report["environment"]))
    return 0


def _without(argv: list[str], options: Sequence[str]) -> list[str]:
    """The arguments less `options` and their values (each mode's process gets its own)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in options)):
            kept.append(arg)
    return kept


if __name__ == "__main__":
    sys.exit(main())
