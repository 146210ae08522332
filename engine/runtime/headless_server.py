"""A headless stand-in for ComfyUI's ``server.PromptServer.instance``.

ComfyUI's executor, its core nodes and many custom node packs reach for the
running server object: the executor reports ``executing``/``executed`` through
``send_sync`` and keeps ``client_id``/``last_node_id`` on it, the progress
handler reads ``sockets_metadata``, ``GetImageSize`` calls ``send_progress_text``,
and packs such as VideoHelperSuite register HTTP routes on ``routes`` and keep
``prompt_queue`` at import time (they fail to load without them). There is no
HTTP server here: routes are registered and never served, messages go to one
in-process listener instead of WebSockets.

Only :mod:`engine.runtime.comfy` builds this, after ComfyUI is importable; the
aiohttp and ``execution`` imports are ComfyUI's own dependencies.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

EventListener = Callable[[str, Any], None]
"""Receives ``(event, data)`` for each message ComfyUI would send to a client."""

# ComfyUI's own server lists this; some packs check it before using web features.
_SUPPORTS = ["custom_nodes_from_web"]
_PROGRESS_TEXT_LOG_CHARS = 200


class HeadlessPromptServer:
    """What ComfyUI and custom nodes use of ``PromptServer``, without a network.

    ``loop`` is a real event loop: node init runs on it (:meth:`run_until_complete`),
    then it runs in a daemon thread (:meth:`start_loop`), as the real server's loop
    runs beside the prompt worker; packs that schedule onto it keep working.
    """

    def __init__(self, execution_module: Any) -> None:
        from aiohttp import web

        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets: dict[str, Any] = {}
        self.sockets_metadata: dict[str, dict[str, Any]] = {}
        self.supports = list(_SUPPORTS)
        self.number = 0
        self.client_session: Any = None
        self.routes = web.RouteTableDef()
        self.app = web.Application()
        self.on_prompt_handlers: list[Callable[[dict[str, Any]], dict[str, Any]]] = []
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._run_loop, name="comfy-server-loop", daemon=True
        )
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        # The real queue class: VideoHelperSuite keeps a reference at import and
        # reads ``currently_running``; nothing consumes it here (one job per call).
        self.prompt_queue = execution_module.PromptQueue(self)
        self._listener: EventListener | None = None

    def run_until_complete(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this loop before it starts serving.

        main.py runs node init on its server's loop, so a pack that keeps
        ``asyncio.get_event_loop()`` at import holds the loop that runs afterwards.
        """
        if self._loop_thread.is_alive():
            coro.close()
            raise RuntimeError("the server loop already runs; schedule onto it instead")
        return self.loop.run_until_complete(coro)

    def start_loop(self) -> None:
        """Keep the loop running in a daemon thread, as the real server's always runs."""
        if not self._loop_thread.is_alive():
            self._loop_thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def set_listener(self, listener: EventListener | None) -> None:
        """Route messages to ``listener`` (the current job), or drop them."""
        self._listener = listener

    # -- what the executor and nodes call ---------------------------------------

    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        """ComfyUI's fire-and-forget message: handed to the listener, in this thread."""
        del sid
        listener = self._listener
        if listener is not None and isinstance(event, str):
            listener(event, data)

    def send_progress_text(self, text: str | bytes, node_id: str, sid: str | None = None) -> None:
        """Text a node shows under itself in the UI; logged at debug level."""
        del sid
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        log.debug("node %s says: %s", node_id, text[:_PROGRESS_TEXT_LOG_CHARS])

    async def send(self, event: Any, data: Any, sid: str | None = None) -> None:
        """The async form of :meth:`send_sync`."""
        self.send_sync(event, data, sid)

    async def send_json(self, event: Any, data: Any, sid: str | None = None) -> None:
        """The async JSON form of :meth:`send_sync`."""
        self.send_sync(event, data, sid)

    def queue_updated(self) -> None:
        """Called by ``PromptQueue``; there are no clients to tell."""

    def get_queue_info(self) -> dict[str, Any]:
        """The queue status the real server reports; one job at a time here."""
        return {"exec_info": {"queue_remaining": 0}}

    def add_on_prompt_handler(self, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Packs (e.g. wildcard processors) rewrite a prompt before it is queued."""
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data: dict[str, Any]) -> dict[str, Any]:
        """Run the on-prompt handlers, as the real server does for ``POST /prompt``.

        A handler that raises is logged and skipped, as ComfyUI does.
        """
        for handler in self.on_prompt_handlers:
            try:
                json_data = handler(json_data)
            except Exception:
                log.exception("an on-prompt handler of a custom node failed; skipped it")
        return json_data

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this stand-in lacks: say so plainly, since the
        # caller is usually a custom node failing at import.
        raise AttributeError(
            f"the in-process worker's headless PromptServer has no attribute {name!r} "
            "(there is no ComfyUI HTTP server in this worker)"
        )
