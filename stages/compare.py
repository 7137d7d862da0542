"""DVC stage `compare`: tables and figures of every model's test results, without torch."""

import logging
from collections.abc import Sequence

from fmnist.pipeline import paths
from fmnist.pipeline.atomic import write_json
from fmnist.pipeline.classes import confusion_counts, load_classes
from fmnist.pipeline.cli import entry_point, stage_parser
from fmnist.pipeline.comparison import (
    join_curves,
    load_predictions,
    load_scores,
    metrics_summary,
    write_csv,
)
from fmnist.pipeline.figures import accuracy_bars, confusion_png, prediction_grid, sample_grid
from fmnist.pipeline.idx import read_split
from fmnist.pipeline.params import load_params
from fmnist.pipeline.processes import tie_to_parent

log = logging.getLogger("fmnist.compare")


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    seed = params.runtime.seed
    table = load_scores(paths.SCORES_DIR, list(params.models))
    # Every input is read before anything is written, so a failure leaves the outputs alone.
    classes = load_classes(paths.PREPARED_DIR)
    train_images, train_labels = read_split(paths.RAW_DIR, "train")
    test_images, _ = read_split(paths.RAW_DIR, "test")
    predictions = {
        name: load_predictions(paths.PREDICTIONS_DIR / f"{name}.csv", classes, len(test_images))
        for name in table["model"]
    }
    labels = {name: model.label for name, model in params.models.items()}
    epochs, steps = join_curves(paths.CURVES_DIR, paths.STEPS_DIR, labels)

    write_json(paths.METRICS_FILE, metrics_summary(table))
    write_csv(table, paths.COMPARISON_CSV)
    write_csv(epochs, paths.COMPARISON_DIR / "epochs.csv")
    write_csv(steps, paths.COMPARISON_DIR / "steps.csv")
    accuracy_bars(
        table["model"].tolist(), table["accuracy"].tolist(), paths.COMPARISON_DIR / "accuracy.png"
    )
    # The figures are drawn here, once for all models, so that evaluate never pays for
    # matplotlib and mlxtend: their imports cost more than evaluating a model does.
    sample_grid(train_images, train_labels, classes, paths.SAMPLES_PNG, seed)
    for row in table.itertuples(index=False):
        actual, predicted = predictions[row.model]
        title = f"{row.model}: test accuracy {row.accuracy:.2%}"
        matrix = confusion_counts(actual, predicted, len(classes))
        confusion_png(matrix, classes, paths.IMAGES_DIR / f"{row.model}_confusion.png", title)
        prediction_grid(
            test_images,
            predicted,
            actual,
            classes,
            paths.IMAGES_DIR / f"{row.model}_predictions.png",
            seed,
        )
    log.info(
        "compared %s from %s, %s and %s; wrote %s, %s and the figures in %s",
        ", ".join(table["model"]),
        paths.SCORES_DIR,
        paths.CURVES_DIR,
        paths.PREDICTIONS_DIR,
        paths.METRICS_FILE,
        paths.COMPARISON_DIR,
        paths.PLOTS_DIR,
    )


if __name__ == "__main__":
    tie_to_parent()  # run by DVC: die with it, never outlive a killed `dvc repro`
    main()
