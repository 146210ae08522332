"""Model files by URL or absolute path (engine/model_urls.py, engine/model_cache.py).

The runtime is the fake one (its model folders live under the work dir); the downloader
is :class:`FakeDownloader`, which writes the bytes a test gives each URL, so these tests
cover naming, caching, hashes, eviction and locking without a network. Real HTTP, TLS
and token scoping are in tests/e2e/test_model_urls.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.deadline import Deadline
from engine.errors import ItemError, ModelFileError
from engine.model_cache import CACHE_DIR_NAME, ModelCache, cache_file_name, url_key
from engine.model_download import Download, ProgressReport, SizeCheck
from engine.model_urls import ModelUrls, relative_name, split_hash
from engine.runtime import ModelFolder, ProgressEvent
from engine.settings import Settings
from tests.fake_runtime import FakeRuntime

URL = "https://huggingface.co/org/repo/resolve/main/tiny.safetensors"


def safetensors_bytes(payload: bytes = b"") -> bytes:
    """A real safetensors file's shape: an 8-byte header length, a JSON header, the data."""
    header = json.dumps({"__metadata__": {"t": payload.hex()}}).encode()
    return struct.pack("<Q", len(header)) + header + payload


class FakeDownloader:
    """Writes each URL's bytes (from ``files``) into the temp file; counts the calls."""

    def __init__(self, files: dict[str, bytes], names: dict[str, str] | None = None) -> None:
        self.files = files
        self.names = names or {}
        self.calls: list[str] = []
        self.started = threading.Event()
        self.release: threading.Event | None = None

    def download(
        self,
        url: str,
        temp: Path,
        *,
        max_bytes: int,
        limit_name: str,
        deadline: Deadline,
        check_size: SizeCheck,
        on_progress: ProgressReport,
    ) -> Download:
        self.calls.append(url)
        self.started.set()
        if self.release is not None:
            assert self.release.wait(10)
        body = self.files[url]
        if len(body) > max_bytes:
            raise ItemError("", f"the file is over the limit ({limit_name})")
        check_size(len(body))
        on_progress(0, len(body))
        temp.write_bytes(body)
        on_progress(len(body), len(body))
        return Download(
            temp=temp,
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            head=body[:16],
            suggested_name=self.names.get(url),
        )


@pytest.fixture
def runtime(settings: Settings) -> FakeRuntime:
    fake = FakeRuntime(settings)
    fake.boot()
    return fake


def checkpoint_workflow(*values: str) -> dict[str, Any]:
    return {
        str(i + 1): {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": value}}
        for i, value in enumerate(values)
    }


def resolver(
    settings: Settings, runtime: FakeRuntime, downloader: FakeDownloader, **changes: Any
) -> ModelUrls:
    if changes:
        settings = Settings(**{**settings.__dict__, **changes})
    return ModelUrls(settings, runtime, downloader)


def no_limit() -> Deadline:
    return Deadline.start(None)


# --- values ---------------------------------------------------------------------------


def test_a_sha256_fragment_is_split_off_and_lowercased() -> None:
    digest = "AB" * 32
    assert split_hash(f"{URL}#sha256={digest}") == (URL, digest.lower())
    assert split_hash(f"{URL}#page") == (URL, None)


def test_a_malformed_sha256_fragment_is_refused() -> None:
    with pytest.raises(ItemError, match="not 64 hex digits"):
        split_hash(f"{URL}#sha256=abc")


def test_cache_names_keep_the_suffix_and_fit_255_bytes() -> None:
    key = url_key(URL)
    assert cache_file_name(key, "tiny.safetensors") == f"{key}-tiny.safetensors"
    long = cache_file_name(key, "é" * 200 + ".safetensors")
    assert len(long.encode()) <= 255
    assert long.endswith(".safetensors")
    long.encode().decode()  # no character cut in half


def test_the_fragment_is_not_part_of_the_key() -> None:
    assert url_key(f"{URL}#sha256={'0' * 64}") == url_key(URL)
    assert url_key(URL) != url_key(URL + "?download=true")


# --- absolute paths -------------------------------------------------------------------


FOLDER = ModelFolder("loras", (Path("/runpod-volume/models/loras"),), frozenset({".safetensors"}))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/runpod-volume/models/loras/x.safetensors", "x.safetensors"),
        ("/runpod-volume/models/loras/styles/x.safetensors", "styles/x.safetensors"),
        ("C:\\ComfyUI\\models\\loras\\x.safetensors", "x.safetensors"),
        ("/workspace/ComfyUI/models/loras/sub/x.safetensors", "sub/x.safetensors"),
    ],
)
def test_an_absolute_path_under_a_models_folder_becomes_its_name(value: str, expected: str) -> None:
    assert relative_name(value, FOLDER) == expected


def test_an_absolute_path_elsewhere_is_refused_with_the_name_to_use() -> None:
    with pytest.raises(ItemError) as exc_info:
        relative_name("/data/downloads/x.safetensors", FOLDER)
    assert "outside this worker's loras folders (/runpod-volume/models/loras)" in str(
        exc_info.value
    )
    assert "'x.safetensors'" in str(exc_info.value)


def test_the_workflow_gets_relative_names_for_absolute_paths(
    settings: Settings, runtime: FakeRuntime
) -> None:
    models = runtime.models_dir / "checkpoints"
    workflow = checkpoint_workflow(
        str(models / "sd" / "a.safetensors"), "C:\\x\\checkpoints\\b.ckpt"
    )
    resolved = resolver(settings, runtime, FakeDownloader({})).resolve(workflow, no_limit())
    assert [n["inputs"]["ckpt_name"] for n in resolved.values()] == ["sd/a.safetensors", "b.ckpt"]
    assert workflow["1"]["inputs"]["ckpt_name"].startswith(str(models))  # input left as sent


def test_every_bad_value_is_named_at_once_before_any_download(
    settings: Settings, runtime: FakeRuntime
) -> None:
    downloader = FakeDownloader({URL: safetensors_bytes()})
    workflow = {
        **checkpoint_workflow(URL, "/elsewhere/x.safetensors", f"{URL}#sha256=12"),
        "9": {"class_type": "LoadImage", "inputs": {"image": "https://example.com/a.png"}},
    }
    with pytest.raises(ModelFileError) as exc_info:
        resolver(settings, runtime, downloader).resolve(workflow, no_limit())
    details = exc_info.value.details
    assert len(details) == 2, details
    assert details[0].startswith(
        "node 2 (CheckpointLoaderSimple) ckpt_name: /elsewhere/x.safetensors"
    )
    assert "not 64 hex digits" in details[1]
    assert downloader.calls == []


def test_a_url_on_an_input_with_no_model_folder_is_left_to_validation(
    settings: Settings, runtime: FakeRuntime
) -> None:
    workflow = {"1": {"class_type": "SaveVideo", "inputs": {"format": "https://x.example/a.mp4"}}}
    downloader = FakeDownloader({})
    assert resolver(settings, runtime, downloader).resolve(workflow, no_limit()) is workflow
    assert downloader.calls == []


def test_a_workflow_without_urls_or_paths_is_returned_as_is(
    settings: Settings, runtime: FakeRuntime
) -> None:
    workflow = checkpoint_workflow("sd15/tiny.safetensors")
    assert resolver(settings, runtime, FakeDownloader({})).resolve(workflow, no_limit()) is workflow


# --- downloads and the cache ----------------------------------------------------------


def test_a_url_is_downloaded_once_verified_and_rewritten(
    settings: Settings, runtime: FakeRuntime
) -> None:
    body = safetensors_bytes(b"weights")
    digest = hashlib.sha256(body).hexdigest()
    downloader = FakeDownloader({URL: body})
    models = resolver(settings, runtime, downloader)
    events: list[ProgressEvent] = []
    first = models.resolve(checkpoint_workflow(f"{URL}#sha256={digest}"), no_limit(), events.append)
    name = first["1"]["inputs"]["ckpt_name"]
    assert name == f"{CACHE_DIR_NAME}/{url_key(URL)}-tiny.safetensors"
    assert (runtime.models_dir / "checkpoints" / name).read_bytes() == body
    assert runtime.forgotten == ["checkpoints"]
    assert [e.describe() for e in events] == [
        "downloading tiny.safetensors: 0%",
        "downloading tiny.safetensors: 100%",
    ]
    assert {e.node_id for e in events} == {"1"}
    # A later job (two nodes, one with the hash, one without) downloads nothing.
    second = models.resolve(checkpoint_workflow(URL, f"{URL}#sha256={digest}"), no_limit())
    assert {n["inputs"]["ckpt_name"] for n in second.values()} == {name}
    assert downloader.calls == [URL]


def test_two_nodes_in_one_job_share_one_download(settings: Settings, runtime: FakeRuntime) -> None:
    downloader = FakeDownloader({URL: safetensors_bytes()})
    resolved = resolver(settings, runtime, downloader).resolve(
        checkpoint_workflow(URL, URL), no_limit()
    )
    assert resolved["1"]["inputs"] == resolved["2"]["inputs"]
    assert downloader.calls == [URL]


def test_two_jobs_at_once_share_one_download(settings: Settings, runtime: FakeRuntime) -> None:
    """The second job waits on the first one's download (a per-URL lock), then reuses it."""
    downloader = FakeDownloader({URL: safetensors_bytes()})
    downloader.release = threading.Event()
    models = resolver(settings, runtime, downloader)
    results: list[Any] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(models.resolve(checkpoint_workflow(URL), no_limit()))
        )
        for _ in range(2)
    ]
    threads[0].start()
    assert downloader.started.wait(10)
    threads[1].start()
    downloader.release.set()
    for thread in threads:
        thread.join(10)
    assert len(results) == 2
    assert results[0] == results[1]
    assert downloader.calls == [URL]


def test_a_hash_mismatch_names_the_file_and_keeps_nothing(
    settings: Settings, runtime: FakeRuntime
) -> None:
    body = safetensors_bytes(b"other")
    downloader = FakeDownloader({URL: body})
    with pytest.raises(ModelFileError) as exc_info:
        resolver(settings, runtime, downloader).resolve(
            checkpoint_workflow(f"{URL}#sha256={'0' * 64}"), no_limit()
        )
    [detail] = exc_info.value.details
    assert detail.startswith(f"node 1 (CheckpointLoaderSimple) ckpt_name: {URL}: hash mismatch")
    assert "for tiny.safetensors" in detail
    assert f"expected sha256 {'0' * 64}, got {hashlib.sha256(body).hexdigest()}" in detail
    cache = runtime.models_dir / "checkpoints" / CACHE_DIR_NAME
    assert list(cache.iterdir()) == []


def test_a_cached_file_with_another_hash_is_downloaded_again(
    settings: Settings, runtime: FakeRuntime
) -> None:
    old, new = safetensors_bytes(b"v1"), safetensors_bytes(b"v2")
    downloader = FakeDownloader({URL: old})
    models = resolver(settings, runtime, downloader)
    models.resolve(checkpoint_workflow(URL), no_limit())
    downloader.files[URL] = new
    wanted = hashlib.sha256(new).hexdigest()
    resolved = models.resolve(checkpoint_workflow(f"{URL}#sha256={wanted}"), no_limit())
    path = runtime.models_dir / "checkpoints" / resolved["1"]["inputs"]["ckpt_name"]
    assert path.read_bytes() == new
    assert downloader.calls == [URL, URL]


def test_the_server_name_is_used_when_the_url_names_no_file(
    settings: Settings, runtime: FakeRuntime
) -> None:
    url = "https://civitai.com/api/download/models/12345"
    downloader = FakeDownloader({url: safetensors_bytes()}, {url: "dreamshaper_8.safetensors"})
    resolved = resolver(settings, runtime, downloader).resolve(checkpoint_workflow(url), no_limit())
    assert resolved["1"]["inputs"]["ckpt_name"].endswith("-dreamshaper_8.safetensors")


def test_the_format_is_told_by_the_bytes_when_nothing_names_the_file(
    settings: Settings, runtime: FakeRuntime
) -> None:
    url = "https://files.example/blob/12345"
    downloader = FakeDownloader({url: safetensors_bytes()})
    resolved = resolver(settings, runtime, downloader).resolve(checkpoint_workflow(url), no_limit())
    assert resolved["1"]["inputs"]["ckpt_name"].endswith("-12345.safetensors")


def test_a_file_of_a_kind_the_folder_does_not_list_is_refused(
    settings: Settings, runtime: FakeRuntime
) -> None:
    url = "https://files.example/notes.txt"
    with pytest.raises(ModelFileError) as exc_info:
        resolver(settings, runtime, FakeDownloader({url: b"hello"})).resolve(
            checkpoint_workflow(url), no_limit()
        )
    assert "named 'notes.txt', and the checkpoints folder lists only" in exc_info.value.details[0]


def test_a_file_over_the_size_limit_names_the_setting(
    settings: Settings, runtime: FakeRuntime
) -> None:
    downloader = FakeDownloader({URL: safetensors_bytes(b"x" * 100)})
    models = resolver(settings, runtime, downloader, model_max_file_bytes=50)
    with pytest.raises(ModelFileError) as exc_info:
        models.resolve(checkpoint_workflow(URL), no_limit())
    assert "MODEL_MAX_FILE_GB" in exc_info.value.details[0]


def test_a_passed_deadline_stops_before_downloading(
    settings: Settings, runtime: FakeRuntime
) -> None:
    downloader = FakeDownloader({URL: safetensors_bytes()})
    deadline = Deadline.start(None)
    deadline.cancel()
    with pytest.raises(Exception, match="downloading"):
        resolver(settings, runtime, downloader).resolve(checkpoint_workflow(URL), deadline)
    assert downloader.calls == []


# --- eviction -------------------------------------------------------------------------


def urls(count: int) -> list[str]:
    return [f"https://files.example/m{i}.safetensors" for i in range(count)]


def test_least_recently_used_files_are_evicted_to_make_room(
    settings: Settings, runtime: FakeRuntime
) -> None:
    body = safetensors_bytes(b"x" * 1000)
    a, b, c = urls(3)
    downloader = FakeDownloader(dict.fromkeys((a, b, c), body))
    # Room for two files, not three.
    models = resolver(settings, runtime, downloader, model_cache_max_bytes=len(body) * 2 + 10)
    resolved_a = models.resolve(checkpoint_workflow(a), no_limit())
    models.resolve(checkpoint_workflow(b), no_limit())
    path_a = runtime.models_dir / "checkpoints" / resolved_a["1"]["inputs"]["ckpt_name"]
    # a is used again, so b is now the least recently used.
    record_a = path_a.parent / f".{url_key(a)}.json"
    os.utime(record_a, (path_a.stat().st_mtime + 100, path_a.stat().st_mtime + 100))
    models.resolve(checkpoint_workflow(c), no_limit())
    cached = sorted(p.name for p in path_a.parent.iterdir() if not p.name.startswith("."))
    assert cached == sorted([f"{url_key(a)}-m0.safetensors", f"{url_key(c)}-m2.safetensors"])


def test_files_the_job_uses_are_never_evicted(settings: Settings, runtime: FakeRuntime) -> None:
    body = safetensors_bytes(b"x" * 1000)
    a, b = urls(2)
    downloader = FakeDownloader(dict.fromkeys((a, b), body))
    models = resolver(settings, runtime, downloader, model_cache_max_bytes=len(body) + 10)
    with pytest.raises(ModelFileError) as exc_info:
        models.resolve(checkpoint_workflow(a, b), no_limit())
    assert "does not fit in the model cache" in exc_info.value.details[0]
    assert "MODEL_CACHE_MAX_GB" in exc_info.value.details[0]
    folder = runtime.models_dir / "checkpoints" / CACHE_DIR_NAME
    assert (folder / f"{url_key(a)}-m0.safetensors").is_file()  # in use: kept
    # The next job does not use a: it may go.
    models.resolve(checkpoint_workflow(b), no_limit())
    assert not (folder / f"{url_key(a)}-m0.safetensors").exists()


def test_the_cache_never_counts_or_evicts_the_folders_own_files(tmp_path: Path) -> None:
    folder = ModelFolder("loras", (tmp_path / "loras",), frozenset({".safetensors"}))
    own = tmp_path / "loras" / "mine.safetensors"
    own.parent.mkdir()
    own.write_bytes(b"x" * 5000)
    cache = ModelCache(max_bytes=100, folders=[folder])
    directory = cache.cache_dir(folder)
    cache.make_room(50, directory, set())
    assert own.is_file()
    assert cache.entries() == []


def test_a_part_file_no_live_process_holds_is_swept_and_a_held_one_is_kept(
    tmp_path: Path,
) -> None:
    """A dead worker's part file is unlocked, however young; a live download (here this
    process's, on another open file, as another worker on the volume would hold it) is
    locked and stays."""
    folder = ModelFolder("loras", (tmp_path / "loras",))
    directory = tmp_path / "loras" / CACHE_DIR_NAME
    directory.mkdir(parents=True)
    dead = directory / ".0123456789abcdef.deadbeef.part"
    dead.write_bytes(b"half")  # just written: age does not matter, the lock does
    live_cache = ModelCache(10, [folder])
    with live_cache.part(directory, "0123456789abcdef") as live:
        live.write_bytes(b"half")
        assert ModelCache(10, [folder]).sweep() == 1
        assert not dead.exists()
        assert live.exists()
    assert not live.exists()  # the block's end removes what was not put in place


def test_a_read_only_folder_falls_through_to_the_next_path(tmp_path: Path) -> None:
    read_only, writable = tmp_path / "ro", tmp_path / "rw"
    read_only.mkdir()
    writable.mkdir()
    read_only.chmod(0o555)
    try:
        if os.access(read_only, os.W_OK):
            pytest.skip("running as root: permissions do not apply")
        folder = ModelFolder("loras", (read_only, writable))
        assert ModelCache(10).cache_dir(folder) == writable / CACHE_DIR_NAME
    finally:
        read_only.chmod(0o755)


# --- settings, the key alias ----------------------------------------------------------


def test_model_settings_are_read_and_tokens_are_secrets() -> None:
    settings = Settings.from_env(
        {
            "MODEL_CACHE_MAX_GB": "0.5",
            "MODEL_MAX_FILE_GB": "2",
            "HF_TOKEN": "hf_abcdefgh",
            "CIVITAI_TOKEN": "civitai-abcdefgh",
        }
    )
    assert settings.model_cache_max_bytes == 512 * 1024 * 1024
    assert settings.model_max_file_bytes == 2 * 1024**3
    assert {"hf_abcdefgh", "civitai-abcdefgh"} <= set(settings.response_secrets())
    assert "abcdefgh" not in repr(settings)


def test_the_api_key_alias_is_accepted_and_redacted(settings: Settings) -> None:
    """``api_key_comfy_org`` reaches the runtime, and never comes back in a response."""
    from engine.worker import Worker

    runtime = FakeRuntime(settings)
    worker = Worker(settings, runtime)
    worker.boot()
    key = "comfy-key-0123456789"
    workflow = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": key}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
    }
    body = worker.handle({"id": "alias", "input": {"workflow": workflow, "api_key_comfy_org": key}})
    assert body["code"] == "workflow_validation_failed"  # the key is no checkpoint...
    assert key not in json.dumps(body)  # ...and the error that quotes it hides it
    assert runtime.checked_jobs[-1].api_key_comfy_org == key


def test_a_job_in_flight_keeps_its_files_while_another_job_downloads(
    settings: Settings, runtime: FakeRuntime
) -> None:
    """Jobs overlap (MAX_CONCURRENT_JOBS): A resolved a and is still running (its pinning
    block open, on its own thread) when B downloads b, which needs a's room. a stays; B's
    download is refused for room instead. Once A has ended, a may go."""
    body = safetensors_bytes(b"x" * 1000)
    a, b = urls(2)
    downloader = FakeDownloader(dict.fromkeys((a, b), body))
    models = resolver(settings, runtime, downloader, model_cache_max_bytes=len(body) + 10)
    folder = runtime.models_dir / "checkpoints" / CACHE_DIR_NAME
    a_resolved, a_ends = threading.Event(), threading.Event()

    def job_a() -> None:
        with models.pinning():
            models.resolve(checkpoint_workflow(a), no_limit())
            a_resolved.set()
            assert a_ends.wait(10)  # A's run, then its delivery

    thread = threading.Thread(target=job_a, daemon=True)
    thread.start()
    try:
        assert a_resolved.wait(10)
        with models.pinning(), pytest.raises(ModelFileError) as exc_info:
            models.resolve(checkpoint_workflow(b), no_limit())
        assert "does not fit in the model cache" in exc_info.value.details[0]
        assert (folder / f"{url_key(a)}-m0.safetensors").is_file()  # A's file: kept
    finally:
        a_ends.set()
        thread.join(10)
    with models.pinning():
        models.resolve(checkpoint_workflow(b), no_limit())
    assert not (folder / f"{url_key(a)}-m0.safetensors").exists()
    assert (folder / f"{url_key(b)}-m1.safetensors").is_file()
