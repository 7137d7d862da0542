"""DVC stage `train@<model>`: train one model from params.yaml and save its weights."""

import logging
import sys
from collections.abc import Sequence

from fmnist import distributed
from fmnist.atomic import write_json
from fmnist.checkpoint import save_checkpoint
from fmnist.cli import entry_point, stage_parser
from fmnist.data import load_classes, load_split
from fmnist.params import load_params
from fmnist.paths import CURVES_DIR, PREPARED_DIR, STEPS_DIR, TRAIN_METRICS_DIR, weights_path
from fmnist.progress import epoch_bars
from fmnist.runtime import resolve_device, resolve_precision
from fmnist.training import (
    checkpoint_metadata,
    train_metrics,
    train_model,
    write_history,
    write_steps,
)

log = logging.getLogger("fmnist.train")


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__, model=True).parse_args(argv)
    params = load_params(args.params)
    hp = params.model(args.model)
    processes, launched = params.runtime.processes, distributed.launched()
    if processes > 1 and not launched:
        # Run this very stage in `processes` processes under torchrun, and wait for them.
        argv = sys.argv[1:] if argv is None else list(argv)
        distributed.launch(__file__, argv, processes, params.runtime.threads)
        return
    name = params.runtime.device
    shard, device = distributed.join(processes, name) if launched else (None, resolve_device(name))
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
        progress=epoch_bars(hp.name, hp.epochs) if shard is None or shard.rank == 0 else None,
        shard=shard,
    )
    if shard is not None:
        distributed.leave()
        if shard.rank != 0:
            return  # only rank 0 writes
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
    # Timing lives in its own file so that the weights and curves stay byte-identical per run.
    write_json(TRAIN_METRICS_DIR / f"{hp.name}.json", train_metrics(hp, result, len(train)))
    log.info("%s trained in %.1f s; wrote %s", hp.name, result.seconds, weights_path(hp.name))


if __name__ == "__main__":
    main()
