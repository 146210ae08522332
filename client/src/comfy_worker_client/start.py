"""Waiting for a local worker that is still booting: a refused connection retried, with a message.

``handler.py --rp_serve_api`` boots ComfyUI before its API server listens, so a client
started right after it meets "connection refused" for the length of the boot. A refused
connection sent nothing, so retrying even a ``POST /run`` cannot start a second job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from comfy_worker_client.cli import ClientConfig
from comfy_worker_client.errors import ServerDownError
from comfy_worker_client.text import say

T = TypeVar("T")

# Short enough that a job starts within half a second of the server listening.
RETRY_INTERVAL_S = 0.5


def when_up(
    call: Callable[[], T],
    config: ClientConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, retried while the worker refuses connections, for up to ``--wait-start``."""
    started = clock()
    deadline = started + config.wait_start_s
    told = False
    while True:
        try:
            result = call()
        except ServerDownError as exc:
            remaining = deadline - clock()
            if remaining <= 0:
                if not told:
                    raise
                raise ServerDownError(
                    f"{exc.message}; no worker started there within --wait-start "
                    f"{config.wait_start_s:g} s: is handler.py --rp_serve_api running on that "
                    "port, and did its log end in an error?"
                ) from None
            if not told:
                say(
                    f"waiting for the worker at {config.base_url} to start (connection refused; "
                    f"up to {config.wait_start_s:g} s, see --wait-start) ...",
                    err=True,
                )
                told = True
            sleep(min(RETRY_INTERVAL_S, remaining))
            continue
        if told:
            say(f"the worker at {config.base_url} is up ({clock() - started:.0f} s)", err=True)
        return result
