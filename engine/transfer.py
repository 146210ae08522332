"""Bounds on reading a download's body: the job's deadline and cancel, a stall limit and
a minimum rate, all checked at every network read.

A server chosen by whoever sends a job can send a byte at a time for ever: a check per
megabyte, or a read timeout alone, never stops it. Here every read (httpx hands over
what each ``recv`` returned, up to 64 KB) is followed by four checks:

- the job's :class:`~engine.deadline.Deadline`: its time limit, and a cancel;
- the download's own time limit (``INPUT_DOWNLOAD_TIMEOUT_S`` for input files);
- the stall limit, ``DOWNLOAD_STALL_S``: no byte for that long (a read timeout, which
  every request of :class:`engine.guarded_http.GuardedHttp` carries, capped by the time left);
- the minimum rate, ``DOWNLOAD_MIN_KB_PER_S`` over every ``DOWNLOAD_RATE_WINDOW_S``.

A read that blocks is cut when the job is cancelled: the cancel shuts the connection's
socket down from the cancelling thread, which wakes the reader at once. Its own time
limit ends it too, since the read timeout never reaches past the time left. The connect,
the TLS handshake and the wait for the response headers are cut the same way
(:mod:`engine.connections`).

The body is read as it comes off the wire, never decompressed: every request asks for
``Accept-Encoding: identity``, and a server that answers with a ``Content-Encoding``
anyway is refused before a byte is read. Decoding it would turn one read of 64 KB into
gigabytes in one call (a gzip in a gzip, or brotli: 1.6 KB on the wire made 2.1 GB in
memory before this check), past every size limit, which counts after each read.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx

from engine.connections import shut
from engine.deadline import Deadline
from engine.errors import ItemError
from engine.settings import Settings

log = logging.getLogger(__name__)

_KB = 1024
# A read timeout this close to the download's own limit was that limit, not a stall
# (timers fire a little early or late): the message names the right one.
LIMIT_SLACK_S = 0.1


@dataclass(frozen=True)
class ReadLimits:
    """How slow a download may be before it is given up (``DOWNLOAD_*`` settings)."""

    stall_s: float = 30.0
    """No byte for this long fails the download (``DOWNLOAD_STALL_S``)."""
    min_bytes_per_s: float = 32.0 * _KB
    """Fewer bytes a second than this, over a whole window, fails it (0: no minimum)."""
    rate_window_s: float = 30.0
    """The window the rate is measured over (``DOWNLOAD_RATE_WINDOW_S``)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadLimits:
        return cls(
            stall_s=settings.download_stall_s,
            min_bytes_per_s=settings.download_min_kb_per_s * _KB,
            rate_window_s=settings.download_rate_window_s,
        )

    def stall_reason(self) -> str:
        return (
            f"the server sent nothing for {self.stall_s:g} s (DOWNLOAD_STALL_S); retry, or "
            "host the file elsewhere"
        )


class _RateMeter:
    """Bytes per window: each window of ``rate_window_s`` must bring its share."""

    def __init__(self, limits: ReadLimits, now: float) -> None:
        self._limits = limits
        self._start = now
        self._bytes = 0

    def add(self, count: int, now: float) -> None:
        self._bytes += count
        limits = self._limits
        elapsed = now - self._start
        if limits.min_bytes_per_s <= 0 or elapsed < limits.rate_window_s:
            return
        if self._bytes < limits.min_bytes_per_s * elapsed:
            rate = self._bytes / elapsed / _KB
            raise ItemError(
                "",
                f"the server sent {rate:.1f} KB/s over the last {elapsed:.0f} s, under the "
                f"minimum of {limits.min_bytes_per_s / _KB:g} KB/s (DOWNLOAD_MIN_KB_PER_S); "
                "host the file somewhere faster",
            )
        self._start, self._bytes = now, 0


def _socket_of(response: httpx.Response) -> socket.socket | None:
    """The socket a response's body arrives on, when the transport says (httpcore does)."""
    stream = response.extensions.get("network_stream")
    get = getattr(stream, "get_extra_info", None)
    sock = get("socket") if get is not None else None
    return sock if isinstance(sock, socket.socket) else None


@contextlib.contextmanager
def bounded_chunks(
    response: httpx.Response,
    *,
    limits: ReadLimits,
    until: float,
    deadline: Deadline | None,
    where: str,
    timed_out: Callable[[], ItemError],
) -> Iterator[Iterator[bytes]]:
    """The body of ``response``, read by read, given up as soon as a bound is passed.

    ``until`` (``time.monotonic()``) is the download's own limit: passing it raises
    ``timed_out()``. The job's ``deadline`` passing, or its cancel, raises its own error
    (``deadline.exceeded(where)``); a stall or a rate under the minimum an
    :class:`ItemError` naming the setting. Other transport errors (a body cut short)
    propagate as httpx raised them. A ``Content-Encoding`` other than ``identity`` raises
    an :class:`ItemError` before the body is read (see the module's note).
    """
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in {"", "identity"}:
        raise ItemError(
            "",
            f"the server sent the file compressed (Content-Encoding: {encoding[:40]}) though "
            "it was asked for the file as it is (Accept-Encoding: identity); serve it "
            "without compression",
        )
    sock = _socket_of(response)
    listening = (
        deadline.on_cancel(lambda: shut(sock)) if deadline is not None else contextlib.nullcontext()
    )

    def stop_reason(exc: Exception | None) -> Exception | None:
        """What ended (or must end) the download, beyond ``exc`` itself."""
        if deadline is not None and deadline.expired():
            return deadline.exceeded(where)
        now = time.monotonic()
        if now >= until - (LIMIT_SLACK_S if exc is not None else 0.0):
            return timed_out()
        if isinstance(exc, httpx.ReadTimeout):
            return ItemError("", limits.stall_reason())
        return None

    def chunks() -> Iterator[bytes]:
        meter = _RateMeter(limits, time.monotonic())
        try:
            # Raw: the bytes as sent (the encoding was checked above), so the size limits
            # count what arrives and nothing expands between two checks.
            for chunk in response.iter_raw():
                stop = stop_reason(None)
                if stop is not None:
                    raise stop
                meter.add(len(chunk), time.monotonic())
                yield chunk
        except httpx.TransportError as exc:
            stop = stop_reason(exc)
            if stop is not None:
                raise stop from exc
            raise

    with listening:
        yield chunks()
