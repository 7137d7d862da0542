"""DVC stage `evaluate@<model>`: reload saved weights and score them on the whole test set."""

import logging
from collections.abc import Sequence

from fmnist import paths
from fmnist.atomic import write_json
from fmnist.checkpoint import load_checkpoint
from fmnist.cli import entry_point, stage_parser
from fmnist.data import load_split
from fmnist.evaluation import (
    check_reproduces,
    evaluate_model,
    metrics_record,
    write_confusion,
    write_per_class,
    write_predictions,
)
from fmnist.models import count_parameters
from fmnist.params import load_params
from fmnist.runtime import cpu_threads, place_model, resolve_device

log = logging.getLogger("fmnist.evaluate")


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__, model=True).parse_args(argv)
    params = load_params(args.params)
    hp = params.model(args.model)
    name = hp.name
    device = resolve_device(params.runtime.device)
    # The sidecar must describe the model params.yaml configures, or this is a stale file.
    model, meta = load_checkpoint(paths.weights_path(name), expected=hp)
    model = place_model(model, device)
    test = load_split(paths.PREPARED_DIR, "test")
    classes = meta["classes"]

    # Scored in the precision the model was trained in, so that it reproduces training's record.
    precision = meta["hyperparameters"]["precision"]
    with cpu_threads(params.runtime.threads, model):
        evaluation = evaluate_model(
            model, test, len(classes), device, params.eval.batch_size, precision
        )
    check_reproduces(name, evaluation, meta["final"])
    record = metrics_record(name, meta, evaluation, count_parameters(model), device)
    write_json(paths.MODEL_METRICS_DIR / f"{name}.json", record)
    write_per_class(evaluation, classes, paths.PER_CLASS_DIR / f"{name}.csv")
    write_confusion(evaluation, classes, paths.CONFUSION_DIR / f"{name}.csv")
    write_predictions(evaluation, test.labels, classes, paths.PREDICTIONS_DIR / f"{name}.csv")

    log.info(
        "read %s (%s, %s) and %d test images",
        paths.weights_path(name),
        meta["arch"],
        precision,
        len(test),
    )
    log.info(
        "%s: test loss %.4f, accuracy %.2f%%; wrote %s, %s, %s and %s",
        name,
        evaluation.loss,
        100 * evaluation.accuracy,
        paths.MODEL_METRICS_DIR / f"{name}.json",
        paths.PER_CLASS_DIR / f"{name}.csv",
        paths.CONFUSION_DIR / f"{name}.csv",
        paths.PREDICTIONS_DIR / f"{name}.csv",
    )


if __name__ == "__main__":
    main()
