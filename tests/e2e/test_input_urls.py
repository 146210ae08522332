"""Input image URLs against a real HTTP server on 127.0.0.1, through the real fetcher.

The server is on loopback, which the worker refuses by default; the happy paths
therefore set ``input_allow_private_urls``, and one test proves that without it no
request reaches the server at all.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import io
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest
from PIL import Image

from engine.addresses import IPAddress, refusal_reason
from engine.deadline import Deadline
from engine.errors import InputImageError, ItemError
from engine.fetch import HttpFetcher
from engine.guarded_http import trust_context
from engine.inputs import store_images
from engine.model_download import HttpDownloader
from engine.request import InputImage
from engine.settings import Settings
from tests.local_http import LoopbackServer

pytestmark = pytest.mark.e2e

LIMIT = 64 * 1024  # input_max_image_bytes for these tests: big enough for the fixtures
TIMEOUT_S = 0.5  # input_download_timeout_s: the slow endpoints outlast it by far


def image_bytes(fmt: str, size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 230)).save(buffer, fmt)
    return buffer.getvalue()


class ImageServer:
    """A loopback HTTP server with one endpoint per behaviour; records each request path."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[str] = []
        self.stop = threading.Event()
        self.png = image_bytes("PNG")
        self.jpeg = image_bytes("JPEG")
        # A gzip in a gzip: under 200 bytes on the wire, 8 MB once decoded, all of it
        # in one read; with more zeros, gigabytes.
        self.bomb = gzip.compress(gzip.compress(b"\0" * (8 << 20), 9), 9)
        self.server = LoopbackServer(type("Handler", (_Handler,), {"site": self}), tls)
        self.port = self.server.port
        self.url = self.server.url

    def close(self) -> None:
        self.stop.set()  # slow endpoints stop waiting
        self.server.close()


class _Handler(BaseHTTPRequestHandler):
    site: ImageServer
    protocol_version = "HTTP/1.1"  # chunked transfer needs it

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet; the paths are recorded instead."""

    def do_GET(self) -> None:
        self.site.requests.append(self.path)
        path = self.path.split("?", 1)[0]
        # The fetcher hangs up on purpose (size limit, deadline): not a server error.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route(path)

    def _route(self, path: str) -> None:
        site = self.site
        if path == "/good.png":
            self._send(200, site.png, "image/png")
        elif path == "/good.jpg":
            self._send(200, site.jpeg, "image/jpeg")
        elif path == "/text":
            self._send(200, b"plain text, not pixels", "text/plain")
        elif path == "/big":
            self._send(200, b"\0" * (LIMIT + 1), "image/png")
        elif path == "/big-chunked":
            self._chunked(b"\0" * 8192, count=LIMIT // 8192 * 4)
        elif path == "/slow":
            site.stop.wait(TIMEOUT_S * 6)
            self._send(200, site.png, "image/png")
        elif path == "/drip":
            self._drip(site.png)
        elif path.startswith("/redirect/"):
            hops = int(path.rsplit("/", 1)[1])
            target = "/good.png" if hops <= 1 else f"/redirect/{hops - 1}"
            self._redirect(target)
        elif path == "/gzip-bomb":
            self._send(200, site.bomb, "image/png", {"Content-Encoding": "gzip, gzip"})
        elif path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _chunked(self, chunk: bytes, count: int) -> None:
        """No Content-Length: the size is known only by reading."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for _ in range(count):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    def _drip(self, body: bytes) -> None:
        """Each byte comes well within the read timeout, the whole far past the deadline."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for byte in body:
            if self.site.stop.wait(TIMEOUT_S / 5):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()


@pytest.fixture
def server() -> Iterator[ImageServer]:
    site = ImageServer()
    yield site
    site.close()


@pytest.fixture
def input_dir(tmp_path: Path) -> Path:
    return tmp_path / "input"


ALLOW_LOOPBACK = Settings(
    input_allow_private_urls=True,
    input_max_image_bytes=LIMIT,
    input_download_timeout_s=TIMEOUT_S,
)


def fail(
    server: ImageServer, path: str, input_dir: Path, settings: Settings = ALLOW_LOOPBACK
) -> str:
    """Store one image from ``path``; return its single detail line."""
    images = [InputImage(name="a.png", image=server.url + path)]
    with pytest.raises(InputImageError) as exc_info:
        store_images(images, input_dir, settings)
    [detail] = exc_info.value.details
    assert detail.startswith(f"a.png: Failed to download image from URL: {server.url}")
    assert list(input_dir.iterdir()) == []
    return detail


def test_a_png_and_a_jpeg_are_downloaded_and_written(server: ImageServer, input_dir: Path) -> None:
    images = [
        InputImage(name="a.png", image=f"{server.url}/good.png"),
        InputImage(name="photos/b.jpg", image=f"{server.url}/good.jpg?X-Amz-Signature=abc"),
    ]
    paths = store_images(images, input_dir, ALLOW_LOOPBACK)
    assert [p.read_bytes() for p in paths] == [server.png, server.jpeg]
    assert sorted(server.requests) == ["/good.jpg?X-Amz-Signature=abc", "/good.png"]


def test_a_404_is_named(server: ImageServer, input_dir: Path) -> None:
    detail = fail(server, "/missing?X-Amz-Signature=s3cr3t", input_dir)
    assert detail == f"a.png: Failed to download image from URL: {server.url}/missing " + (
        "(HTTP 404 Not Found; check the URL)"
    )


def test_a_body_that_is_not_an_image_is_refused(server: ImageServer, input_dir: Path) -> None:
    images = [InputImage(name="a.png", image=f"{server.url}/text")]
    with pytest.raises(InputImageError) as exc_info:
        store_images(images, input_dir, ALLOW_LOOPBACK)
    [detail] = exc_info.value.details
    assert detail.startswith(f"a.png: not a decodable image downloaded from {server.url}/text")


def test_a_declared_oversized_body_is_refused(server: ImageServer, input_dir: Path) -> None:
    assert "over the 0.1 MB limit (INPUT_MAX_IMAGE_MB)" in fail(server, "/big", input_dir)


def test_a_chunked_oversized_body_is_cut_off(server: ImageServer, input_dir: Path) -> None:
    assert "download was stopped" in fail(server, "/big-chunked", input_dir)


def test_a_compressed_body_is_refused_before_it_is_decoded(
    server: ImageServer, input_dir: Path, tmp_path: Path
) -> None:
    """The worker asks for identity; decoding a gzip bomb would blow up memory in one read."""
    detail = fail(server, "/gzip-bomb", input_dir)
    assert "(Content-Encoding: gzip, gzip)" in detail
    assert "serve it without compression" in detail
    downloader = HttpDownloader(ALLOW_LOOPBACK)  # model files share the reader
    try:
        with pytest.raises(ItemError, match=r"Content-Encoding: gzip, gzip"):
            downloader.download(
                server.url + "/gzip-bomb",
                tmp_path / ".model.part",
                max_bytes=LIMIT,
                limit_name="MODEL_MAX_FILE_GB",
                deadline=Deadline.start(None),
                check_size=lambda size: None,
                on_progress=lambda done, total: None,
            )
    finally:
        downloader.close()


def test_a_server_that_never_answers_times_out(server: ImageServer, input_dir: Path) -> None:
    started = time.monotonic()
    assert "timed out after 0.5 s (INPUT_DOWNLOAD_TIMEOUT_S)" in fail(server, "/slow", input_dir)
    assert time.monotonic() - started < TIMEOUT_S * 4


def test_a_server_that_drips_bytes_hits_the_total_deadline(
    server: ImageServer, input_dir: Path
) -> None:
    started = time.monotonic()
    assert "timed out after 0.5 s" in fail(server, "/drip", input_dir)
    assert time.monotonic() - started < TIMEOUT_S * 4


def test_a_chain_of_two_redirects_is_followed(server: ImageServer, input_dir: Path) -> None:
    images = [InputImage(name="a.png", image=f"{server.url}/redirect/2")]
    [path] = store_images(images, input_dir, ALLOW_LOOPBACK)
    assert path.read_bytes() == server.png
    assert server.requests == ["/redirect/2", "/redirect/1", "/good.png"]


def test_too_many_redirects_are_refused(server: ImageServer, input_dir: Path) -> None:
    settings = Settings(input_allow_private_urls=True, input_max_redirects=3)
    detail = fail(server, "/redirect/9", input_dir, settings)
    assert "too many redirects (more than 3, INPUT_MAX_REDIRECTS)" in detail
    assert len(server.requests) == 4  # the first request and three redirects, no more


def test_loopback_is_refused_by_default_without_a_request(
    server: ImageServer, input_dir: Path
) -> None:
    detail = fail(server, "/good.png", input_dir, Settings())
    assert "refused: 127.0.0.1 is a loopback address" in detail
    assert "INPUT_ALLOW_PRIVATE_URLS=true" in detail
    assert server.requests == []


def test_localhost_by_name_is_refused_by_default(server: ImageServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    with HttpFetcher(Settings()) as fetcher, pytest.raises(ItemError) as exc_info:
        fetcher.fetch(f"http://localhost:{port}/good.png")
    assert "localhost resolves to" in exc_info.value.reason
    assert "loopback" in exc_info.value.reason
    assert server.requests == []


def test_a_redirect_to_a_metadata_address_is_refused(server: ImageServer) -> None:
    """The first hop is allowed (this server); the hop it redirects to is checked too."""

    def only_this_server(address: IPAddress) -> str | None:
        return None if address == ipaddress.ip_address("127.0.0.1") else refusal_reason(address)

    settings = Settings(input_download_timeout_s=TIMEOUT_S)
    fetcher = HttpFetcher(settings, address_policy=only_this_server)
    with fetcher, pytest.raises(ItemError) as exc_info:
        fetcher.fetch(f"{server.url}/to-metadata")
    assert exc_info.value.reason.startswith(
        "redirected to http://169.254.169.254/latest/meta-data/: "
        "refused: 169.254.169.254 is a link-local address"
    )
    assert server.requests == ["/to-metadata"]


def write_tls_files(folder: Path, host_name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signed for ``host_name`` (no IP in it)."""
    pytest.importorskip("cryptography")  # installed with moto (a dev dependency)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
    ) -> x509.Certificate:
        is_ca = subject == issuer
        name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        if not is_ca:
            san = x509.SubjectAlternativeName([x509.DNSName(subject)])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = certificate("inputs test CA", ca_key, "inputs test CA", ca_key)
    server = certificate(host_name, server_key, "inputs test CA", ca_key)
    pem = serialization.Encoding.PEM
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(server.public_bytes(pem))
    paths[2].write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_https_goes_to_the_checked_address_and_still_verifies_the_host_name(
    tmp_path: Path,
) -> None:
    """The socket connects to the resolved IP, while TLS checks the certificate's name.

    ``images.test`` exists only in this test's resolver and the certificate names no
    IP: the download succeeds only if the request reached the checked address and
    the certificate was verified against the host name (SNI), not against the IP.
    """
    ca, cert, key = write_tls_files(tmp_path, "images.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    site = ImageServer(tls=server_tls)

    def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]  # every name is this server

    client = httpx.Client(verify=ssl.create_default_context(cafile=ca), trust_env=False)
    try:
        with HttpFetcher(ALLOW_LOOPBACK, client, resolver=resolver) as fetcher:
            assert fetcher.fetch(f"https://images.test:{site.port}/good.png") == site.png
            # Same address, another name: the certificate does not cover it.
            with pytest.raises(ItemError) as exc_info:
                fetcher.fetch(f"https://other.test:{site.port}/good.png")
        assert "could not connect" in exc_info.value.reason
        assert "CERTIFICATE_VERIFY_FAILED" in exc_info.value.reason
        assert site.requests == ["/good.png"]
    finally:
        client.close()
        site.close()


@pytest.fixture
def fresh_trust(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The worker's TLS context is built once per process, from the environment it finds:
    built again for this test, and again after it, so the test's CA stays in the test."""
    trust_context.cache_clear()
    yield
    monkeypatch.undo()
    trust_context.cache_clear()


@pytest.mark.usefixtures("fresh_trust")
def test_https_trusts_a_ca_named_by_ssl_cert_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corporate CA (here a throwaway one) in SSL_CERT_FILE is trusted by the worker's
    own client, which reads no other part of the environment; without it, the same
    server is refused."""
    ca, cert, key = write_tls_files(tmp_path, "images.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    site = ImageServer(tls=server_tls)

    def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    url = f"https://images.test:{site.port}/good.png"
    try:
        with HttpFetcher(ALLOW_LOOPBACK, resolver=resolver) as fetcher:
            with pytest.raises(ItemError) as exc_info:
                fetcher.fetch(url)
            assert "CERTIFICATE_VERIFY_FAILED" in exc_info.value.reason
        trust_context.cache_clear()
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        with HttpFetcher(ALLOW_LOOPBACK, resolver=resolver) as fetcher:
            assert fetcher.fetch(url) == site.png
        downloader = HttpDownloader(ALLOW_LOOPBACK, resolver=resolver)
        try:
            download = downloader.download(
                url,
                tmp_path / ".model.part",
                max_bytes=10**6,
                limit_name="MODEL_MAX_FILE_GB",
                deadline=Deadline.start(None),
                check_size=lambda size: None,
                on_progress=lambda done, total: None,
            )
        finally:
            downloader.close()
        assert download.size == len(site.png)  # model URLs use the same trust
    finally:
        site.close()
