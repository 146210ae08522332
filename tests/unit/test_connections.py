"""engine/connections.py: the socket of a request is the cancel's from before its connect;
a request on a stopped watch never connects; the worker's client uses the watched backend.

The cancel of a connect and of a TLS handshake in progress, against listeners where they
hang, is tested end to end in tests/e2e/test_reliability_io.py.
"""

from __future__ import annotations

import socket

import httpcore
import httpx
import pytest

from engine.connections import SocketWatch, WatchedBackend, connecting, watched_client
from engine.guarded_http import GuardedHttp, trust_context


@pytest.fixture
def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0)
    return sock


def accepted(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_a_watch_follows_the_socket_from_before_its_connect(listener: socket.socket) -> None:
    watch = SocketWatch()
    port = listener.getsockname()[1]
    with connecting(watch):
        stream = WatchedBackend().connect_tcp("127.0.0.1", port, timeout=5)
    try:
        sock = stream.get_extra_info("socket")
        assert isinstance(sock, socket.socket)
        watch.stop()  # shuts that very socket: a read on it ends at once, empty
        assert stream.read(10, timeout=5) == b""
    finally:
        stream.close()
        listener.close()


def test_a_stopped_watch_never_connects(listener: socket.socket) -> None:
    watch = SocketWatch()
    watch.stop()
    with connecting(watch), pytest.raises(httpcore.ConnectError, match="cancelled"):
        WatchedBackend().connect_tcp("127.0.0.1", listener.getsockname()[1], timeout=5)
    assert not accepted(listener)
    listener.close()


def test_outside_a_watch_connections_are_plain(listener: socket.socket) -> None:
    stream = WatchedBackend().connect_tcp("127.0.0.1", listener.getsockname()[1], timeout=5)
    stream.write(b"x")
    stream.close()
    listener.close()


def test_the_guard_connects_through_the_watched_backend() -> None:
    """httpx 0.28 takes no backend: the client's pool is replaced. Should httpx move it,
    this fails here, before a cancel silently waits for connects again."""
    client = watched_client(verify=trust_context(), limits=httpx.Limits())
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool._network_backend, WatchedBackend)
    guard = GuardedHttp(allow_private=True, max_redirects=0)
    backend = guard._client._transport._pool._network_backend  # type: ignore[attr-defined]
    assert isinstance(backend, WatchedBackend)
    guard.close()
    client.close()
