"""DVC stage `download`: fetch the four Fashion-MNIST IDX files and verify their SHA-256."""

import logging
from collections.abc import Sequence

from fmnist.pipeline.cli import entry_point, stage_parser
from fmnist.pipeline.download import fetch_dataset
from fmnist.pipeline.params import load_params
from fmnist.pipeline.paths import RAW_DIR
from fmnist.pipeline.processes import tie_to_parent

log = logging.getLogger("fmnist.download")


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    params = load_params(args.params)
    used = fetch_dataset(params.data.sources, params.data.sha256, RAW_DIR, params.data.timeout_s)
    for name, source in used.items():
        log.info("%s <- %s", name, source)
    log.info("wrote %s", RAW_DIR)


if __name__ == "__main__":
    tie_to_parent()  # run by DVC: die with it, never outlive a killed `dvc repro`
    main()
