"""A local HTTP server (127.0.0.1, one thread per connection) that misbehaves on purpose."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Behaviour = Callable[[socket.socket, threading.Event], None]


def _headers(length: int) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode()


def serve(body: bytes) -> Behaviour:
    """Answer normally."""

    def run(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(_headers(len(body)) + body)

    return run


def silent() -> Behaviour:
    """Accept the connection, read the request, never answer."""

    def run(conn: socket.socket, stop: threading.Event) -> None:
        stop.wait()

    return run


def stall(body: bytes, sent: int) -> Behaviour:
    """Announce the whole body, send its first `sent` bytes, then nothing more."""

    def run(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(_headers(len(body)) + body[:sent])
        stop.wait()

    return run


def truncate(body: bytes, sent: int) -> Behaviour:
    """Announce the whole body, send its first `sent` bytes, then close the connection."""

    def run(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(_headers(len(body)) + body[:sent])

    return run


def dribble(body: bytes, fast: int, interval_s: float) -> Behaviour:
    """Send the first `fast` bytes at once, then one byte every `interval_s` seconds."""

    def run(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(_headers(len(body)) + body[:fast])
        for i in range(fast, len(body)):
            if stop.wait(interval_s):
                return
            conn.sendall(body[i : i + 1])

    return run


def not_http() -> Behaviour:
    """Answer with something that is not HTTP (another protocol's banner)."""

    def run(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    return run


@contextmanager
def faulty_server(routes: dict[str, Behaviour]) -> Iterator[str]:
    """Serve `routes` (path -> behaviour; any other path gets 404) and yield the base URL."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)

    def handle(conn: socket.socket) -> None:
        try:
            request = conn.recv(65536).decode("latin-1")
            path = request.split(" ", 2)[1] if request.count(" ") >= 2 else ""
            behaviour = routes.get(path)
            if behaviour is None:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                behaviour(conn, stop)
        except OSError:
            pass  # the client gave up or was killed: that is what these tests provoke
        finally:
            conn.close()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join()
        listener.close()
