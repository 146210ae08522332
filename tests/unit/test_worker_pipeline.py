"""Jobs in flight together (MAX_CONCURRENT_JOBS): one job's I/O overlaps another's run.

Every overlap is proven by events: a run held by a node that waits for the test, a
download or an upload held until the test lets it go. Nothing here depends on how fast
the machine is; the bounds on the waits only keep a broken worker from hanging the suite.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.errors import ItemError
from engine.pipeline import Ticket
from engine.settings import Settings
from engine.worker import Worker
from tests import workflows
from tests.fake_runtime import FakeRuntime
from tests.unit.test_pipeline import wait_until

_HANG_S = 10.0


def png_bytes(color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


class Fetches:
    """Input downloads: each URL's fetch is noted (``started``) and, for the URLs listed
    in ``held``, waits until the test releases it."""

    def __init__(self, *held: str) -> None:
        self.started: dict[str, threading.Event] = {}
        self.held = {url: threading.Event() for url in held}
        self._lock = threading.Lock()

    def event(self, url: str) -> threading.Event:
        with self._lock:
            return self.started.setdefault(url, threading.Event())

    def fetch(self, url: str) -> bytes:
        self.event(url).set()
        if url in self.held:
            assert self.held[url].wait(_HANG_S)
        return png_bytes()


class HeldUploads:
    """An S3 stand-in whose uploads for job ``held_job`` hang until released."""

    def __init__(self, held_job: str) -> None:
        self.held_job = held_job
        self.holding = threading.Event()
        self.release = threading.Event()
        self.keys: list[str] = []

    def upload(self, key: str, path: Path, content_type: str) -> str:
        if key.startswith(f"{self.held_job}/"):
            self.holding.set()
            if not self.release.wait(_HANG_S):
                raise ItemError(path.name, "upload never released")
        self.keys.append(key)
        return f"https://bucket.example/{key}"


def make_worker(settings: Settings, jobs: int = 2, **kwargs: Any) -> Worker:
    kwargs.setdefault("fetcher", Fetches())
    worker = Worker(
        dataclasses.replace(settings, max_concurrent_jobs=jobs), FakeRuntime(settings), **kwargs
    )
    worker.boot()
    return worker


def job_with_image(job_id: str) -> dict[str, Any]:
    """A job that sends an input image and writes an output: files of its own."""
    image = base64.b64encode(png_bytes()).decode()
    return {
        "id": job_id,
        "input": {
            "workflow": workflows.invert("x.png"),
            "images": [{"name": "x.png", "image": image}],
        },
    }


def files_under(worker: Worker) -> list[Path]:
    return sorted(p for p in Path(worker.settings.work_dir).rglob("*") if p.is_file())


def fake(worker: Worker) -> FakeRuntime:
    assert isinstance(worker.runtime, FakeRuntime)
    return worker.runtime


def handle_in_thread(worker: Worker, job: dict[str, Any]) -> tuple[threading.Thread, list[Any]]:
    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(worker.handle(job)), daemon=True)
    thread.start()
    return thread, answer


def answer_of(thread: threading.Thread, answer: list[Any]) -> dict[str, Any]:
    thread.join(_HANG_S)
    assert not thread.is_alive(), "the job did not end"
    (body,) = answer
    assert isinstance(body, dict)
    return body


def engine_waits(worker: Worker) -> dict[int, threading.Event]:
    """Events set as each job (by its ticket number) starts waiting for the engine."""
    waits: dict[int, threading.Event] = {n: threading.Event() for n in range(8)}
    pipeline = worker._pipeline
    original = pipeline.take_engine

    def noting(ticket: Ticket, deadline: Any) -> bool:
        waits[ticket.number].set()
        return original(ticket, deadline)

    pipeline.take_engine = noting  # type: ignore[method-assign]
    return waits


def with_url(name: str, url: str) -> dict[str, Any]:
    return {"workflow": workflows.invert(name), "images": [{"name": name, "image": url}]}


def hanging_run_of(image: str) -> dict[str, Any]:
    """LoadImage -> a node deaf to interrupts, held until the test releases it -> SaveImage."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "TestHang", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "h"}},
    }


def waiting_run(tmp_path: Path) -> tuple[dict[str, Any], Path, Path]:
    """A run that waits for a file and stops when interrupted (TestWaitFile)."""
    cue, release = tmp_path / "cue", tmp_path / "release"
    workflow = {
        "1": {"class_type": "TestWaitFile", "inputs": {"cue": str(cue), "release": str(release)}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "w"}},
    }
    return workflow, cue, release


def test_the_next_jobs_inputs_download_while_a_run_is_held(settings: Settings) -> None:
    """Job B's input is fetched while job A's run is blocked; B runs once A's run ends."""
    fetches = Fetches()
    worker = make_worker(settings, fetcher=fetches)
    runtime = fake(worker)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflows.hangs()}})
    try:
        assert runtime.hanging.wait(_HANG_S)
        b = handle_in_thread(worker, {"id": "b", "input": with_url("b.png", "https://x/b.png")})
        assert fetches.event("https://x/b.png").wait(_HANG_S)
        assert not runtime.release.is_set() and a[0].is_alive()  # A's run still held
    finally:
        runtime.release.set()
    assert answer_of(*a)["errors"] == []
    assert len(answer_of(*b)["images"]) == 1
    assert [job.prompt_id for job in runtime.jobs] == ["a", "b"]


def test_one_job_at_a_time_holds_the_next_job_back_whole(settings: Settings) -> None:
    """MAX_CONCURRENT_JOBS=1: while A runs, B is not admitted; its input is not fetched."""
    fetches = Fetches()
    worker = make_worker(settings, jobs=1, fetcher=fetches)
    runtime = fake(worker)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflows.hangs()}})
    try:
        assert runtime.hanging.wait(_HANG_S)
        b = handle_in_thread(worker, {"id": "b", "input": with_url("b.png", "https://x/b.png")})
        wait_until(lambda: worker._pipeline.waiting == 1)  # B waits for a place
        assert not fetches.event("https://x/b.png").is_set()
    finally:
        runtime.release.set()
    assert answer_of(*a)["errors"] == [] and answer_of(*b)["errors"] == []
    assert fetches.event("https://x/b.png").is_set()
    assert [job.prompt_id for job in runtime.jobs] == ["a", "b"]


def test_runs_go_in_arrival_order_even_when_a_later_job_is_ready_first(
    settings: Settings,
) -> None:
    """A runs; B's input is still downloading; C, sent after B, has nothing to download and
    waits for the engine. When A ends, C still waits for B: runs go A, B, C."""
    fetches = Fetches("https://x/b.png")
    worker = make_worker(settings, jobs=3, fetcher=fetches)
    runtime = fake(worker)
    waits = engine_waits(worker)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflows.hangs()}})
    assert runtime.hanging.wait(_HANG_S)
    b = handle_in_thread(worker, {"id": "b", "input": with_url("b.png", "https://x/b.png")})
    assert fetches.event("https://x/b.png").wait(_HANG_S)
    c = handle_in_thread(worker, {"id": "c", "input": {"workflow": workflows.batch(1)}})
    assert waits[2].wait(_HANG_S)  # C is ready and waits for the engine
    runtime.release.set()
    assert answer_of(*a)["errors"] == []
    # The engine is free, but B (first in line) is still downloading: C must not go.
    assert c[0].is_alive() and [job.prompt_id for job in runtime.jobs] == ["a"]
    fetches.held["https://x/b.png"].set()
    assert answer_of(*b)["errors"] == [] and answer_of(*c)["errors"] == []
    assert [job.prompt_id for job in runtime.jobs] == ["a", "b", "c"]


@pytest.mark.parametrize("where", ["inputs", "engine"])
def test_a_cancel_of_the_next_job_leaves_the_running_job_alone(
    settings: Settings, tmp_path: Path, where: str
) -> None:
    """A's run honours interrupts; B is cancelled while it downloads its input or while
    it waits for the engine. B ends at once as cancelled; A's run is not interrupted (the
    interrupt is global) and completes when the test lets it."""
    fetches = Fetches("https://x/b.png")
    worker = make_worker(settings, fetcher=fetches)
    runtime = fake(worker)
    waits = engine_waits(worker)
    workflow, cue, release = waiting_run(tmp_path)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflow}})
    wait_until(cue.exists)  # A's run has started
    b_input = (
        with_url("b.png", "https://x/b.png")
        if where == "inputs"
        else {"workflow": workflows.batch(1)}
    )
    b = handle_in_thread(worker, {"id": "b", "input": b_input})
    if where == "inputs":
        assert fetches.event("https://x/b.png").wait(_HANG_S)
    else:
        assert waits[1].wait(_HANG_S)
    assert worker.cancel("b")
    body = answer_of(*b)
    assert body["code"] == "execution_interrupted", body
    expected = (
        "while downloading inputs"
        if where == "inputs"
        else "while the job waited for the run of the job before it"
    )
    assert body["message"] == f"The job was cancelled and stopped {expected}"
    assert a[0].is_alive() and not runtime._interrupt.is_set()
    release.write_text("go")
    fetches.held["https://x/b.png"].set()
    body = answer_of(*a)
    assert body["errors"] == [] and len(body["images"]) == 1, body
    assert [job.prompt_id for job in runtime.jobs] == ["a"]


def test_a_cancel_of_the_running_job_interrupts_its_own_run(
    settings: Settings, tmp_path: Path
) -> None:
    """The other way round: cancelling A, which holds the engine, stops A's run; B, waiting
    for the engine, then runs and completes."""
    worker = make_worker(settings)
    waits = engine_waits(worker)
    workflow, cue, _release = waiting_run(tmp_path)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflow}})
    wait_until(cue.exists)
    b = handle_in_thread(worker, {"id": "b", "input": {"workflow": workflows.batch(1)}})
    assert waits[1].wait(_HANG_S)
    assert worker.cancel("a")
    assert answer_of(*a)["code"] == "execution_interrupted"
    body = answer_of(*b)
    assert body["errors"] == [] and len(body["images"]) == 1, body


def test_a_hung_delivery_does_not_hold_the_next_jobs_run(settings: Settings) -> None:
    """A's upload hangs; B runs, delivers and completes meanwhile; A completes once its
    upload is let go."""
    uploads = HeldUploads("a")
    worker = make_worker(settings, uploader=uploads)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflows.batch(1)}})
    assert uploads.holding.wait(_HANG_S)
    body = answer_of(
        *handle_in_thread(worker, {"id": "b", "input": {"workflow": workflows.batch(1)}})
    )
    assert body["errors"] == [] and body["images"][0]["type"] == "s3_url", body
    assert a[0].is_alive()  # A is still delivering
    uploads.release.set()
    body = answer_of(*a)
    assert body["errors"] == [] and body["images"][0]["data"].startswith(
        "https://bucket.example/a/"
    )
    assert [job.prompt_id for job in fake(worker).jobs] == ["a", "b"]


def test_png_encodes_leave_the_run_only_while_another_job_is_in_flight(
    settings: Settings,
) -> None:
    """Alone, a job's PNGs are encoded in its run (cheaper than sending the pixels to a
    helper); with another job in flight (A still delivering), B's run hands them off."""
    uploads = HeldUploads("a")
    worker = make_worker(settings, uploader=uploads)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflows.batch(1)}})
    assert uploads.holding.wait(_HANG_S)
    answer_of(*handle_in_thread(worker, {"id": "b", "input": {"workflow": workflows.batch(1)}}))
    uploads.release.set()
    answer_of(*a)
    spec_a, spec_b = fake(worker).jobs
    assert spec_a.pending_files is None
    assert spec_b.pending_files is not None


def test_jobs_in_flight_that_send_the_same_input_share_it_until_both_end(
    settings: Settings,
) -> None:
    """Same name, same bytes: one input folder for both jobs. A ends while B waits for the
    engine; the folder stays for B, whose run reads it; it goes when B ends. Each job gets
    its own output (ComfyUI's cache serves B's upstream nodes, not its SaveImage)."""
    image = base64.b64encode(png_bytes()).decode()
    worker = make_worker(settings)
    runtime = fake(worker)
    waits = engine_waits(worker)
    job = {"images": [{"name": "same.png", "image": image}]}
    a = handle_in_thread(
        worker, {"id": "a", "input": {**job, "workflow": hanging_run_of("same.png")}}
    )
    assert runtime.hanging.wait(_HANG_S)
    b = handle_in_thread(
        worker, {"id": "b", "input": {**job, "workflow": workflows.invert("same.png")}}
    )
    assert waits[1].wait(_HANG_S)
    runtime.release.set()
    first, second = answer_of(*a), answer_of(*b)
    assert first["errors"] == [] and second["errors"] == [], (first, second)
    assert first["images"][0]["data"] != second["images"][0]["data"]  # hung vs inverted
    assert [p for p in settings.work_dir.rglob("*") if p.is_file()] == []


def test_previews_of_a_job_in_flight_outlive_another_jobs_end(settings: Settings) -> None:
    """The temp folder is shared: a job that ends removes its own previews, and the whole
    folder is emptied only when no job is in flight. A is held in its delivery; B, a
    preview, runs and ends meanwhile."""
    uploads = HeldUploads("a")
    worker = make_worker(settings, uploader=uploads)
    runtime = fake(worker)
    emptied: list[int] = []
    original = runtime.after_job
    runtime.after_job = lambda: (emptied.append(1), original())[1]  # type: ignore[method-assign]
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflows.batch(1)}})
    assert uploads.holding.wait(_HANG_S)
    left = runtime.directories.temp / "left-by-a-node.png"
    left.write_bytes(png_bytes())
    preview = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    try:
        body = answer_of(*handle_in_thread(worker, {"id": "b", "input": {"workflow": preview}}))
        assert body["errors"] == [] and len(body["images"]) == 1, body
        assert emptied == [] and left.exists()  # A was in flight: only B's own preview went
        assert [p.name for p in runtime.directories.temp.iterdir()] == [left.name]
    finally:
        # Only now may A end: its end, the last in flight, empties the temp folder.
        uploads.release.set()
    assert answer_of(*a)["errors"] == []
    assert emptied == [1] and not left.exists()


def test_the_jobs_behind_a_job_that_will_not_stop_are_answered_at_once(
    settings: Settings,
) -> None:
    """A holds the engine with a node deaf to interrupts; B waits for the engine. A is
    cancelled and does not stop within JOB_STOP_GRACE_S (0 here): the worker is out of
    service, and B is answered so at once instead of waiting out its own limit."""
    worker = make_worker(dataclasses.replace(settings, job_stop_grace_s=0.0))
    runtime = fake(worker)
    waits = engine_waits(worker)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflows.hangs()}})
    try:
        assert runtime.hanging.wait(_HANG_S)
        b = handle_in_thread(worker, {"id": "b", "input": {"workflow": workflows.batch(1)}})
        assert waits[1].wait(_HANG_S)
        assert worker.cancel("a")
        assert answer_of(*a)["code"] == "worker_stuck"
        body = answer_of(*b)
        assert body["code"] == "worker_stuck" and body["refresh_worker"] is True, body
    finally:
        runtime.release.set()


def test_a_workflow_the_engine_refuses_fails_while_another_jobs_run_is_held(
    settings: Settings,
) -> None:
    """Job B names an unknown node type: its checks run on its own lane, not in the
    engine's turn, so its error comes back while A's run is still held, and A then
    completes. The check of B ran on a lane; A's run executes what A's check left."""
    worker = make_worker(settings)
    runtime = fake(worker)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflows.hangs()}})
    try:
        assert runtime.hanging.wait(_HANG_S)
        bad = workflows.batch(1)
        bad["9"] = {"class_type": "NoSuchNode", "inputs": {}}
        b = handle_in_thread(worker, {"id": "b", "input": {"workflow": bad}})
        body = answer_of(*b)  # answered while A's run is held
        assert not runtime.release.is_set() and a[0].is_alive()
        assert body["code"] == "workflow_validation_failed", body
        assert "NoSuchNode" in body["error"]
    finally:
        runtime.release.set()
    assert answer_of(*a)["errors"] == []
    # A arrived alone: it ran on the engine thread. B's check ran on its own lane.
    assert runtime.validated_on[0] == "job", runtime.validated_on
    assert runtime.validated_on[1].startswith("job-lane-"), runtime.validated_on
    # Each lane works within its own job's deadline: a first-use pack import waits in it.
    assert runtime.deadline_bound == [True, True]
    assert [job.prompt_id for job in runtime.jobs] == ["a"]  # B never took the engine
    assert all(job.checked is not None for job in runtime.jobs)


def test_a_job_alone_runs_on_the_engine_thread_and_ends_on_its_own_lane(
    settings: Settings,
) -> None:
    """A job admitted while no other is in flight runs on the engine thread (no hand-over
    of its run). Once answered, the wait for its answer to be sent and the removal of its
    files go to its lane: a job arriving meanwhile runs and answers while A's files still
    wait for A's caller, and A's files then go."""
    worker = make_worker(settings)
    runtime = fake(worker)
    runtime.runs_on_job_thread = True  # as ComfyUI's runs: B's needs the engine thread
    sent_a = threading.Event()
    body = worker.handle(job_with_image("a"), clean_up_after=sent_a)
    assert body["errors"] == [] and len(body["images"]) == 1, body
    assert runtime.validated_on == ["job"]
    a_files = files_under(worker)
    assert a_files, "A's files wait for its caller"
    b = answer_of(*handle_in_thread(worker, {"id": "b", "input": {"workflow": workflows.batch(1)}}))
    assert b["errors"] == [] and len(b["images"]) == 1, b
    # B arrived while A was in flight (its end held): B took a lane, and its run did not
    # wait for A's end, which would have removed A's files first.
    assert runtime.validated_on[1].startswith("job-lane-"), runtime.validated_on
    assert not sent_a.is_set() and set(a_files) <= set(files_under(worker))
    sent_a.set()
    assert worker._pipeline.wait_idle(_HANG_S)
    assert files_under(worker) == []


@pytest.mark.parametrize(
    "extra",
    [{"convert_output": {"format": "jpeg"}}, {"frames_to_video": {"fps": 8.0}}],
    ids=["convert_output", "frames_to_video"],
)
def test_a_job_whose_end_is_not_bounded_local_work_runs_on_a_lane_even_alone(
    settings: Settings, extra: dict[str, Any]
) -> None:
    """A conversion or a video made of frames follows the run: a job asking for one runs
    on a lane, so a job arriving meanwhile never waits for that work before its run."""
    worker = make_worker(settings)
    runtime = fake(worker)
    worker.handle({"id": "a", "input": {"workflow": workflows.batch(1), **extra}})
    assert len(runtime.validated_on) == 1 and runtime.validated_on[0].startswith("job-lane-")


def test_with_s3_delivery_a_job_alone_runs_on_a_lane(settings: Settings) -> None:
    """An upload follows the run: never on the engine thread, even for a job alone."""
    worker = make_worker(settings, uploader=HeldUploads("nobody"))
    runtime = fake(worker)
    body = worker.handle({"id": "a", "input": {"workflow": workflows.batch(1)}})
    assert body["errors"] == [], body
    assert len(runtime.validated_on) == 1 and runtime.validated_on[0].startswith("job-lane-")


def test_with_one_job_at_a_time_the_engine_thread_is_the_only_lane(settings: Settings) -> None:
    worker = make_worker(settings, jobs=1, uploader=HeldUploads("nobody"))
    runtime = fake(worker)
    worker.handle({"id": "a", "input": {"workflow": workflows.batch(1)}})
    assert runtime.validated_on == ["job"]
