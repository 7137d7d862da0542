"""DVC stage `prepare`: read the IDX files once and write compact tensors for later stages."""

import logging
from collections.abc import Sequence

from fmnist.pipeline.cli import entry_point, stage_parser
from fmnist.pipeline.data import read_raw, save_prepared, write_class_counts
from fmnist.pipeline.params import load_params
from fmnist.pipeline.paths import CLASS_COUNTS_CSV, PREPARED_DIR, RAW_DIR
from fmnist.pipeline.processes import tie_to_parent

log = logging.getLogger("fmnist.prepare")


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    load_params(args.params)  # nothing here is configurable, but bad params fail before work
    splits, classes = read_raw(RAW_DIR)
    save_prepared(splits, classes, PREPARED_DIR)
    write_class_counts(splits, classes, CLASS_COUNTS_CSV)
    sizes = ", ".join(f"{name}: {len(split)} images" for name, split in splits.items())
    log.info("read %s; wrote %s (%s)", RAW_DIR, PREPARED_DIR, sizes)


if __name__ == "__main__":
    tie_to_parent()  # run by DVC: die with it, never outlive a killed `dvc repro`
    main()
