"""One job, start to finish: request -> inputs -> workflow -> runtime -> outputs -> delivery.

Each successful response carries ``stats``: the seconds of each phase of the job and of
each node ComfyUI ran, rounded to the millisecond.

:class:`Worker` owns the outside systems (the ComfyUI runtime, the image
fetcher, the S3 uploader), all passed in so tests can replace each one. Its
:meth:`Worker.handle` is RunPod's handler body: expected failures become the
contract's ``{"error", "details"}`` shape; anything else is a bug, logged with its
traceback under an id that the answer (``internal_error``) names. Each job's flow
(:meth:`Worker.run`) runs under the watchdog of ``engine.job_watch``, which answers by
the job's deadline whatever the job does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from PIL import Image

from engine import logs, work_dir_lock
from engine.answered import CLEANUP_HOLD_S
from engine.convert import convert_outputs
from engine.deadline import Deadline
from engine.delivery import Uploader, deliver
from engine.errors import (
    InternalError,
    OutputDeliveryError,
    WorkerError,
    WorkerStuckError,
    WorkflowValidationError,
    new_incident,
)
from engine.graph_checks import check_values
from engine.inputs import BoundedFetcher, Fetcher, HttpFetcher, store_images
from engine.job_files import JobFolders, job_folder, sweep_leftovers, temp_outputs
from engine.job_watch import Arrival, JobWatch
from engine.model_prefetch import Prefetcher
from engine.model_urls import ModelUrls
from engine.outputs import OutputFile, collect_outputs
from engine.path_nodes import check_path_nodes
from engine.pipeline import Ticket
from engine.request import JobRequest, parse_request, request_secrets
from engine.runtime import JobSpec, ProgressEvent, Runtime, load_runtime
from engine.s3 import S3Uploader
from engine.settings import Settings
from engine.stats import Phase, describe_stats, job_stats
from engine.ui_shape import check_size
from engine.ui_workflow import as_api_format, is_ui_format
from engine.workflow import (
    explain_unsent_files,
    for_metadata,
    normalize_paths,
    rerun_previews,
    scope_inputs,
    scope_outputs,
)

log = logging.getLogger(__name__)

NO_FILES = (
    "the workflow ran, but its output nodes saved no file (a node that only shows text or "
    "numbers returns none): add SaveImage, SaveVideo or another node that saves one"
)
"""The ``errors[]`` line of a completed job that returns no file."""

ProgressSink = Callable[[dict[str, Any], str], None]
"""Called with the RunPod job and a progress line (``runpod.serverless.progress_update``)."""

# Per-step progress can arrive hundreds of times a second on a GPU; RunPod's
# progress update is an HTTP POST each, so steps are sent at most this often.
_PROGRESS_INTERVAL_S = 0.5


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
        prefetcher: Prefetcher | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.fetcher: Fetcher = fetcher or HttpFetcher(settings)
        self.model_urls = ModelUrls(settings, runtime)
        # A waiting job's model files, read into the page cache while another job runs.
        self.prefetcher = prefetcher or Prefetcher(settings.model_prefetch_max_bytes, runtime)
        self.uploader = uploader
        self.progress = progress
        # Each job runs on its lane under its deadline (engine/job_watch.py); the watch
        # reads this worker's settings and runtime at each use.
        self._watch = JobWatch(self)
        # The watch's pipeline: a job's run takes the engine's turn in it (_engine_turn).
        self._pipeline = self._watch.pipeline
        # Each job's folders, made when it starts and emptied when it ends (their spares
        # renamed into the next job's, input folders shared by jobs that sent the same).
        self._files = JobFolders(runtime.directories, settings.work_dir)

    @classmethod
    def from_settings(cls, settings: Settings, progress: ProgressSink | None = None) -> Worker:
        """The production wiring: the configured runtime, HTTP fetcher and S3 (if set)."""
        uploader = S3Uploader(settings.bucket) if settings.bucket else None
        return cls(settings, load_runtime(settings), uploader=uploader, progress=progress)

    def boot(self) -> None:
        """Start the runtime; once per worker process, before the first job."""
        started = time.perf_counter()
        for warning in self.settings.boot_warnings():  # other workers' variables: what instead
            log.warning(warning)
        # Pillow's guard for every decode; inputs and outputs each have their own check.
        Image.MAX_IMAGE_PIXELS = self.settings.pillow_max_pixels
        # Before the runtime starts, while no job of this process can run: what a killed
        # worker's jobs left in the input, output, temp and scratch folders goes.
        # Another worker process on the same folders would lose its running jobs' files
        # to that sweep: the folder is claimed first (engine/work_dir_lock.py).
        work_dir_lock.claim(self.settings.work_dir)
        sweep_leftovers(self.runtime.directories, self.settings.work_dir)
        self.runtime.boot()
        # Once the runtime knows its model folders: a killed worker's partial downloads.
        self.model_urls.sweep()
        log.info(
            "worker ready in %.2f s (outputs: %s)",
            time.perf_counter() - started,
            "S3" if self.uploader else "base64",
        )

    def handle(
        self, job: dict[str, Any], *, clean_up_after: threading.Event | None = None
    ) -> dict[str, Any]:
        """RunPod's handler: the response for one job, or the contract's error shape.

        The job's files (its inputs, outputs, previews, scratch) are removed when it ends.
        Without ``clean_up_after`` that is before this returns. With it, they are removed
        after the answer, once the caller sets the event (at most ``CLEANUP_HOLD_S``
        later): ``handler.py`` sets it when the runpod SDK has sent the answer on, so the
        removal (a few unlinks and renames: a 64x64 job answers 1.10x sooner per pair on a
        2-core machine, docs/benchmarks.md) does not compete with sending it. Until they are
        removed the job keeps its place among the ``MAX_CONCURRENT_JOBS``.
        """
        arrival = self._arrive(job)
        with (
            self._watch.deadlines.holding(arrival.job_id, arrival.deadline),
            logs.job_context(arrival.job_id, arrival.job_secrets),
        ):
            try:
                result = self._watch.run_within(arrival, self.run, clean_up_after)
            except Exception as exc:
                return self._failed(arrival, exc)
            return self._succeeded(arrival, result)

    async def handle_async(
        self, job: dict[str, Any], *, clean_up_after: threading.Event | None = None
    ) -> dict[str, Any]:
        """:meth:`handle` for an event loop (``handler.py``, the runpod SDK's loop).

        The job runs on its lane as with :meth:`handle`, under the same watchdog, with
        the loop waiting for it (``JobWatch.run_within_async``). Log lines of the loop's
        own thread are bound to the job only between its awaits: other jobs' coroutines
        run on that thread too.
        """
        arrival = self._arrive(job)
        with (
            self._watch.deadlines.holding(arrival.job_id, arrival.deadline),
            logs.job_secrets(arrival.job_id, arrival.job_secrets),
        ):
            try:
                result = await self._watch.run_within_async(
                    arrival, self.run, clean_up_after, self._failed
                )
            except asyncio.CancelledError:
                # The caller stopped waiting (the runpod SDK cancels the handler's task on
                # RunPod's stop): the job stops too, in whatever phase, as by cancel().
                arrival.deadline.cancel()
                raise
            except Exception as exc:
                with logs.bind_job(arrival.job_id):
                    return self._failed(arrival, exc)
            with logs.bind_job(arrival.job_id):
                return self._succeeded(arrival, result)

    def _arrive(self, job: dict[str, Any]) -> Arrival:
        """What the job's watchdog and answer need, its deadline started."""
        job_input = job.get("input")
        job_secrets = request_secrets(job_input)
        return Arrival(
            job_id=str(job.get("id") or f"local-{uuid.uuid4()}"),
            job_input=job_input,
            job_secrets=job_secrets,
            secrets=[*job_secrets, *self.settings.response_secrets()],
            deadline=Deadline.start(self.settings.job_timeout_s),
            progress=_Progress(job, self.progress),
            alone_on_engine=self._local_after_run(job_input),
        )

    def _local_after_run(self, job_input: Any) -> bool:
        """Whether what follows the job's run is bounded local work (its outputs read and
        sent as base64): no upload, no conversion, no video made of frames. Such a job,
        if it arrives alone, runs on the engine thread, without handing its run over to
        it and back (a 64x64 job's time: docs/benchmarks.md, "A job alone"). A job that
        arrives meanwhile waits for that work before its run; never for an upload."""
        if self.uploader is not None:
            return False
        if not isinstance(job_input, dict):
            return True  # refused before it runs
        return job_input.get("convert_output") is None and job_input.get("frames_to_video") is None

    def _failed(self, arrival: Arrival, exc: Exception) -> dict[str, Any]:
        """The contract's error shape for a job that raised."""
        took = time.perf_counter() - arrival.started
        if isinstance(exc, WorkerError):
            log.warning("job failed in %.2f s: %s", took, exc.summary())
            # A URL echoed from the workflow or an input keeps no query or user info.
            answer = logs.redact_urls_obj(exc.to_response())
            response: dict[str, Any] = logs.redact_obj(answer, arrival.secrets)
            return self._refresh(response)
        # A bug: its traceback goes to the log, under an id.
        incident = new_incident()
        log.error("job failed in %.2f s: internal error %s", took, incident, exc_info=exc)
        return self._refresh(InternalError(incident, type(exc).__name__).to_response())

    def _succeeded(self, arrival: Arrival, result: dict[str, Any]) -> dict[str, Any]:
        """The contract's response for a job that ran, redacted."""
        log.info(
            "job done in %.2f s: %d output(s), %d error(s); %s",
            time.perf_counter() - arrival.started,
            len(result["images"]),
            len(result["errors"]),
            describe_stats(result["stats"]),
        )
        result["errors"] = logs.redact_urls_obj(result["errors"])  # not the outputs' links
        redacted: dict[str, Any] = logs.redact_obj(result, arrival.secrets)
        return self._refresh(redacted)

    def close(self, timeout_s: float = CLEANUP_HOLD_S) -> bool:
        """Before the process exits: remove the files of the jobs already answered now,
        rather than leave them to the next boot's sweep (``handler.py`` calls it at exit).
        Jobs still running are not waited for. Whether all went within ``timeout_s``."""
        return self._watch.close(timeout_s)

    def _refresh(self, response: dict[str, Any]) -> dict[str, Any]:
        """``REFRESH_WORKER=true`` (worker-comfyui's variable): every answer asks RunPod to
        replace this worker once the job is done (the SDK turns it into ``stopPod``)."""
        if self.settings.refresh_worker:
            response["refresh_worker"] = True
        return response

    def cancel(self, job_id: str | None = None) -> bool:
        """Cancel job ``job_id`` (every job in :meth:`handle` when None): RunPod stopped it.

        The job's own deadline is flipped to cancelled, so whatever phase it is in
        stops: a download stops waiting, the run is interrupted at its next node or step
        (also when the cancel came before ComfyUI started, which clears its interrupt
        flag), delivery stops waiting, and no later phase starts. It fails as
        interrupted, saying it was cancelled. False when no such job is here.
        """
        return self._watch.cancel(job_id)

    @property
    def _stuck(self) -> WorkerStuckError | None:
        """The stuck worker's error once a job would not stop (``JobWatch.stuck``)."""
        return self._watch.stuck

    def run(
        self,
        job_id: str,
        job_input: Any,
        progress: Callable[[ProgressEvent], None] | None = None,
        deadline: Deadline | None = None,
        phase: Phase | None = None,
        ticket: Ticket | None = None,
        cleanups: list[Callable[[], None]] | None = None,
    ) -> dict[str, Any]:
        """Run one job; raises a ``WorkerError`` for anything the user can fix.

        Each phase starts only while the deadline holds; ``phase`` tells the watchdog
        (engine/job_watch.py) where the job is, for its log line and error. With ``ticket`` (a
        place in the pipeline) the run waits for the engine's turn; without one the
        caller sees to it that nothing else runs. With ``cleanups``, the removal of the
        job's files is appended there for the caller to run, however the job ends;
        without, they are removed before this returns.
        """
        started = time.perf_counter()
        deadline = deadline or Deadline.start(self.settings.job_timeout_s)
        phase = phase or Phase("start")
        request = parse_request(job_input)
        # A malformed editor graph and more nodes than WORKFLOW_MAX_NODES (subgraphs
        # counted, not expanded), then over-long text and values nested too deep, are
        # refused before anything runs. The shape first: it stops at its first 50
        # problems, where the walk of every value costs the whole request (10 MB of
        # malformed links: 1.3 s against 2 ms, docs/benchmarks.md).
        check_size(request.workflow, self.settings.workflow_max_nodes)
        check_values(request.workflow, self.settings.workflow_max_string_bytes)
        if request.editor_graph is not None:  # a /prompt body's, embedded in the outputs
            check_values(
                request.editor_graph,
                self.settings.workflow_max_string_bytes,
                name="workflow.extra_data.extra_pnginfo.workflow",
            )
        folder = job_folder(job_id)
        scratch = request.frames_to_video is not None or request.convert_output is not None
        # The model files it resolves stay in use to its end: another job in flight that
        # downloads one cannot evict them from under this job's run.
        with (
            self.model_urls.pinning(),
            self._files.of_job(folder, scratch=scratch, cleanups=cleanups) as files_of_job,
        ):
            phase.enter("downloading inputs", deadline)
            # The job's own input folder: only this job's workflow names it (scope_inputs).
            inputs_dir = self.runtime.directories.input
            if request.images:
                self._files.spares.make(inputs_dir / folder)
            stored = store_images(
                request.images,
                inputs_dir / folder,
                self.settings,
                _StoppableFetcher(self.fetcher, deadline),
                deadline,
            )
            if stored:
                files_of_job.input_folder = self._files.inputs.settle(
                    inputs_dir, inputs_dir / folder, stored
                )
            phase.enter("running the workflow", deadline)
            spec = self._job_spec(
                job_id, request, folder, progress, deadline, phase, files_of_job.input_folder
            )
            if self._pipeline.in_flight > 1:
                # Handing the PNG encodes off frees the engine for the other job in flight;
                # alone, encoding in-process costs less than sending the pixels to a helper
                # (512x512: 83 against 114 ms a job, docs/benchmarks.md).
                spec = dataclasses.replace(spec, pending_files=files_of_job.pending)
            try:
                # Checked here, on the job's lane, before its turn: a workflow ComfyUI
                # refuses fails while another job runs, not after it (ComfyUI's server
                # validates a prompt while its prompt worker executes another, too).
                spec = self.runtime.validate(spec)
                with (
                    self._engine_turn(ticket, deadline, phase, spec) as running,
                    logs.engine_job(job_id),
                ):
                    result = self.runtime.run(running)
            except WorkflowValidationError as exc:
                explain_unsent_files(
                    exc,
                    spec.workflow,
                    files_of_job.input_folder,
                    inputs_dir,
                    self.runtime.file_inputs,
                )
                raise
            files_of_job.temp_outputs = temp_outputs(result.outputs, self.runtime.directories)
            phase.enter("reading outputs", deadline)
            # The PNGs the run handed off, written meanwhile: here, the engine is free.
            unwritten = files_of_job.pending.wait()
            files, errors = collect_outputs(
                result.outputs,
                self.runtime.directories,
                frames_to_video=request.frames_to_video,
                scratch_dir=files_of_job.scratch if request.frames_to_video else None,
                max_pixels=self.settings.output_max_pixels,
                deadline=deadline,
            )
            files = [_unscope(f, folder) for f in files]
            errors += [f"{path.name}: could not be written: {exc}" for path, exc in unwritten]
            if not files and not errors:
                # Never empty in silence (worker-comfyui answers this case success_no_images).
                errors.append(NO_FILES)
            if request.convert_output is not None:
                phase.enter("converting outputs", deadline)
                files, convert_errors = convert_outputs(
                    files,
                    request.convert_output,
                    files_of_job.scratch,
                    max_pixels=self.settings.output_max_pixels,
                    deadline=deadline,  # checked at every block read and written
                )
                errors += convert_errors
            phase.enter("delivering outputs", deadline)
            try:
                items, delivery_errors = self._deliver(files, job_id, deadline)
            except OutputDeliveryError as exc:
                exc.details.extend(errors)  # outputs that could not even be read: say so too
                raise
            phase.enter("cleaning up", deadline)
        phase.enter("done", None)
        stats = job_stats(time.perf_counter() - started, phase.seconds, result)
        return {"images": items, "errors": errors + delivery_errors, "stats": stats}

    @contextmanager
    def _engine_turn(
        self, ticket: Ticket | None, deadline: Deadline, phase: Phase, spec: JobSpec
    ) -> Iterator[JobSpec]:
        """Hold ComfyUI for the block (the run of the spec it gives): after the jobs that
        arrived before this one, and interrupted on a cancel only while this job holds it.
        While the job waits for its turn, its model files are read ahead; while it holds
        the engine, that read-ahead of the jobs behind it pauses as its loaders run
        (engine/model_prefetch.py)."""
        if ticket is None:  # the caller runs one job at a time: nobody reads ahead
            with deadline.on_cancel(self.runtime.interrupt):
                yield spec
            return
        phase.enter("waiting for the engine", deadline)
        waits = self._pipeline.would_wait(ticket)  # alone, ComfyUI reads them at once
        with self.prefetcher.during(spec.prompt_id, spec.workflow) if waits else nullcontext():
            taken = self._pipeline.take_engine(ticket, deadline)
        if not taken:
            self._watch.refuse_if_stuck()
            raise deadline.exceeded("while the job waited for the run of the job before it")
        try:
            phase.enter("running the workflow", deadline)

            # ComfyUI clears its interrupt flag when a prompt starts; the runtime also
            # checks the deadline (cancelled included) at every node and step.
            def interrupt() -> None:
                self._pipeline.interrupt(ticket, self.runtime.interrupt)

            # Told of its node starts even if alone now: a job that arrives during the
            # run reads ahead, and must know whether a loader of this one runs.
            with deadline.on_cancel(interrupt), self.prefetcher.running(spec) as running:
                yield running
        finally:
            self._pipeline.give_engine_back(ticket)

    def _deliver(
        self, files: Sequence[OutputFile], job_id: str, deadline: Deadline
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The response items, or the job's cancel error once it is cancelled."""

        def delivery() -> tuple[list[dict[str, Any]], list[str]]:
            return deliver(
                files,
                job_id=job_id,
                uploader=self.uploader,
                budget_bytes=self.settings.response_budget_bytes,
                timeout_s=deadline.remaining(),
                data_uri=self.settings.output_base64 == "data-uri",
                job=deadline,  # its cancel cuts the uploads, not only the waiting
            )

        if self.uploader is not None:
            # On a thread of its own: a cancel stops the waiting at once; uploads
            # already sent end on their own bounds (UPLOAD_TIMEOUT_S).
            return deadline.call(delivery, "while delivering outputs")
        # Base64 is local work with nothing to wait for: here, without a thread. A cancel
        # that comes meanwhile wakes the watchdog, and fails the job here once it is done.
        result = delivery()
        if deadline.cancelled:
            raise deadline.exceeded("while delivering outputs")
        return result

    def _job_spec(
        self,
        job_id: str,
        request: JobRequest,
        folder: str,
        progress: Callable[[ProgressEvent], None] | None,
        deadline: Deadline,
        phase: Phase,
        input_folder: str | None = None,
    ) -> JobSpec:
        # An editor (UI-format) workflow becomes the API format with the engine's nodes.
        workflow = as_api_format(
            request.workflow,
            self.runtime.node_definitions,
            max_nodes=self.settings.workflow_max_nodes,
        )
        # Before any model is downloaded: nodes that open raw paths or URLs are refused.
        if not self.settings.allow_path_nodes:
            check_path_nodes(workflow)
        # What output files embed: the workflow as sent, before the per-job rewrites below.
        sent_prompt, sent_graph = None, None
        if self.settings.output_metadata:
            sent_prompt = for_metadata(workflow)
            if is_ui_format(request.workflow):
                sent_graph = for_metadata(request.workflow)
            elif request.editor_graph is not None:  # a /prompt body's, as ComfyUI embeds it
                sent_graph = for_metadata(request.editor_graph)
        workflow = normalize_paths(workflow, self.runtime.file_inputs)
        # Model files named by URL (downloaded once, cached) or absolute path: listed names.
        # A phase of its own: its seconds are the stats' models_s, and a deadline that
        # passes there is reported as passing while downloading models.
        phase.enter("downloading models", deadline)
        workflow = self.model_urls.resolve(workflow, deadline, progress)
        phase.enter("running the workflow", deadline)
        if input_folder is not None:
            sent = frozenset(image.name.replace("\\", "/") for image in request.images)
            workflow = scope_inputs(workflow, sent, input_folder, self.runtime.file_inputs)
        workflow = scope_outputs(workflow, folder)
        workflow = rerun_previews(workflow, folder)
        spec = JobSpec(
            prompt_id=job_id,
            workflow=workflow,
            api_key_comfy_org=request.comfy_org_api_key or self.settings.comfy_org_api_key,
            deadline=deadline,
            output_folder=folder,
            sent_prompt=sent_prompt,
            sent_graph=sent_graph,
        )
        return dataclasses.replace(spec, on_progress=progress) if progress else spec


def _unscope(file: OutputFile, folder: str) -> OutputFile:
    """Drop the per-job folder from a file's subfolder: users never named it."""
    parts = Path(file.subfolder).parts
    if parts and parts[0] == folder:
        return dataclasses.replace(file, subfolder=str(Path(*parts[1:])) if parts[1:] else "")
    return file


class _StoppableFetcher:
    """The worker's fetcher as one job sees it: a download stops waiting when the job is
    cancelled (a server that holds the connection open cannot hold the job), and a
    fetcher that takes the job's deadline stops within a read of its limit or cancel."""

    def __init__(self, inner: Fetcher, deadline: Deadline) -> None:
        self._inner, self._deadline = inner, deadline

    def fetch(self, url: str) -> bytes:
        inner, deadline = self._inner, self._deadline
        if isinstance(inner, BoundedFetcher):
            return deadline.call(
                lambda: inner.fetch_within(url, deadline), "while downloading inputs"
            )
        return deadline.call(lambda: inner.fetch(url), "while downloading inputs")
