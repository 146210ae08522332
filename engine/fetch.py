"""Downloading input images (and, through :class:`GuardedHttp`, model files) over HTTP(S)
without becoming an SSRF proxy.

A job's URL is chosen by whoever can call the endpoint, and the worker runs inside
a cloud network, so every hop (the URL and each redirect target) is checked:

- only ``http``/``https``;
- the host is resolved once and **every** address must be public: loopback,
  private (RFC 1918, ULA), link-local (169.254.169.254 and fd00:ec2::254 are cloud
  metadata), CGNAT, unspecified, multicast and reserved ranges are refused, also
  when wrapped in IPv6 (``::ffff:10.0.0.1``, NAT64, 6to4), unless
  ``INPUT_ALLOW_PRIVATE_URLS=true``;
- the connection goes to the address that was checked (the request is sent to the
  IP, with the original ``Host`` header and TLS SNI/certificate name), so a DNS
  answer that changes between check and connect (DNS rebinding) cannot steer it;
- the body is streamed and cut at ``INPUT_MAX_IMAGE_MB`` (refused up front when
  Content-Length says so), under one deadline of ``INPUT_DOWNLOAD_TIMEOUT_S`` for
  all hops together (or the job's, when sooner), a stall limit and a minimum rate,
  checked at every read (:mod:`engine.transfer`);
- https is verified against the system's trust store (``SSL_CERT_FILE`` and
  ``SSL_CERT_DIR`` name a corporate CA) as well as certifi's bundle.

Failures raise :class:`~engine.errors.ItemError` named by the URL without its query
string: presigned URLs carry their credentials there, so it never reaches a
message or a log line.

:class:`GuardedHttp` is the guard itself (address checks, pinned connections, redirects
hop by hop); :class:`HttpFetcher` reads an image into memory through it, and
``engine.model_download`` streams model files to disk through the same guard.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType

import certifi
import httpx

from engine.connections import SocketWatch, connecting, watched_client, watching
from engine.deadline import Deadline
from engine.errors import ItemError
from engine.settings import Settings
from engine.transfer import LIMIT_SLACK_S, ReadLimits, bounded_chunks

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[IPAddress]]
"""``(host, port) -> addresses``; raises ``OSError`` when the name does not resolve."""
AddressPolicy = Callable[[IPAddress], "str | None"]
"""Why an address is refused (``"a loopback address"``), or ``None`` to allow it."""

USER_AGENT = "comfy-inprocess-worker/0.1 (input image fetcher)"
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# RFC 6598 shared space; Python 3.11 calls it neither private nor global.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the low 32 bits are an IPv4 address
_MAX_URL_CHARS = 200  # a shown URL is for recognising the input, not for reproducing it
_MB = 1024 * 1024
# Hints for the status codes users actually hit with image links.
_STATUS_HINTS = {
    401: "the URL must be public or presigned",
    403: "the URL must be public, or the presigned link has expired",
    404: "check the URL",
    410: "check the URL",
    429: "the host is rate-limiting; retry later or host the image elsewhere",
}


def is_url(value: str) -> bool:
    """Whether a value (a workflow's, an input image's) is an http(s) URL."""
    return value.lstrip()[:8].lower().startswith(("http://", "https://"))


def redact_url(url: str) -> str:
    """The URL without user info, query string or fragment, shortened for messages."""
    try:
        parsed = httpx.URL(url.strip())
        shown = str(parsed.copy_with(userinfo=b"", query=None, fragment=None))
    except (httpx.InvalidURL, TypeError, ValueError):
        # Unparseable: cut at the first query/fragment marker and drop anything up to an '@'.
        shown = url.strip().split("?", 1)[0].split("#", 1)[0]
        scheme, sep, rest = shown.partition("://")
        if sep and "@" in rest.split("/", 1)[0]:
            shown = f"{scheme}://{rest.split('@', 1)[1]}"
    if len(shown) > _MAX_URL_CHARS:
        shown = shown[: _MAX_URL_CHARS - 3] + "..."
    return shown


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4): where packets go."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def refusal_reason(address: IPAddress) -> str | None:
    """Why fetching from ``address`` is refused, or ``None`` for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            # Judged by the IPv4 host it reaches: ::ffff:10.0.0.1 is 10.0.0.1, while a
            # DNS64 answer for a public host (64:ff9b::/96) stays fetchable.
            return refusal_reason(inner)
    # Most specific first: Python also counts loopback, link-local and 240/4 as private.
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a carrier-grade NAT address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "a non-public address"
    return None


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order of preference."""
    # getaddrinfo has no timeout of its own (the system resolver's, ~5 s per try,
    # applies); the download deadline is checked again once it returns.
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        # The scope id of a link-local IPv6 answer ("fe80::1%eth0") is not part of the address.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _mb(size: int) -> str:
    return f"{size / _MB:.1f} MB"


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


class _RedactUrls(logging.Filter):
    """Strips query strings from the URLs httpx logs at INFO ("HTTP Request: GET ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


# Installed on import, once: the worker logs at DEBUG by default (COMFY_LOG_LEVEL), and
# httpx's own request line would otherwise carry a presigned URL's signature.
logging.getLogger("httpx").addFilter(_RedactUrls())


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
        current = httpx.URL(url.strip())
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

    def _addresses(self, url: httpx.URL, deadline: float) -> list[IPAddress]:
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
            addresses = list(self._resolver(host, port))
        except (OSError, UnicodeError) as exc:
            raise ItemError("", f"could not resolve host {host} ({exc})") from exc
        if not addresses:
            raise ItemError("", f"could not resolve host {host}")
        if time.monotonic() > deadline:
            raise DeadlinePassed("the deadline passed while resolving the host")
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
        addresses = self._addresses(url, deadline)
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


class DeadlinePassed(httpx.TimeoutException):
    """The download's own deadline passed between two network waits."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def status_reason(response: httpx.Response, hints: Mapping[int, str] = _STATUS_HINTS) -> str:
    """``HTTP 404 Not Found; check the URL``: a non-success status, with a hint."""
    status = response.status_code
    reason = f"HTTP {status} {response.reason_phrase}".rstrip()
    hint = hints.get(status)
    return f"{reason}; {hint}" if hint else reason


class HttpFetcher:
    """Downloads one image per :meth:`fetch`; safe to share between threads."""

    # Inner steps raise ItemError with an empty name; fetch() names it by the URL.

    def __init__(
        self,
        settings: Settings,
        client: httpx.Client | None = None,
        *,
        resolver: Resolver = resolve_host,
        address_policy: AddressPolicy = refusal_reason,
    ) -> None:
        self._timeout_s = settings.input_download_timeout_s
        self._max_bytes = settings.input_max_image_bytes
        self._limits = ReadLimits.from_settings(settings)
        self._http = GuardedHttp(
            allow_private=settings.input_allow_private_urls,
            max_redirects=settings.input_max_redirects,
            client=client,
            resolver=resolver,
            address_policy=address_policy,
        )

    def close(self) -> None:
        """Close the HTTP client if this fetcher created it."""
        self._http.close()

    def __enter__(self) -> HttpFetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def fetch(self, url: str) -> bytes:
        """The body at ``url``; raises :class:`ItemError` named by the redacted URL."""
        return self.fetch_within(url, None)

    def fetch_within(self, url: str, deadline: Deadline | None) -> bytes:
        """As :meth:`fetch`, also bounded by the job's ``deadline``: its passing or its
        cancel raises the job's own error (:meth:`Deadline.exceeded`) within a read."""
        shown = redact_url(url)
        started = time.monotonic()
        until = started + self._timeout_s
        remaining = deadline.remaining() if deadline is not None else None
        if remaining is not None:
            until = min(until, started + remaining)
        try:
            with self._http.get(
                url,
                until,
                headers_for=_accept_images,
                idle_timeout_s=self._limits.stall_s,
                job=deadline,
            ) as response:
                body = self._read_body(response, until, deadline)
        except httpx.HTTPError as exc:
            if deadline is not None and deadline.expired():
                raise deadline.exceeded("while downloading inputs") from exc
            if isinstance(exc, httpx.TimeoutException):
                stalled = (
                    not isinstance(exc, DeadlinePassed) and time.monotonic() < until - LIMIT_SLACK_S
                )
                reason = self._limits.stall_reason() if stalled else self._timeout_reason()
                raise ItemError(shown, reason) from exc
            if isinstance(exc, httpx.InvalidURL):
                raise ItemError(shown, f"not a valid URL ({exc})") from exc
            if isinstance(exc, httpx.ConnectError):
                raise ItemError(shown, f"could not connect ({exc})") from exc
            # Protocol and read errors; their text names no URL.
            raise ItemError(shown, f"{type(exc).__name__}: {exc}") from exc
        except ItemError as exc:
            raise ItemError(shown, exc.reason) from exc
        elapsed_ms = (time.monotonic() - started) * 1e3
        logger.debug("fetched %s: %d bytes in %.0f ms", shown, len(body), elapsed_ms)
        return body

    def _timeout_reason(self) -> str:
        return (
            f"timed out after {self._timeout_s:g} s (INPUT_DOWNLOAD_TIMEOUT_S); "
            "the host is too slow or the file too large"
        )

    def _read_body(
        self, response: httpx.Response, until: float, deadline: Deadline | None
    ) -> bytes:
        if not 200 <= response.status_code < 300:
            raise ItemError("", status_reason(response))
        if response.headers.get("content-type", "").lower().startswith("text/html"):
            # Share pages (Google Drive, Dropbox) answer 200 with HTML, not the file.
            raise ItemError("", "the URL returned a web page (text/html); link the image file")
        limit = f"{_mb(self._max_bytes)} limit (INPUT_MAX_IMAGE_MB)"
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            # Refused before reading a byte of the body.
            raise ItemError("", f"the image is {_mb(int(declared))}, over the {limit}")
        body = bytearray()
        with bounded_chunks(
            response,
            limits=self._limits,
            until=until,
            deadline=deadline,
            where="while downloading inputs",
            timed_out=lambda: ItemError("", self._timeout_reason()),
        ) as chunks:
            for chunk in chunks:
                body += chunk
                if len(body) > self._max_bytes:
                    raise ItemError("", f"the image is over the {limit}; the download was stopped")
        return bytes(body)


def _accept_images(url: httpx.URL) -> Mapping[str, str]:
    del url
    return {"Accept": "image/*, */*;q=0.5"}


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
