"""A real SeaweedFS S3 server for the sharing tests: on 127.0.0.1, stopped even if a test fails."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from fmnist.experiments.remote import (
    Store,
    new_store,
    remove_sockets,
    s3_client,
    start_server,
    stop_server,
)

BUCKET = "team"
REMOTE = "shared"
URL = f"s3://{BUCKET}/dvc"


class Server:
    """One store and its running process, which a test may kill and start again."""

    def __init__(self, root: Path) -> None:
        self.store: Store = new_store(root)
        self.pid: int | None = None

    def start(self) -> None:
        """Start the server (on the store's ports and data, as before a kill) and wait for it."""
        self.pid = start_server(self.store, BUCKET, tied=True).pid  # dies with the tests

    def freeze(self) -> None:
        """SIGSTOP the server: requests in flight hang, as with a machine that stopped dead."""
        if self.pid is not None:
            os.killpg(self.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL the server, as a crash or a pulled plug would."""
        if self.pid is not None:
            stop_server(self.pid, grace=0)
            remove_sockets(self.store)
            self.pid = None

    @property
    def credentials(self) -> dict[str, str]:
        """The environment variables through which DVC (boto) finds the credentials."""
        return {
            "AWS_ACCESS_KEY_ID": self.store.access_key,
            "AWS_SECRET_ACCESS_KEY": self.store.secret_key,
        }

    def ensure_running(self) -> None:
        """Start the server again if a test killed it and failed before restarting it."""
        if self.pid is None:
            self.start()

    def has_objects(self) -> bool:
        """Whether the bucket holds any cache object yet (one cheap request)."""
        listed = s3_client(self.store).list_objects_v2(
            Bucket=BUCKET, Prefix="dvc/files/md5/", MaxKeys=1
        )
        return listed.get("KeyCount", 0) > 0

    def object_keys(self) -> list[str]:
        """Every object key in the bucket."""
        client = s3_client(self.store)
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextlib.contextmanager
def running_server(root: Path) -> Iterator[Server]:
    """Start a server under `root`; stop it on the way out, whatever happened."""
    server = Server(root)
    try:
        server.start()
        yield server
    finally:
        server.kill()


def corrupt_cache_files(root: Path) -> list[Path]:
    """Files in a repository's DVC cache whose content does not match the MD5 they are named by."""
    bad = []
    for path in (root / ".dvc" / "cache" / "files" / "md5").glob("*/*"):
        name = path.parent.name + path.name
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        # A directory listing's hash ends in .dir and covers its JSON content.
        if digest != name.removesuffix(".dir"):
            bad.append(path)
    return bad
