"""Fail when the virtual environment differs from requirements.lock.

`make setup` installs exactly the lock's packages; this check catches what drifted since then: a
package upgraded, added or removed by hand. It compares what `pip freeze --exclude-editable`
would list for this interpreter with the lock's `name==version` pins, names compared as PEP 503
normalises them. The packages `pip freeze` leaves out (pip, and on Python < 3.12 setuptools,
wheel and distribute) are left out on both sides.

    fmnist-env-check         # exit 1 listing the differences on one line, else 0
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

try:
    from packaging.version import InvalidVersion, Version
except ImportError:  # a broken environment still gets its report
    Version = None  # type: ignore[assignment,misc]

LOCK = "requirements.lock"

# pip's rule: `#` starts a comment at the start of a line or after whitespace.
_COMMENT = re.compile(r"(^|\s+)#.*$")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;]+)")


def normalize(name: str) -> str:
    """Return a package name as PEP 503 compares it: lowercase, each run of `-_.` one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def freeze_hidden() -> set[str]:
    """The packages `pip freeze` (without --all) leaves out on this Python."""
    hidden = {"pip"}
    if sys.version_info < (3, 12):
        hidden |= {"setuptools", "distribute", "wheel"}
    return hidden


def parse_lock(text: str) -> dict[str, str]:
    """Read a requirements file's pins, normalised name to version; hashes and options skipped."""
    pins: dict[str, str] = {}
    pending: list[str] = []
    for line in text.splitlines():
        if line.endswith("\\") and not _COMMENT.search(line):
            pending.append(line[:-1])
            continue
        pending.append(_COMMENT.sub("", line))
        logical = " ".join(pending).strip()
        pending = []
        if not logical or logical.startswith("-"):
            continue
        match = _PIN.match(logical)
        if match is None:
            raise ValueError(f"not pinned with ==: {logical.split()[0]}")
        pins[normalize(match[1])] = match[2]
    return pins


def _editable(dist: importlib.metadata.Distribution) -> bool:
    """Tell whether `pip install -e` installed a distribution (PEP 610's direct_url.json)."""
    try:
        info = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return False
    return isinstance(info, dict) and bool(info.get("dir_info", {}).get("editable"))


def installed(paths: Iterable[str] | None = None) -> dict[str, str]:
    """What `pip freeze --exclude-editable` lists for these paths (sys.path by default)."""
    hidden = freeze_hidden()
    seen: set[str] = set()
    found: dict[str, str] = {}
    for entry in sys.path if paths is None else paths:
        for dist in importlib.metadata.distributions(path=[entry]):
            metadata = dist.metadata
            name = metadata.get("Name") if metadata else None
            if not name or normalize(name) in seen:
                continue  # like pip, the first of a name on the path wins
            seen.add(normalize(name))
            if normalize(name) not in hidden and not _editable(dist):
                found[normalize(name)] = dist.version
    return found


def same_version(a: str, b: str) -> bool:
    """Tell whether two version strings name the same release (PEP 440 when both parse)."""
    if Version is not None:
        try:
            return Version(a) == Version(b)
        except InvalidVersion:
            pass
    return a == b


def differences(locked: Mapping[str, str], present: Mapping[str, str]) -> list[str]:
    """List, by normalised name, the packages missing, extra or of another version than locked."""
    found = []
    for name in sorted(locked.keys() | present.keys()):
        want, have = locked.get(name), present.get(name)
        if have is None:
            found.append(f"{name}=={want} missing")
        elif want is None:
            found.append(f"{name}=={have} not in the lock")
        elif not same_version(want, have):
            found.append(f"{name} {have} installed, {want} locked")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Compare this interpreter's environment with the lock; return 1 if they differ."""
    parser = argparse.ArgumentParser(
        prog="fmnist-env-check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lock", default=LOCK, help=f"the requirements file (default {LOCK})")
    args = parser.parse_args(argv)
    try:
        locked = parse_lock(Path(args.lock).read_text())
    except (OSError, ValueError) as exc:
        print(f"error: {args.lock}: {exc}", file=sys.stderr)
        return 1
    hidden = freeze_hidden()
    locked = {name: version for name, version in locked.items() if name not in hidden}
    found = differences(locked, installed())
    if found:
        print(
            f"error: {sys.prefix} differs from {args.lock}: {'; '.join(found)}"
            " (recreate it: make clean setup)",
            file=sys.stderr,
        )
        return 1
    print(f"{sys.prefix} matches {args.lock} ({len(locked)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
