"""Fetch the four Fashion-MNIST IDX files from local folders or mirrors, checksummed.

This module must stay free of torch: the download stage should start in well under a second.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from fmnist.atomic import atomic_path
from fmnist.errors import PipelineError

log = logging.getLogger(__name__)


# The largest real file holds 47,040,016 bytes; anything much larger is not Fashion-MNIST
# (or is a decompression bomb) and is cut off early.
MAX_FILE_BYTES = 64 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20

HOW_TO_GET_THE_DATA = (
    "To get the data: on Debian or Ubuntu run `apt-get install dataset-fashion-mnist` "
    "(it installs the files in /usr/share/datasets/fashion-mnist); or put the four files, "
    "gzipped or not, in a directory listed in params.yaml data.sources; or list a mirror "
    "this machine can reach there."
)


class SourceFailed(Exception):
    """One source could not provide one file; the message says why."""


class DownloadError(PipelineError):
    """No source could provide a file."""


def is_url(source: str) -> bool:
    """Tell a mirror URL from a local directory."""
    return source.startswith(("http://", "https://", "file://"))


def _open_local(directory: str, name: str) -> BinaryIO:
    folder = Path(os.path.expanduser(directory))
    if not folder.is_dir():
        raise SourceFailed("no such directory")
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return open(candidate, "rb")
    raise SourceFailed(f"neither {name}.gz nor {name} is there")


def _open_url(base: str, name: str, timeout_s: float) -> BinaryIO:
    url = f"{base.rstrip('/')}/{name}.gz"
    try:
        return urllib.request.urlopen(url, timeout=timeout_s)
    except OSError as exc:  # URLError, HTTPError, socket timeouts are all OSErrors
        raise SourceFailed(f"{url}: {exc}") from None


class _Prefixed:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def read(self, n: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(n)
        if n < 0:
            data, self._head = self._head + self._stream.read(), b""
        else:
            data, self._head = self._head[:n], self._head[n:]
        return data


def _copy_verified(stream: BinaryIO, target: Path, sha256: str) -> None:
    """Decompress if needed, write to `target` and check the content's hash."""
    head = stream.read(len(GZIP_MAGIC))
    source = _Prefixed(head, stream)
    reader: Callable[[int], bytes]
    reader = gzip.GzipFile(fileobj=source).read if head == GZIP_MAGIC else source.read
    digest = hashlib.sha256()
    written = 0
    try:
        with open(target, "wb") as out:
            while chunk := reader(CHUNK):
                written += len(chunk)
                if written > MAX_FILE_BYTES:
                    raise SourceFailed(f"content exceeds {MAX_FILE_BYTES} bytes")
                digest.update(chunk)
                out.write(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceFailed(f"unreadable content ({exc.__class__.__name__}: {exc})") from None
    if digest.hexdigest() != sha256:
        raise SourceFailed(
            f"SHA-256 of the content ({written} bytes) is {digest.hexdigest()}, expected {sha256}"
        )


def file_matches(path: Path, sha256: str) -> bool:
    """Return True when `path` already holds exactly the expected content."""
    if not path.is_file():
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == sha256


def fetch_file(name: str, sha256: str, sources: Sequence[str], dest: Path, timeout_s: float) -> str:
    """Write one verified file to `dest`, trying each source in order; return the source used."""
    failures: list[str] = []
    for source in sources:
        try:
            if is_url(source):
                stream = _open_url(source, name, timeout_s)
            else:
                stream = _open_local(source, name)
            with stream, atomic_path(dest) as tmp:
                _copy_verified(stream, tmp, sha256)
        except SourceFailed as exc:
            log.debug("%s: %s: %s", name, source, exc)
            failures.append(f"  - {source}: {exc}")
            continue
        return source
    tried = "\n".join(failures)
    raise DownloadError(f"could not get {name} from any source:\n{tried}")


def fetch_dataset(
    sources: Sequence[str], checksums: Mapping[str, str], dest_dir: str | Path, timeout_s: float
) -> dict[str, str]:
    """Place every file of `checksums`, verified, in `dest_dir`; map each name to its source."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    used: dict[str, str] = {}
    errors: list[str] = []
    for name, sha256 in checksums.items():
        dest = dest_dir / name
        if file_matches(dest, sha256):
            used[name] = str(dest_dir)
            continue
        try:
            used[name] = fetch_file(name, sha256, sources, dest, timeout_s)
        except DownloadError as exc:
            errors.append(str(exc))
    if errors:
        raise DownloadError("\n".join([*errors, HOW_TO_GET_THE_DATA]))
    return used
