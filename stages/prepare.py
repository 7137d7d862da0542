"""DVC stage `prepare`: read the IDX files once and write compact tensors for later stages."""

import logging

from fmnist.atomic import write_json
from fmnist.cli import entry_point, stage_parser
from fmnist.data import class_counts, read_raw, save_prepared
from fmnist.params import load_params
from fmnist.paths import DATA_ROOT, METRICS_DIR, PLOTS_DIR, PREPARED_DIR

log = logging.getLogger("fmnist.prepare")


@entry_point
def main(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    splits, classes = read_raw(DATA_ROOT)
    save_prepared(splits, classes, PREPARED_DIR)
    counts = {name: class_counts(split, classes) for name, split in splits.items()}
    write_json(
        METRICS_DIR / "data.json",
        {name: {"total": len(split), **counts[name]} for name, split in splits.items()},
    )

    from fmnist.plots import image_grid, pick

    train = splits["train"]
    chosen = pick(len(train), 16, params.runtime.seed)
    titles = [classes[int(train.labels[i])] for i in chosen]
    image_grid(train.images[chosen].numpy(), titles, PLOTS_DIR / "data" / "samples.png", 4, 4)
    log.info(
        "wrote %s (%s), %s",
        PREPARED_DIR,
        ", ".join(f"{n}: {len(s)} images" for n, s in splits.items()),
        PLOTS_DIR / "data" / "samples.png",
    )


if __name__ == "__main__":
    main()
