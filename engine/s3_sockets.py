"""botocore clients whose every socket a cancel can shut: the connect, the TLS handshake,
each send of an upload's body and the wait for S3's answer.

A thread blocked on a socket wakes when another thread shuts that socket down
(:mod:`engine.connections`). botocore's connections are urllib3's: the socket is made
and connected inside ``urllib3.util.connection.create_connection`` and wrapped for TLS
inside ``ssl_wrap_socket``, each blocking until done, so a cancel could reach neither;
it waited for botocore's own timeouts (the connect timeout, ``UPLOAD_STALL_S``).

:func:`watch_client` swaps one client's urllib3 connection classes for subclasses that
make each socket with :func:`engine.connections.connect`, which hands it to the client's
:class:`~engine.connections.SocketWatch` before it connects, and keep a duplicate of it
in the watch through the TLS handshake (the wrap detaches the plain socket object; a
duplicate descriptor shuts down the same connection). One watch per client, and a
client serves one upload at a time (``engine.s3`` leases them out): stopping the watch
cuts that upload and nothing else. Where botocore has moved the classes this expects,
the client stays botocore's own and a cancel waits for its timeouts again, said once in
the log.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, ClassVar

from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
)
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from engine.connections import SocketWatch, connect

log = logging.getLogger(__name__)

_warned = False


def watch_client(client: Any) -> SocketWatch | None:
    """Make every connection of ``client`` (a fresh botocore client) one its returned
    watch can cut; None, with one warning, where botocore's shape has moved."""
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    classes = getattr(session, "_pool_classes_by_scheme", None)
    if not (
        isinstance(classes, dict)
        and classes.get("http") is AWSHTTPConnectionPool
        and classes.get("https") is AWSHTTPSConnectionPool
    ):
        global _warned
        if not _warned:
            _warned = True
            log.warning(
                "botocore's connection pools are not where this worker expects them: a "
                "cancel will wait for an upload's own timeouts (UPLOAD_STALL_S)"
            )
        return None
    # Reset: a cut upload's body still queued in the kernel (megabytes) is dropped, not
    # sent after the cut.
    watch = SocketWatch(reset=True)

    class Http(_WatchedHttp):
        pass

    class Https(_WatchedHttps):
        pass

    Http.watch = Https.watch = watch

    class HttpPool(AWSHTTPConnectionPool):  # type: ignore[misc]  # botocore has no types
        ConnectionCls = Http

    class HttpsPool(AWSHTTPSConnectionPool):  # type: ignore[misc]
        ConnectionCls = Https

    # The same dict is the pool manager's (URLLib3Session shares it): pools made from
    # now on, i.e. all of a fresh client's, make watched connections.
    classes["http"], classes["https"] = HttpPool, HttpsPool
    return watch


def _new_socket(conn: Any, watch: SocketWatch) -> socket.socket:
    """urllib3's ``HTTPConnection._new_conn``, the socket adopted by ``watch`` before its
    connect; failures raised as urllib3 raises them (botocore maps those)."""
    timeout = conn.timeout if isinstance(conn.timeout, (int, float)) else None
    source = conn.source_address[0] if conn.source_address else None
    try:
        sock = connect(conn._dns_host, conn.port, timeout, source, watch)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    except TimeoutError as exc:  # socket.timeout; also an OSError, so first
        raise ConnectTimeoutError(
            conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
        ) from exc
    except OSError as exc:
        raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc
    for option in conn.socket_options or ():
        sock.setsockopt(*option)
    return sock


class _WatchedHttp(AWSHTTPConnection):  # type: ignore[misc]  # botocore has no types
    """botocore's plain connection; its socket is the watch's from before its connect."""

    watch: ClassVar[SocketWatch]

    def _new_conn(self) -> socket.socket:
        return _new_socket(self, self.watch)

    def close(self) -> None:
        sock = self.sock
        super().close()
        self.watch.forget(sock)


class _WatchedHttps(AWSHTTPSConnection):  # type: ignore[misc]  # botocore has no types
    """botocore's TLS connection: its socket is the watch's from before its connect,
    through the handshake (a duplicate descriptor) and after it (the TLS socket)."""

    watch: ClassVar[SocketWatch]
    _handshake: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        sock = _new_socket(self, self.watch)
        handshake = sock.dup()
        try:
            self.watch.adopt(handshake)
        except OSError as exc:  # stopped since the connect
            handshake.close()
            sock.close()
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        self._handshake = handshake
        return sock

    def connect(self) -> None:
        try:
            super().connect()
        finally:
            handshake, self._handshake = self._handshake, None
            if handshake is not None:
                self.watch.forget(handshake)
                handshake.close()
        self.watch.adopt(self.sock)

    def close(self) -> None:
        sock = self.sock
        super().close()
        self.watch.forget(sock)
