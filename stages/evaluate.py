"""DVC stage `evaluate@<model>`: reload saved weights and score them on the whole test set."""

import logging
from collections.abc import Sequence

from fmnist.pipeline import numerics
from fmnist.pipeline.cli import entry_point, stage_parser
from fmnist.pipeline.params import load_params
from fmnist.pipeline.processes import tie_to_parent

log = logging.getLogger("fmnist.evaluate")


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__, model=True).parse_args(argv)
    params = load_params(args.params)
    # Before the first import of torch, which reads the kernel and thread settings once.
    numerics.pin(params.runtime.numerics, params.runtime.threads)
    from fmnist.pipeline import paths
    from fmnist.pipeline.atomic import write_json
    from fmnist.pipeline.checkpoint import load_checkpoint
    from fmnist.pipeline.data import load_split
    from fmnist.pipeline.evaluation import (
        check_reproduces,
        score_test_set,
        scores_record,
        write_confusion,
        write_per_class,
        write_predictions,
    )
    from fmnist.pipeline.runtime import cpu_threads, place_model, resolve_device

    model_params = params.model(args.model)
    name = model_params.name
    device = resolve_device(params.runtime.device)
    numerics.verify(params.runtime.numerics)
    # The sidecar must describe the model params.yaml configures, or this is a stale file.
    model, meta = load_checkpoint(paths.weights_path(name), expected=model_params)
    model = place_model(model, device)
    test = load_split(paths.PREPARED_DIR, "test")
    classes = meta["classes"]

    # Scored in the dtype the model was trained in, so that it reproduces training's record.
    compute_dtype = meta["hyperparameters"]["compute_dtype"]
    with cpu_threads(params.runtime.threads):
        scorecard = score_test_set(
            model, test, len(classes), device, params.eval.batch_size, compute_dtype
        )
    check_reproduces(name, scorecard, meta["final"])
    write_json(paths.SCORES_DIR / f"{name}.json", scores_record(meta, scorecard, device))
    write_per_class(scorecard, classes, paths.PER_CLASS_DIR / f"{name}.csv")
    write_confusion(scorecard, classes, paths.CONFUSION_DIR / f"{name}.csv")
    write_predictions(scorecard, test.labels, classes, paths.PREDICTIONS_DIR / f"{name}.csv")

    log.info(
        "read %s (%s, %s) and %d test images",
        paths.weights_path(name),
        meta["arch"],
        compute_dtype,
        len(test),
    )
    log.info(
        "%s: test loss %.4f, accuracy %.2f%%; wrote %s, %s, %s and %s",
        name,
        scorecard.loss,
        100 * scorecard.accuracy,
        paths.SCORES_DIR / f"{name}.json",
        paths.PER_CLASS_DIR / f"{name}.csv",
        paths.CONFUSION_DIR / f"{name}.csv",
        paths.PREDICTIONS_DIR / f"{name}.csv",
    )


if __name__ == "__main__":
    tie_to_parent()  # run by DVC: die with it, never outlive a killed `dvc repro`
    main()
