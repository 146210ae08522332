"""Waiting for a job: polling its status to the end, showing progress, describing a failure."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

from comfy_worker_client.api import RunPodApi
from comfy_worker_client.cli import ClientConfig
from comfy_worker_client.errors import ApiError, NoAnswerError, WaitTimeoutError
from comfy_worker_client.text import clean, say

# Anything else (IN_QUEUE, IN_PROGRESS, a status RunPod adds later) is waited on.
_TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})

# A video job polls for many minutes; a few dropped connections or a 5xx from RunPod's
# gateway in that time must not abandon it. Consecutive failures, each a poll apart.
_MAX_POLL_RETRIES = 5

_CLEAR_LINE = "\r\x1b[K"  # carriage return + ANSI "erase to end of line"
_MAX_PROGRESS_CHARS = 120
# Off a terminal (a log file, CI), how often a wait with no news says it is still waiting.
_HEARTBEAT_S = 30.0

BLOCKING_NOTE = (
    "note: this is the runpod SDK's local API server, which runs the job inside the "
    "/status request and answers only when it ends: no progress until then, only the time"
)


class Progress:
    """The job's state on stderr: one rewritten line on a terminal, a line per change otherwise.

    While a request is in flight (:meth:`ticking`) the elapsed time keeps moving: every
    second on a terminal, a "still waiting" line every ``heartbeat_s`` in a log file.
    """

    def __init__(
        self,
        tty: bool | None = None,
        *,
        tick_s: float = 1.0,
        heartbeat_s: float = _HEARTBEAT_S,
    ) -> None:
        self._tty = sys.stderr.isatty() if tty is None else tty
        self._tick_s = tick_s
        self._heartbeat_s = heartbeat_s
        self._line = ""  # the current state, without the time
        self._last = ""  # the last state written (not on a terminal: only changes are)
        self._open = False
        self._lock = threading.Lock()

    def show(self, body: Mapping[str, Any], elapsed_s: float) -> None:
        """Display one status answer."""
        status = str(body.get("status"))
        parts = [f"job {body.get('id', '?')}", status]
        delay = body.get("delayTime")
        if isinstance(delay, int | float):
            parts.append(f"queued {delay / 1000:.1f} s")
        output = body.get("output")
        # While a job runs, RunPod's status carries the worker's last progress_update.
        if status == "IN_PROGRESS" and isinstance(output, str) and output.strip():
            parts.append(clean(output.strip().splitlines()[0][:_MAX_PROGRESS_CHARS]))
        self.state("  ".join(parts), elapsed_s)

    def state(self, line: str, elapsed_s: float) -> None:
        """Display a state of the wait (a status, or what the client is waiting for)."""
        with self._lock:
            self._line = line
            self._render(elapsed_s, heartbeat=False)

    def note(self, message: str) -> None:
        """A line of its own (a warning, a fact about the wait), never overwritten."""
        with self._lock:
            self._erase()
            say(message, err=True)

    @contextlib.contextmanager
    def ticking(self, elapsed: Callable[[], float]) -> Iterator[None]:
        """Keep the elapsed time moving while the block waits on a request."""
        stop = threading.Event()

        def tick() -> None:
            last_beat = elapsed()
            while not stop.wait(self._tick_s):
                now = elapsed()
                with self._lock:
                    if stop.is_set() or not self._line:
                        continue
                    if self._tty:
                        self._render(now, heartbeat=False)
                    elif now - last_beat >= self._heartbeat_s:
                        self._render(now, heartbeat=True)
                        last_beat = now

        thread = threading.Thread(target=tick, name="client-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def close(self) -> None:
        """Erase the rewritten line, so what follows starts on a clean one."""
        with self._lock:
            self._erase()

    def _render(self, elapsed_s: float, *, heartbeat: bool) -> None:
        line = self._line
        if self._tty:
            width = shutil.get_terminal_size().columns - 1
            say(_CLEAR_LINE + f"{line}  {elapsed_s:.0f} s"[:width], err=True, end="")
            self._open = True
        elif heartbeat:
            say(f"{line}  (still waiting, {elapsed_s:.0f} s)", err=True)
        elif line != self._last:  # a log file gets changes, not one line per poll
            say(f"{line}  ({elapsed_s:.0f} s)", err=True)
        self._last = line

    def _erase(self) -> None:
        if self._open:
            say(_CLEAR_LINE, err=True, end="")
            self._open = False


def followup_hint(config: ClientConfig, job_id: str) -> str:
    """How to check on (and cancel) a job the client stopped waiting for; names, never the key."""
    job = quote(job_id, safe="")
    auth = f' -H "Authorization: Bearer ${config.api_key_env}"' if config.api_key else ""
    if not config.endpoint_id:  # the SDK's local server: POST /status, and no /cancel
        return f"check it: curl -X POST{auth} {config.base_url}/status/{job}"
    return (
        f"check it: curl{auth} {config.base_url}/status/{job}\n"
        f"cancel it: curl -X POST{auth} {config.base_url}/cancel/{job}"
    )


def wait_for_job(
    api: RunPodApi,
    first: dict[str, Any],
    config: ClientConfig,
    progress: Progress,
    *,
    deadline: float | None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until the job ends; its final status.

    ``first`` is /run's (or /runsync's) answer; for ``--job``, just ``{"id": ...}``.
    """
    job_id = first.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise ApiError(f"{config.base_url} accepted the job but gave no job id: {first!r:.200}")
    started, body, failures, polls = clock(), first, 0, 0
    noted = False

    def note_blocking() -> None:
        nonlocal noted
        if not noted:
            progress.note(BLOCKING_NOTE)
            noted = True

    try:
        while body.get("status") not in _TERMINAL:
            if "status" in body:
                progress.show(body, clock() - started)
            else:
                progress.state(f"job {job_id}  asking for its status", clock() - started)
            remaining = None if deadline is None else deadline - clock()
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(
                    f"gave up waiting after --timeout {config.timeout_s:g} s; job {job_id} is still "
                    f"{body.get('status')} and was not cancelled\n{followup_hint(config, job_id)}"
                )
            # The first poll goes at once: the SDK's local server answers it only when the
            # job ends, and RunPod may already have finished a short one.
            if polls:
                sleep(
                    config.poll_interval_s
                    if remaining is None
                    else min(config.poll_interval_s, remaining)
                )
            polls += 1
            wait_s = None if deadline is None else max(deadline - clock(), 0.001)
            try:
                with progress.ticking(lambda: clock() - started):
                    body = api.status(job_id, wait_s=wait_s, on_blocking=note_blocking)
                failures = 0
            except NoAnswerError:
                continue  # the deadline passed during a blocking poll: reported above
            except ApiError as exc:
                failures += 1
                if not exc.transient or failures > _MAX_POLL_RETRIES:
                    raise
                progress.note(f"warning: {exc.message}; retrying ({failures}/{_MAX_POLL_RETRIES})")
    finally:
        progress.close()
    return body


def describe_failure(body: Mapping[str, Any]) -> str:
    """A FAILED, CANCELLED or TIMED_OUT job in words, with the details the worker gave."""
    job_id, status = body.get("id", "?"), body.get("status")
    if status == "CANCELLED":
        return f"job {job_id} was cancelled"
    if status == "TIMED_OUT":
        return (
            f"RunPod stopped job {job_id} (TIMED_OUT): it ran past the endpoint's execution "
            "timeout (or waited in the queue too long); raise it in the endpoint's settings"
        )
    error = body.get("error")
    text = clean(error) if isinstance(error, str) and error else "no error message"
    # An exception the handler did not catch reaches RunPod as the SDK's JSON dump.
    with contextlib.suppress(ValueError, TypeError):
        dump = json.loads(text)
        if isinstance(dump, dict) and "error_message" in dump:
            kind = re.sub(r"^<class '(?:.*\.)?(\w+)'>$", r"\1", str(dump.get("error_type", "")))
            text = (
                f"the worker raised {kind}: {dump['error_message']} "
                "(a bug in the worker: the traceback is in its logs)"
            )
    output = body.get("output")
    code = output.get("code") if isinstance(output, Mapping) else None
    return f"job {job_id} FAILED: {text}" + (f" [{code}]" if isinstance(code, str) else "")
