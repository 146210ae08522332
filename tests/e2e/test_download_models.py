"""scripts/download_models.py end to end: the real CLI against a real HTTP server on 127.0.0.1.

The server serves files with Range support, ignoring Range, dropping the connection
mid-file, behind a token, or redirecting; it records every request so the tests can say
which bytes were asked for and which headers (a token!) went where.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "download_models.py"
TOKEN = "hf_test_token_do_not_print_0123456789"


@dataclass
class Route:
    data: bytes
    mode: str = "range"  # range | ignore-range | drop-once | gated | redirect
    redirect_to: str = ""
    served: int = 0  # requests answered so far


@dataclass
class Seen:
    path: str
    host: str
    range: str | None
    authorization: str | None
    bytes_sent: int = 0


@dataclass
class FileServer:
    """Routes by path; ``barrier`` holds responses until that many are in flight."""

    port: int = 0
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0
    barrier: int = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def reset(self) -> None:
        with self.lock:
            self.routes.clear()
            self.seen.clear()
            self.in_flight = self.max_in_flight = self.barrier = 0


class _Handler(BaseHTTPRequestHandler):
    server_state: FileServer

    def log_message(self, format: str, *args: object) -> None:
        """Keep pytest's output clean."""

    def do_GET(self) -> None:
        state = self.server_state
        seen = Seen(
            self.path,
            self.headers.get("Host", ""),
            self.headers.get("Range"),
            self.headers.get("Authorization"),
        )
        with state.lock:
            state.seen.append(seen)
            route = state.routes.get(self.path)
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            self._wait_for_barrier(state)
            if route is None:
                self.send_error(404)
                return
            self._serve(route, seen)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _wait_for_barrier(self, state: FileServer) -> None:
        deadline = time.monotonic() + 1.0  # a sequential client just waits out the second
        while time.monotonic() < deadline:
            with state.lock:
                if state.in_flight >= state.barrier:
                    return
            time.sleep(0.01)

    def _serve(self, route: Route, seen: Seen) -> None:
        with self.server_state.lock:
            route.served += 1
            first = route.served == 1
        if route.mode == "gated" and seen.authorization != f"Bearer {TOKEN}":
            self.send_error(401)
            return
        if route.mode == "redirect":
            self.send_response(302)
            self.send_header("Location", route.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        if seen.range and route.mode != "ignore-range":
            start = int(seen.range.removeprefix("bytes=").split("-")[0])
        body = route.data[start:]
        if start:
            self.send_response(206)
            self.send_header(
                "Content-Range", f"bytes {start}-{len(route.data) - 1}/{len(route.data)}"
            )
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if route.mode == "drop-once" and first:
            body = body[: len(body) // 3]  # then the connection closes: a dropped download
        self.wfile.write(body)
        seen.bytes_sent = len(body)


@pytest.fixture(scope="module")
def server() -> Iterator[FileServer]:
    state = FileServer()
    handler = type("Handler", (_Handler,), {"server_state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def files(server: FileServer) -> Iterator[FileServer]:
    server.reset()
    yield server
    server.reset()


def payload(seed: str, size: int = 300_000) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def entry(
    name: str, url: str, data: bytes, *, sets: list[str], sha: str | None = "auto"
) -> dict[str, object]:
    return {
        "name": name,
        "url": url,
        "sha256": hashlib.sha256(data).hexdigest() if sha == "auto" else sha,
        "size": len(data),
        "folder": "checkpoints",
        "sets": sets,
        "gated": False,
    }


@dataclass
class Run:
    code: int
    out: str
    err: str


def download(
    tmp_path: Path, manifest: list[dict[str, object]], *args: str, token: str | None = None
) -> Run:
    path = tmp_path / "models.json"
    path.write_text(json.dumps(manifest))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    if token:
        env["HF_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--manifest", str(path), "--dest", str(tmp_path / "models"),
         "--retry-wait", "0", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    return Run(done.returncode, done.stdout, done.stderr)


def model(tmp_path: Path, name: str) -> Path:
    return tmp_path / "models" / "checkpoints" / name


def test_downloads_files_in_parallel_and_verifies_them(tmp_path: Path, files: FileServer) -> None:
    """Four files with --jobs 4 are all in flight at once, and each lands verified."""
    manifest = []
    for i in range(4):
        data = payload(f"parallel-{i}")
        files.routes[f"/p{i}.bin"] = Route(data)
        manifest.append(entry(f"p{i}.safetensors", files.url(f"/p{i}.bin"), data, sets=["many"]))
    files.barrier = 4

    run = download(tmp_path, manifest, "--set", "many", "--jobs", "4")

    assert run.code == 0, run.err
    assert files.max_in_flight == 4
    for i in range(4):
        assert model(tmp_path, f"p{i}.safetensors").read_bytes() == payload(f"parallel-{i}")
    assert not list((tmp_path / "models").rglob("*.part"))
    assert "4 downloaded" in run.out


def test_second_run_skips_present_files_and_replaces_a_corrupted_one(
    tmp_path: Path, files: FileServer
) -> None:
    """Verified files are not fetched again; a same-size file with wrong bytes is."""
    good, other = payload("keep"), payload("fix")
    files.routes["/keep.bin"] = Route(good)
    files.routes["/fix.bin"] = Route(other)
    manifest = [
        entry("keep.safetensors", files.url("/keep.bin"), good, sets=["s"]),
        entry("fix.safetensors", files.url("/fix.bin"), other, sets=["s"]),
    ]
    assert download(tmp_path, manifest, "--set", "s").code == 0
    corrupted = bytearray(other)
    corrupted[1000] ^= 0xFF
    model(tmp_path, "fix.safetensors").write_bytes(bytes(corrupted))
    files.seen.clear()

    run = download(tmp_path, manifest, "--set", "s")

    assert run.code == 0, run.err
    assert [s.path for s in files.seen] == ["/fix.bin"]
    assert model(tmp_path, "fix.safetensors").read_bytes() == other
    assert "1 downloaded, 1 already present" in run.out


def test_interrupted_download_leaves_a_part_and_the_next_run_resumes_it(
    tmp_path: Path, files: FileServer
) -> None:
    """A dropped connection keeps the .part; the rerun asks only for the rest (Range)."""
    data = payload("resume", 600_000)
    files.routes["/drop.bin"] = Route(data, mode="drop-once")
    manifest = [entry("big.safetensors", files.url("/drop.bin"), data, sets=["s"])]

    first = download(tmp_path, manifest, "--set", "s", "--attempts", "1")

    part = model(tmp_path, "big.safetensors.part")
    assert first.code == 1
    assert "run again to resume" in first.err
    assert not model(tmp_path, "big.safetensors").exists()
    kept = part.stat().st_size
    assert 0 < kept < len(data)

    second = download(tmp_path, manifest, "--set", "s")

    assert second.code == 0, second.err
    assert files.seen[-1].range == f"bytes={kept}-"
    assert files.seen[-1].bytes_sent == len(data) - kept
    assert model(tmp_path, "big.safetensors").read_bytes() == data
    assert not part.exists()


def test_retries_within_one_run_resume_the_part(tmp_path: Path, files: FileServer) -> None:
    """With attempts left, the same run resumes after the drop and finishes."""
    data = payload("retry", 400_000)
    files.routes["/drop.bin"] = Route(data, mode="drop-once")
    manifest = [entry("r.safetensors", files.url("/drop.bin"), data, sets=["s"])]

    run = download(tmp_path, manifest, "--set", "s", "--attempts", "3")

    assert run.code == 0, run.err
    assert [s.range is not None for s in files.seen] == [False, True]
    assert model(tmp_path, "r.safetensors").read_bytes() == data


def test_server_that_ignores_range_is_followed_from_byte_zero(
    tmp_path: Path, files: FileServer
) -> None:
    """A 200 to a Range request replaces the .part instead of being appended to it."""
    data = payload("norange")
    files.routes["/full.bin"] = Route(data, mode="ignore-range")
    model(tmp_path, "n.safetensors").parent.mkdir(parents=True)
    model(tmp_path, "n.safetensors.part").write_bytes(b"x" * 5000)
    manifest = [entry("n.safetensors", files.url("/full.bin"), data, sets=["s"])]

    run = download(tmp_path, manifest, "--set", "s")

    assert run.code == 0, run.err
    assert files.seen[0].range == "bytes=5000-"
    assert model(tmp_path, "n.safetensors").read_bytes() == data


def test_bytes_that_do_not_match_the_sha256_are_refused_and_deleted(
    tmp_path: Path, files: FileServer
) -> None:
    """A mismatch leaves neither the file nor a .part behind, and says so."""
    served, expected = payload("served"), payload("expected")
    files.routes["/bad.bin"] = Route(served)
    manifest = [entry("bad.safetensors", files.url("/bad.bin"), expected, sets=["s"])]

    run = download(tmp_path, manifest, "--set", "s")

    assert run.code == 1
    assert "does not match" in run.err
    assert not model(tmp_path, "bad.safetensors").exists()
    assert not model(tmp_path, "bad.safetensors.part").exists()
    assert len(files.seen) == 1  # a clean download that mismatches is not retried


def test_a_stale_part_from_another_file_is_discarded_after_one_clean_retry(
    tmp_path: Path, files: FileServer
) -> None:
    """Resuming onto a wrong prefix fails the hash once; a fresh download then succeeds."""
    data = payload("fresh")
    files.routes["/f.bin"] = Route(data)
    model(tmp_path, "f.safetensors").parent.mkdir(parents=True)
    model(tmp_path, "f.safetensors.part").write_bytes(payload("old version")[:100_000])
    manifest = [entry("f.safetensors", files.url("/f.bin"), data, sets=["s"])]

    run = download(tmp_path, manifest, "--set", "s")

    assert run.code == 0, run.err
    assert [s.range for s in files.seen] == ["bytes=100000-", None]
    assert model(tmp_path, "f.safetensors").read_bytes() == data


def test_gated_file_needs_the_token_and_the_token_is_never_printed(
    tmp_path: Path, files: FileServer
) -> None:
    """401 without HF_TOKEN says what to do; with it the file downloads."""
    data = payload("gated")
    files.routes["/gated.bin"] = Route(data, mode="gated")
    manifest = [entry("g.safetensors", files.url("/gated.bin"), data, sets=["s"])]
    manifest[0]["gated"] = True

    refused = download(tmp_path, manifest, "--set", "s", "--token-host", "127.0.0.1")

    assert refused.code == 1
    assert "HF_TOKEN" in refused.err
    assert "accept the licence" in refused.err
    assert not model(tmp_path, "g.safetensors").exists()

    allowed = download(tmp_path, manifest, "--set", "s", "--token-host", "127.0.0.1", token=TOKEN)

    assert allowed.code == 0, allowed.err
    assert files.seen[-1].authorization == f"Bearer {TOKEN}"
    assert model(tmp_path, "g.safetensors").read_bytes() == data
    for output in (refused.out, refused.err, allowed.out, allowed.err):
        assert TOKEN not in output


def test_a_refused_token_is_reported_as_such(tmp_path: Path, files: FileServer) -> None:
    """With a token the server rejects, the message points at the token and the licence."""
    data = payload("gated2")
    files.routes["/gated.bin"] = Route(data, mode="gated")
    manifest = [entry("g.safetensors", files.url("/gated.bin"), data, sets=["s"])]

    run = download(tmp_path, manifest, "--set", "s", "--token-host", "127.0.0.1", token="wrong")

    assert run.code == 1
    assert "refused the token" in run.err
    assert len(files.seen) == 1  # an auth failure is not retried


def test_token_goes_only_to_token_hosts_not_to_other_hosts_or_redirect_targets(
    tmp_path: Path, files: FileServer
) -> None:
    """The CDN a token host redirects to, and any other host, never see Authorization."""
    direct, via = payload("other host"), payload("redirected")
    files.routes["/elsewhere.bin"] = Route(direct)
    files.routes["/cdn.bin"] = Route(via)
    files.routes["/resolve.bin"] = Route(
        b"", mode="redirect", redirect_to=files.url("/cdn.bin", "localhost")
    )
    manifest = [
        entry("a.safetensors", files.url("/elsewhere.bin", "localhost"), direct, sets=["s"]),
        entry("b.safetensors", files.url("/resolve.bin"), via, sets=["s"]),
    ]

    run = download(tmp_path, manifest, "--set", "s", "--token-host", "127.0.0.1", token=TOKEN)

    assert run.code == 0, run.err
    by_path = {s.path: s for s in files.seen}
    assert by_path["/resolve.bin"].authorization == f"Bearer {TOKEN}"
    assert by_path["/cdn.bin"].authorization is None
    assert by_path["/elsewhere.bin"].authorization is None


def test_unverified_entries_are_refused_unless_allowed(tmp_path: Path, files: FileServer) -> None:
    """sha256: null is refused (exit 3, nothing fetched); --allow-unverified prints the hash."""
    data = payload("unverified")
    files.routes["/u.bin"] = Route(data)
    manifest = [entry("u.safetensors", files.url("/u.bin"), data, sets=["s"], sha=None)]

    refused = download(tmp_path, manifest, "--set", "s")

    assert refused.code == 3
    assert "--allow-unverified" in refused.err
    assert files.seen == []

    allowed = download(tmp_path, manifest, "--set", "s", "--allow-unverified")

    assert allowed.code == 0, allowed.err
    assert hashlib.sha256(data).hexdigest() in allowed.out
    assert model(tmp_path, "u.safetensors").read_bytes() == data


def test_dry_run_and_set_selection_fetch_nothing(tmp_path: Path, files: FileServer) -> None:
    """--dry-run names what it would fetch for the chosen sets only; --set none is a no-op."""
    a, b = payload("a"), payload("b")
    files.routes["/a.bin"] = Route(a)
    manifest = [
        entry("a.safetensors", files.url("/a.bin"), a, sets=["one"]),
        entry("b.safetensors", files.url("/b.bin"), b, sets=["two"]),
    ]

    dry = download(tmp_path, manifest, "--set", "one", "--dry-run")
    none = download(tmp_path, manifest, "--set", "none")
    unknown = download(tmp_path, manifest, "--set", "three")

    assert dry.code == 0
    assert "would download  checkpoints/a.safetensors" in dry.out
    assert "b.safetensors" not in dry.out
    assert none.code == 0
    assert unknown.code == 2
    assert "unknown set(s) three" in unknown.err
    assert files.seen == []
