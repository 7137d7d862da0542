"""DVC stage `compare`: one table and one chart of every model's test results."""

import logging
from collections.abc import Sequence

from fmnist.cli import entry_point, stage_parser
from fmnist.compare import load_metrics, write_comparison
from fmnist.params import load_params
from fmnist.paths import COMPARISON_DIR, METRICS_DIR, MODEL_METRICS_DIR
from fmnist.plots import accuracy_bars

log = logging.getLogger("fmnist.compare")


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    table = load_metrics(MODEL_METRICS_DIR, list(params.models))
    write_comparison(
        table,
        METRICS_DIR / "comparison.csv",
        METRICS_DIR / "comparison.md",
        COMPARISON_DIR / "accuracy.csv",
    )
    accuracy_bars(
        table["model"].tolist(), table["accuracy"].tolist(), COMPARISON_DIR / "accuracy.png"
    )
    log.info("compared %s; wrote %s", ", ".join(table["model"]), METRICS_DIR / "comparison.md")


if __name__ == "__main__":
    main()
