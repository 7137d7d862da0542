"""Write outputs atomically, so that no reader (DVC included) sees half a file; read JSON back.

A write goes to a temporary file beside its target (same folder, so that `os.replace` is an
atomic rename on the same file system), named `.<target>.<8 random chars>.tmp`. What happens to
that temporary file when the writer dies:

- an exception, Ctrl-C (SIGINT raises KeyboardInterrupt) or SIGTERM (turned into SystemExit
  while a temporary file exists) runs the `finally` clause, which deletes it;
- SIGKILL (or a power cut) runs nothing, so the file stays. The target itself is untouched, so
  nothing half-written ever carries an output's name. Stale temporary files are deleted the next
  time the same target is written, and the download stage sweeps its whole output folder first.
  DVC also removes a stage's outputs before re-running it, so a stale file inside a directory
  output is never cached; `*.tmp` is git-ignored.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import signal
import string
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

from fmnist.pipeline.errors import PipelineError

# A temporary file's random part: 8 characters from this set.
_ALPHABET = string.ascii_lowercase + string.digits + "_"
_RANDOM = r"[a-z0-9_]{8}"
_ANY_TEMP = re.compile(rf"\..+\.{_RANDOM}\.tmp")


def _temp_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.{_RANDOM}\.tmp")


def remove_stale_temps(directory: str | Path, name: str | None = None) -> list[Path]:
    """Delete temporary files a killed writer left in `directory` (only `name`'s, if given)."""
    directory = Path(directory)
    pattern = _ANY_TEMP if name is None else _temp_pattern(name)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        if pattern.fullmatch(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _create_temp(path: Path) -> Path:
    """Create an empty temporary file beside `path`, with the mode the umask gives new files."""
    # Not tempfile.mkstemp, whose files are readable by their owner alone; and `secrets`, not
    # `random`, so that naming a file never moves the generator a seeded run draws from.
    for _ in range(100):
        token = "".join(secrets.choice(_ALPHABET) for _ in range(8))
        tmp = path.parent / f".{path.name}.{token}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Make SIGTERM raise SystemExit for the duration, so that `finally` clauses run."""
    main_thread = threading.current_thread() is threading.main_thread()
    # Leave alone a process that ignores SIGTERM or already handles it (an outer write, say).
    if not main_thread or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One writer per output (DVC runs a stage once at a time), so any older temporary file of
    # this target belongs to a writer that was killed.
    remove_stale_temps(path.parent, path.name)
    with _sigterm_raises():
        tmp_path = _create_temp(path)
        try:
            yield tmp_path
            os.replace(tmp_path, path)
        except (OSError, RuntimeError) as exc:
            if not _no_space(exc):
                raise
            free = shutil.disk_usage(path.parent).free
            shown = f"{free / 1e6:.1f} MB" if free >= 1e6 else f"{free:,} bytes"
            raise PipelineError(
                f"{path}: no space left on its device ({shown} free); the file was not "
                "changed: free some space and run again"
            ) from None
        finally:
            tmp_path.unlink(missing_ok=True)


def _no_space(exc: BaseException | None) -> bool:
    """Tell a full disk (or quota) from other write errors, torch.save's included."""
    # torch.save's own error (`[enforce fail at inline_container.cc...]`) comes while handling
    # the OSError of the failed write, or says `PytorchStreamWriter failed writing`.
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "PytorchStreamWriter failed writing" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces `path` when closed without error."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def read_json(path: str | Path, missing: str) -> Any:
    """Read a JSON file another stage wrote; `missing` says what to do when it is absent."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from None


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, with stable key order and a trailing newline."""
    write_text(path, json.dumps(data, indent=2) + "\n")
