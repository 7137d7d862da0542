"""Put every model's metrics side by side: CSV, Markdown, a bar chart and DVC plot data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fmnist.atomic import atomic_open, write_text
from fmnist.errors import PipelineError

COLUMNS = ("model", "arch", "loss", "accuracy", "train_seconds", "parameters", "device")


def load_metrics(metrics_dir: str | Path, names: Sequence[str]) -> pd.DataFrame:
    """Read each named model's metrics file into one table, in the given order."""
    rows = []
    for name in names:
        path = Path(metrics_dir) / f"{name}.json"
        try:
            rows.append(json.loads(path.read_text()))
        except FileNotFoundError:
            raise PipelineError(f"{path}: missing; run `dvc repro evaluate@{name}`") from None
    return pd.DataFrame(rows, columns=list(COLUMNS))


def to_markdown(table: pd.DataFrame) -> str:
    """Render the comparison as a GitHub Markdown table, accuracy in percent."""
    lines = [
        "| model | architecture | test loss | test accuracy | train (s) | parameters | device |",
        "|---|---|--:|--:|--:|--:|---|",
    ]
    for row in table.itertuples(index=False):
        lines.append(
            f"| {row.model} | {row.arch} | {row.loss:.4f} | {100 * row.accuracy:.2f}% | "
            f"{row.train_seconds:.1f} | {row.parameters:,} | {row.device} |"
        )
    return "\n".join(lines) + "\n"


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_open(path) as handle:
        frame.to_csv(handle, index=False, float_format="%.6g", lineterminator="\n")


def write_comparison(table: pd.DataFrame, csv_path: Path, md_path: Path, plot_data: Path) -> None:
    """Write the table as CSV and Markdown, and (model, accuracy) rows for DVC's bar plot."""
    _write_csv(table, csv_path)
    write_text(md_path, to_markdown(table))
    _write_csv(table[["model", "accuracy"]], plot_data)
