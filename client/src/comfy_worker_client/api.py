"""RunPod's job API over HTTP (/run, /runsync, /status); HTTP failures become ApiError here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from comfy_worker_client.cli import ClientConfig
from comfy_worker_client.errors import ApiError, NoAnswerError, ServerDownError, UsageError
from comfy_worker_client.text import clean

# RunPod refuses a /run request over 10 MB and a /runsync one over 20 MB; checking
# here fails in a second instead of after uploading the whole body.
_REQUEST_LIMIT_BYTES = {"/run": 10 * 1024 * 1024, "/runsync": 20 * 1024 * 1024}

# Answers worth another poll: RunPod's gateway throttling (429) or briefly down (5xx).
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

CONNECT_TIMEOUT_S = 10.0
_MB = 1024 * 1024


class _MethodNotAllowed(ApiError):
    """GET /status answered 405: the SDK's local server, which wants POST."""


class RunPodApi:
    """RunPod's job API, or the runpod SDK's local imitation of it, over one HTTP client."""

    def __init__(self, config: ClientConfig, transport: httpx.BaseTransport | None = None) -> None:
        self._config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.Client(
            base_url=config.base_url,
            headers=headers,
            transport=transport,
            timeout=CONNECT_TIMEOUT_S,
        )
        # RunPod answers GET /status; the SDK's local server only POST (405 to GET).
        self._status_method = "GET"

    @property
    def status_blocks(self) -> bool:
        """Whether /status answers only when the job ends: the runpod SDK's local server.

        It runs a /run job inside the /status request that asks for it, so no progress
        can be reported; it is known by its 405 to ``GET /status``.
        """
        return self._status_method == "POST"

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def submit(self, body: bytes, *, sync: bool, wait_s: float | None) -> dict[str, Any]:
        """POST /run (the job's id at once) or /runsync (its result, if it fits RunPod's wait)."""
        path = "/runsync" if sync else "/run"
        limit = _REQUEST_LIMIT_BYTES[path]
        if self._config.endpoint_id and len(body) > limit:
            raise UsageError(
                f"the request is {len(body) / _MB:.1f} MB, over the {limit // _MB} MB RunPod "
                f"accepts on {path}: pass large images as http(s) URLs instead of files"
            )
        # Never retried: a second POST would start a second job.
        return self._call("POST", path, content=body, wait_s=wait_s)

    def status(
        self,
        job_id: str,
        *,
        wait_s: float | None,
        on_blocking: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """The job's status; blocks until it ends on the SDK's local server.

        ``on_blocking`` is called before a request known to block that way.
        """
        path = f"/status/{quote(job_id, safe='')}"
        if not self.status_blocks:
            try:
                return self._call("GET", path, wait_s=wait_s)
            except _MethodNotAllowed:
                self._status_method = "POST"
        if on_blocking is not None:
            on_blocking()
        return self._call("POST", path, wait_s=wait_s)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """POST /cancel/<id>: RunPod stops the job (the worker interrupts ComfyUI)."""
        if self.status_blocks:
            raise ApiError(
                "the runpod SDK's local API server has no /cancel: the job runs to its end "
                "(stop the server to stop it)"
            )
        return self._call("POST", f"/cancel/{quote(job_id, safe='')}", wait_s=CONNECT_TIMEOUT_S)

    def _call(
        self, method: str, path: str, *, content: bytes | None = None, wait_s: float | None
    ) -> dict[str, Any]:
        """One request; every failure becomes a ``ClientError`` here and nowhere else."""
        url = f"{self._config.base_url}{path}"
        timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=wait_s)
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            response = self._http.request(
                method, path, content=content, headers=headers, timeout=timeout
            )
        except httpx.ReadTimeout:
            raise NoAnswerError(f"{method} {url} gave no answer within --timeout") from None
        except httpx.ConnectError as exc:  # refused or unresolved: nothing reached the server
            raise ServerDownError(
                f"cannot reach {url}: {exc or type(exc).__name__}", transient=True
            ) from None
        except httpx.TransportError as exc:
            raise ApiError(
                f"cannot reach {url}: {exc or type(exc).__name__}", transient=True
            ) from None
        self._raise_for_status(method, path, response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise ApiError(
                f"{method} {url} did not answer a RunPod job status: {response.text[:200]!r}"
            )
        return body

    def _raise_for_status(self, method: str, path: str, response: httpx.Response) -> None:
        code = response.status_code
        if code < 400:
            return
        config, url = self._config, f"{self._config.base_url}{path}"
        if code == 405 and path.startswith("/status/") and method == "GET":
            raise _MethodNotAllowed(url)
        if code in {401, 403}:
            if config.api_key is None:
                raise ApiError(
                    f"{url} answered {code}: it wants an API key; name its variable with --api-key-env"
                )
            where = "RunPod" if config.endpoint_id else config.base_url
            raise ApiError(f"{where} rejected the API key: check {config.api_key_env}")
        if code == 404 and path.startswith("/status/"):
            raise ApiError(
                f"job {path.removeprefix('/status/')} not found: RunPod keeps a result 30 minutes "
                "after /run finishes (1 minute after /runsync)"
            )
        if code == 404:
            if config.endpoint_id:
                raise ApiError(
                    f"unknown endpoint {config.endpoint_id}: check its id in the RunPod console"
                )
            raise ApiError(
                f"{url} not found: is {config.base_url} a worker started with --rp_serve_api?"
            )
        if code == 413:
            raise ApiError(f"{url} refused the request as too large: pass large images as URLs")
        detail = clean(response.text.strip()[:300]) or response.reason_phrase
        raise ApiError(
            f"{method} {url} answered {code}: {detail}", transient=code in _RETRYABLE_STATUS
        )
