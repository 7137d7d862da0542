"""Write a Markdown report of the workspace's results against a base revision, for a pull request.

Metrics and params diffs come from `dvc metrics diff --md` and `dvc params diff --md`. Metrics are
committed to git, so the base needs no DVC remote. Run it after `dvc repro`:

    python -m fmnist.report --base origin/main --out report.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fmnist.atomic import write_text
from fmnist.cli import entry_point, run_dvc
from fmnist.paths import COMPARISON_DIR, IMAGES_DIR, METRICS_DIR


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


def build_report(base: str, images: bool = True) -> str:
    """Return the report for the current directory: results, diffs against `base`, charts."""
    metrics = _table_or(dvc_markdown("metrics", "diff", base), f"No metric changed from `{base}`.")
    params = _table_or(dvc_markdown("params", "diff", base), f"No param changed from `{base}`.")
    comparison = METRICS_DIR / "comparison.md"
    parts = [
        "# Pipeline report",
        "## Results",
        comparison.read_text().strip() if comparison.is_file() else "No comparison table.",
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
    """Write the report to a file or to stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="revision to compare with, e.g. origin/main")
    parser.add_argument("--out", type=Path, help="write the report here instead of stdout")
    parser.add_argument(
        "--no-images", action="store_true", help="leave out the charts (where links cannot show)"
    )
    args = parser.parse_args(argv)
    report = build_report(args.base, images=not args.no_images)
    if args.out:
        write_text(args.out, report)
    else:
        sys.stdout.write(report)


if __name__ == "__main__":
    main()
