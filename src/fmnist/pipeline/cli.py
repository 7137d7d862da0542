"""What every command shares: arguments, logging, timing, and one-line errors.

A `PipelineError` is printed as one line (`error: ...`) and exits 1. With `--debug`, or
FMNIST_DEBUG=1 in the environment (which `dvc repro` passes on to the stages), it is raised
instead, with its full traceback.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence

from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.params import positive_int

log = logging.getLogger("fmnist")
DEBUG_ENV = "FMNIST_DEBUG"


def command_parser(description: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """Return a parser that takes `--debug`, for a stage or a tool."""
    # Raw: the description is a docstring whose lines (usage examples, lists) must stay lines.
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)",
    )
    return parser


def stage_parser(description: str | None, model: bool = False) -> argparse.ArgumentParser:
    """Return a parser with the options every stage takes (`--params`, and `--model` if asked)."""
    parser = command_parser(description)
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    if model:
        parser.add_argument("--model", required=True, help="a model name from params.yaml")
    return parser


def positive_int_arg(text: str) -> int:
    """Read an option's value as an integer above 0 (an argparse `type`)."""
    try:
        return positive_int(int(text), "value")
    except (ValueError, PipelineError):
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {text!r}") from None


def debugging(argv: Sequence[str] | None = None) -> bool:
    """Tell whether errors should show their traceback: `--debug` given or FMNIST_DEBUG=1."""
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def peak_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def entry_point(main: Callable[[Sequence[str] | None], None]) -> Callable[..., None]:
    """Wrap a command's main: log its duration, and turn a PipelineError into one line, exit 1."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> None:
        if not logging.getLogger().handlers:
            # Our progress at INFO; other libraries' (boto's credential notes, say) only warnings.
            logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
            logging.getLogger("fmnist").setLevel(logging.INFO)
        name = main.__module__
        if name == "__main__":
            # A stage script, or `python -m fmnist.x` (whose spec names the module).
            spec = getattr(sys.modules["__main__"], "__spec__", None)
            name = spec.name if spec is not None else sys.argv[0]
        start = time.perf_counter()
        try:
            main(argv)
        except PipelineError as exc:
            if debugging(argv):
                raise
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        log.info(
            "%s done in %.1f s, peak memory %.0f MB", name, time.perf_counter() - start, peak_mb()
        )

    return wrapper
