"""Connections a job's cancel can cut at every step: the TCP connect, the TLS handshake
and each read.

A thread blocked on a socket wakes when another thread shuts that socket down
(``shutdown(SHUT_RDWR)``; ``close`` alone does not wake it). The cancel can only do
that to a socket it knows of, and httpcore's own backend makes its socket inside
``socket.create_connection`` and its TLS socket inside ``wrap_socket``, both of which
block until the connect or the handshake is over: a cancel had to wait for them (a
server whose listen queue is full, or which accepts and never answers the TLS hello,
held them for the stall limit, ``DOWNLOAD_STALL_S``, longer than ``JOB_STOP_GRACE_S``
may be).

Here :class:`WatchedBackend` makes each socket itself and tells the request's
:class:`SocketWatch` of it **before** it connects, and of the TLS socket before its
handshake, so the watch's :meth:`SocketWatch.stop` (the job's cancel, through
:func:`watching`) wakes whichever wait the request is in. The watch reaches the backend
through a context variable that :func:`connecting` sets around a request: httpx's
synchronous client connects on the calling thread.

:func:`watched_client` is the one change made to httpx: its transport's connection
pool is replaced by httpcore's own pool built with this backend (httpx 0.28 takes no
backend of its own). Where that shape has moved, the client is httpx's plain one and a
cancel waits for a connect again, said once in the log.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import select
import socket
import ssl
import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

from engine.deadline import Deadline

log = logging.getLogger(__name__)


def shut(sock: socket.socket | None, *, reset: bool = False) -> None:
    """Wake a thread blocked on ``sock`` (connecting, in a handshake, reading).

    The plain socket's own method, also for a TLS socket (whose ``shutdown`` would drop
    its TLS state under the blocked thread's feet). A socket still connecting is reset
    by it (Linux: a connect in SYN_SENT returns ECONNRESET at once). With ``reset``, its
    close (by the thread it wakes) also drops what is still queued to send and resets
    the connection: a shutdown alone sends all of it first (megabytes of a cut upload).
    """
    if sock is None:
        return
    if reset:
        with contextlib.suppress(OSError):
            socket.socket.setsockopt(
                sock, socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
    with contextlib.suppress(OSError):  # already closed or never connected: nothing waits
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class SocketWatch:
    """The sockets of a request (or of one client's connections), from before each
    connect to its close, all shut down when :meth:`stop` is called (a cancel). A socket
    made after the stop is refused. With ``reset``, the stop also drops what the sockets
    still had queued to send (:func:`shut`)."""

    def __init__(self, *, reset: bool = False) -> None:
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._stopped = False
        self._reset = reset

    @property
    def stopped(self) -> bool:
        return self._stopped

    def adopt(self, sock: socket.socket) -> None:
        """Follow ``sock`` from now on; raises ``ConnectionAbortedError`` once stopped."""
        with self._lock:
            stopped = self._stopped
            if not stopped:
                # Closed ones go: a long-lived client's watch must not grow with them.
                self._socks = {s for s in self._socks if s.fileno() >= 0}
                self._socks.add(sock)
        if stopped:
            shut(sock, reset=self._reset)
            raise ConnectionAbortedError("the job was cancelled")

    def forget(self, sock: socket.socket | None) -> None:
        """Stop following ``sock`` (its connection is closed, or handed on)."""
        if sock is not None:
            with self._lock:
                self._socks.discard(sock)

    def stop(self) -> None:
        with self._lock:
            self._stopped, socks = True, list(self._socks)
        for sock in socks:
            shut(sock, reset=self._reset)


@contextlib.contextmanager
def watching(deadline: Deadline | None) -> Iterator[SocketWatch | None]:
    """A :class:`SocketWatch` stopped by ``deadline``'s cancel while the block runs
    (None without a deadline)."""
    if deadline is None:
        yield None
        return
    watch = SocketWatch()
    with deadline.on_cancel(watch.stop):
        yield watch


_current: contextvars.ContextVar[SocketWatch | None] = contextvars.ContextVar(
    "engine_socket_watch", default=None
)


@contextlib.contextmanager
def connecting(watch: SocketWatch | None) -> Iterator[None]:
    """Connections :class:`WatchedBackend` makes in the block are ``watch``'s."""
    token = _current.set(watch)
    try:
        yield
    finally:
        _current.reset(token)


@contextlib.contextmanager
def _mapped(timeout: type[Exception], other: type[Exception]) -> Iterator[None]:
    """httpcore's exception for a socket error: what httpx maps to its own."""
    try:
        yield
    except TimeoutError as exc:  # socket.timeout; also an OSError, so first
        raise timeout(exc) from exc
    except OSError as exc:
        raise other(exc) from exc


class WatchedStream(httpcore.NetworkStream):
    """One connection's socket (plain or TLS), as httpcore's own sync stream reads and
    writes it; its TLS handshake is watched as its connect was."""

    def __init__(self, sock: socket.socket, watch: SocketWatch | None) -> None:
        self._sock = sock
        self._watch = watch

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped(httpcore.ReadTimeout, httpcore.ReadError):
            self._sock.settimeout(timeout)
            return self._sock.recv(max_bytes)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _mapped(httpcore.WriteTimeout, httpcore.WriteError):
            while buffer:
                self._sock.settimeout(timeout)
                sent = self._sock.send(buffer)
                buffer = buffer[sent:]

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        try:
            with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
                self._sock.settimeout(timeout)
                # Wrapped first, shaken hands after: the watch holds the TLS socket (the
                # plain one is detached by the wrap) while the server may answer nothing.
                tls = ssl_context.wrap_socket(
                    self._sock, server_hostname=server_hostname, do_handshake_on_connect=False
                )
                try:
                    if self._watch is not None:
                        self._watch.adopt(tls)
                    tls.do_handshake()
                except BaseException:
                    tls.close()
                    raise
        except BaseException:
            self.close()
            raise
        return WatchedStream(tls, self._watch)

    def get_extra_info(self, info: str) -> Any:
        sock = self._sock
        if info == "ssl_object":  # httpcore asks it for the ALPN protocol it chose
            return sock if isinstance(sock, ssl.SSLSocket) else None
        if info == "client_addr":
            return sock.getsockname()
        if info == "server_addr":
            return sock.getpeername()
        if info == "socket":
            return sock
        if info == "is_readable":  # an idle pooled connection the server has closed
            return sock.fileno() < 0 or bool(select.select([sock], [], [], 0)[0])
        return None


class WatchedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with every socket adopted by the request's watch
    (:func:`connecting`) before it connects."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        watch = _current.get()
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
            sock = connect(host, port, timeout, local_address, watch)
            for option in socket_options or ():
                sock.setsockopt(*option)
        return WatchedStream(sock, watch)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.UnsupportedProtocol("the worker fetches over TCP only")


def connect(
    host: str,
    port: int,
    timeout: float | None,
    local_address: str | None,
    watch: SocketWatch | None,
) -> socket.socket:
    """A connected socket to ``host``, tried address by address as
    ``socket.create_connection`` does; each one adopted by ``watch`` before its connect."""
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            if watch is not None:
                watch.adopt(sock)
            sock.settimeout(timeout)
            if local_address is not None:
                sock.bind((local_address, 0))
            sock.connect(address)
            if watch is not None and watch.stopped:
                # Stopped between the adoption and the connect: a shut socket that was not
                # connecting yet may still report the connect as done.
                raise ConnectionAbortedError("the job was cancelled")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            if watch is not None and watch.stopped:
                raise
            error = exc
    raise error or OSError(f"{host} resolved to no address")


def watched_client(*, verify: ssl.SSLContext, limits: httpx.Limits) -> httpx.Client:
    """An httpx client (no proxy, no environment) whose connections a cancel can cut at
    every step (:class:`WatchedBackend`)."""
    transport = httpx.HTTPTransport(verify=verify, limits=limits, trust_env=False)
    if isinstance(getattr(transport, "_pool", None), httpcore.ConnectionPool):
        # httpx 0.28's transport holds its pool here and takes no backend itself: the
        # same pool, from httpcore's public constructor, with the watched backend.
        transport._pool = httpcore.ConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=WatchedBackend(),
        )
    else:
        log.warning(
            "httpx's transport has no connection pool where this worker expects one: "
            "a cancel will wait for a connect or a TLS handshake in progress"
        )
    return httpx.Client(transport=transport, trust_env=False, follow_redirects=False)
