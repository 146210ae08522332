"""The client's exit codes and its exceptions, each carrying the exit code ``main`` returns.

The errors:

    ClientError            one message + exit_code
    ├── UsageError         2: arguments, workflow or image file
    ├── ApiError           4: unreachable, key rejected, unknown endpoint, odd answer
    │   ├── NoAnswerError  ... no answer before --timeout (also a TimeoutError)
    │   └── ServerDownError ... connection refused: nothing was sent (a booting worker)
    ├── JobFailedError     1: FAILED, CANCELLED, TIMED_OUT
    ├── SaveError          3: the output folder cannot be created
    ├── WaitTimeoutError   5: --timeout passed (also a TimeoutError)
    └── UserInterrupt      130: Ctrl-C while waiting
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """The process's exit status; listed in ``--help``."""

    OK = 0
    JOB_FAILED = 1
    USAGE = 2
    INCOMPLETE = 3
    API = 4
    WAIT_TIMEOUT = 5
    INTERRUPTED = 130


class ClientError(Exception):
    """A failure the CLI reports as one message and an exit code."""

    exit_code = ExitCode.API

    def __init__(
        self, message: str, *, transient: bool = False, job: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        """Worth another try while polling (a dropped connection, a 5xx, a 429)."""
        self.job = job
        """The job's final status, when the job itself failed (for ``--json``)."""


class UsageError(ClientError):
    """The command line, the workflow file or an image file is unusable."""

    exit_code = ExitCode.USAGE


class ApiError(ClientError):
    """The endpoint could not be reached, refused the request or answered nonsense."""


class NoAnswerError(ApiError, TimeoutError):
    """A request got no answer before the client's ``--timeout``."""


class ServerDownError(ApiError, ConnectionError):
    """The connection was refused (or the host unknown): the request never reached a server."""


class JobFailedError(ClientError):
    """The job ended FAILED, CANCELLED or TIMED_OUT on the worker's side."""

    exit_code = ExitCode.JOB_FAILED


class WaitTimeoutError(ClientError, TimeoutError):
    """``--timeout`` passed while the job was still queued or running."""

    exit_code = ExitCode.WAIT_TIMEOUT


class SaveError(ClientError):
    """The job completed but its outputs cannot be written at all (the folder)."""

    exit_code = ExitCode.INCOMPLETE


class UserInterrupt(ClientError):
    """Ctrl-C while waiting; the job itself goes on."""

    exit_code = ExitCode.INTERRUPTED
