"""engine/s3_sockets.py: a leased client's every connection is its watch's from before
its connect, and a stopped watch lets no request out.

The cut of a connect, a TLS handshake, a held request and a moving body, through the
worker and a real S3 server, is tested end to end in tests/e2e/test_s3_cut.py.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from engine.s3 import S3Uploader
from engine.s3_sockets import watch_client
from tests.unit.test_delivery import bucket


def client_for(port: int) -> object:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="AKIAS3SOCKETSUNIT001",
        aws_secret_access_key="unit/secret",
        region_name="us-east-1",
    )


@pytest.fixture
def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def test_the_uploaders_clients_are_watched() -> None:
    """Should botocore move its pool classes, this fails here, before a cancel silently
    waits for an upload's timeouts again."""
    lease = S3Uploader(bucket())._lease(600.0)
    assert lease.watch is not None


def test_a_request_socket_is_the_watchs_and_its_stop_ends_the_request(
    listener: socket.socket,
) -> None:
    """The server accepts and never answers; the stop wakes the request at once."""
    client = client_for(listener.getsockname()[1])
    watch = watch_client(client)
    assert watch is not None
    errors: list[BaseException] = []

    def request() -> None:
        try:
            client.list_buckets()  # type: ignore[attr-defined]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=request)
    thread.start()
    conn, _ = listener.accept()  # the request's connection: its socket is in the watch
    try:
        conn.recv(1)  # the request has started
        watch.stop()
        thread.join(10)  # the read timeout is botocore's 60 s: only the stop ends it
        assert not thread.is_alive()
    finally:
        conn.close()
        listener.close()
    assert len(errors) == 1


def test_a_stopped_watch_lets_no_request_out(listener: socket.socket, tmp_path: Path) -> None:
    client = client_for(listener.getsockname()[1])
    watch = watch_client(client)
    assert watch is not None
    watch.stop()
    with pytest.raises(EndpointConnectionError):
        client.list_buckets()  # type: ignore[attr-defined]
    listener.settimeout(0)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected
    listener.close()
