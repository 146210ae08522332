"""Listeners on 127.0.0.1 where a connection gets nowhere: one whose accept queue is full
(a connect to it waits in SYN_SENT, as one to a host that drops packets does), and one
that accepts and never answers the TLS hello; each says when a client is stuck in it.

The cues are states the kernel or the listener sees, never a guess at how long a step
takes: :meth:`FullQueue.connecting` reads ``/proc/net/tcp`` for a socket in SYN_SENT to
the port (Linux; the tests skip elsewhere), :attr:`SilentTls.hello` is set once the
client's hello has arrived.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest

_PROC_TCP = Path("/proc/net/tcp")
_SYN_SENT = "02"
_LISTEN = "0A"


def _rows() -> list[list[str]]:
    return [line.split() for line in _PROC_TCP.read_text().splitlines()[1:]]


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


class FullQueue:
    """A listener with a backlog of 0 and one connection it never accepts: the next
    connect's SYN is dropped (Linux drops it when the accept queue is full), so that
    connect waits until its own timeout, or until something shuts its socket down."""

    def __init__(self) -> None:
        if not _PROC_TCP.exists():
            pytest.skip("needs Linux's /proc/net/tcp to see a connect in SYN_SENT")
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # The one connection the queue holds: made and left there, never accepted.
        self._filler = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if not self._queue_is_full():
            self.close()
            pytest.skip("this kernel did not queue the filler connection")

    def _queue_is_full(self) -> bool:
        for row in _rows():
            # A listening socket's rx_queue is its accept queue's length.
            if row[3] == _LISTEN and _port(row[1]) == self.port:
                return int(row[4].split(":")[1], 16) >= 1
        return False

    def connecting(self) -> int:
        """How many sockets wait in SYN_SENT for this port now."""
        return sum(1 for row in _rows() if row[3] == _SYN_SENT and _port(row[2]) == self.port)

    def close(self) -> None:
        self._filler.close()
        self._listener.close()


class SilentTls:
    """Accepts every connection and reads the client's TLS hello, then answers nothing
    until closed: a handshake with it never ends by itself."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.hello = threading.Event()
        """Set once a client's first bytes (its TLS hello) have arrived."""
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._serve, name="silent-tls", daemon=True).start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._held.append(conn)
            with contextlib.suppress(OSError):
                if conn.recv(4096):
                    self.hello.set()

    def close(self) -> None:
        self._closed.set()
        for sock in (self._listener, *self._held):
            with contextlib.suppress(OSError):  # shut first: that wakes a blocked accept/recv
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
