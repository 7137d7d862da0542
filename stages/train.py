"""DVC stage `train@<model>`: train one model from params.yaml and save its weights."""

import logging
import sys
from collections.abc import Sequence

from fmnist.pipeline import numerics
from fmnist.pipeline.cli import entry_point, stage_parser
from fmnist.pipeline.params import load_params
from fmnist.pipeline.processes import tie_to_parent

log = logging.getLogger("fmnist.train")


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__, model=True).parse_args(argv)
    params = load_params(args.params)
    # Before the first import of torch, which reads the kernel and thread settings once.
    numerics.pin(params.runtime.numerics, params.runtime.threads)
    from fmnist.pipeline import distributed, live
    from fmnist.pipeline.atomic import write_json
    from fmnist.pipeline.checkpoint import save_checkpoint
    from fmnist.pipeline.classes import load_classes
    from fmnist.pipeline.data import load_split
    from fmnist.pipeline.paths import CURVES_DIR, PREPARED_DIR, STEPS_DIR, TIMINGS_DIR, weights_path
    from fmnist.pipeline.progress import epoch_bars
    from fmnist.pipeline.runtime import resolve_compute_dtype, resolve_device
    from fmnist.pipeline.training import (
        checkpoint_metadata,
        timing_record,
        train_model,
        write_history,
        write_steps,
    )

    model_params = params.model(args.model)
    name = model_params.name
    processes, launched = params.runtime.processes, distributed.launched()
    if processes > 1 and not launched:
        # Run this very stage as `processes` ranks, each a child that dies with this process.
        argv = sys.argv[1:] if argv is None else list(argv)
        distributed.launch(__file__, argv, processes)
        return
    device_name = params.runtime.device
    if launched:
        shard, device = distributed.join(processes, device_name)
    else:
        shard, device = None, resolve_device(device_name)
    kernels = numerics.verify(params.runtime.numerics)
    compute_dtype = resolve_compute_dtype(model_params.compute_dtype, device)
    train, test = load_split(PREPARED_DIR, "train"), load_split(PREPARED_DIR, "test")
    classes = load_classes(PREPARED_DIR)
    log.info("read %s: %d training and %d test images", PREPARED_DIR, len(train), len(test))
    log.info(
        "training %s (%s) on %s in %s for %d epochs (%s numerics, %s kernels)",
        name,
        model_params.arch,
        device,
        compute_dtype,
        model_params.epochs,
        params.runtime.numerics,
        kernels,
    )

    writes = shard is None or shard.rank == 0  # only rank 0 shows progress and writes
    curves, steps = CURVES_DIR / f"{name}.csv", STEPS_DIR / f"{name}.csv"

    def write_curves(history: list[dict[str, float]], points: list[dict[str, float]]) -> None:
        # After every epoch, so that charts follow the run; the last call writes the final files.
        write_history(history, curves)
        write_steps(points, model_params.label, steps)
        live.step_completed(len(history) - 1)

    result = train_model(
        model_params,
        train,
        test,
        seed=params.runtime.seed,
        device=device,
        eval_batch_size=params.eval.batch_size,
        compute_dtype=compute_dtype,
        threads=params.runtime.threads,
        loss_every=params.curves.loss_every,
        progress=epoch_bars(name, model_params.epochs) if writes else None,
        shard=shard,
        on_epoch=write_curves if writes else None,
    )
    if shard is not None:
        distributed.leave()
    if not writes:
        return
    for row in result.history:
        log.info(
            "%s epoch %d: train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%%",
            name,
            row["epoch"],
            row["train_loss"],
            100 * row["train_accuracy"],
            row["test_loss"],
            100 * row["test_accuracy"],
        )

    meta = checkpoint_metadata(
        model_params,
        result,
        classes,
        params.runtime.seed,
        params.eval.batch_size,
        compute_dtype,
        (params.runtime.numerics, kernels),
    )
    save_checkpoint(result.model, weights_path(name), meta)  # the curves are already written
    live.training_ended()
    # Timing goes to no DVC output (those stay byte-identical from run to run), only to a log.
    images = model_params.epochs * len(train)
    write_json(TIMINGS_DIR / f"{name}.json", timing_record(result, images))
    log.info("%s trained in %.1f s; wrote %s", name, result.seconds, weights_path(name))


if __name__ == "__main__":
    tie_to_parent()  # run by DVC: die with it, never outlive a killed `dvc repro`
    main()
