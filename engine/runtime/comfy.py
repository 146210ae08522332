"""The real runtime: ComfyUI's execution engine, imported and driven in-process.

No ComfyUI server, no HTTP, no WebSocket: :meth:`ComfyRuntime.boot` imports
ComfyUI the way its ``main.py`` does, and :meth:`ComfyRuntime.run` hands each
workflow to one ``execution.PromptExecutor`` kept for the worker's lifetime, so
loaded models and cached node outputs carry over between jobs.

With :mod:`engine.runtime.comfy_boot` (the boot itself), the only code that imports
ComfyUI or torch, and only inside ``boot()``; ComfyUI's modules are untyped, so they
stay ``Any`` here. Three modules take the booted handles and import nothing of ComfyUI:
the graph checks before ComfyUI's own validation (:mod:`engine.runtime.comfy_checks`),
what the booted engine knows, its node types and model folders
(:mod:`engine.runtime.comfy_catalog`, which the ``Runtime`` methods on those delegate to),
and ComfyUI's callbacks during a job: progress, node times, the deadline's interrupt
(:mod:`engine.runtime.comfy_events`).

Threads: every job runs on one engine thread, in an event loop kept on that thread for
the worker's life (:mod:`engine.runtime.engine_loop` says why). The worker runs its whole jobs
on that thread (:attr:`ComfyRuntime.job_thread`), where :meth:`ComfyRuntime.run` runs
the workflow in place and the worker's watchdog enforces the limit. Any other caller
(the warm-up, a test) hands the job over, and enforces its limit through ComfyUI's
interrupt flag while it waits for it.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import shutil
import threading
import time
import uuid
from concurrent.futures import wait
from pathlib import Path
from typing import Any

from engine.deadline import Deadline, JobThread
from engine.errors import RuntimeBootError, WorkerError
from engine.runtime import (
    Checked,
    Directories,
    JobSpec,
    ModelFolder,
    RunResult,
    UiOutputs,
    comfy_checks,
    decoded_inputs,
    fast_save,
    output_metadata,
    output_scope,
    shapes,
)
from engine.runtime.comfy_boot import Comfy, collection_paused, find_checkout, import_comfy
from engine.runtime.comfy_catalog import Catalog
from engine.runtime.comfy_events import EngineEvents, JobState, raise_failure
from engine.runtime.engine_loop import EngineLoop, cancel_leftover_tasks
from engine.runtime.import_turn import ImportTurn
from engine.runtime.patches import Patches
from engine.settings import Settings

log = logging.getLogger(__name__)

# ComfyUI's main.py collects garbage at most this often between prompts.
_COLLECT_INTERVAL_S = 10.0


class ComfyRuntime:
    """ComfyUI in this process; implements :class:`engine.runtime.Runtime`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        root = Path(settings.work_dir).expanduser().resolve()
        self._dirs = Directories(input=root / "input", output=root / "output", temp=root / "temp")
        self._engine = JobThread("comfy-engine")
        self._job_lock = threading.Lock()
        self._comfy: Comfy | None = None
        self._events = EngineEvents(lambda: self._comfy)
        """ComfyUI's hooks for the running job (comfy_events.py): progress, node times."""
        self._loop = EngineLoop()
        """The engine thread's event loop, kept for the worker's life (engine_loop.py)."""
        self._lane_loops = threading.local()
        """Each job lane's own event loop (``.loop``) for the checks :meth:`validate` runs."""
        self._catalog: Catalog | None = None
        """What the booted engine knows (node types, model folders); built by :meth:`boot`."""
        self._last_collect = 0.0
        self._collect_due = False
        self.boot_timings: dict[str, float] = {}
        """Seconds per boot phase: ``torch_import``, ``comfy_import``, ``node_init``..."""
        self.node_count = 0
        self.warmup_s: float | None = None
        """Seconds the warm-up workflow took; ``None`` when none ran or it failed."""

    @property
    def job_thread(self) -> JobThread:
        """The engine thread: every workflow runs there; see ``Runtime.job_thread``."""
        return self._engine

    @property
    def patches(self) -> Patches | None:
        """The worker's patches to ComfyUI and packs as boot left them; ``None`` before."""
        return self._comfy.patches if self._comfy is not None else None

    @property
    def directories(self) -> Directories:
        """ComfyUI's input, output and temp folders, under ``settings.work_dir``."""
        return self._dirs

    # -- boot -----------------------------------------------------------------------

    def boot(self) -> None:
        """Import ComfyUI, load every node, and run the warm-up workflow if set.

        Raises ``RuntimeBootError`` when ComfyUI cannot be found or imported. A
        second call does nothing: ComfyUI's modules are process-wide.
        """
        if self._comfy is not None:
            return
        started = time.perf_counter()
        checkout = find_checkout(self._settings)
        try:
            with collection_paused():
                self._comfy = import_comfy(
                    checkout, self._settings, self._dirs, self._events.on_step, self.boot_timings
                )
        except WorkerError:
            raise
        except Exception as exc:
            raise RuntimeBootError(
                f"ComfyUI at {checkout} failed to start: {type(exc).__name__}: {exc}",
                ["Install ComfyUI's requirements: scripts/setup.sh --with-comfyui"],
            ) from exc
        # ComfyUI's V3 node base class: its nodes.py imported it, so no import happens here.
        from comfy_api.internal import _ComfyNodeInternal

        self._catalog = Catalog(self._comfy, v3_base=_ComfyNodeInternal)
        # A node pack deferred at boot is imported on the engine thread, between runs.
        self._comfy.lazy_nodes.turn = ImportTurn(self._engine, self._comfy.server.loop)
        self.node_count = self._comfy.node_count
        self.boot_timings["total"] = time.perf_counter() - started
        log.info(
            "ComfyUI booted in %.2f s "
            "(torch import %.2f s, ComfyUI import %.2f s, node init %.2f s)",
            self.boot_timings["total"],
            self.boot_timings["torch_import"],
            self.boot_timings["comfy_import"],
            self.boot_timings["node_init"],
        )
        if self._settings.warmup_workflow is not None:
            self.warmup_s = self.warm_up(self._settings.warmup_workflow)

    def warm_up(self, workflow_path: Path) -> float | None:
        """Run one workflow so the first job finds its models loaded; its seconds.

        Called by :meth:`boot` for ``WARMUP_WORKFLOW``. A warm-up that fails is
        logged and returns ``None``: the worker still serves jobs. Its output files
        are deleted.
        """
        started = time.perf_counter()
        try:
            workflow = json.loads(Path(workflow_path).read_text(encoding="utf-8"))
            if not isinstance(workflow, dict):
                raise ValueError("the file does not hold a workflow object in API format")
            result = self.run(
                JobSpec(
                    prompt_id=f"warmup-{uuid.uuid4().hex[:8]}",
                    workflow=workflow,
                    deadline=Deadline.start(self._settings.job_timeout_s),
                )
            )
        except (OSError, ValueError, WorkerError) as exc:
            reason = exc.summary() if isinstance(exc, WorkerError) else str(exc)
            log.error(
                "warm-up workflow %s failed; the worker starts anyway: %s", workflow_path, reason
            )
            return None
        finally:
            self.after_job()
        for path in _files_in(result.outputs, self._dirs):
            path.unlink(missing_ok=True)
        seconds = time.perf_counter() - started
        log.info("warm-up workflow %s ran in %.2f s", workflow_path, seconds)
        return seconds

    # -- what the booted engine knows (comfy_catalog.py) ------------------------------

    def file_inputs(self, class_type: str) -> frozenset[str]:
        """Inputs of ``class_type`` listing allowed values: :meth:`Catalog.file_inputs`."""
        return self._require_catalog().file_inputs(class_type)

    def node_definitions(self) -> dict[str, Any]:
        """Every node type's ``/object_info`` entry: :meth:`Catalog.node_definitions`."""
        return self._require_catalog().node_definitions()

    def model_folder_of(self, class_type: str, input_name: str) -> ModelFolder | None:
        """The model folder behind a file input: :meth:`Catalog.model_folder_of`."""
        return self._require_catalog().model_folder_of(class_type, input_name)

    def model_folders(self) -> list[ModelFolder]:
        """Every model folder ComfyUI registered: :meth:`Catalog.model_folders`."""
        return self._require_catalog().model_folders()

    def forget_model_files(self, folder_name: str) -> None:
        """Drop ComfyUI's cached file list of a folder: :meth:`Catalog.forget_model_files`."""
        self._require_catalog().forget_model_files(folder_name)

    # -- per job ----------------------------------------------------------------------

    def validate(self, job: JobSpec) -> JobSpec:
        """Check ``job.workflow`` on the calling thread; see ``Runtime.validate``.

        The checks of :meth:`_check`, as ComfyUI's server runs them for ``POST /prompt``
        on its own event loop while its prompt worker executes another prompt: here on
        the job's lane with a loop of the lane's own, and the job's output scope for
        this thread alone (``LoadImage`` and the like check their file names).
        """
        comfy = self._require_boot()
        if self._engine.is_current():
            loop = self._loop.get()
        else:
            lane_loop: EngineLoop | None = getattr(self._lane_loops, "loop", None)
            if lane_loop is None:
                lane_loop = self._lane_loops.loop = EngineLoop()
            loop = lane_loop.get()
        # validate_prompt casts values in place; the caller's workflow stays as sent.
        prompt = copy.deepcopy(job.workflow)
        try:
            with output_scope.scoped(
                job.output_folder, str(self._dirs.output), str(self._dirs.temp), this_thread=True
            ):
                checked = loop.run_until_complete(self._check(comfy, job, prompt))
        finally:
            cancel_leftover_tasks(loop)
        return dataclasses.replace(job, checked=checked)

    def run(self, job: JobSpec) -> RunResult:
        """Validate (unless done) and execute ``job.workflow`` on the engine thread; see
        ``Runtime.run``."""
        comfy = self._require_boot()
        with self._job_lock:
            # validate_prompt casts values in place; the caller's workflow stays as sent.
            prompt = job.checked.prompt if job.checked else copy.deepcopy(job.workflow)
            state = JobState(job=job, prompt=prompt, deadline_hit=threading.Event())
            self._events.current = state
            try:
                if self._engine.is_current():
                    # A whole job on the engine thread (the worker's): run it here. The
                    # caller's watchdog interrupts at the limit; the deadline is also
                    # checked at every node and step (comfy_events.deadline_passed).
                    return self._run_job(comfy, state)
                running = self._engine.submit(lambda: self._run_job(comfy, state))
                # The limit is enforced from here, where this thread waits anyway: no timer
                # thread per job (~1 ms each on a busy machine). The engine thread also
                # checks the deadline at every node and step (comfy_events.deadline_passed).
                remaining = job.deadline.remaining()
                if remaining is not None and not wait([running], timeout=remaining).done:
                    self._events.on_deadline(state)
                return running.result()
            except BaseException:
                # A failed job (an OOM above all) may hold tensors in its traceback:
                # free them now rather than at the next periodic collection.
                self._collect_due = True
                raise
            finally:
                self._events.current = None  # also when the engine thread never took the job

    def after_job(self) -> None:
        """Empty the temp folder and free what the job left; loaded models stay."""
        decoded_inputs.HANDOFF.clear()  # input images the job's LoadImage did not take
        comfy = self._comfy
        if comfy is None:
            return
        with self._job_lock:
            if any(self._dirs.temp.iterdir()):
                shutil.rmtree(self._dirs.temp, ignore_errors=True)
                self._dirs.temp.mkdir(parents=True, exist_ok=True)
            self._collect_if_due(comfy)

    def _collect_if_due(self, comfy: Comfy) -> None:
        """As ComfyUI's own prompt loop does between prompts (main.py): a full collection
        costs about 1 ms with a model loaded, so it runs at most every 10 s, or after a
        failure. Also at the end of each run, on the engine thread: with jobs overlapping
        the worker may never be idle between them (``after_job``)."""
        now = time.monotonic()
        if self._collect_due or now - self._last_collect >= _COLLECT_INTERVAL_S:
            gc.collect()
            comfy.model_management.soft_empty_cache()
            self._last_collect, self._collect_due = now, False

    def interrupt(self) -> None:
        """Stop the running job at the next step or node (ComfyUI's interrupt)."""
        self._events.interrupt()

    def _require_boot(self) -> Comfy:
        if self._comfy is None:
            raise RuntimeError("ComfyRuntime.boot() must be called before jobs run")
        return self._comfy

    def _require_catalog(self) -> Catalog:
        """The booted engine's catalog; before boot, :meth:`_require_boot`'s error."""
        self._require_boot()
        assert self._catalog is not None  # boot() builds it as soon as ComfyUI is imported
        return self._catalog

    def _run_job(self, comfy: Comfy, state: JobState) -> RunResult:
        job = state.job
        timings: dict[str, float] = {}
        comfy.server.set_listener(self._events.on_event)
        comfy.server.last_prompt_id = job.prompt_id
        failed = True
        loop = self._loop.get()
        try:
            with output_scope.scoped(
                job.output_folder, str(self._dirs.output), str(self._dirs.temp)
            ):
                outputs = loop.run_until_complete(self._run_async(comfy, state, timings))
            failed = False
            return RunResult(outputs=outputs, timings=timings, node_seconds=state.node_seconds)
        except WorkerError:
            raise
        except BaseException:
            # Not a node's failure (those come back as status messages): ComfyUI's own
            # state may be half-updated, so drop the executor's caches. Loaded models
            # stay in model_management; only cached node outputs are lost.
            log.exception(
                "job %s: ComfyUI raised outside any node; resetting the executor", job.prompt_id
            )
            comfy.executor.reset()
            # And a fresh loop for the next job, as asyncio.run would give it.
            self._loop.close(loop)
            raise
        finally:
            if not loop.is_closed():
                cancel_leftover_tasks(loop)
            comfy.model_management.interrupt_current_processing(False)
            comfy.server.set_listener(None)
            self._events.current = None
            if failed:
                # What ComfyUI's own worker loop does between prompts: after an
                # out-of-memory error or an interrupt, tensors of the failed node linger.
                gc.collect()
                comfy.model_management.soft_empty_cache()
                self._last_collect = time.monotonic()
            else:
                self._collect_if_due(comfy)

    async def _run_async(
        self, comfy: Comfy, state: JobState, timings: dict[str, float]
    ) -> UiOutputs:
        job = state.job
        checked = job.checked or await self._check(comfy, job, state.prompt)
        prompt = state.prompt = checked.prompt
        timings["validate_s"] = checked.seconds

        started = time.perf_counter()
        executor = comfy.executor
        executor.history_result = {}
        # SaveImage hands its PNG encodes off instead of waiting: the worker waits for
        # them after the run, so the engine never does (fast_save.saves_into).
        with fast_save.saves_into(job.pending_files, job.deadline, prompt):
            await executor.execute_async(prompt, job.prompt_id, checked.extra_data, checked.outputs)
        # The last node ends with the run: in-process there is no final ``executing``
        # event with node None (ComfyUI's main.py sends that one, after execute returns).
        state.node_started(None)
        timings["execute_s"] = time.perf_counter() - started
        failure = shapes.execution_failure(executor.status_messages)
        if failure is not None:
            raise_failure(state, failure, executor.status_messages)
        return shapes.prompt_outputs(executor.history_result, prompt)

    async def _check(self, comfy: Comfy, job: JobSpec, prompt: dict[str, Any]) -> Checked:
        """ComfyUI's checks before a prompt runs, in ``POST /prompt``'s order; raises
        ``WorkflowValidationError``. ``prompt`` is a copy: values are cast in place."""
        started = time.perf_counter()
        # Every problem at once: unknown types, bad links, cycles and what ComfyUI finds
        # in the rest of the graph. Raises when there is any, before on-prompt handlers.
        await comfy_checks.check_graph(comfy, job.prompt_id, prompt)
        client_id = f"worker-{job.prompt_id}"
        extra_data: dict[str, Any] = {"client_id": client_id}
        # What output files embed: the user's workflow, as ComfyUI's editor sends it.
        if job.sent_prompt is not None:
            extra_data[output_metadata.SENT_PROMPT] = job.sent_prompt
        if not self._settings.output_metadata:  # nothing, even from nodes that ignore the flag
            extra_data[output_metadata.METADATA_OFF] = True
        if job.sent_graph is not None:
            extra_data["extra_pnginfo"] = {"workflow": job.sent_graph}
        api_key = job.api_key_comfy_org or self._settings.comfy_org_api_key
        if api_key:
            extra_data["api_key_comfy_org"] = api_key
        if comfy.server.on_prompt_handlers:
            request = comfy.server.trigger_on_prompt(
                {
                    "prompt": prompt,
                    "prompt_id": job.prompt_id,
                    "client_id": client_id,
                    "extra_data": extra_data,
                }
            )
            prompt = request.get("prompt", prompt)
        ok, error, outputs, node_errors = await comfy.execution.validate_prompt(
            job.prompt_id, prompt, None
        )
        # ComfyUI runs the outputs that passed and drops the rest with a log line; a
        # worker's caller would never see that, so any node error fails the job.
        if not ok or node_errors:
            raise shapes.validation_error(
                error,
                node_errors,
                looked_in=comfy_checks.looked_in(comfy, prompt, node_errors or {}),
            )
        return Checked(
            prompt=prompt,
            outputs=list(outputs),
            extra_data=extra_data,
            seconds=time.perf_counter() - started,
        )


def _files_in(outputs: UiOutputs, dirs: Directories) -> list[Path]:
    files: list[Path] = []
    for output in outputs.values():
        for items in output.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    try:
                        folder = dirs.for_type(str(item.get("type", "output")))
                    except ValueError:
                        continue
                    files.append(folder / str(item.get("subfolder") or "") / str(item["filename"]))
    return files
