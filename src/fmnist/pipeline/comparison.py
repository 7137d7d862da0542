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
    "parameters",
    "device",
    "compute_dtype",
    "processes",
    "threads",
)
# What `dvc metrics show/diff` compares, per model: the test scores alone. The run's facts
# (arch, device, dtype, parameters, processes, threads) are in the table and the sidecar.
METRICS = ("accuracy", "loss")


def load_scores(scores_dir: str | Path, names: Sequence[str]) -> pd.DataFrame:
    """Join each named model's test scores and run facts into one table, in order."""
    rows = []
    for name in names:
        path = Path(scores_dir) / f"{name}.json"
        record = read_json(path, f"missing; run `dvc repro evaluate@{name}`")
        missing = [key for key in COLUMNS[1:] if not isinstance(record, dict) or key not in record]
        if missing:
            raise PipelineError(
                f"{path}: holds no {missing[0]} of {name}; run `dvc repro -f evaluate@{name}`"
            )
        rows.append({**record, "model": name})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def metrics_summary(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The metrics file: each model's test scores under its name (DVC: `model_2.accuracy`)."""
    return {row["model"]: {key: float(row[key]) for key in METRICS} for _, row in table.iterrows()}


def load_timings(timings_dir: str | Path, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each named model's last training time on this machine, where train left one."""
    found = {}
    for name in names:
        path = Path(timings_dir) / f"{name}.json"
        if path.is_file():
            found[name] = read_json(path, "missing")
    return found


def to_markdown(table: pd.DataFrame, timings: dict[str, dict[str, float]] | None = None) -> str:
    """Render the comparison as a GitHub Markdown table, accuracy in percent, with timings."""
    timings = timings or {}
    lines = [
        "| model | architecture | test loss | test accuracy | parameters | device "
        "| compute dtype | processes | threads | train (s) | images/s |",
        "|---|---|--:|--:|--:|---|---|--:|--:|--:|--:|",
    ]
    for row in table.itertuples(index=False):
        timing = timings.get(row.model, {})
        seconds = timing.get("train_seconds")
        speed = timing.get("samples_per_second")
        lines.append(
            f"| {row.model} | {row.arch} | {row.loss:.4f} | {100 * row.accuracy:.2f}% | "
            f"{row.parameters:,} | {row.device} | {row.compute_dtype} | "
            f"{row.processes} | {row.threads} | "
            f"{'-' if seconds is None else f'{seconds:.1f}'} | "
            f"{'-' if speed is None else f'{speed:,.0f}'} |"
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
