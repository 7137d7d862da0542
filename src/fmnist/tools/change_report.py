"""Write a Markdown report of the workspace's results against a base revision, for a pull request.

Metrics and params diffs come from `dvc metrics diff --md` and `dvc params diff --md`. Metrics are
committed to git, so the base needs no DVC remote. Run it after `dvc repro`:

    fmnist-report                                  # the workspace against HEAD, to stdout
    fmnist-report --base origin/main --out report.md
    fmnist-report --base origin/main --fail-on-regression   # exit 1 if a model got worse
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fmnist.experiments.dvc_command import run_dvc
from fmnist.pipeline.atomic import write_text
from fmnist.pipeline.cli import command_parser, entry_point
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.params import load_params
from fmnist.pipeline.paths import (
    COMPARISON_CSV,
    COMPARISON_DIR,
    IMAGES_DIR,
    METRICS_FILE,
    TIMINGS_DIR,
)

ACCURACY = ".accuracy"  # a model's test accuracy in `dvc metrics diff`: `<model>.accuracy`


@dataclass(frozen=True)
class AccuracyChange:
    """One model's test accuracy at the base and here; None where the model is absent."""

    model: str
    base: float | None
    new: float | None

    @property
    def drop_pp(self) -> float | None:
        """Percentage points lost since the base (negative for a gain); None if not in both."""
        if self.base is None or self.new is None:
            return None
        return round(100 * (self.base - self.new), 4)

    def verdict(self, max_drop_pp: float) -> str:
        """What the gate makes of this change: new, removed, ok, or dropped."""
        if self.base is None:
            return "new model"
        if self.new is None:
            return "removed"
        return "dropped" if self.drop_pp > max_drop_pp else "ok"


def accuracy_changes(diff: dict) -> list[AccuracyChange]:
    """Each model's test accuracy, from `dvc metrics diff --all --json` output, by model name."""
    changes = []
    for path, metrics in diff.items():
        if Path(path) != METRICS_FILE:
            continue
        for key, change in metrics.items():
            if key.endswith(ACCURACY):
                changes.append(AccuracyChange(key.removesuffix(ACCURACY), *_old_new(change)))
    return sorted(changes, key=lambda change: change.model)


def _old_new(change: dict) -> tuple[float | None, float | None]:
    return change.get("old"), change.get("new")


def regressions(changes: Sequence[AccuracyChange], max_drop_pp: float) -> list[AccuracyChange]:
    """The models whose accuracy fell by more than `max_drop_pp` percentage points."""
    return [change for change in changes if change.verdict(max_drop_pp) == "dropped"]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def accuracy_table(changes: Sequence[AccuracyChange], base: str, max_drop_pp: float) -> str:
    """The gate's view as Markdown: each model's accuracy at the base and here, and the verdict."""
    lines = [
        f"| model | `{base}` | this branch | change (pp) | gate (max drop {max_drop_pp:g} pp) |",
        "|---|--:|--:|--:|---|",
    ]
    for change in changes:
        drop = change.drop_pp
        delta = "-" if drop is None else f"{-drop or 0.0:+.2f}"  # no "-0.00"
        lines.append(
            f"| {change.model} | {_percent(change.base)} | {_percent(change.new)} | {delta} "
            f"| {change.verdict(max_drop_pp)} |"
        )
    return "\n".join(lines)


def failure_message(failed: Sequence[AccuracyChange], max_drop_pp: float) -> str:
    """One line naming every model that dropped, and by how much."""
    drops = "; ".join(
        f"{c.model} lost {c.drop_pp:.2f} percentage points of test accuracy "
        f"({_percent(c.base)} -> {_percent(c.new)})"
        for c in failed
    )
    return f"{drops}; gate.max_accuracy_drop allows at most {max_drop_pp:g}"


def results_table() -> str:
    """The comparison table of every model as Markdown, from compare's CSV and train's timings."""
    if not COMPARISON_CSV.is_file():
        return "No comparison table."
    # Imported here: pandas is slow to import and only this part of the report needs it.
    import pandas as pd

    from fmnist.pipeline.comparison import load_timings, to_markdown

    table = pd.read_csv(COMPARISON_CSV)
    return to_markdown(table, load_timings(TIMINGS_DIR, table["model"].tolist())).strip()


def dvc_markdown(*args: str) -> str:
    """Run a DVC command with `--md` in the current directory and return its table."""
    return run_dvc(*args, "--md").strip()


def _table_or(table: str, empty: str) -> str:
    # DVC prints a header and a rule but no rows when nothing changed.
    return table if len(table.splitlines()) > 2 else empty


def charts() -> list[tuple[str, Path]]:
    """Return (caption, path) for the comparison chart and each model's confusion matrix."""
    found = [("Test accuracy by model", COMPARISON_DIR / "accuracy.png")]
    for path in sorted(IMAGES_DIR.glob("*_confusion.png")):
        found.append((f"{path.name.removesuffix('_confusion.png')} confusion matrix", path))
    return [(caption, path) for caption, path in found if path.is_file()]


def build_report(
    base: str, changes: Sequence[AccuracyChange], max_drop_pp: float, images: bool = True
) -> str:
    """Return the report for the current directory: results, diffs against `base`, charts."""
    metrics = _table_or(dvc_markdown("metrics", "diff", base), f"No metric changed from `{base}`.")
    params = _table_or(dvc_markdown("params", "diff", base), f"No param changed from `{base}`.")
    parts = [
        "# Pipeline report",
        "## Results",
        results_table(),
        f"## Test accuracy against `{base}`",
        accuracy_table(changes, base, max_drop_pp),
        f"## Metrics changed from `{base}`",
        metrics,
        f"## Params changed from `{base}`",
        params,
    ]
    if images:
        parts.append("## Charts")
        parts += [f"![{caption}]({path.as_posix()})" for caption, path in charts()]
    return "\n\n".join(parts) + "\n"


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    """Write the report to a file or to stdout; with --fail-on-regression, then apply the gate."""
    parser = command_parser(__doc__, prog="fmnist-report")
    parser.add_argument(
        "--base", default="HEAD", help="revision to compare with, e.g. origin/main (default HEAD)"
    )
    parser.add_argument("--out", type=Path, help="write the report here instead of stdout")
    parser.add_argument("--params", default="params.yaml", help="parameters file (for the gate)")
    parser.add_argument(
        "--no-images", action="store_true", help="leave out the charts (where links cannot show)"
    )
    parser.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit 1 if a model's test accuracy fell by more than gate.max_accuracy_drop points",
    )
    args = parser.parse_args(argv)
    max_drop_pp = load_params(args.params).gate.max_accuracy_drop
    changes = accuracy_changes(json.loads(run_dvc("metrics", "diff", args.base, "--all", "--json")))
    report = build_report(args.base, changes, max_drop_pp, images=not args.no_images)
    if args.out:
        write_text(args.out, report)
    else:
        sys.stdout.write(report)
    failed = regressions(changes, max_drop_pp)
    if args.fail_on_regression and failed:
        raise PipelineError(failure_message(failed, max_drop_pp))


if __name__ == "__main__":
    main()
