"""DVC stage `prepare`: read the IDX files once and write compact tensors for later stages."""

import logging
from collections.abc import Sequence

from fmnist.atomic import write_json
from fmnist.cli import entry_point, stage_parser
from fmnist.data import class_counts, read_raw, save_prepared
from fmnist.params import load_params
from fmnist.paths import DATA_ROOT, METRICS_DIR, PREPARED_DIR, RAW_DIR

log = logging.getLogger("fmnist.prepare")


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    load_params(args.params)  # nothing here is configurable, but bad params fail before work
    splits, classes = read_raw(DATA_ROOT)
    save_prepared(splits, classes, PREPARED_DIR)
    counts = {name: class_counts(split, classes) for name, split in splits.items()}
    write_json(
        METRICS_DIR / "data.json",
        {name: {"total": len(split), **counts[name]} for name, split in splits.items()},
    )
    sizes = ", ".join(f"{name}: {len(split)} images" for name, split in splits.items())
    log.info("read %s; wrote %s (%s)", RAW_DIR, PREPARED_DIR, sizes)


if __name__ == "__main__":
    main()
