"""GETs that reach only checked public addresses, so that the worker never becomes an SSRF
proxy: the guard input images and model files share.

A job's URL is chosen by whoever can call the endpoint, and the worker runs inside
a cloud network, so every hop (the URL and each redirect target) is checked:

- only ``http``/``https``;
- the host is resolved once and **every** address must be public
  (:mod:`engine.addresses`), unless ``INPUT_ALLOW_PRIVATE_URLS=true``;
- the connection goes to the address that was checked (the request is sent to the
  IP, with the original ``Host`` header and TLS SNI/certificate name), so a DNS
  answer that changes between check and connect (DNS rebinding) cannot steer it;
- https is verified against the system's trust store (``SSL_CERT_FILE`` and
  ``SSL_CERT_DIR`` name a corporate CA) as well as certifi's bundle.

:class:`~engine.fetch.HttpFetcher` reads an image into memory through it, and
``engine.model_download`` streams model files to disk through the same guard.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import certifi
import httpx

from engine.addresses import AddressPolicy, IPAddress, Resolver, refusal_reason, resolve_host
from engine.connections import SocketWatch, connecting, watched_client, watching
from engine.deadline import Deadline
from engine.errors import ItemError
from engine.urls import redact_url

logger = logging.getLogger(__name__)

USER_AGENT = "comfy-inprocess-worker/0.1 (input image fetcher)"
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


@functools.cache
def trust_context() -> ssl.SSLContext:
    """The TLS context every download verifies servers with: the system's trust store and
    certifi's bundle together.

    httpx alone trusts only certifi's bundle unless it reads the environment, which the
    guard must not let it do (a proxy would be trusted in place of the host). OpenSSL's
    default paths honour ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``, so a corporate CA (or
    one a test made) is trusted the standard way; certifi keeps public hosts working on
    an image without a system bundle. Built once, on first use: loading both takes
    tens of milliseconds.
    """
    context = ssl.create_default_context()  # the system's store, SSL_CERT_FILE/DIR honoured
    context.load_verify_locations(cafile=certifi.where())
    return context


class GuardedHttp:
    """GETs that reach only checked addresses: the guard images and model files share.

    Each hop (the URL, then every redirect target) is resolved once, every address is
    checked, and the request goes to that address with the original ``Host`` and TLS
    name. Redirects are followed here, one hop at a time, so each target is checked
    and ``headers_for`` decides each hop's extra headers (a token for its host only).
    Safe to share between threads.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        max_redirects: int,
        client: httpx.Client | None = None,
        resolver: Resolver = resolve_host,
        address_policy: AddressPolicy = refusal_reason,
    ) -> None:
        self._allow_private = allow_private
        self._max_redirects = max_redirects
        self._resolver = resolver
        self._policy = address_policy
        self._owns_client = client is None
        # No proxy or .netrc from the environment (through a proxy, the address check
        # would vouch for the proxy, not for the host the proxy reaches); connections a
        # job's cancel cuts in the connect and the TLS handshake too.
        self._client = client or watched_client(
            verify=trust_context(),
            limits=httpx.Limits(max_keepalive_connections=0),  # see "Connection: close"
        )

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_client:
            self._client.close()

    @contextlib.contextmanager
    def get(
        self,
        url: str,
        deadline: float,
        *,
        headers_for: Callable[[httpx.URL], Mapping[str, str]] | None = None,
        idle_timeout_s: float | None = None,
        job: Deadline | None = None,
    ) -> Iterator[httpx.Response]:
        """The final hop's response, its body unread; closed when the block ends.

        ``deadline`` (``time.monotonic()``) bounds every hop; ``idle_timeout_s``, when
        set, bounds each wait for the network (a stalled server) below it. ``job``'s
        cancel shuts the connection down, also while it connects, shakes hands (TLS) or
        awaits the headers, and no hop starts after it. Raises :class:`ItemError` with an
        empty name (the caller names it), ``httpx`` errors, and :class:`DeadlinePassed`
        (an ``httpx.TimeoutException``). An :class:`ItemError` raised in the block on a
        redirected hop says which hop.
        """
        with watching(job) as watch:
            yield from self._hops(url, deadline, headers_for, idle_timeout_s, job, watch)

    def _hops(
        self,
        url: str,
        deadline: float,
        headers_for: Callable[[httpx.URL], Mapping[str, str]] | None,
        idle_timeout_s: float | None,
        job: Deadline | None,
        watch: SocketWatch | None,
    ) -> Iterator[httpx.Response]:
        """:meth:`get`'s body: one hop after another; yields the final response once."""
        try:
            current = httpx.URL(url.strip())
        except httpx.InvalidURL as exc:  # not an httpx.HTTPError: callers would not catch it
            raise ItemError("", f"not a valid URL ({exc})") from exc
        for hop in range(self._max_redirects + 1):
            response: httpx.Response | None = None
            try:
                extra = headers_for(current) if headers_for is not None else {}
                response = self._open(current, deadline, extra, idle_timeout_s, job, watch)
                if response.status_code not in _REDIRECT_CODES:
                    yield response
                    return
                location = response.headers.get("location")
                if not location:
                    raise ItemError("", f"HTTP {response.status_code} without a Location")
            except ItemError as exc:
                if hop == 0:
                    raise
                # A redirect's target is not what the user sent: say which hop failed.
                reason = f"redirected to {redact_url(str(current))}: {exc.reason}"
                raise ItemError("", reason) from exc
            finally:
                if response is not None:
                    response.close()
            try:
                current = current.join(location)
            except httpx.InvalidURL as exc:
                raise ItemError("", f"redirected to an invalid URL ({exc})") from exc
            logger.debug("redirect %d to %s", hop + 1, redact_url(str(current)))
        raise ItemError(
            "",
            f"too many redirects (more than {self._max_redirects}, INPUT_MAX_REDIRECTS); "
            "link the file itself",
        )

    def _addresses(
        self, url: httpx.URL, deadline: float, job: Deadline | None = None
    ) -> list[IPAddress]:
        """The addresses ``url``'s host resolves to, all checked; raises if any is refused."""
        if url.scheme not in {"http", "https"}:
            raise ItemError(
                "", f"only http and https URLs are fetched, not {url.scheme or '(none)'}"
            )
        host = url.raw_host.decode("ascii")
        if not host:
            raise ItemError("", "the URL has no host")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = _resolve_within(self._resolver, host, port, deadline, job)
        except (OSError, UnicodeError) as exc:
            raise ItemError("", f"could not resolve host {host} ({exc})") from exc
        if not addresses:
            raise ItemError("", f"could not resolve host {host}")
        if self._allow_private:
            return addresses
        for address in addresses:
            why = self._policy(address)
            if why is not None:
                where = (
                    f"{address} is" if _is_ip_literal(host) else f"{host} resolves to {address},"
                )
                raise ItemError(
                    "",
                    f"refused: {where} {why}; only public addresses are fetched "
                    "(INPUT_ALLOW_PRIVATE_URLS=true allows others)",
                )
        return addresses

    def _open(
        self,
        url: httpx.URL,
        deadline: float,
        extra_headers: Mapping[str, str],
        idle_timeout_s: float | None,
        job: Deadline | None = None,
        watch: SocketWatch | None = None,
    ) -> httpx.Response:
        """GET ``url`` from one of its checked addresses; the body is left unread."""
        addresses = self._addresses(url, deadline, job)
        host = url.raw_host.decode("ascii")
        headers = {
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
            **extra_headers,
            # The request goes to the checked IP; the server still needs the name.
            "Host": url.netloc.decode("ascii"),
            # Images and weights are compressed or incompressible already; identity keeps
            # a gzip bomb off the table.
            "Accept-Encoding": "identity",
            # One connection per request, whatever the client's pool: a TLS connection
            # verified for one host name must never carry a request for another name
            # that resolved to the same address (the pool is keyed by IP and port).
            "Connection": "close",
        }
        # TLS must send and verify the host name, not the IP the socket connects to.
        pin_tls = url.scheme == "https" and not _is_ip_literal(host)
        extensions: dict[str, object] = {"sni_hostname": host} if pin_tls else {}
        error: httpx.ConnectError | None = None
        for address in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (job is not None and job.expired()):
                raise DeadlinePassed("the deadline passed before connecting")
            wait = remaining if idle_timeout_s is None else min(remaining, idle_timeout_s)
            request = self._client.build_request(
                "GET",
                url.copy_with(host=str(address)),
                headers=headers,
                timeout=httpx.Timeout(wait),
                extensions=extensions,
            )
            try:
                with connecting(watch):  # the connection's socket, for a cancel
                    return self._client.send(request, stream=True, follow_redirects=False)
            except httpx.ConnectError as exc:
                # Try the host's next checked address (an unreachable IPv6, then IPv4).
                error = exc
        assert error is not None  # the resolver returned at least one address
        raise error


def _resolve_within(
    resolver: Resolver, host: str, port: int, deadline: float, job: Deadline | None
) -> list[IPAddress]:
    """``resolver(host, port)``, given up when ``deadline`` passes or ``job`` is cancelled.

    The system's resolver has no timeout a caller sets (its own, about 5 s a try and
    server, applies) and no cancel: a name whose DNS server never answers held the job
    past its limit. The lookup runs on a daemon thread, left to end by itself when
    given up; raises :class:`DeadlinePassed` then, and the resolver's own errors.
    """
    done = threading.Event()
    outcome: list[list[IPAddress] | BaseException] = []

    def lookup() -> None:
        try:
            outcome.append(list(resolver(host, port)))
        except BaseException as exc:  # handed to the waiting thread
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name="resolve", daemon=True).start()
    with job.on_cancel(done.set) if job is not None else contextlib.nullcontext():
        # No deadline is inf (a model download bounded by the job alone): Event.wait takes
        # at most TIMEOUT_MAX.
        done.wait(min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX))
    if not outcome or (job is not None and job.expired()):
        raise DeadlinePassed("the deadline passed while resolving the host")
    (result,) = outcome
    if isinstance(result, BaseException):
        raise result
    return result


class DeadlinePassed(httpx.TimeoutException):
    """The download's own deadline passed between two network waits."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
