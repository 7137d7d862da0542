"""A real PostgreSQL server for the tests: Debian's binaries, a data folder of its own, listening
on 127.0.0.1 at a free port (and a socket in its folder), with a password that only a 0600
password file holds. It dies with the test process, even by SIGKILL."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fmnist.pipeline.processes import spawn, stop_group

USER, DATABASE = "fmnist", "studies"
START_TIMEOUT_S = 60.0


def binaries() -> Path | None:
    """The folder of PostgreSQL's server binaries (initdb, postgres), or None if not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    """A running server: its URL (no password in it) and the environment that has the password."""

    port: int
    passfile: Path

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def env(self) -> dict[str, str]:
        return {"PGPASSFILE": str(self.passfile)}


@contextlib.contextmanager
def running_postgres(home: Path) -> Iterator[Postgres]:
    """Start a server, yield it, and stop it and remove its data whatever happens."""
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed here (`make postgres` installs it)")
    # The server refuses to run as root: then it runs as Debian's `postgres` user, in a folder
    # of its own (pytest's temporary folders are closed to other users).
    owner = None
    if os.getuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no `postgres` user to run the server")
    data_root = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))
    server = None
    try:
        password = secrets.token_hex(16)
        pwfile = data_root / "pw"
        pwfile.touch(mode=0o600)
        pwfile.write_text(password + "\n")
        if owner is not None:
            os.chown(data_root, owner.pw_uid, owner.pw_gid)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        as_owner = {"user": owner.pw_uid} if owner is not None else {}
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_root / "data"),
                "-U",
                USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
            **as_owner,
        )
        pwfile.unlink()
        port = free_port()
        passfile = home / "pgpass"
        passfile.touch(mode=0o600)
        passfile.write_text(f"127.0.0.1:{port}:*:{USER}:{password}\n")
        log = (home / "postgres.log").open("w")
        server = spawn(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data_root / "data"),
                "-c",
                "listen_addresses=127.0.0.1",
                "-p",
                str(port),
                "-k",
                str(data_root),
            ],
            stdout=log,
            stderr=log,
            **as_owner,
        )
        db = Postgres(port, passfile)
        env = dict(os.environ, **db.env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                break
            assert server.poll() is None, (home / "postgres.log").read_text()
            assert time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(0.2)
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE],
            check=True,
            capture_output=True,
            env=env,
            timeout=60,
        )
        yield db
    finally:
        if server is not None:
            stop_group(server)
        shutil.rmtree(data_root, ignore_errors=True)
