"""The entry points: submit, wait and save (``execute``); errors to exit codes (``main``)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence

import httpx

from engine.client.api import RunPodApi
from engine.client.cli import ClientConfig, parse_args
from engine.client.errors import (
    ClientError,
    ExitCode,
    JobFailedError,
    NoAnswerError,
    UserInterrupt,
    WaitTimeoutError,
)
from engine.client.request import build_request
from engine.client.save import download_client, save_outputs
from engine.client.text import say
from engine.client.wait import Progress, describe_failure, followup_hint, wait_for_job


def execute(
    config: ClientConfig,
    *,
    transport: httpx.BaseTransport | None = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ExitCode:
    """Submit, wait, save; raises ``ClientError`` for anything that stops the run."""
    body = json.dumps(build_request(config)).encode()
    deadline = None if config.timeout_s is None else clock() + config.timeout_s
    progress = progress or Progress()
    api = RunPodApi(config, transport)
    # Output URLs point at S3, not RunPod: a separate client, so the API key never goes there.
    downloads = download_client(transport)
    with contextlib.closing(api), downloads:
        if config.sync:  # no job id or progress until /runsync answers
            say(f"waiting for {config.base_url}/runsync ...", err=True)
        try:
            wait_s = None if deadline is None else deadline - clock()
            first = api.submit(body, sync=config.sync, wait_s=wait_s)
        except NoAnswerError as exc:
            if not config.sync:
                raise
            raise WaitTimeoutError(
                f"/runsync gave no answer within --timeout {config.timeout_s:g} s; the job may "
                "still run, but with no id to check it by: use /run (drop --sync) for long jobs"
            ) from exc
        try:
            final = wait_for_job(
                api, first, config, progress, deadline=deadline, clock=clock, sleep=sleep
            )
        except KeyboardInterrupt:
            raise UserInterrupt(
                f"interrupted; job {first.get('id')} was not cancelled and keeps running\n"
                + followup_hint(config, str(first.get("id")))
            ) from None
        if final["status"] != "COMPLETED":
            raise JobFailedError(describe_failure(final))
        return save_outputs(final, config.out_dir, downloads)


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """The console script ``comfy-worker-client``; returns the exit code."""
    try:
        config = parse_args(argv, env)
        return int(execute(config, transport=transport))
    except ClientError as exc:
        say(f"error: {exc.message}", err=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:  # before a job id existed, or while saving outputs
        say("\ninterrupted", err=True)
        return int(ExitCode.INTERRUPTED)
