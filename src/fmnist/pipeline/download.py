"""Fetch the four Fashion-MNIST IDX files from local folders or mirrors, checksummed.

This module must stay free of torch: the download stage should start in well under a second.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import os
import socket
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from fmnist.pipeline.atomic import atomic_path, remove_stale_temps
from fmnist.pipeline.errors import PipelineError

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


class SourceUnreachable(SourceFailed):
    """A mirror did not answer, or stopped answering: later files skip it rather than wait again."""


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
            try:
                return open(candidate, "rb")
            except OSError as exc:
                raise SourceFailed(f"{candidate}: {exc.strerror or exc}") from None
    raise SourceFailed(f"neither {name}.gz nor {name} is there")


class _Response:
    """An HTTP body that reports a stall, a dropped connection or a short body as SourceFailed."""

    def __init__(self, response: BinaryIO, url: str, timeout_s: float) -> None:
        self._response = response
        self._url = url
        self._timeout_s = timeout_s
        length = response.headers.get("Content-Length", "")
        self._expected = int(length) if length.isdigit() else None
        self._received = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._response.read(n)
        except TimeoutError:
            raise SourceUnreachable(
                f"{self._url}: stalled: no data for {self._timeout_s:g} s "
                f"after {self._received} bytes (data.timeout_s)"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise SourceFailed(
                f"{self._url}: connection failed after {self._received} bytes "
                f"({exc.__class__.__name__}: {exc})"
            ) from None
        self._received += len(data)
        if not data and n != 0 and self._expected not in (None, self._received):
            raise SourceFailed(
                f"{self._url}: connection closed after {self._received} of {self._expected} bytes"
            )
        return data

    def close(self) -> None:
        self._response.close()


def _open_url(base: str, name: str, timeout_s: float) -> _Response:
    url = f"{base.rstrip('/')}/{name}.gz"
    # The timeout bounds each network operation (connect, waiting for the answer, each read),
    # not the whole transfer: a slow but steady mirror may take longer than timeout_s in all,
    # while one that sends nothing for timeout_s is abandoned. Name resolution is not covered.
    try:
        response = urllib.request.urlopen(url, timeout=timeout_s)
    except urllib.error.HTTPError as exc:  # the server answered: only this file is missing
        raise SourceFailed(f"{url}: {exc}") from None
    except (TimeoutError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            msg = f"{url}: no answer within {timeout_s:g} s (data.timeout_s)"
            raise SourceUnreachable(msg) from None
        if isinstance(reason, ConnectionError | socket.gaierror):
            raise SourceUnreachable(f"{url}: {exc}") from None
        # Anything else (a file:// source without this file, say) fails this file only.
        raise SourceFailed(f"{url}: {exc}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # HTTPError is an OSError; a server that does not speak HTTP raises BadStatusLine, a
        # malformed URL ValueError or InvalidURL.
        raise SourceFailed(f"{url}: {exc.__class__.__name__}: {exc}") from None
    return _Response(response, url, timeout_s)


class _Prefixed:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, stream: BinaryIO | _Response) -> None:
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


def _looks_like_idx(head: bytes) -> bool:
    """IDX files start with two zero bytes, 0x08 (unsigned bytes) and 1 or 3 dimensions."""
    return len(head) >= 4 and head[:3] == b"\x00\x00\x08" and head[3] in (1, 3)


def _copy_verified(stream: BinaryIO | _Response, target: Path, sha256: str) -> None:
    """Decompress if needed, write to `target` and check the content's hash."""
    # Problems with what the source gives raise SourceFailed (the next source is tried); a
    # problem writing `target` raises OSError (no other source would help).
    try:
        head = stream.read(len(GZIP_MAGIC))
    except OSError as exc:
        raise SourceFailed(f"unreadable content ({exc.__class__.__name__}: {exc})") from None
    source = _Prefixed(head, stream)
    reader: Callable[[int], bytes]
    reader = gzip.GzipFile(fileobj=source).read if head == GZIP_MAGIC else source.read

    def read_chunk() -> bytes:
        try:
            return reader(CHUNK)
        except (OSError, EOFError, zlib.error) as exc:
            raise SourceFailed(f"unreadable content ({exc.__class__.__name__}: {exc})") from None

    digest = hashlib.sha256()
    written = 0
    start = b""
    with open(target, "wb") as out:
        while chunk := read_chunk():
            written += len(chunk)
            if written > MAX_FILE_BYTES:
                raise SourceFailed(f"content exceeds {MAX_FILE_BYTES} bytes")
            if len(start) < 4:
                start += chunk[: 4 - len(start)]
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != sha256:
        kind = "" if _looks_like_idx(start) else ", not an IDX file"
        raise SourceFailed(
            f"SHA-256 of the content ({written} bytes{kind}) is {digest.hexdigest()}, "
            f"expected {sha256}"
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


def fetch_file(
    name: str,
    sha256: str,
    sources: Sequence[str],
    dest: Path,
    timeout_s: float,
    unreachable: set[str] | None = None,
) -> str:
    """Write one verified file to `dest`, trying each source in order; return the source used."""
    # Mirrors found unreachable are added to `unreachable`; those already in it are skipped.
    unreachable = set() if unreachable is None else unreachable
    failures: list[str] = []
    for source in sources:
        if source in unreachable:
            failures.append(f"  - {source}: skipped, it did not answer for an earlier file")
            continue
        try:
            if is_url(source):
                stream = _open_url(source, name, timeout_s)
            else:
                stream = _open_local(source, name)
            with contextlib.closing(stream), atomic_path(dest) as tmp:
                _copy_verified(stream, tmp, sha256)
        except SourceFailed as exc:
            log.debug("%s: %s: %s", name, source, exc)
            if isinstance(exc, SourceUnreachable):
                unreachable.add(source)
            failures.append(f"  - {source}: {' '.join(str(exc).split())}")  # one line each
            continue
        except OSError as exc:  # reading failures are SourceFailed: this one is about dest
            raise DownloadError(f"cannot write {dest}: {exc.strerror or exc}") from None
        return source
    tried = "\n".join(failures)
    raise DownloadError(f"could not get {name} from any source:\n{tried}")


def fetch_dataset(
    sources: Sequence[str], checksums: Mapping[str, str], dest_dir: str | Path, timeout_s: float
) -> dict[str, str]:
    """Place every file of `checksums`, verified, in `dest_dir`; map each name to its source."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    # A download killed with SIGKILL leaves its temporary file; DVC would cache it with the
    # folder if this stage were then run by hand and committed, so sweep such files first.
    for stale in remove_stale_temps(dest_dir):
        log.info("removed %s, left by an interrupted download", stale)
    used: dict[str, str] = {}
    errors: list[str] = []
    # Without this, a black-holed mirror would cost timeout_s for each of the four files.
    unreachable: set[str] = set()
    for name, sha256 in checksums.items():
        dest = dest_dir / name
        if file_matches(dest, sha256):
            used[name] = str(dest_dir)
            continue
        try:
            used[name] = fetch_file(name, sha256, sources, dest, timeout_s, unreachable)
        except DownloadError as exc:
            errors.append(str(exc))
    if errors:
        raise DownloadError("\n".join([*errors, HOW_TO_GET_THE_DATA]))
    return used
