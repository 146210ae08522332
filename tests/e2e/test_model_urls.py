"""Model files by URL over real HTTP(S) on 127.0.0.1: the downloader, its tokens, the worker.

One server plays every host: the tests' resolver sends each name (``huggingface.co``,
``civitai.com``, ``cdn.test``...) to 127.0.0.1, which the worker allows only with
``input_allow_private_urls``. Over TLS the certificate names those hosts, so a request
succeeds only if it went to the checked address *and* was verified for the host name;
the server records each request's ``Host`` and ``Authorization`` headers, which is how
token scoping is proven without leaving the machine.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import logging
import ssl
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.addresses import IPAddress
from engine.deadline import Deadline
from engine.errors import ItemError, JobInterruptedError
from engine.model_cache import CACHE_DIR_NAME, url_key
from engine.model_download import HttpDownloader
from engine.settings import Settings
from engine.transfer import ReadLimits
from engine.worker import Worker
from tests.fake_runtime import FakeRuntime
from tests.local_http import LoopbackServer

pytestmark = pytest.mark.e2e

HOSTS = ("huggingface.co", "hf.co", "civitai.com", "cdn.test", "other.test")
HF_TOKEN = "hf_test_token_0123456789"
CIVITAI_TOKEN = "civitai-test-token-0123456789"


def safetensors_bytes(size: int) -> bytes:
    header = json.dumps({"__metadata__": {"kind": "test"}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(i % 251 for i in range(size))


@dataclass
class Seen:
    path: str
    host: str
    authorization: str | None


class ModelServer:
    """Serves model files and misbehaviours; records every request's path and headers."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[Seen] = []
        self.body = safetensors_bytes(300_000)
        self.stop = threading.Event()
        self.cue = threading.Event()
        """Set by /gated after its first chunk; the test answers by setting ``go``."""
        self.go = threading.Event()
        self.server = LoopbackServer(type("Handler", (_Handler,), {"site": self}), tls)
        self.port = self.server.port
        self.scheme = self.server.scheme

    def url(self, host: str, path: str) -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.stop.set()
        self.go.set()
        self.server.close()


class _Handler(BaseHTTPRequestHandler):
    site: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: requests are recorded instead."""

    def do_GET(self) -> None:
        host = self.headers.get("Host", "").rsplit(":", 1)[0]
        self.site.seen.append(Seen(self.path, host, self.headers.get("Authorization")))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self._route(self.path.split("?", 1)[0])

    def _route(self, path: str) -> None:
        site, body = self.site, self.site.body
        if path == "/models/tiny.safetensors":
            self._send(200, body)
        elif path == "/api/download/models/42":
            self._send(200, body, disposition='attachment; filename="civitai_model.safetensors"')
        elif path == "/resolve/tiny.safetensors":
            # What Hugging Face does: a redirect to a presigned URL on another host.
            self._redirect(site.url("cdn.test", "/models/tiny.safetensors"))
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 65536):
                chunk = body[start : start + 65536]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:1000])
            self.wfile.flush()
            site.stop.wait(30)
        elif path == "/gated":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            site.cue.set()
            site.go.wait(30)
            self.wfile.write(body[len(body) // 2 :])
        elif path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:1000])
            self.close_connection = True
        elif path == "/page.safetensors":
            self._send(200, b"<html>a model page</html>", content_type="text/html")
        else:
            self._send(404, b"not found", content_type="text/plain")

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/octet-stream",
        disposition: str | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if disposition:
            self.send_header("Content-Disposition", disposition)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


def tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA, and a server certificate it signed for every name in ``HOSTS``."""
    pytest.importorskip("cryptography")  # installed with moto (a dev dependency)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, text)])

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    base = x509.CertificateBuilder().not_valid_before(now - datetime.timedelta(hours=1))
    base = base.not_valid_after(now + datetime.timedelta(hours=1)).issuer_name(name("test CA"))
    ca = (
        base.subject_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        base.subject_name(name(HOSTS[0]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in HOSTS]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(server.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def loopback(host: str, port: int) -> list[IPAddress]:
    """Every name is this machine: a resolver for tests, never used in production."""
    del host, port
    return [ipaddress.ip_address("127.0.0.1")]


SETTINGS = Settings(input_allow_private_urls=True, hf_token=HF_TOKEN, civitai_token=CIVITAI_TOKEN)


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[ModelServer, httpx.Client]]:
    ca, cert, key = tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    site = ModelServer(tls=context)
    client = httpx.Client(verify=ssl.create_default_context(cafile=ca), trust_env=False)
    yield site, client
    client.close()
    site.close()


@pytest.fixture
def plain() -> Iterator[ModelServer]:
    site = ModelServer()
    yield site
    site.close()


def download(
    url: str,
    tmp_path: Path,
    client: httpx.Client | None = None,
    settings: Settings = SETTINGS,
    deadline: Deadline | None = None,
    max_bytes: int = 10**9,
    idle_timeout_s: float = 60.0,
    progress: list[tuple[int, int | None]] | None = None,
) -> bytes:
    """Download ``url`` with the real downloader; the file's bytes."""
    temp = tmp_path / ".part"
    reports = progress if progress is not None else []
    downloader = HttpDownloader(
        settings, client, resolver=loopback, limits=ReadLimits(stall_s=idle_timeout_s)
    )
    try:
        result = downloader.download(
            url,
            temp,
            max_bytes=max_bytes,
            limit_name="MODEL_MAX_FILE_GB",
            deadline=deadline or Deadline.start(None),
            check_size=lambda size: None,
            on_progress=lambda done, total: reports.append((done, total)),
        )
    finally:
        downloader.close()
    data = temp.read_bytes()
    temp.unlink()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    return data


def failure(url: str, tmp_path: Path, **kwargs: Any) -> str:
    with pytest.raises(ItemError) as exc_info:
        download(url, tmp_path, **kwargs)
    assert not (tmp_path / ".part").exists()  # nothing half-written is left
    return exc_info.value.reason


# --- tokens ---------------------------------------------------------------------------


def test_the_hf_token_goes_to_hugging_face_and_not_to_its_cdn(
    tls: tuple[ModelServer, httpx.Client], tmp_path: Path
) -> None:
    site, client = tls
    data = download(site.url("huggingface.co", "/resolve/tiny.safetensors"), tmp_path, client)
    assert data == site.body
    assert [(s.host, s.authorization) for s in site.seen] == [
        ("huggingface.co", f"Bearer {HF_TOKEN}"),
        ("cdn.test", None),  # the redirect target on another host gets no token
    ]


def test_hf_co_counts_as_hugging_face(
    tls: tuple[ModelServer, httpx.Client], tmp_path: Path
) -> None:
    site, client = tls
    download(site.url("hf.co", "/models/tiny.safetensors"), tmp_path, client)
    assert site.seen[0].authorization == f"Bearer {HF_TOKEN}"


def test_the_civitai_token_goes_to_civitai_only(
    tls: tuple[ModelServer, httpx.Client], tmp_path: Path
) -> None:
    site, client = tls
    download(site.url("civitai.com", "/api/download/models/42"), tmp_path, client)
    download(site.url("other.test", "/models/tiny.safetensors"), tmp_path, client)
    assert [(s.host, s.authorization) for s in site.seen] == [
        ("civitai.com", f"Bearer {CIVITAI_TOKEN}"),
        ("other.test", None),
    ]


def test_no_token_travels_over_plain_http(plain: ModelServer, tmp_path: Path) -> None:
    download(plain.url("huggingface.co", "/models/tiny.safetensors"), tmp_path)
    assert plain.seen[0].authorization is None


def test_tokens_never_reach_the_log(
    tls: tuple[ModelServer, httpx.Client], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site, client = tls
    caplog.set_level(logging.DEBUG)
    download(site.url("huggingface.co", "/resolve/tiny.safetensors"), tmp_path, client)
    assert "downloaded" in caplog.text
    assert HF_TOKEN not in caplog.text


# --- failures -------------------------------------------------------------------------


def test_loopback_is_refused_by_default_without_a_request(
    plain: ModelServer, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{plain.port}/models/tiny.safetensors"
    reason = failure(url, tmp_path, settings=Settings())
    assert "refused: 127.0.0.1 is a loopback address" in reason
    assert plain.seen == []


def test_an_http_error_is_named_with_a_hint(plain: ModelServer, tmp_path: Path) -> None:
    reason = failure(plain.url("other.test", "/nothing.safetensors"), tmp_path)
    assert reason == "HTTP 404 Not Found; check the URL"


def test_a_web_page_is_refused(plain: ModelServer, tmp_path: Path) -> None:
    reason = failure(plain.url("other.test", "/page.safetensors"), tmp_path)
    assert "returned a web page" in reason
    assert "/resolve/" in reason


def test_a_declared_size_over_the_limit_is_refused_before_the_body(
    plain: ModelServer, tmp_path: Path
) -> None:
    reason = failure(plain.url("other.test", "/models/tiny.safetensors"), tmp_path, max_bytes=1000)
    assert "over the 0.0 MB limit (MODEL_MAX_FILE_GB)" in reason


def test_a_chunked_body_over_the_limit_is_cut_off(plain: ModelServer, tmp_path: Path) -> None:
    reason = failure(plain.url("other.test", "/chunked"), tmp_path, max_bytes=100_000)
    assert "the download was stopped" in reason


def test_a_chunked_body_within_the_limit_is_streamed_whole(
    plain: ModelServer, tmp_path: Path
) -> None:
    progress: list[tuple[int, int | None]] = []
    assert download(plain.url("other.test", "/chunked"), tmp_path, progress=progress) == plain.body
    assert progress[0] == (0, None)
    assert progress[-1] == (len(plain.body), None)


def test_a_body_cut_short_is_an_error(plain: ModelServer, tmp_path: Path) -> None:
    reason = failure(plain.url("other.test", "/short"), tmp_path)
    assert reason.startswith("RemoteProtocolError: peer closed connection without sending")


def test_a_server_that_stalls_fails_after_the_idle_timeout(
    plain: ModelServer, tmp_path: Path
) -> None:
    reason = failure(plain.url("other.test", "/stall"), tmp_path, idle_timeout_s=0.2)
    assert reason.startswith("the server sent nothing for 0.2 s")


def test_a_cancel_mid_download_stops_it_and_leaves_no_file(
    plain: ModelServer, tmp_path: Path
) -> None:
    """Driven by the server's cue (half the file sent), not by the clock."""
    deadline = Deadline.start(None)

    def cancel_when_cued() -> None:
        assert plain.cue.wait(10)
        deadline.cancel()
        plain.go.set()

    threading.Thread(target=cancel_when_cued, daemon=True).start()
    with pytest.raises(JobInterruptedError) as exc_info:
        download(plain.url("other.test", "/gated"), tmp_path, deadline=deadline)
    assert "downloading" in exc_info.value.message
    assert not (tmp_path / ".part").exists()


# --- through the worker ---------------------------------------------------------------


def job(url: str) -> dict[str, Any]:
    return {
        "input": {
            "workflow": {
                "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": url}},
                "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
            }
        }
    }


def test_a_job_downloads_a_model_once_and_reuses_it(plain: ModelServer, tmp_path: Path) -> None:
    settings = Settings(work_dir=tmp_path / "worker", input_allow_private_urls=True)
    runtime = FakeRuntime(settings)
    worker = Worker(settings, runtime)
    worker.boot()
    url = f"http://127.0.0.1:{plain.port}/models/tiny.safetensors"
    digest = hashlib.sha256(plain.body).hexdigest()
    for job_id in ("first", "second"):
        body = worker.handle({"id": job_id, **job(f"{url}#sha256={digest}")})
        assert body.get("errors") == [], body
    assert [s.path for s in plain.seen] == ["/models/tiny.safetensors"]
    name = f"{CACHE_DIR_NAME}/{url_key(url)}-tiny.safetensors"
    assert [j.workflow["1"]["inputs"]["ckpt_name"] for j in runtime.jobs] == [name, name]
    assert (runtime.models_dir / "checkpoints" / name).read_bytes() == plain.body


def test_a_job_with_a_bad_model_url_fails_naming_node_input_and_status(
    plain: ModelServer, tmp_path: Path
) -> None:
    settings = Settings(work_dir=tmp_path / "worker", input_allow_private_urls=True)
    worker = Worker(settings, FakeRuntime(settings))
    worker.boot()
    url = f"http://127.0.0.1:{plain.port}/gone.safetensors?token=s3cr3t"
    body = worker.handle({"id": "bad", **job(url)})
    assert body["code"] == "model_files_failed"
    assert body["details"] == [
        f"node 1 (CheckpointLoaderSimple) ckpt_name: http://127.0.0.1:{plain.port}"
        "/gone.safetensors: HTTP 404 Not Found; check the URL"
    ]
    assert "s3cr3t" not in json.dumps(body)
