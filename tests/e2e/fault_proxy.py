"""A TCP proxy on 127.0.0.1 that puts S3's failures in front of a real S3 server.

Modes, switchable at any time (a test usually picks one):

- ``pass_through()``: bytes go both ways untouched;
- ``refuse()``: the port stays bound but does not listen, so connects are refused
  (what a stopped service gives);
- ``answer(status, times=N, match=...)``: the first ``N`` requests (every one when
  ``times`` is None) whose request line contains ``match`` get ``status`` with an S3
  error body, then the connection closes; the others pass through;
- ``hang()``: connections are accepted and the request read, and nothing is ever
  answered, until the proxy closes (at the test's teardown);
- ``throttle(chunk, pause_s)``: pass-through, but the client's bytes go on ``chunk`` at
  a time with ``pause_s`` between (a slow uplink that keeps moving). Its connections
  take a small receive buffer, so the client's sends wait on the throttle instead of
  filling the kernel's buffers at once; ``pauses`` counts the waits.

Each fault answers the first request of a connection and closes it, so every request
of a faulty mode is seen; a passed-through connection carries on untouched, keep-alive
included. Counters and events (``faults``, ``passed``, ``hung``) let tests wait for what
happened instead of guessing how long it takes; ``open_connections`` says when every
client has let go.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

_REASONS = {403: "Forbidden", 404: "Not Found", 500: "Internal Server Error", 503: "Slow Down"}
_CODES = {
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchBucket", "The specified bucket does not exist"),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


@dataclass
class _Fault:
    status: int
    times: int | None
    match: str | None


class FaultProxy:
    """``url`` stands in for the S3 endpoint at ``upstream`` (``http://127.0.0.1:port``)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._mode: Literal["pass", "refuse", "answer", "hang", "throttle"] = "pass"
        self._throttle = (65536, 0.0)
        self._fault: _Fault | None = None
        self._open: set[socket.socket] = set()
        self._closed = False
        self.faults = 0
        """Requests answered with an error status."""
        self.passed = 0
        """Connections passed through to the real server."""
        self.hung = threading.Event()
        """Set once a request is being held without an answer."""
        self.held = 0
        """Requests held without an answer so far."""
        self.pauses = 0
        """Waits of ``throttle`` so far, over all connections."""
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    # -- modes ---------------------------------------------------------------------------

    def pass_through(self) -> None:
        self._set("pass")

    def refuse(self) -> None:
        self._set("refuse")

    def hang(self) -> None:
        self._set("hang")

    def throttle(self, chunk: int, pause_s: float) -> None:
        """Pass through, the client's bytes ``chunk`` at a time, ``pause_s`` apart."""
        with self._lock:
            self._throttle = (chunk, pause_s)
        self._set("throttle")

    def answer(self, status: int, *, times: int | None = None, match: str | None = None) -> None:
        """Answer ``status`` to the first ``times`` requests containing ``match``."""
        with self._lock:
            self._fault = _Fault(status, times, match)
        self._set("answer")

    def _set(self, mode: Literal["pass", "refuse", "answer", "hang", "throttle"]) -> None:
        with self._lock:
            previous, self._mode = self._mode, mode
            if (previous == "refuse") == (mode == "refuse"):
                return
            # Refusing: swap the listener for a socket bound to the same port that does
            # not listen; the kernel then answers connects with a reset (ECONNREFUSED),
            # and no other process can take the port meanwhile.
            old = self._listener
            _close(old)
            self._listener = self._bind(self.port) if mode == "refuse" else self._listen(self.port)

    # -- sockets -------------------------------------------------------------------------

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    def _listen(self, port: int) -> socket.socket:
        sock = self._bind(port)
        # Small, so that a throttled client waits on its sends (set before listen():
        # accepted connections inherit it, and the window is agreed at the handshake).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.listen(64)
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        return sock

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: refuse(), or close()
                return
            with self._lock:
                if self._closed:
                    _close(conn)
                    return
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            head, rest = _read_head(conn)
            if head is None:
                return
            with self._lock:
                mode, fault = self._mode, self._fault
                if mode == "answer" and fault is not None and _matches(fault, head):
                    if fault.times is not None:
                        fault.times -= 1
                    self.faults += 1
                else:
                    fault = None
            if mode == "hang":
                with self._lock:
                    self.held += 1
                self.hung.set()
                while conn.recv(65536):  # take the body, never answer
                    pass
            elif fault is not None:
                _skip_body(conn, head, rest)
                conn.sendall(_error_response(fault.status))
            else:
                self._pipe(conn, head + rest, throttled=mode == "throttle")
        except OSError:
            pass  # the client gave up, or the proxy closed: nothing to tell anyone
        finally:
            self._forget(conn)

    def _pipe(self, conn: socket.socket, first: bytes, *, throttled: bool = False) -> None:
        upstream = socket.create_connection(self._upstream)
        with self._lock:
            self._open.add(upstream)
            self.passed += 1
            chunk, pause_s = self._throttle if throttled else (65536, 0.0)
        try:
            upstream.sendall(first)
            back = threading.Thread(target=_copy, args=(upstream, conn), daemon=True)
            back.start()
            _copy(conn, upstream, chunk, pause_s, self._paused if throttled else None)
            back.join()
        finally:
            self._forget(upstream)

    def _paused(self) -> None:
        with self._lock:
            self.pauses += 1

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        _close(sock)

    @property
    def open_connections(self) -> int:
        """Connections open now, clients' and the proxy's own to the server: 0 once
        every client has let go (a client's close ends both of its sockets here)."""
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        """Stop listening and drop every connection, hung ones included."""
        with self._lock:
            self._closed = True
            sockets = [self._listener, *self._open]
            self._open.clear()
        for sock in sockets:
            _close(sock)


def _matches(fault: _Fault, head: bytes) -> bool:
    if fault.times is not None and fault.times <= 0:
        return False
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    return fault.match is None or fault.match in request_line


def _read_head(conn: socket.socket) -> tuple[bytes | None, bytes]:
    """The request's header block (through the blank line) and what came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


def _skip_body(conn: socket.socket, head: bytes, rest: bytes) -> None:
    """Read the body before answering, unless the client waits for ``100 Continue``
    (botocore does for uploads): answering before the client is done sending would
    reset the connection and turn the status into a connection error."""
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (
            line.decode("latin-1").partition(":") for line in head.split(b"\r\n")[1:] if line
        )
    }
    if headers.get("expect", "").lower() == "100-continue":
        return
    remaining = int(headers.get("content-length", "0")) - len(rest)
    while remaining > 0:
        chunk = conn.recv(min(remaining, 65536))
        if not chunk:
            return
        remaining -= len(chunk)


def _error_response(status: int) -> bytes:
    code, message = _CODES.get(status, ("Error", "Error"))
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>fault-proxy</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


def _copy(
    source: socket.socket,
    sink: socket.socket,
    size: int = 65536,
    pause_s: float = 0.0,
    on_pause: Callable[[], None] | None = None,
) -> None:
    """Bytes from ``source`` to ``sink`` until ``source`` ends; then end ``sink``'s side."""
    try:
        while chunk := source.recv(size):
            sink.sendall(chunk)
            if on_pause is not None:
                on_pause()
                time.sleep(pause_s)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _close(sock: socket.socket) -> None:
    # shutdown() first: close() alone does not wake a thread blocked in accept() or recv().
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
