"""DVC stage `train@<model>`: train one model from params.yaml and save its weights."""

import logging
from collections.abc import Sequence

from fmnist.atomic import write_json
from fmnist.checkpoint import save_checkpoint
from fmnist.cli import entry_point, stage_parser
from fmnist.data import load_classes, load_split
from fmnist.params import load_params
from fmnist.paths import CURVES_DIR, PREPARED_DIR, STEPS_DIR, TRAIN_METRICS_DIR, weights_path
from fmnist.progress import epoch_bars
from fmnist.runtime import resolve_device, resolve_precision
from fmnist.training import checkpoint_metadata, train_model, write_history, write_steps

log = logging.getLogger("fmnist.train")


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__, model=True).parse_args(argv)
    params = load_params(args.params)
    hp = params.model(args.model)
    device = resolve_device(params.runtime.device)
    precision = resolve_precision(hp.precision, device)
    train, test = load_split(PREPARED_DIR, "train"), load_split(PREPARED_DIR, "test")
    classes = load_classes(PREPARED_DIR)
    log.info("read %s: %d training and %d test images", PREPARED_DIR, len(train), len(test))
    log.info(
        "training %s (%s) on %s in %s for %d epochs", hp.name, hp.arch, device, precision, hp.epochs
    )

    result = train_model(
        hp,
        train,
        test,
        seed=params.runtime.seed,
        device=device,
        eval_batch_size=params.eval.batch_size,
        precision=precision,
        threads=params.runtime.threads,
        loss_every=params.curves.loss_every,
        progress=epoch_bars(hp.name, hp.epochs),
    )
    for row in result.history:
        log.info(
            "%s epoch %d: train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%%",
            hp.name,
            row["epoch"],
            row["train_loss"],
            100 * row["train_accuracy"],
            row["test_loss"],
            100 * row["test_accuracy"],
        )

    meta = checkpoint_metadata(
        hp, result, classes, params.runtime.seed, params.eval.batch_size, precision
    )
    save_checkpoint(result.model, weights_path(hp.name), meta)
    write_history(result.history, CURVES_DIR / f"{hp.name}.csv")
    write_steps(result.steps, hp.label, STEPS_DIR / f"{hp.name}.csv")
    # Timing lives in its own file so that the weights and curves stay byte-identical per run;
    # nested under the model's name, so that DVC names its columns `model_2.train_seconds`.
    write_json(
        TRAIN_METRICS_DIR / f"{hp.name}.json",
        {
            hp.name: {
                "train_seconds": round(result.seconds, 3),
                "samples_per_second": round(hp.epochs * len(train) / result.seconds, 1),
            }
        },
    )
    log.info("%s trained in %.1f s; wrote %s", hp.name, result.seconds, weights_path(hp.name))


if __name__ == "__main__":
    main()
