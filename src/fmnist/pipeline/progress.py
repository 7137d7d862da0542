"""tqdm progress bars that stay readable both in a terminal and in CI logs."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


def epoch_bars(name: str, epochs: int) -> Callable[[int, int], tqdm]:
    """Return a factory of one bar per epoch, counting batches."""
    interactive = sys.stderr.isatty()

    def bar(epoch: int, n_batches: int) -> tqdm:
        return tqdm(
            total=n_batches,
            desc=f"{name} epoch {epoch}/{epochs}",
            unit="batch",
            # Outside a terminal each refresh is a new log line: refresh rarely there.
            mininterval=0.2 if interactive else 30.0,
            leave=True,
            file=sys.stderr,
        )

    return bar
