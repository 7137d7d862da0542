"""Put every model's results side by side: tables, DVC plot data, and what the figures need."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fmnist.pipeline.atomic import atomic_open, read_json
from fmnist.pipeline.errors import PipelineError

COLUMNS = (
    "model",
    "arch",
    "loss",
    "accuracy",
    "train_seconds",
    "parameters",
    "device",
    "compute_dtype",
)


def _model_record(path: Path, name: str, stage: str) -> dict:
    """One model's record from a metrics file, which nests it under the model's name."""
    record = read_json(path, f"missing; run `dvc repro {stage}`")
    if not isinstance(record, dict) or not isinstance(record.get(name), dict):
        raise PipelineError(f"{path}: holds no record of {name}; run `dvc repro -f {stage}`")
    return record[name]


def load_metrics(
    metrics_dir: str | Path, train_dir: str | Path, names: Sequence[str]
) -> pd.DataFrame:
    """Join each named model's test metrics and training time into one table, in order."""
    rows = []
    for name in names:
        row = _model_record(Path(metrics_dir) / f"{name}.json", name, f"evaluate@{name}")
        timing = _model_record(Path(train_dir) / f"{name}.json", name, f"train@{name}")
        rows.append({**row, "model": name, "train_seconds": timing["train_seconds"]})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def to_markdown(table: pd.DataFrame) -> str:
    """Render the comparison as a GitHub Markdown table, accuracy in percent."""
    lines = [
        "| model | architecture | test loss | test accuracy | train (s) | parameters | device "
        "| compute dtype |",
        "|---|---|--:|--:|--:|--:|---|---|",
    ]
    for row in table.itertuples(index=False):
        lines.append(
            f"| {row.model} | {row.arch} | {row.loss:.4f} | {100 * row.accuracy:.2f}% | "
            f"{row.train_seconds:.1f} | {row.parameters:,} | {row.device} | {row.compute_dtype} |"
        )
    return "\n".join(lines) + "\n"


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write a table as CSV atomically, with stable float formatting."""
    with atomic_open(path) as handle:
        frame.to_csv(handle, index=False, float_format="%.6g", lineterminator="\n")


def read_csv(path: Path, stage: str) -> pd.DataFrame:
    """Read a CSV another stage wrote, every value as text (written back as it was)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run `dvc repro {stage}`") from None


def join_curves(
    epochs_dir: Path, steps_dir: Path, labels: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every model's per-epoch and per-step curves in two tables, rows labelled by model."""
    epochs, steps = [], []
    for name, label in labels.items():
        frame = read_csv(epochs_dir / f"{name}.csv", f"train@{name}")
        frame.insert(0, "model", label)
        epochs.append(frame)
        steps.append(read_csv(steps_dir / f"{name}.csv", f"train@{name}"))
    return pd.concat(epochs, ignore_index=True), pd.concat(steps, ignore_index=True)


def load_predictions(
    path: str | Path, classes: Sequence[str], count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read evaluate's `actual,predicted` rows (one per test image) back as label indices."""
    try:
        pairs = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run `dvc repro evaluate`") from None
    if list(pairs.columns) != ["actual", "predicted"] or len(pairs) != count:
        raise PipelineError(f"{path}: expected actual,predicted rows for {count} test images")
    index = {name: i for i, name in enumerate(classes)}
    labels = []
    for column in ("actual", "predicted"):
        unknown = sorted(set(pairs[column]) - set(index))
        if unknown:
            raise PipelineError(f"{path}: {column} class {unknown[0]!r} is not a dataset class")
        labels.append(pairs[column].map(index).to_numpy(dtype=np.int64))
    return labels[0], labels[1]
