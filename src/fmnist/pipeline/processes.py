"""Processes with owners: children that die with their starter, signals only for our own.

Every process the product starts (training ranks, queue workers, the local store) goes through
`spawn`: it runs in a process group of its own, and the kernel kills it when its starter dies,
by any signal, SIGKILL included (Linux's parent-death signal). A process that must outlive its
starter (the local store) is recorded as an `Owned` identity instead, and is signalled only
after its pid is checked to still be that very process: the same start time and command line.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 5.0


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, or None where there is none (macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn` that has the kernel send `sig` to the child when its starter dies."""
    prctl = _prctl()  # looked up before the fork: the child only calls it
    parent = os.getpid()

    def arm() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the starter died before the signal was armed
            os._exit(1)

    return arm


def die_with_launcher(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent (torchrun's agent) dies."""
    # For a child whose launcher gave it no parent-death signal; the one that `spawn` starts
    # has it from before its first instruction.
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


_tied = threading.Event()
ORPHAN_POLL_S = 0.2
# Shells that DVC may run a stage's command through (it uses $SHELL, else /bin/sh). Some, like
# Debian's dash, stay as the stage's parent instead of exec-ing the command.
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"})


def _starter(parent: int) -> Owned | None:
    """The process that started our parent, when our parent is a shell (DVC, past `sh -c`)."""
    stat = _stat(parent)
    if stat is None:
        return None
    try:
        name = Path(f"/proc/{parent}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    grandparent = int(stat[1])
    if name not in SHELLS or grandparent <= 1:
        return None
    return Owned.of(grandparent)


def tie_to_parent() -> None:
    """End this process as soon as its parent (DVC, the shell DVC started) dies, by any signal.

    A stage that outlived a killed `dvc repro` would go on and overwrite what a later run wrote.
    The kernel's parent-death SIGKILL stops it at once on Linux. A thread is the second guard:
    it ends the process when the parent changes (elsewhere than Linux) and, when the parent is
    a shell that stays alive, when that shell's own starter (DVC) is gone.
    """
    if _tied.is_set():
        return
    _tied.set()
    parent = os.getppid()
    die_with_launcher()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    starter = _starter(parent)

    def watch() -> None:
        while os.getppid() == parent and (starter is None or starter.running()):
            time.sleep(ORPHAN_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen:
    """Start `argv` in a process group of its own that dies with this process, even by SIGKILL."""
    return subprocess.Popen(
        list(argv), start_new_session=True, preexec_fn=die_with_parent(), **popen
    )


def stop_group(process: subprocess.Popen, grace: float = STOP_GRACE_S) -> int:
    """Stop `process` and its group: SIGTERM, then SIGKILL after `grace` s; return its status."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, STOP_GRACE_S)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
    # Whatever the leader left in its group goes too (it was started for the leader). Linux
    # reuses the leader's pid only once its group is empty: if another process holds the pid now
    # that the leader is reaped, the group is gone, and that process is not ours to signal.
    if process.returncode is None or _stat(process.pid) is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


def _stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/PID/stat (state first), or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    return text.rsplit(")", 1)[1].split()


@dataclass(frozen=True)
class Owned:
    """A process as we started it: pid, kernel start time and command line, to find it again."""

    pid: int
    start_ticks: int  # clock ticks after boot: a reused pid has another
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, pid: int) -> Owned | None:
        """The identity of running process `pid`, or None if it does not run (or is a zombie)."""
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return None
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return None
        # Any bytes may stand in a command line: undecodable ones round-trip, never raise.
        parts = raw.split(b"\0")[:-1]
        return cls(pid, int(stat[19]), tuple(os.fsdecode(part) for part in parts))

    def running(self) -> bool:
        """Tell whether our process still runs under this pid (not another that reuses it)."""
        return Owned.of(self.pid) == self  # a zombie is not running: Owned.of says None

    def signal(self, sig: int) -> bool:
        """Send `sig` to our process (and its group, if it leads one); False if it is gone."""
        if not self.running():
            return False
        with contextlib.suppress(ProcessLookupError):
            leads = os.getpgid(self.pid) == self.pid
            (os.killpg if leads else os.kill)(self.pid, sig)
        return True

    def stop(self, grace: float = STOP_GRACE_S) -> bool:
        """SIGTERM, then SIGKILL after `grace` s; True once it is gone, False if it never was."""
        if not self.signal(signal.SIGTERM):
            return False
        for sig, wait in ((signal.SIGKILL, grace), (None, STOP_GRACE_S)):
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not self.running():
                    return True
                time.sleep(0.05)
            if sig is not None:
                self.signal(sig)
        raise OSError(f"process {self.pid} ({self.cmdline[0]}) did not stop")

    def save(self, path: Path) -> None:
        """Record the identity in `path` (JSON), for a later `load` and check."""
        from fmnist.pipeline.atomic import write_json

        write_json(path, {**asdict(self), "cmdline": list(self.cmdline)})

    @classmethod
    def load(cls, path: Path) -> Owned | None:
        """The identity recorded in `path`, or None if the file is missing or not ours."""
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), int(data["start_ticks"]), tuple(data["cmdline"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # an old bare pid, or a damaged file
            return None


def tagged(name: str, value: str) -> list[int]:
    """Pids of every process of this user whose environment has `name=value` (a run's tag)."""
    # A tag in the environment follows every descendant, also one that daemonised or was
    # re-parented to init, which a walk down from a pid would miss. Anyone can set the variable,
    # so only this user's processes count: root reads every environment, and another user's
    # process with the tag is neither waited for nor signalled.
    wanted = f"{name}={value}".encode()
    uid = os.getuid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


def kill_all(pids: Iterable[int], grace: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM `pids`, SIGKILL the ones left after `grace` s; return those still alive after."""
    owned = [o for o in (Owned.of(pid) for pid in pids) if o is not None]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, STOP_GRACE_S)):
        for process in owned:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if process.running():
                    os.kill(process.pid, sig)
        deadline = time.monotonic() + wait
        while owned and time.monotonic() < deadline:
            owned = [o for o in owned if o.running()]
            time.sleep(0.05)
        if not owned:
            break
    return [o.pid for o in owned]
