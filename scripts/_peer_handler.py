"""worker-comfyui's own handler.py, started as its ``__main__`` starts it, for the benchmarks.

    python _peer_handler.py PEER_DIR COMFY_HOST PID_FILE [runpod SDK flags...]

Imports the peer checkout's ``handler.py`` unchanged (with its ``src/`` on the path, as
its Dockerfile puts ``network_volume.py`` beside it), points two of its module
constants at this benchmark's ComfyUI (``COMFY_HOST``, fixed at 127.0.0.1:8188 there,
and ``COMFY_PID_FILE``, fixed at /tmp/comfyui.pid: on a shared machine both may be
another process's), then does what its ``if __name__ == "__main__"`` block does:
``runpod.serverless.start({"handler": handler})``. Nothing of the peer is copied here.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main() -> None:
    peer, host, pid_file, *sdk_flags = sys.argv[1:]
    root = Path(peer).resolve()
    sys.path[:0] = [str(root), str(root / "src")]
    # The SDK reads its flags (--rp_serve_api ...) from sys.argv when it starts.
    sys.argv = [str(root / "handler.py"), *sdk_flags]
    peer_handler = importlib.import_module("handler")  # the peer's, from PEER_DIR
    runpod = importlib.import_module("runpod")
    peer_handler.COMFY_HOST = host
    peer_handler.COMFY_PID_FILE = pid_file
    runpod.serverless.start({"handler": peer_handler.handler})


if __name__ == "__main__":
    main()
