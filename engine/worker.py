"""One job, start to finish: request -> inputs -> workflow -> runtime -> outputs -> delivery.

Each successful response carries ``stats``: the seconds of each phase of the job and of
each node ComfyUI ran, rounded to the millisecond.

:class:`Worker` owns the outside systems (the ComfyUI runtime, the image
fetcher, the S3 uploader), all passed in so tests can replace each one. Its
:meth:`Worker.handle` is RunPod's handler body: expected failures become the
contract's ``{"error", "details"}`` shape; anything else is a bug and
propagates, so RunPod records its type and traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from engine import logs
from engine.convert import convert_outputs
from engine.deadline import Deadline
from engine.delivery import Uploader, deliver
from engine.errors import OutputDeliveryError, WorkerError, WorkerStuckError
from engine.inputs import Fetcher, HttpFetcher, store_images
from engine.outputs import OutputFile, collect_outputs
from engine.request import JobRequest, parse_request
from engine.runtime import JobSpec, ProgressEvent, Runtime, load_runtime
from engine.s3 import S3Uploader
from engine.settings import Settings
from engine.stats import Phase, describe_stats, job_stats
from engine.workflow import normalize_paths, rerun_previews, scope_outputs

log = logging.getLogger(__name__)

ProgressSink = Callable[[dict[str, Any], str], None]
"""Called with the RunPod job and a progress line (``runpod.serverless.progress_update``)."""

# Per-step progress can arrive hundreds of times a second on a GPU; RunPod's
# progress update is an HTTP POST each, so steps are sent at most this often.
_PROGRESS_INTERVAL_S = 0.5

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


def job_folder(job_id: str) -> str:
    """The per-run folder name under ComfyUI's output folder.

    Unique per run, not only per job id: a job id seen twice (a retried job, a local
    test id) must still change every ``filename_prefix``, or ComfyUI's cache would
    hand back the first run's files, already deleted.
    """
    return f"job-{_UNSAFE_ID_CHARS.sub('_', job_id)[:64] or 'unnamed'}-{uuid.uuid4().hex[:8]}"


class _Progress:
    """Forwards runtime progress to RunPod: every node change, steps throttled."""

    def __init__(self, job: dict[str, Any], sink: ProgressSink | None) -> None:
        self._job, self._sink = job, sink
        self._last_node: str | None = None
        self._last_sent = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        if self._sink is None:
            return
        now = time.monotonic()
        with self._lock:
            node_changed = event.node_id != self._last_node
            if not node_changed and now - self._last_sent < _PROGRESS_INTERVAL_S:
                return
            self._last_node, self._last_sent = event.node_id, now
        try:
            self._sink(self._job, event.describe())
        except Exception:  # progress is best-effort: a failed POST must not fail the job
            log.warning("could not send progress update", exc_info=True)


class Worker:
    """Runs jobs against one booted runtime."""

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        *,
        fetcher: Fetcher | None = None,
        uploader: Uploader | None = None,
        progress: ProgressSink | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.fetcher: Fetcher = fetcher or HttpFetcher(settings)
        self.uploader = uploader
        self.progress = progress
        # One job at a time: a cancelled job's thread finishes (promptly, interrupted)
        # before the next job touches ComfyUI's folders. Held by the job's own thread.
        self._one_job = threading.Lock()
        # Set when a job's thread would not stop after its deadline: every later job gets
        # this error (and RunPod a request for a fresh worker) instead of waiting on it.
        self._stuck: WorkerStuckError | None = None

    @classmethod
    def from_settings(cls, settings: Settings, progress: ProgressSink | None = None) -> Worker:
        """The production wiring: the configured runtime, HTTP fetcher and S3 (if set)."""
        uploader = S3Uploader(settings.bucket) if settings.bucket else None
        return cls(settings, load_runtime(settings), uploader=uploader, progress=progress)

    def boot(self) -> None:
        """Start the runtime; once per worker process, before the first job."""
        started = time.perf_counter()
        # One pixel limit for the worker's checks and for ComfyUI's own image loaders.
        Image.MAX_IMAGE_PIXELS = self.settings.input_max_pixels
        self.runtime.boot()
        log.info(
            "worker ready in %.2f s (outputs: %s)",
            time.perf_counter() - started,
            "S3" if self.uploader else "base64",
        )

    def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        """RunPod's handler: the response for one job, or the contract's error shape."""
        job_id = str(job.get("id") or f"local-{uuid.uuid4()}")
        job_input = job.get("input")
        request_key = job_input.get("comfy_org_api_key") if isinstance(job_input, dict) else None
        job_secrets = [request_key] if isinstance(request_key, str) else []
        secrets = [*job_secrets, *self.settings.response_secrets()]
        deadline = Deadline.start(self.settings.job_timeout_s)
        with logs.job_context(job_id, job_secrets):
            started = time.perf_counter()
            try:
                result = self._run_within(
                    deadline, job_id, job_input, _Progress(job, self.progress)
                )
            except WorkerError as exc:
                log.warning(
                    "job failed in %.2f s: %s", time.perf_counter() - started, exc.summary()
                )
                response: dict[str, Any] = logs.redact_obj(exc.to_response(), secrets)
                return response
            log.info(
                "job done in %.2f s: %d output(s), %d error(s); %s",
                time.perf_counter() - started,
                len(result["images"]),
                len(result["errors"]),
                describe_stats(result["stats"]),
            )
            redacted: dict[str, Any] = logs.redact_obj(result, secrets)
            return redacted

    def cancel(self) -> None:
        """Stop the running job (RunPod cancelled it); it fails as interrupted."""
        self.runtime.interrupt()

    def _run_within(
        self,
        deadline: Deadline,
        job_id: str,
        job_input: Any,
        progress: Callable[[ProgressEvent], None],
    ) -> dict[str, Any]:
        """Run the job on a thread of its own and answer by its deadline, whatever it does.

        The thread is what makes the deadline hold: a job stuck anywhere (a child process
        that never execs, an upload that never ends, a node deaf to interrupts) cannot
        hold the answer back. Past the deadline ComfyUI is interrupted and the job gets
        ``job_stop_grace_s`` to unwind; a job that does not is abandoned, and this worker
        takes no further job and asks RunPod for a fresh one.
        """
        if self._stuck is not None:
            # A new exception each time: one raised again would grow its traceback per job.
            raise WorkerStuckError(self._stuck.message, self._stuck.details)
        if not self._one_job.acquire(timeout=_lock_timeout(deadline.remaining())):
            raise deadline.exceeded("while the job waited for the previous one to finish")
        phase = Phase("start")
        outcome: Future[dict[str, Any]] = Future()

        def job_thread() -> None:
            try:
                outcome.set_result(self.run(job_id, job_input, progress, deadline, phase))
            except BaseException as exc:  # handed to the waiting thread, which decides
                outcome.set_exception(exc)
            finally:
                self._one_job.release()

        threading.Thread(target=job_thread, name=f"job-{job_id[:32]}", daemon=True).start()
        # wait(), then result(): a JobTimeoutError is also a TimeoutError, the very class
        # Future.result() raises when it gives up, so the two must not share an except.
        if wait([outcome], timeout=deadline.remaining()).done:
            return outcome.result()
        log.warning(
            "job passed its %g s limit while %s; interrupting it", deadline.limit_s, phase.name
        )
        self.runtime.interrupt()
        if wait([outcome], timeout=self.settings.job_stop_grace_s).done:
            # Whatever the job makes of the interrupt (most often a JobTimeoutError that
            # names the node) is its answer.
            return outcome.result()
        stuck = deadline.exceeded(f"while {phase.name}")
        self._stuck = WorkerStuckError(
            f"This worker is out of service: job {job_id} passed its time limit while "
            f"{phase.name} and did not stop within {self.settings.job_stop_grace_s:g} s",
            ["RunPod replaces this worker; send the job again and a fresh worker takes it"],
        )
        log.error(
            "job did not stop %g s after its limit (while %s): this worker takes no more "
            "jobs and asks RunPod for a fresh one",
            self.settings.job_stop_grace_s,
            phase.name,
        )
        raise WorkerStuckError(
            stuck.message,
            [
                *stuck.details,
                f"The job did not stop within {self.settings.job_stop_grace_s:g} s of the limit "
                "(JOB_STOP_GRACE_S), so RunPod is asked to replace this worker",
            ],
        )

    def run(
        self,
        job_id: str,
        job_input: Any,
        progress: Callable[[ProgressEvent], None] | None = None,
        deadline: Deadline | None = None,
        phase: Phase | None = None,
    ) -> dict[str, Any]:
        """Run one job; raises a ``WorkerError`` for anything the user can fix.

        Each phase starts only while the deadline holds; ``phase`` tells the watchdog in
        :meth:`handle` where the job is, for its log line and error.
        """
        started = time.perf_counter()
        deadline = deadline or Deadline.start(self.settings.job_timeout_s)
        phase = phase or Phase("start")
        request = parse_request(job_input)
        folder = job_folder(job_id)
        scratch = request.frames_to_video is not None or request.convert_output is not None
        with self._job_files(folder, scratch=scratch) as files_of_job:
            phase.enter("downloading inputs", deadline)
            files_of_job.inputs = store_images(
                request.images, self.runtime.directories.input, self.settings, self.fetcher
            )
            phase.enter("running the workflow", deadline)
            result = self.runtime.run(self._job_spec(job_id, request, folder, progress, deadline))
            phase.enter("reading outputs", deadline)
            files, errors = collect_outputs(
                result.outputs,
                self.runtime.directories,
                frames_to_video=request.frames_to_video,
                scratch_dir=files_of_job.scratch if request.frames_to_video else None,
            )
            files = [_unscope(f, folder) for f in files]
            if request.convert_output is not None:
                phase.enter("converting outputs", deadline)
                files, convert_errors = convert_outputs(
                    files, request.convert_output, files_of_job.scratch
                )
                errors += convert_errors
            phase.enter("delivering outputs", deadline)
            try:
                items, delivery_errors = deliver(
                    files,
                    job_id=job_id,
                    uploader=self.uploader,
                    budget_bytes=self.settings.response_budget_bytes,
                    timeout_s=deadline.remaining(),
                )
            except OutputDeliveryError as exc:
                exc.details.extend(errors)  # outputs that could not even be read: say so too
                raise
            phase.enter("cleaning up", deadline)
        phase.enter("done", None)
        stats = job_stats(time.perf_counter() - started, phase.seconds, result)
        return {"images": items, "errors": errors + delivery_errors, "stats": stats}

    def _job_spec(
        self,
        job_id: str,
        request: JobRequest,
        folder: str,
        progress: Callable[[ProgressEvent], None] | None,
        deadline: Deadline,
    ) -> JobSpec:
        workflow = normalize_paths(request.workflow, self.runtime.file_inputs)
        workflow = scope_outputs(workflow, folder)
        workflow = rerun_previews(workflow, folder)
        spec = JobSpec(
            prompt_id=job_id,
            workflow=workflow,
            api_key_comfy_org=request.comfy_org_api_key or self.settings.comfy_org_api_key,
            deadline=deadline,
        )
        return dataclasses.replace(spec, on_progress=progress) if progress else spec

    @contextmanager
    def _job_files(self, folder: str, *, scratch: bool) -> Iterator[_JobFiles]:
        """Files the job makes; every one is removed when the job ends, however it ends.

        The scratch folder (frames joined into a video) is made only when asked for.
        """
        dirs = self.runtime.directories
        files = _JobFiles(scratch=Path(self.settings.work_dir) / "scratch" / folder)
        if scratch:
            files.scratch.mkdir(parents=True, exist_ok=True)
        try:
            yield files
        finally:
            for path in files.inputs:
                _remove_file_and_empty_parents(path, stop=dirs.input)
            for leftover in (files.scratch, dirs.output / folder, dirs.temp / folder):
                shutil.rmtree(leftover, ignore_errors=True)
            self.runtime.after_job()


def _lock_timeout(remaining: float | None) -> float:
    """``Lock.acquire``'s timeout: -1 waits for ever (no limit)."""
    return -1 if remaining is None else remaining


@dataclasses.dataclass
class _JobFiles:
    scratch: Path
    inputs: list[Path] = dataclasses.field(default_factory=list)


def _unscope(file: OutputFile, folder: str) -> OutputFile:
    """Drop the per-job folder from a file's subfolder: users never named it."""
    parts = Path(file.subfolder).parts
    if parts and parts[0] == folder:
        return dataclasses.replace(file, subfolder=str(Path(*parts[1:])) if parts[1:] else "")
    return file


def _remove_file_and_empty_parents(path: Path, stop: Path) -> None:
    path.unlink(missing_ok=True)
    parent = path.parent
    while parent != stop and stop in parent.parents:
        try:
            parent.rmdir()
        except OSError:  # not empty: another input of the job still lives there
            break
        parent = parent.parent
