"""What every stage entry point shares: arguments, logging, timing and one-line errors."""

from __future__ import annotations

import argparse
import functools
import logging
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from fmnist.errors import PipelineError

log = logging.getLogger("fmnist")


def stage_parser(description: str | None, model: bool = False) -> argparse.ArgumentParser:
    """Return a parser with the options every stage takes (`--params`, and `--model` if asked)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    if model:
        parser.add_argument("--model", required=True, help="a model name from params.yaml")
    return parser


def peak_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def run_dvc(*args: str) -> str:
    """Run a DVC command with this interpreter in the current folder; return its stdout."""
    result = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"`dvc {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def entry_point(main: Callable[[Sequence[str] | None], None]) -> Callable[..., None]:
    """Wrap a stage's main: log its duration, and turn a PipelineError into one line and exit 1."""

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
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        log.info(
            "%s done in %.1f s, peak memory %.0f MB", name, time.perf_counter() - start, peak_mb()
        )

    return wrapper
