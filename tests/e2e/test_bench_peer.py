"""The benchmarks' real-peer plumbing: a worker-comfyui-shaped handler.py started as its
``__main__`` starts it, behind the runpod SDK's local API server, over real HTTP.

The stand-in peer here is a few lines written for this test, shaped as worker-comfyui's
handler.py is (module constants ``COMFY_HOST`` and ``COMFY_PID_FILE``, a ``handler(job)``
function, ``network_volume.py`` imported from ``src/``); it answers what it saw, so the
test proves the benchmark's launcher pointed it at the benchmark's ComfyUI and pid file.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from _bench_common import (  # noqa: E402  (scripts/ is not a package)
    JOB_KINDS,
    ApiProcess,
    PeerCheckout,
    check_outputs,
    clean_env,
    peer_checkout,
    peer_env,
)

PEER_HANDLER = textwrap.dedent(
    """
    import base64
    from network_volume import MARKER
    COMFY_HOST = "127.0.0.1:8188"
    COMFY_PID_FILE = "/tmp/comfyui.pid"

    def handler(job):
        # worker-comfyui answers bare base64; the image is the job's own input.
        image = job["input"]["images"][0]["image"]
        seen = f"{COMFY_HOST} {COMFY_PID_FILE} {MARKER}"
        return {"images": [{"filename": seen, "type": "base64", "data": image}]}

    if __name__ == "__main__":
        raise SystemExit("started through its __main__: the launcher must import it instead")
    """
)


@pytest.fixture
def peer(tmp_path: Path) -> Path:
    root = tmp_path / "worker-comfyui"
    (root / "src").mkdir(parents=True)
    (root / "handler.py").write_text(PEER_HANDLER)
    (root / "src" / "start.sh").write_text("#!/usr/bin/env bash\n")
    (root / "src" / "network_volume.py").write_text("MARKER = 'from-src'\n")
    return root


def test_the_launcher_points_the_peer_handler_at_the_benchmarks_comfyui(
    peer: Path, tmp_path: Path
) -> None:
    # Built directly: peer_checkout() also asks for websocket-client, which the real
    # handler imports and this stand-in does not.
    checkout = PeerCheckout(peer, None)
    launcher = REPO / "scripts" / "_peer_handler.py"
    pid_file = tmp_path / "comfyui.pid"
    api = ApiProcess(
        [sys.executable, "-u", str(launcher), str(peer), "127.0.0.1:40001", str(pid_file)],
        peer,
        peer_env(checkout, clean_env()),
        tmp_path / "handler.log",
    )
    api.start()
    try:
        api.wait_listening(timeout_s=120)
        kind = JOB_KINDS["64"]
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, "PNG")
        png = buffer.getvalue()
        job_input = {
            "workflow": kind.workflow("bench"),
            "images": [{"name": kind.image_name(), "image": base64.b64encode(png).decode()}],
        }
        output = api.runsync(job_input, timeout_s=120)
    finally:
        api.stop()
    images = check_outputs(kind, output)  # bare base64 decodes as a data URI does
    assert images == [png]
    assert output["images"][0]["filename"] == f"127.0.0.1:40001 {pid_file} from-src"


def test_a_folder_that_is_not_worker_comfyui_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"is not a worker-comfyui checkout \(no handler.py"):
        peer_checkout(tmp_path, None, sys.executable)


def test_the_latency_probes_floor_handler_answers_and_notes_its_times(tmp_path: Path) -> None:
    """scripts/_latency_probe.py's ``floor`` behind the SDK's local API server, over real
    HTTP: an answer of the size asked for, and one record per job with the handler's start
    and return on the client's clock (CLOCK_MONOTONIC), between its send and its read."""
    import time

    log = tmp_path / "floor.jsonl"
    env = {**clean_env(), "PROBE_LOG": str(log), "PROBE_ANSWER_BYTES": "1234"}
    api = ApiProcess(
        [sys.executable, str(REPO / "scripts" / "_latency_probe.py"), "floor"],
        tmp_path,
        env,
        tmp_path / "floor.log",
    )
    api.start()
    try:
        api.wait_listening()
        sent = time.perf_counter()
        answer = api.runsync({"workflow": {}})
        read = time.perf_counter()
    finally:
        api.stop()
    assert len(answer["images"][0]["data"]) == 1234
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert sent < record["in"] <= record["out"] < read
