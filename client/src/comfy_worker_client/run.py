"""The entry points: submit (or fetch), wait and save (``execute``); errors to exit codes (``main``)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from comfy_worker_client.api import RunPodApi
from comfy_worker_client.cli import ClientConfig, parse_args
from comfy_worker_client.errors import (
    ClientError,
    ExitCode,
    JobFailedError,
    NoAnswerError,
    ServerDownError,
    UserInterrupt,
    WaitTimeoutError,
)
from comfy_worker_client.request import build_request
from comfy_worker_client.save import SaveReport, download_client, save_outputs
from comfy_worker_client.start import when_up
from comfy_worker_client.text import say
from comfy_worker_client.wait import Progress, describe_failure, followup_hint, wait_for_job


def execute(
    config: ClientConfig,
    *,
    transport: httpx.BaseTransport | None = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ExitCode:
    """Submit (or, with ``--job``, fetch), wait, save; raises ``ClientError`` to stop the run."""
    body = None if config.job_id else json.dumps(build_request(config)).encode()
    started = clock()
    deadline = None if config.timeout_s is None else started + config.timeout_s
    progress = progress or Progress()
    api = RunPodApi(config, transport)
    # Output URLs point at S3, not RunPod: a separate client, so the API key never goes there.
    downloads = download_client(transport)
    with contextlib.closing(api), downloads:
        if body is None:
            assert config.job_id is not None
            first: dict[str, Any] = {"id": config.job_id}
        else:
            first = _submit(api, body, config, progress, deadline, clock, sleep)
        job_id = str(first.get("id"))
        try:
            final = wait_for_job(
                api, first, config, progress, deadline=deadline, clock=clock, sleep=sleep
            )
        except KeyboardInterrupt:
            raise _interrupted(api, config, job_id) from None
        if final["status"] != "COMPLETED":
            message = describe_failure(final)
            if api.status_blocks and final.get("error") == "Job ID not found":
                message += (
                    " (the runpod SDK's local server forgets a job once a /status has answered "
                    "it, and when it restarts)"
                )
            raise JobFailedError(message, job=final)
        report = save_outputs(final, config.out_dir, downloads, echo=not config.json_output)
        if config.json_output:
            say(json.dumps(completed_summary(final, report)))
        return report.exit_code


def _submit(
    api: RunPodApi,
    body: bytes,
    config: ClientConfig,
    progress: Progress,
    deadline: float | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> dict[str, Any]:
    """POST /run or /runsync, waiting for a local worker that is still booting."""
    started = clock()

    def submit() -> dict[str, Any]:
        wait_s = None if deadline is None else max(deadline - clock(), 0.001)
        if not config.sync:
            return api.submit(body, sync=False, wait_s=wait_s)
        # No job id or progress until /runsync answers: only the time moves.
        progress.state(f"waiting for {config.base_url}/runsync", clock() - started)
        try:
            with progress.ticking(lambda: clock() - started):
                return api.submit(body, sync=True, wait_s=wait_s)
        except ServerDownError:
            progress.close()  # the waiting message goes on a line of its own
            raise

    try:
        return when_up(submit, config, clock=clock, sleep=sleep)
    except NoAnswerError as exc:
        if not config.sync:
            raise
        raise WaitTimeoutError(
            f"/runsync gave no answer within --timeout {config.timeout_s:g} s; the job may "
            "still run, but with no id to check it by: use /run (drop --sync) for long jobs"
        ) from exc
    except KeyboardInterrupt:
        if config.sync and config.cancel_on_interrupt:
            raise UserInterrupt(
                "interrupted before /runsync gave a job id: nothing to cancel it by; "
                "the job may still run"
            ) from None
        raise
    finally:
        progress.close()


def _interrupted(api: RunPodApi, config: ClientConfig, job_id: str) -> UserInterrupt:
    """Ctrl-C while waiting: cancel the job if asked, else say how to check on it."""
    if not config.cancel_on_interrupt:
        return UserInterrupt(
            f"interrupted; job {job_id} was not cancelled and keeps running "
            "(--cancel-on-interrupt cancels it)\n" + followup_hint(config, job_id)
        )
    try:
        answer = api.cancel(job_id)
    except ClientError as exc:
        return UserInterrupt(
            f"interrupted; job {job_id} could not be cancelled: {exc.message}\n"
            + followup_hint(config, job_id)
        )
    return UserInterrupt(f"interrupted; asked to cancel job {job_id}: it is {answer.get('status')}")


def completed_summary(final: Mapping[str, Any], report: SaveReport) -> dict[str, Any]:
    """``--json``'s answer for a completed job: what was saved where, and what was not."""
    output = final.get("output")
    summary: dict[str, Any] = {
        "id": final.get("id"),
        "status": final.get("status"),
        "exit_code": int(report.exit_code),
        "folder": str(report.folder),
        "files": [
            {
                "path": str(saved.path),
                "mime_type": saved.mime_type,
                "size_bytes": saved.size,
                **({"video": dict(saved.video)} if saved.video else {}),
            }
            for saved in report.files
        ],
        "problems": list(report.problems),
    }
    if isinstance(output, Mapping) and isinstance(output.get("stats"), Mapping):
        summary["stats"] = output["stats"]
    for key in ("delayTime", "executionTime"):
        if key in final:
            summary[key] = final[key]
    return summary


def error_summary(exc: ClientError) -> dict[str, Any]:
    """``--json``'s answer when the run stopped: the message, and the job's own answer if any."""
    summary: dict[str, Any] = {"exit_code": int(exc.exit_code), "message": exc.message}
    job = exc.job or {}
    for key in ("id", "status", "error", "delayTime", "executionTime"):
        if key in job:
            summary[key] = job[key]
    output = job.get("output")
    if isinstance(output, Mapping) and isinstance(output.get("code"), str):
        summary["code"] = output["code"]
    return summary


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """The console script ``comfy-worker-client``; returns the exit code."""
    config: ClientConfig | None = None
    try:
        config = parse_args(argv, env)
        return int(execute(config, transport=transport))
    except ClientError as exc:
        say(f"error: {exc.message}", err=True)
        if config is not None and config.json_output:
            say(json.dumps(error_summary(exc)))
        return int(exc.exit_code)
    except KeyboardInterrupt:  # before a job id existed, or while saving outputs
        say("\ninterrupted", err=True)
        return int(ExitCode.INTERRUPTED)
