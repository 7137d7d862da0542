"""Curves a chart can read while training runs: whole files, and DVC's signal that a step ended.

The plot files a stage declares are rewritten atomically after each epoch, so `dvc plots show`
and DVC's VS Code extension see whole files at any moment. The extension also watches a signal
file that DVCLive writes at each `next_step()`; `step_completed` writes the same file, in the
same format, without DVCLive's import and set-up cost in every train stage.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fmnist.pipeline.atomic import write_json

# Where DVCLive signals a finished step: <repository>/.dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED.
SIGNAL_FILE = Path(".dvc", "tmp", "exps", "run", "DVCLIVE_STEP_COMPLETED")
log = logging.getLogger(__name__)


def _signal_path() -> Path | None:
    """The signal file of the repository DVC runs this stage for; None outside DVC."""
    # DVC sets DVC_ROOT for every stage command (for a queued experiment, the user's repository).
    root = os.environ.get("DVC_ROOT")
    return Path(root) / SIGNAL_FILE if root and Path(root, ".dvc").is_dir() else None


def step_completed(step: int) -> None:
    """Tell DVC's tools that step `step` (here an epoch, counted from 0) is written."""
    path = _signal_path()
    if path is None:
        return
    # A courtesy to a viewer, never a reason to fail training: queued experiments that run side
    # by side share the folder, and DVC removes it when one of them ends.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"pid": os.getpid(), "step": step})
    except OSError as exc:
        log.debug("no step signal written to %s: %s", path, exc)


def training_ended() -> None:
    """Remove the signal, as DVCLive does when its run ends."""
    path = _signal_path()
    if path is not None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.debug("step signal %s not removed: %s", path, exc)
