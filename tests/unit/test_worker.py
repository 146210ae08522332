"""The worker's flow in-process, with the fake runtime and in-memory fetcher/uploader."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import engine.convert
import engine.worker
import handler as handler_module
from engine.errors import ItemError
from engine.settings import Settings
from engine.worker import Worker, job_folder
from tests import ui_graphs, workflows
from tests.fake_runtime import FakeRuntime


def png_b64(color: tuple[int, int, int] = (10, 20, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


class MemoryUploader:
    """Keeps uploads in a dict; fails for file names listed in ``fail``."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.fail = fail

    def upload(self, key: str, path: Path, content_type: str) -> str:
        if path.name in self.fail:
            raise ItemError(path.name, "upload failed: AccessDenied")
        self.objects[key] = (path.read_bytes(), content_type)
        return f"https://bucket.example/{key}"


class NoNetwork:
    def fetch(self, url: str) -> bytes:
        raise AssertionError(f"unexpected fetch of {url}")


def fresh_handler(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """handler.py as in a new process: not booted yet, with ``env`` set."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(handler_module, "_worker", None)
    monkeypatch.setattr(handler_module, "_boot_error", None)
    # What handler.py read from the environment at import, as a new process would.
    monkeypatch.setattr(handler_module, "_ENV", dict(os.environ))


def make_worker(settings: Settings, **kwargs: Any) -> Worker:
    worker = Worker(settings, FakeRuntime(settings), fetcher=NoNetwork(), **kwargs)
    worker.boot()
    return worker


@pytest.mark.parametrize("job_input", [None, "[1]", [1, 2], 5])
def test_input_that_is_not_an_object(settings: Settings, job_input: Any) -> None:
    body = make_worker(settings).handle({"id": "j1", "input": job_input})
    assert body["error"].startswith("Invalid request: input must be an object")


def test_input_as_a_json_string_runs_and_its_key_stays_secret(settings: Settings) -> None:
    """worker-comfyui parses a string input as JSON; so does this worker, keys redacted."""
    key = "string-input-key-4d1"
    job_input = json.dumps({"workflow": workflows.raises(f"saw {key}"), "comfy_org_api_key": key})
    body = make_worker(settings).handle({"id": "s", "input": job_input})
    assert "saw ***" in body["error"] and key not in json.dumps(body)
    ok = make_worker(settings).handle(
        {"id": "t", "input": json.dumps({"workflow": workflows.batch(1)})}
    )
    assert len(ok["images"]) == 1 and "refresh_worker" not in ok


def test_refresh_worker_marks_every_answer(settings: Settings) -> None:
    """REFRESH_WORKER=true: success and failure alike ask RunPod for a fresh worker."""
    worker = make_worker(dataclasses.replace(settings, refresh_worker=True))
    done = worker.handle({"id": "a", "input": {"workflow": workflows.batch(1)}})
    failed = worker.handle({"id": "b", "input": {"workflow": {}}})
    assert done["refresh_worker"] is True and len(done["images"]) == 1
    assert failed["refresh_worker"] is True and failed["error"].startswith("Invalid request")


def test_success_shape(settings: Settings) -> None:
    body = make_worker(settings).handle(
        {
            "id": "j1",
            "input": {
                "workflow": workflows.invert("a.png"),
                "images": [{"name": "a.png", "image": png_b64()}],
            },
        }
    )
    assert body["errors"] == []
    (item,) = body["images"]
    assert set(item) >= {"filename", "type", "data"}
    assert item["node_id"] == "3"


def test_outputs_go_to_the_uploader_under_the_job_id(settings: Settings) -> None:
    uploader = MemoryUploader()
    body = make_worker(settings, uploader=uploader).handle(
        {"id": "job-77", "input": {"workflow": workflows.batch(2)}}
    )
    assert [i["type"] for i in body["images"]] == ["s3_url", "s3_url"]
    assert sorted(uploader.objects) == ["job-77/batch_00001_.png", "job-77/batch_00002_.png"]
    assert all(ct == "image/png" for _, ct in uploader.objects.values())


def test_a_failed_upload_lands_in_errors_and_the_rest_is_returned(settings: Settings) -> None:
    uploader = MemoryUploader(fail=("batch_00001_.png",))
    body = make_worker(settings, uploader=uploader).handle(
        {"id": "j", "input": {"workflow": workflows.batch(2)}}
    )
    assert [i["filename"] for i in body["images"]] == ["batch_00002_.png"]
    assert len(body["errors"]) == 1 and "batch_00001_.png" in body["errors"][0]


def test_base64_over_the_payload_cap_fails_with_advice(tmp_path: Path) -> None:
    settings = Settings(work_dir=tmp_path, response_limit_bytes=1_000)
    body = make_worker(settings).handle(
        {"id": "j", "input": {"workflow": workflows.batch(4, size=256)}}
    )
    assert body["code"] == "response_too_large"
    assert "BUCKET_ENDPOINT_URL" in body["error"]


def test_files_are_removed_after_a_failed_job(settings: Settings) -> None:
    worker = make_worker(settings)
    wf = workflows.raises()
    wf["6"] = {"class_type": "LoadImage", "inputs": {"image": "in/a.png"}}
    body = worker.handle(
        {"id": "j", "input": {"workflow": wf, "images": [{"name": "in/a.png", "image": png_b64()}]}}
    )
    assert body["code"] == "execution_failed"
    assert [p for p in settings.work_dir.rglob("*") if p.is_file()] == []


def test_runtime_receives_normalised_scoped_workflow_and_api_key(tmp_path: Path) -> None:
    settings = Settings(work_dir=tmp_path, comfy_org_api_key="env-key-123456")
    worker = make_worker(settings)
    worker.handle(
        {
            "id": "j9",
            "input": {
                "workflow": workflows.checkpoint("SDXL\\ultraRealisticByStable_v20FP16.safetensors")
            },
        }
    )
    worker.handle(
        {
            "id": "j10",
            "input": {"workflow": workflows.batch(1), "comfy_org_api_key": "req-key-654321"},
        }
    )
    runtime = worker.runtime
    assert isinstance(runtime, FakeRuntime)
    first, second = runtime.jobs
    assert (
        first.workflow["4"]["inputs"]["ckpt_name"]
        == "SDXL/ultraRealisticByStable_v20FP16.safetensors"
    )
    prefix = first.workflow["2"]["inputs"]["filename_prefix"]
    assert prefix.startswith("job-j9-") and prefix.endswith("/batch")
    assert (first.api_key_comfy_org, second.api_key_comfy_org) == (
        "env-key-123456",
        "req-key-654321",
    )


def test_progress_reaches_the_sink_per_node(settings: Settings) -> None:
    seen: list[tuple[str, str]] = []
    worker = make_worker(settings, progress=lambda job, line: seen.append((job["id"], line)))
    worker.handle(
        {
            "id": "p1",
            "input": {
                "workflow": workflows.invert("a.png"),
                "images": [{"name": "a.png", "image": png_b64()}],
            },
        }
    )
    assert [line for _, line in seen] == [
        "running node 1 (LoadImage)",
        "running node 2 (ImageInvert)",
        "running node 3 (SaveImage)",
    ]
    assert {job_id for job_id, _ in seen} == {"p1"}


def test_a_failing_progress_sink_does_not_fail_the_job(settings: Settings) -> None:
    def broken(job: dict[str, Any], line: str) -> None:
        raise ConnectionError("runpod unreachable")

    body = make_worker(settings, progress=broken).handle(
        {"id": "j", "input": {"workflow": workflows.batch(1)}}
    )
    assert len(body["images"]) == 1


def test_job_ids_become_safe_unique_folder_names() -> None:
    assert job_folder("sync-1234-abcd").startswith("job-sync-1234-abcd-")
    assert job_folder("../../etc").startswith("job-.._.._etc-")
    assert "/" not in job_folder("a/b") and len(job_folder("x" * 500)) <= 77
    assert job_folder("same") != job_folder("same")


def test_the_same_job_id_twice_still_delivers(settings: Settings) -> None:
    """A retried job keeps its id; ComfyUI's cache must not hand back deleted files."""
    worker = make_worker(settings)
    job = {"id": "retried", "input": {"workflow": workflows.batch(1)}}
    first, second = worker.handle(job), worker.handle(job)
    assert len(first["images"]) == len(second["images"]) == 1
    assert second["errors"] == []


def test_handler_boots_once_and_serves_many(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fresh_handler(
        monkeypatch, WORKER_RUNTIME="tests.fake_runtime:FakeRuntime", WORKER_DIR=str(tmp_path)
    )
    for i in range(3):
        body = asyncio.run(
            handler_module.handler({"id": f"h{i}", "input": {"workflow": workflows.batch(1)}})
        )
        assert len(body["images"]) == 1
    worker = handler_module._worker
    assert worker is not None and isinstance(worker.runtime, FakeRuntime)
    assert worker.runtime.booted == 1


def test_handler_reports_a_boot_failure_on_every_job(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fresh_handler(
        monkeypatch, WORKER_RUNTIME="tests.no_such_module:Runtime", WORKER_DIR=str(tmp_path)
    )
    for _ in range(2):
        body = asyncio.run(
            handler_module.handler({"id": "x", "input": {"workflow": workflows.batch(1)}})
        )
        assert body["error"].startswith("ComfyUI failed to start on this worker")
        assert "tests.no_such_module" in body["error"]
        assert body["refresh_worker"] is True


class _BrokenRuntime(FakeRuntime):
    """A runtime whose boot or run hits a bug that names a file of the machine."""

    fail_boot = False

    def boot(self) -> None:
        if self.fail_boot:
            raise OSError(f"cannot read {Path(__file__).resolve()}")
        super().boot()

    def run(self, job: Any) -> Any:
        raise KeyError(f"missing {Path(__file__).resolve()}")


class _BootBroken(_BrokenRuntime):
    fail_boot = True


def test_a_bug_answers_internal_error_with_an_id_that_finds_its_traceback_in_the_log(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """No traceback and no path of the machine in the answer; the log line has both."""
    worker = Worker(settings, _BrokenRuntime(settings), fetcher=NoNetwork())
    worker.boot()
    caplog.set_level("INFO", logger="engine.worker")
    body = worker.handle({"id": "bug", "input": {"workflow": workflows.batch(1)}})
    assert body["code"] == "internal_error"
    incident = body["incident"]
    assert re.fullmatch(r"err-[0-9a-f]{12}", incident)
    assert incident in body["error"] and "KeyError" in body["error"]
    text = json.dumps(body)
    assert "Traceback" not in text and str(Path(__file__).parent) not in text
    (record,) = [r for r in caplog.records if incident in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert "test_worker.py" in caplog.text and "Traceback" in caplog.text
    # The worker serves the next job.
    worker.runtime = FakeRuntime(settings)
    worker.runtime.boot()
    following = worker.handle({"id": "next", "input": {"workflow": workflows.batch(1)}})
    assert len(following["images"]) == 1


def test_a_boot_failure_names_an_id_and_no_path_of_the_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fresh_handler(
        monkeypatch, WORKER_RUNTIME="tests.unit.test_worker:_BootBroken", WORKER_DIR=str(tmp_path)
    )
    caplog.set_level("INFO", logger="handler")
    body = asyncio.run(
        handler_module.handler({"id": "x", "input": {"workflow": workflows.batch(1)}})
    )
    assert body["code"] == "runtime_boot_failed" and body["refresh_worker"] is True
    assert "OSError: cannot read .../test_worker.py" in body["error"]
    assert str(Path(__file__).parent) not in json.dumps(body)
    incident = re.search(r"err-[0-9a-f]{12}", body["error"])
    assert incident and incident.group(0) in caplog.text and "Traceback" in caplog.text


def test_bad_configuration_fails_jobs_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fresh_handler(monkeypatch, INPUT_MAX_IMAGE_MB="fifty")
    body = asyncio.run(handler_module.handler({"id": "x", "input": {}}))
    assert "INPUT_MAX_IMAGE_MB" in body["error"]


def test_timeout_then_next_job(tmp_path: Path) -> None:
    worker = make_worker(Settings(work_dir=tmp_path, job_timeout_s=0.3))
    started = time.monotonic()
    body = worker.handle({"id": "t", "input": {"workflow": workflows.sleeps(20)}})
    assert body["code"] == "job_timeout" and time.monotonic() - started < 5
    # The next job under no limit: on a loaded machine even a tiny job may take 0.3 s.
    worker.settings = dataclasses.replace(worker.settings, job_timeout_s=None)
    assert len(worker.handle({"id": "u", "input": {"workflow": workflows.batch(1)}})["images"]) == 1


class UploaderStuckUntilInterrupt:
    """An S3 endpoint that accepts and never answers, until the worker interrupts the job."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.reached = threading.Event()
        self.unblocked = threading.Event()
        interrupt = runtime.interrupt

        def interrupt_and_unblock() -> None:
            interrupt()
            self.unblocked.set()

        runtime.interrupt = interrupt_and_unblock  # type: ignore[method-assign]

    def upload(self, key: str, path: Path, content_type: str) -> str:
        self.reached.set()
        self.unblocked.wait()
        return f"https://bucket.example/{key}"


def test_the_deadline_covers_delivery_and_the_next_job_runs(tmp_path: Path) -> None:
    """A job stuck delivering (not in ComfyUI) still ends at its limit: delivery stops
    waiting when the job's time is up and the job fails naming the limit; the same worker
    then serves the next job."""
    settings = Settings(work_dir=tmp_path, job_timeout_s=0.5, job_stop_grace_s=30)
    runtime = FakeRuntime(settings)
    uploader = UploaderStuckUntilInterrupt(runtime)
    worker = Worker(settings, runtime, fetcher=NoNetwork(), uploader=uploader)
    worker.boot()
    body = worker.handle({"id": "slow-s3", "input": {"workflow": workflows.batch(1)}})
    assert uploader.reached.is_set()  # the job got as far as delivery
    assert body["code"] in {"output_delivery_failed", "job_timeout"}, body
    assert "JOB_TIMEOUT_S" in body["error"]
    assert "refresh_worker" not in body
    uploader.unblocked.set()
    worker.settings = dataclasses.replace(settings, job_timeout_s=None)  # only the first raced
    after = worker.handle({"id": "next", "input": {"workflow": workflows.batch(1)}})
    assert len(after["images"]) == 1 and after["errors"] == []


def test_a_cancel_while_outputs_are_read_stops_the_video_count_and_the_next_job_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel lands as the job starts reading its outputs (the cue: the worker calls
    collect_outputs): the count of the videos' frames stops at its first look, instead of
    reading every packet and failing only before delivery."""
    worker = make_worker(Settings(work_dir=tmp_path))
    real_collect = engine.worker.collect_outputs

    def cancel_then_collect(*args: Any, **kwargs: Any) -> Any:
        worker.cancel("v")
        return real_collect(*args, **kwargs)

    monkeypatch.setattr(engine.worker, "collect_outputs", cancel_then_collect)
    body = worker.handle({"id": "v", "input": {"workflow": workflows.media(frames=4)}})
    assert body["code"] == "execution_interrupted", body
    assert body["message"] == ("The job was cancelled and stopped while reading output videos"), (
        body
    )
    monkeypatch.setattr(engine.worker, "collect_outputs", real_collect)
    after = worker.handle({"id": "next", "input": {"workflow": workflows.batch(1)}})
    assert len(after["images"]) == 1 and after["errors"] == []


def test_a_cancel_while_outputs_convert_stops_the_conversion_and_the_next_job_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel lands as the conversion opens its first file (the cue: convert_output's
    Image.open): nothing is encoded after it, and the job fails saying so, instead of
    converting every output and failing only before delivery."""
    worker = make_worker(Settings(work_dir=tmp_path))
    cancelled = threading.Event()
    encoded_after: list[object] = []

    class CancelOnOpen:
        def __getattr__(self, name: str) -> Any:
            return getattr(Image, name)

        def open(self, *args: Any, **kwargs: Any) -> Any:
            if not cancelled.is_set():
                cancelled.set()
                worker.cancel("c")
            return Image.open(*args, **kwargs)

    real_save = Image.Image.save

    def save(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        if cancelled.is_set():
            encoded_after.append(fp)
        real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(engine.convert, "Image", CancelOnOpen())
    monkeypatch.setattr(Image.Image, "save", save)
    job = {"workflow": workflows.batch(2), "convert_output": {"format": "jpeg"}}
    body = worker.handle({"id": "c", "input": job})
    assert body["code"] == "execution_interrupted", body
    assert body["message"] == "The job was cancelled and stopped while converting outputs", body
    assert encoded_after == []
    monkeypatch.undo()
    after = worker.handle({"id": "next", "input": job})
    assert [i["filename"] for i in after["images"]] == ["batch_00001_.jpg", "batch_00002_.jpg"]
    assert after["errors"] == []


def test_a_job_that_cannot_be_stopped_gets_the_worker_replaced(tmp_path: Path) -> None:
    """A node deaf to interrupts: the job is answered at its limit plus the grace, RunPod is
    asked for a fresh worker, and every later job is refused at once the same way instead
    of waiting behind the stuck one."""
    settings = Settings(work_dir=tmp_path, job_timeout_s=0.2, job_stop_grace_s=0.2)
    worker = make_worker(settings)
    runtime = worker.runtime
    assert isinstance(runtime, FakeRuntime)
    try:
        body = worker.handle({"id": "stuck", "input": {"workflow": workflows.hangs()}})
        assert runtime.hanging.is_set()
        assert body["code"] == "worker_stuck" and body["refresh_worker"] is True
        assert "JOB_STOP_GRACE_S" in body["error"] and "running the workflow" in body["error"]
        jobs_before = len(runtime.jobs)
        later = worker.handle({"id": "later", "input": {"workflow": workflows.batch(1)}})
        assert later["code"] == "worker_stuck" and later["refresh_worker"] is True
        assert "out of service: job stuck passed its time limit" in later["message"]
        assert "send the job again" in later["error"]
        assert len(runtime.jobs) == jobs_before  # it never reached the engine
    finally:
        runtime.release.set()  # let the abandoned thread end with the test


def test_the_handler_passes_refresh_worker_to_the_sdk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """handler.py returns the flag the runpod SDK turns into stopping this worker."""
    fresh_handler(
        monkeypatch,
        WORKER_RUNTIME="tests.fake_runtime:FakeRuntime",
        WORKER_DIR=str(tmp_path),
        JOB_TIMEOUT_S="0.2",
        JOB_STOP_GRACE_S="0.2",
    )
    body = asyncio.run(
        handler_module.handler({"id": "h", "input": {"workflow": workflows.hangs()}})
    )
    worker = handler_module._worker
    assert worker is not None and isinstance(worker.runtime, FakeRuntime)
    worker.runtime.release.set()
    assert body["refresh_worker"] is True and body["code"] == "worker_stuck"


def test_a_cancelled_job_interrupts_the_engine_and_the_next_job_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """RunPod cancels the handler's task; ComfyUI must stop, not run on to the end."""
    fresh_handler(
        monkeypatch, WORKER_RUNTIME="tests.fake_runtime:FakeRuntime", WORKER_DIR=str(tmp_path)
    )

    async def cancel_then_run_next() -> tuple[float, dict[str, Any]]:
        started = time.monotonic()
        slow = asyncio.create_task(
            handler_module.handler({"id": "slow", "input": {"workflow": workflows.sleeps(30)}})
        )
        # The cue: the job reached the engine (not a guess of how long that takes).
        while not (handler_module._worker and handler_module._worker.runtime.jobs):  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        following = await handler_module.handler(
            {"id": "next", "input": {"workflow": workflows.batch(1)}}
        )
        return time.monotonic() - started, following

    elapsed, following = asyncio.run(cancel_then_run_next())
    assert len(following["images"]) == 1
    assert elapsed < 10  # the 30 s node was interrupted, not waited out
    worker = handler_module._worker
    assert worker is not None and [job.prompt_id for job in worker.runtime.jobs] == ["slow", "next"]  # type: ignore[attr-defined]


_PHASES = {
    "total_s",
    "inputs_s",
    "models_s",
    "wait_s",
    "validate_s",
    "execute_s",
    "outputs_s",
    "deliver_s",
}


def test_stats_time_each_phase_and_only_the_nodes_that_ran(settings: Settings) -> None:
    """Every phase is there, non-negative, to the ms; the repeat of a workflow lists only
    the nodes the cache did not serve (LoadImage and ImageInvert are cached, SaveImage
    runs again because its prefix names the new job's folder)."""
    worker = make_worker(settings)
    job = {
        "input": {
            "workflow": workflows.invert("a.png"),
            "images": [{"name": "a.png", "image": png_b64()}],
        }
    }
    first = worker.handle({"id": "s1", **job})["stats"]
    second = worker.handle({"id": "s2", **job})["stats"]
    for stats in (first, second):
        assert set(stats) == {*_PHASES, "nodes"}
        values = [stats[k] for k in _PHASES] + list(stats["nodes"].values())
        assert all(isinstance(v, float) and v >= 0 and v == round(v, 3) for v in values)
        assert stats["total_s"] >= max(stats[k] for k in _PHASES)
    assert list(first["nodes"]) == ["1", "2", "3"]
    assert list(second["nodes"]) == ["3"]


def test_the_summary_line_carries_the_stats(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="engine.worker")
    make_worker(settings).handle({"id": "j", "input": {"workflow": workflows.batch(1)}})
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job done")]
    assert "inputs " in line and "execute " in line and "deliver " in line
    assert "2 node(s) ran, slowest: " in line


def test_failed_jobs_have_no_stats(settings: Settings) -> None:
    body = make_worker(settings).handle({"id": "j", "input": {"workflow": workflows.raises()}})
    assert body["code"] == "execution_failed" and "stats" not in body


def preview_only(image_name: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def test_a_preview_only_workflow_returns_its_previews_also_on_a_repeat(
    settings: Settings,
) -> None:
    """The previews are the results; the repeat runs the preview again (its temp file of
    the first job was deleted) while LoadImage comes from the cache."""
    worker = make_worker(settings)
    job = {
        "input": {
            "workflow": preview_only("a.png"),
            "images": [{"name": "a.png", "image": png_b64((1, 2, 3))}],
        }
    }
    for job_id in ("p1", "p2"):
        body = worker.handle({"id": job_id, **job})
        assert body["errors"] == [], body
        (item,) = body["images"]
        assert item["node_id"] == "2" and item["mime_type"] == "image/png"
    assert list(body["stats"]["nodes"]) == ["2"]
    assert [p for p in settings.work_dir.rglob("*") if p.is_file()] == []


def test_previews_stay_out_when_the_workflow_saves_something(settings: Settings) -> None:
    wf = preview_only("a.png")
    wf["3"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
    body = make_worker(settings).handle(
        {"id": "j", "input": {"workflow": wf, "images": [{"name": "a.png", "image": png_b64()}]}}
    )
    assert body["errors"] == []
    assert [(i["node_id"], i["filename"]) for i in body["images"]] == [("3", "x_00001_.png")]


def test_convert_output_reencodes_stills_and_leaves_animations(settings: Settings) -> None:
    """Two PNGs become JPEGs (extension and MIME follow, size kept), the animated WEBP
    stays; the converted files are removed with the job's other files."""
    wf = workflows.batch(2, size=48)
    wf["3"] = {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {"images": ["1", 0], "filename_prefix": "anim", "fps": 6.0},
    }
    uploader = MemoryUploader()
    body = make_worker(settings, uploader=uploader).handle(
        {
            "id": "c1",
            "input": {"workflow": wf, "convert_output": {"format": "jpeg", "quality": 70}},
        }
    )
    assert body["errors"] == []
    assert [(i["filename"], i["mime_type"]) for i in body["images"]] == [
        ("batch_00001_.jpg", "image/jpeg"),
        ("batch_00002_.jpg", "image/jpeg"),
        ("anim_00001_.webp", "image/webp"),
    ]
    data, content_type = uploader.objects["c1/batch_00001_.jpg"]
    assert content_type == "image/jpeg"
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("JPEG", (48, 48))
    assert [p for p in settings.work_dir.rglob("*") if p.is_file()] == []


def test_a_bad_convert_output_fails_before_anything_runs(settings: Settings) -> None:
    worker = make_worker(settings)
    body = worker.handle(
        {
            "id": "j",
            "input": {"workflow": workflows.batch(1), "convert_output": {"format": "tiff"}},
        }
    )
    assert body["code"] == "invalid_request"
    assert "input.convert_output.format" in body["error"]
    assert worker.runtime.jobs == []  # type: ignore[attr-defined]


def doc_example(marker: str) -> str:
    """The fenced block after ``<!-- example: marker -->`` in docs/reference.md."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "reference.md").read_text()
    block = text.split(f"<!-- example: {marker} -->\n```json\n", 1)[1]
    return block.split("\n```", 1)[0]


def test_the_reference_examples_run(settings: Settings) -> None:
    """docs/reference.md's convert_output request returns one JPEG, and its stats example
    has the keys a response has."""
    request = json.loads(doc_example("convert_output"))
    body = make_worker(settings).handle({"id": "doc", **request})
    assert body["errors"] == []
    (item,) = body["images"]
    assert (item["filename"], item["mime_type"]) == ("orange_00001_.jpg", "image/jpeg")
    assert item["data"].startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(item["data"].partition(",")[2]))) as image:
        assert (image.format, image.size) == ("JPEG", (512, 512))
    documented = json.loads("{" + doc_example("stats") + "}")["stats"]
    assert set(documented) == set(body["stats"])
    assert set(documented["nodes"]) == set(body["stats"]["nodes"]) == {"1", "2"}


# -- per-job isolation ----------------------------------------------------------------


def pixel_of(item: dict[str, Any]) -> tuple[int, ...]:
    raw = base64.b64decode(item["data"].partition(",")[2])
    value: tuple[int, ...] = Image.open(io.BytesIO(raw)).convert("RGB").getpixel((0, 0))
    return value


def test_a_jobs_inputs_live_in_a_folder_only_its_workflow_names(settings: Settings) -> None:
    """The sent file is stored under input/job-in-<digest>/ and the workflow's LoadImage is
    pointed there; a file baked into the input folder is still read by its plain name."""
    worker = make_worker(settings)
    input_dir = worker.runtime.directories.input
    Image.new("RGB", (8, 8), (200, 0, 0)).save(input_dir / "baked.png")
    wf = workflows.invert("a.png")
    wf["4"] = {"class_type": "LoadImage", "inputs": {"image": "baked.png"}}
    wf["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "b"}}
    body = worker.handle(
        {
            "id": "iso",
            "input": {"workflow": wf, "images": [{"name": "a.png", "image": png_b64((10, 0, 0))}]},
        }
    )
    assert body["errors"] == [], body
    assert [pixel_of(item) for item in body["images"]] == [(245, 255, 255), (200, 0, 0)]
    runtime = worker.runtime
    assert isinstance(runtime, FakeRuntime)
    (job,) = runtime.jobs
    sent_as = job.workflow["1"]["inputs"]["image"]
    assert re.fullmatch(r"job-in-[0-9a-f]{16}/a\.png", sent_as), sent_as
    assert job.workflow["4"]["inputs"]["image"] == "baked.png"
    # The job's folder is gone, or kept empty as the next job's (engine.job_files.SpareFolders).
    left = sorted(p.name for p in input_dir.iterdir())
    assert left[0] == "baked.png" and all(
        re.fullmatch(r"job-spare-[0-9a-f]{8}", n) for n in left[1:]
    )
    assert [p for p in input_dir.rglob("*") if p.is_file()] == [input_dir / "baked.png"]


def test_a_file_another_job_sent_is_not_found_by_its_plain_name(settings: Settings) -> None:
    """The issue's case without a kill: job A sends killme.png, job B names it without
    sending it. B fails saying the file is not found, whatever A left."""
    worker = make_worker(settings)
    runtime = worker.runtime
    assert isinstance(runtime, FakeRuntime)
    # A's input as a killed worker would leave it, in the folder the worker would use.
    leftover = runtime.directories.input / "job-in-0123456789abcdef" / "killme.png"
    leftover.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(leftover)
    body = worker.handle({"id": "b", "input": {"workflow": workflows.invert("killme.png")}})
    assert body["code"] == "workflow_validation_failed"
    assert body["details"] == [
        "Node 1 (LoadImage) input 'image': file 'killme.png' not found: it is not in this "
        "job's input.images and not in the worker's input folder (a job sees only the files "
        "it sends, plus those baked into the image's ComfyUI/input folder)"
    ]


def test_boot_sweeps_what_killed_jobs_left_and_never_a_baked_file(settings: Settings) -> None:
    """Leftovers are told apart by name: only folders shaped like the worker's job folders
    go from input and output; temp and scratch are the worker's alone and emptied."""
    runtime = FakeRuntime(settings)
    dirs = runtime.directories
    work = settings.work_dir
    leftovers = [
        dirs.input / "job-in-0123456789abcdef" / "killme.png",
        dirs.input / "job-dead_1-0123abcd" / ".killme.png.0123456789ab.part",
        dirs.output / "job-dead_1-0123abcd" / "ComfyUI_00001_.png",
        dirs.temp / "ComfyUI_temp_abcde_00001_.png",
        work / "scratch" / "job-dead_1-0123abcd" / "frame.png",
    ]
    baked = [
        dirs.input / "example.png",
        dirs.input / "job-notes.png",  # starts like a job folder, but is a file of the image
        dirs.input / "job-in-0123" / "a.png",  # not the shape the worker makes
        dirs.input / "masks" / "job-in-0123456789abcdef" / "m.png",  # not at the top
        dirs.output / "keep.txt",
    ]
    for path in leftovers + baked:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    Worker(settings, runtime, fetcher=NoNetwork()).boot()
    assert [p for p in leftovers if p.exists()] == []
    assert [p for p in baked if not p.exists()] == []
    assert sorted(p.name for p in dirs.input.iterdir()) == [
        "example.png",
        "job-in-0123",
        "job-notes.png",
        "masks",
    ]


# -- cancel, in every phase -----------------------------------------------------------


class HeldFetcher:
    """A server that accepts the request and holds it: ``started`` is the cue."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def fetch(self, url: str) -> bytes:
        self.started.set()
        self.release.wait(30)
        return base64.b64decode(png_b64())


def handle_in_thread(worker: Worker, job: dict[str, Any]) -> tuple[threading.Thread, list[Any]]:
    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(worker.handle(job)))
    thread.start()
    return thread, answer


def assert_cancelled(answer: list[Any], where: str) -> None:
    (body,) = answer
    assert body["code"] == "execution_interrupted", body
    assert body["message"] == f"The job was cancelled and stopped {where}"


def assert_next_job_runs_and_nothing_is_left(worker: Worker, settings: Settings) -> None:
    after = worker.handle({"id": "next", "input": {"workflow": workflows.batch(1)}})
    assert len(after["images"]) == 1 and after["errors"] == []
    assert [p for p in settings.work_dir.rglob("*") if p.is_file()] == []


def test_a_cancel_during_input_downloads_stops_the_job_before_it_runs(
    settings: Settings,
) -> None:
    """The issue's case: cancelled while an input downloads (ComfyUI's interrupt flag,
    cleared when a prompt starts, would lose it). The job ends at once, its workflow never
    reaches the engine, and the held download does not hold the next job."""
    fetcher = HeldFetcher()
    worker = Worker(settings, FakeRuntime(settings), fetcher=fetcher)
    worker.boot()
    job = {
        "id": "dl",
        "input": {
            "workflow": workflows.invert("a.png"),
            "images": [{"name": "a.png", "image": "https://images.example/a.png"}],
        },
    }
    thread, answer = handle_in_thread(worker, job)
    try:
        assert fetcher.started.wait(10)
        assert worker.cancel("dl") is True
        thread.join(10)
        assert_cancelled(answer, "while downloading inputs")
        assert worker.runtime.jobs == []  # type: ignore[attr-defined]
        assert_next_job_runs_and_nothing_is_left(worker, settings)
    finally:
        fetcher.release.set()


def test_a_cancel_during_the_run_interrupts_the_node(settings: Settings) -> None:
    """Cued by the node's own progress event: the 30 s node stops, named."""
    started = threading.Event()

    def on_progress(job: dict[str, Any], line: str) -> None:
        if "TestSleep" in line:
            started.set()

    worker = make_worker(settings, progress=on_progress)
    thread, answer = handle_in_thread(
        worker, {"id": "run", "input": {"workflow": workflows.sleeps(30)}}
    )
    assert started.wait(10)
    worker.cancel("run")
    thread.join(10)
    (body,) = answer
    assert body["message"].startswith("The job was cancelled and stopped at node"), body
    assert body["code"] == "execution_interrupted"
    assert_next_job_runs_and_nothing_is_left(worker, settings)


def test_a_job_cancelled_while_it_waits_for_the_previous_one_stops_waiting(
    settings: Settings,
) -> None:
    """One job at a time (MAX_CONCURRENT_JOBS=1): job A holds the engine (a node deaf to
    interrupts, released only by the test); job B, sent meanwhile, waits for its turn.
    Cancelling B answers it at once, while A still runs; A then ends normally and the next
    job runs. (With jobs overlapping: tests/unit/test_worker_pipeline.py.)"""
    worker = make_worker(dataclasses.replace(settings, max_concurrent_jobs=1))
    runtime = worker.runtime
    assert isinstance(runtime, FakeRuntime)
    first, first_answer = handle_in_thread(
        worker, {"id": "a", "input": {"workflow": workflows.hangs()}}
    )
    try:
        assert runtime.hanging.wait(10)
        second, second_answer = handle_in_thread(
            worker, {"id": "b", "input": {"workflow": workflows.batch(1)}}
        )
        while not worker.cancel("b"):  # B is not in handle() yet: ask again
            assert second.is_alive()
            time.sleep(0.01)
        second.join(10)
        assert not second.is_alive() and first.is_alive()  # B answered; A is still held
        assert_cancelled(second_answer, "while the job waited for the previous one to finish")
    finally:
        runtime.release.set()
    first.join(10)
    (body,) = first_answer
    assert body["errors"] == [] and len(body["images"]) == 1, body
    assert_next_job_runs_and_nothing_is_left(worker, settings)


def test_a_cancel_before_the_run_is_not_lost_when_the_engine_starts(settings: Settings) -> None:
    """A cancel that lands between phases (here: as the inputs finish) stops the job at the
    next check, although the engine clears its own interrupt flag when a run starts."""

    class CancelOnFetch:
        def fetch(self, url: str) -> bytes:
            worker.cancel("early")
            return base64.b64decode(png_b64())

    worker = Worker(settings, FakeRuntime(settings), fetcher=CancelOnFetch())
    worker.boot()
    body = worker.handle(
        {
            "id": "early",
            "input": {
                "workflow": workflows.invert("a.png"),
                "images": [{"name": "a.png", "image": "https://images.example/a.png"}],
            },
        }
    )
    assert body["code"] == "execution_interrupted", body
    assert "cancelled" in body["message"]
    assert worker.runtime.jobs == []  # type: ignore[attr-defined]


class HeldUploader:
    """An S3 endpoint that takes the request and holds it; ``reached`` is the cue."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    def upload(self, key: str, path: Path, content_type: str) -> str:
        self.reached.set()
        self.release.wait(30)
        return f"https://bucket.example/{key}"


def test_a_cancel_during_delivery_stops_waiting_for_the_upload(settings: Settings) -> None:
    uploader = HeldUploader()
    worker = make_worker(settings, uploader=uploader)
    thread, answer = handle_in_thread(
        worker, {"id": "up", "input": {"workflow": workflows.batch(1)}}
    )
    try:
        assert uploader.reached.wait(10)
        worker.cancel("up")
        thread.join(10)
        assert_cancelled(answer, "while delivering outputs")
    finally:
        uploader.release.set()
    worker.uploader = None
    assert_next_job_runs_and_nothing_is_left(worker, settings)


def test_cancel_reaches_only_the_job_it_names(settings: Settings) -> None:
    worker = make_worker(settings)
    assert worker.cancel("nobody") is False
    body = worker.handle({"id": "other", "input": {"workflow": workflows.batch(1)}})
    assert len(body["images"]) == 1


def test_a_cancel_during_base64_delivery_fails_the_job_as_cancelled(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Base64 delivery runs on the job's thread (nothing slow to wait for): a cancel that
    comes while it encodes still fails the job as cancelled, and the worker goes on."""
    worker = make_worker(settings)
    real_deliver = engine.worker.deliver

    def cancelled_while_encoding(*args: Any, **kwargs: Any) -> Any:
        assert worker.cancel("b64")
        return real_deliver(*args, **kwargs)

    monkeypatch.setattr(engine.worker, "deliver", cancelled_while_encoding)
    answer = worker.handle({"id": "b64", "input": {"workflow": workflows.batch(1)}})
    assert answer["code"] == "execution_interrupted", answer
    assert "while delivering outputs" in answer["message"]
    monkeypatch.setattr(engine.worker, "deliver", real_deliver)
    assert_next_job_runs_and_nothing_is_left(worker, settings)


def test_jobs_share_one_job_thread(settings: Settings) -> None:
    """No thread per job: every job runs on the same long-lived job thread."""
    worker = make_worker(settings)
    seen: list[int] = []
    original = worker.run

    def noting_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(threading.get_ident())
        return original(*args, **kwargs)

    worker.run = noting_run  # type: ignore[method-assign]
    for n in range(3):
        body = worker.handle({"id": f"t{n}", "input": {"workflow": workflows.batch(1)}})
        assert body["errors"] == [], body
    assert len(set(seen)) == 1 and seen[0] != threading.get_ident()


def test_convert_output_is_bounded_by_the_output_limit_not_the_input_limit(
    settings: Settings,
) -> None:
    """A tiny INPUT_MAX_PIXELS (inputs only) leaves a 128x128 output's conversion alone;
    OUTPUT_MAX_PIXELS below its size returns it as it was, saying which limit."""
    request = {
        "workflow": workflows.batch(1, size=128),
        "convert_output": {"format": "jpeg"},
    }
    small_inputs = dataclasses.replace(settings, input_max_pixels=100)
    body = make_worker(small_inputs).handle({"id": "o1", "input": request})
    assert body["errors"] == []
    assert [i["filename"] for i in body["images"]] == ["batch_00001_.jpg"]

    small_outputs = dataclasses.replace(settings, output_max_pixels=128 * 128 - 1)
    body = make_worker(small_outputs).handle({"id": "o2", "input": request})
    assert [i["filename"] for i in body["images"]] == ["batch_00001_.png"]
    (line,) = body["errors"]
    assert "128x128" in line and "OUTPUT_MAX_PIXELS" in line, line


def test_the_runtime_gets_the_workflow_as_sent_for_output_metadata(settings: Settings) -> None:
    """Output files embed the user's workflow (their names, not the per-job folders), and
    the editor graph when they sent one; OUTPUT_METADATA=false passes neither."""
    api = workflows.invert("a.png", "mine/inverted")
    sent = json.loads(json.dumps(api))
    worker = make_worker(settings)
    job = {"workflow": api, "images": [{"name": "a.png", "image": png_b64()}]}
    assert worker.handle({"id": "m1", "input": job})["errors"] == []
    (spec,) = worker.runtime.jobs  # type: ignore[attr-defined]
    assert spec.sent_prompt == sent and spec.sent_graph is None
    assert spec.workflow["1"]["inputs"]["image"] != "a.png"  # what runs is scoped

    graph = ui_graphs.UiGraph()
    graph.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    graph.node(2, "SaveImage", ["ui"], inputs=[("images", "IMAGE")])
    graph.link(1, 0, 2, "images")
    ui = graph.build()
    assert worker.handle({"id": "m2", "input": {"workflow": ui}})["errors"] == []
    spec = worker.runtime.jobs[-1]  # type: ignore[attr-defined]
    assert spec.sent_graph == ui
    assert spec.sent_prompt["2"]["inputs"]["filename_prefix"] == "ui"

    # ComfyUI's /prompt body: the prompt runs, and its editor graph is what files embed.
    body = {"prompt": api, "client_id": "c", "extra_data": {"extra_pnginfo": {"workflow": ui}}}
    job = {"workflow": body, "images": [{"name": "a.png", "image": png_b64()}]}
    assert worker.handle({"id": "m4", "input": job})["errors"] == []
    spec = worker.runtime.jobs[-1]  # type: ignore[attr-defined]
    assert spec.sent_prompt == sent and spec.sent_graph == ui

    quiet = make_worker(dataclasses.replace(settings, output_metadata=False))
    assert quiet.handle({"id": "m3", "input": {"workflow": ui}})["errors"] == []
    spec = quiet.runtime.jobs[-1]  # type: ignore[attr-defined]
    assert spec.sent_prompt is None and spec.sent_graph is None


def test_a_url_in_a_workflow_value_reaches_no_answer_or_log_with_its_token(
    settings: Settings,
) -> None:
    """A LoadImage given a presigned link: the validation error echoes the value; the
    answer and the log show the link without its query and user info."""
    import logging

    from engine import logs

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs._JobFilter())  # the worker's log handler's filter
    logging.getLogger().addHandler(handler)
    url = "https://alice:pa55word@h.example/in.png?token=SECRET-TOKEN-1234"
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": url}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    try:
        body = make_worker(settings).handle({"id": "tok", "input": {"workflow": workflow}})
    finally:
        logging.getLogger().removeHandler(handler)
    assert body["code"] == "workflow_validation_failed"
    text = json.dumps(body)
    assert "https://h.example/in.png?***" in body["error"]
    assert "SECRET-TOKEN-1234" not in text and "pa55word" not in text
    logged = stream.getvalue()
    assert "https://h.example/in.png?***" in logged
    assert "SECRET-TOKEN-1234" not in logged and "pa55word" not in logged


def test_a_job_that_saves_no_file_says_so(settings: Settings) -> None:
    """Output nodes that save nothing (here an empty batch): the job completes, and
    errors[] says why no file came back, instead of an empty answer in silence."""
    workflow = workflows.batch(1)
    workflow["1"]["inputs"]["batch_size"] = 0
    body = make_worker(settings).handle({"id": "none", "input": {"workflow": workflow}})
    assert body["images"] == []
    assert body["errors"] == [engine.worker.NO_FILES]
    saved = make_worker(settings).handle({"id": "one", "input": {"workflow": workflows.batch(1)}})
    assert len(saved["images"]) == 1 and saved["errors"] == []


def test_a_prompt_bodys_editor_graph_nested_too_deep_is_named_not_a_bug(
    settings: Settings,
) -> None:
    """The editor graph a /prompt body carries is embedded in the outputs: walked with the
    workflow's own bounds (it raised RecursionError, an internal error, before)."""
    value: Any = 1
    for _ in range(1100):
        value = [value]
    graph = {"nodes": [{"id": 1, "type": "EmptyImage", "widgets_values": [value]}], "links": []}
    body = {
        "prompt": workflows.batch(count=1, size=8),
        "extra_data": {"extra_pnginfo": {"workflow": graph}},
    }
    answer = make_worker(settings).handle({"id": "deep", "input": {"workflow": body}})
    assert answer["code"] == "workflow_validation_failed", answer
    assert answer["details"][0].startswith(
        "workflow.extra_data.extra_pnginfo.workflow.nodes[0].widgets_values[0]"
    )
    assert "nested more than 64 levels deep" in answer["details"][0]
