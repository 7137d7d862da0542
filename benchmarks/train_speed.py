"""Benchmark: the project's training engine against the lesson's DataLoader loop, per model.

    python benchmarks/train_speed.py                      # every model in params.yaml
    python benchmarks/train_speed.py --epochs 1 --models model_0 model_2

Reads the raw IDX files under <data-root>/FashionMNIST/raw (run `dvc repro download` first)
and each model's hyperparameters from params.yaml; prints a Markdown table, and with --output
writes the report as JSON (benchmarks/results.json holds the run the README quotes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from fmnist.pipeline.atomic import write_json
from fmnist.pipeline.params import COMPUTE_DTYPES, load_params

log = logging.getLogger("fmnist.benchmark")


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
    parser.add_argument("--output", help="write the report as JSON here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    params = load_params(args.params)
    names = args.models or list(params.models)
    models = [params.model(name) for name in names]  # fails early on an unknown name
    if args.epochs is not None:
        if args.epochs <= 0:
            parser.error("--epochs must be > 0")
        models = [dataclasses.replace(m, epochs=args.epochs) for m in models]
    if args.compute_dtype is not None:
        models = [dataclasses.replace(m, compute_dtype=args.compute_dtype) for m in models]

    from fmnist.pipeline.runtime import resolve_device
    from fmnist.tools import benchmark

    device = resolve_device(args.device or params.runtime.device)
    lesson_data = benchmark.lesson_datasets(args.data_root)
    splits = benchmark.splits_from(lesson_data)
    results = []
    for model_params in models:
        name, epochs = model_params.name, model_params.epochs
        log.info("%s: %d epochs, engine on %s, then lesson loop", name, epochs, device)
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
    report = {"environment": benchmark.environment(device), "models": results}
    if args.output:
        write_json(args.output, report)
    print(benchmark.format_table(results))
    print(json.dumps(report["environment"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
