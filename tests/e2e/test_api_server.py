"""The worker end to end over real HTTP: the runpod SDK's local API server, ComfyUI
replaced at the runtime boundary by tests.fake_runtime (real files, recorded shapes)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest
from PIL import Image

from tests import workflows
from tests.e2e.conftest import WorkerServer, files_left
from tests.local_http import serve_directory

COMFY_KEY = "comfy-org-test-key-7f3a9c"


def png_bytes(color: tuple[int, int, int] = (200, 40, 10), size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def data_uri(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def decode_item(item: dict[str, Any]) -> bytes:
    header, _, payload = item["data"].partition(",")
    assert header.endswith(";base64") and header.startswith("data:")
    return base64.b64decode(payload)


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving test images (and 404 for the rest)."""
    root = tmp_path_factory.mktemp("www")
    (root / "red.png").write_bytes(png_bytes((255, 0, 0)))
    (root / "notes.txt").write_text("not an image")

    with serve_directory(root) as url:
        yield url


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerServer]) -> WorkerServer:
    # The image server lives on loopback, which the worker refuses by default.
    # The default time limit: a media job on a loaded machine must not race a short one.
    return start_worker(INPUT_ALLOW_PRIVATE_URLS="true", COMFY_ORG_API_KEY=COMFY_KEY)


def test_runsync_returns_the_inverted_image_as_a_png_data_uri(worker: WorkerServer) -> None:
    body = worker.runsync(
        {
            "workflow": workflows.invert("test_img.png"),
            "images": [{"name": "test_img.png", "image": data_uri(png_bytes())}],
        }
    )
    assert body["status"] == "COMPLETED", body
    (item,) = body["output"]["images"]
    assert item["filename"] == "ComfyUI_00001_.png"
    assert item["type"] == "base64"
    assert item["data"].startswith("data:image/png;base64,")
    pixel = Image.open(io.BytesIO(decode_item(item))).convert("RGB").getpixel((0, 0))
    assert pixel == (55, 215, 245)  # 255 - (200, 40, 10)
    assert body["output"]["errors"] == []


def test_url_and_bare_base64_inputs(worker: WorkerServer, image_server: str) -> None:
    wf = workflows.invert("sub/from_url.png")
    wf.update({f"1{k}": v for k, v in workflows.invert("bare.png", "bare").items()})
    wf["12"]["inputs"]["image"] = ["11", 0]
    wf["13"]["inputs"]["images"] = ["12", 0]
    body = worker.runsync(
        {
            "workflow": wf,
            "images": [
                {"name": "sub/from_url.png", "image": f"{image_server}/red.png"},
                {"name": "bare.png", "image": base64.b64encode(png_bytes((0, 0, 0))).decode()},
            ],
        }
    )
    assert body["status"] == "COMPLETED", body
    colors = [
        Image.open(io.BytesIO(decode_item(i))).convert("RGB").getpixel((0, 0))
        for i in body["output"]["images"]
    ]
    assert colors == [(0, 255, 255), (255, 255, 255)]


def test_run_and_status_deliver_every_kind_of_media(worker: WorkerServer) -> None:
    queued, status = worker.run_and_poll({"workflow": workflows.media(frames=6)})
    assert queued["status"] == "IN_PROGRESS"
    assert status["status"] == "COMPLETED", status
    items = status["output"]["images"]
    # Node order (3, 5, 6), previews (node 2) left out.
    assert [(i["filename"], i["mime_type"]) for i in items] == [
        ("anim_00001_.webp", "image/webp"),
        ("clip_00001_.mp4", "video/mp4"),
        ("clip_00002_.webm", "video/webm"),
    ]
    webp = Image.open(io.BytesIO(decode_item(items[0])))
    assert webp.n_frames >= 1
    for item in items[1:]:
        assert item["video"]["frames"] == 6
        assert item["video"]["fps"] == pytest.approx(8.0)
        assert (item["video"]["width"], item["video"]["height"]) == (64, 64)


def test_videohelpersuite_gifs_output_is_delivered(worker: WorkerServer, tmp_path: Path) -> None:
    body = worker.runsync({"workflow": workflows.vhs(frames=5)})
    assert body["status"] == "COMPLETED", body
    (item,) = body["output"]["images"]  # the metadata PNG beside it is not an output
    assert item["filename"].endswith(".mp4") and item["mime_type"] == "video/mp4"
    video = tmp_path / item["filename"]
    video.write_bytes(decode_item(item))
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    assert frames == 5


def test_frames_to_video_on_request(worker: WorkerServer, tmp_path: Path) -> None:
    body = worker.runsync(
        {"workflow": workflows.batch(4), "frames_to_video": {"fps": 12, "format": "mp4"}}
    )
    assert body["status"] == "COMPLETED", body
    (item,) = body["output"]["images"]
    assert item["mime_type"] == "video/mp4"
    assert item["video"]["frames"] == 4 and item["video"]["fps"] == pytest.approx(12.0)


def test_same_workflow_twice_returns_outputs_both_times(worker: WorkerServer) -> None:
    job = {"workflow": workflows.batch(2, color=0x123456)}
    first, second = worker.runsync(job), worker.runsync(job)
    assert len(first["output"]["images"]) == 2
    assert len(second["output"]["images"]) == 2
    assert [decode_item(i) for i in first["output"]["images"]] == [
        decode_item(i) for i in second["output"]["images"]
    ]


def test_windows_paths_are_normalised(worker: WorkerServer) -> None:
    body = worker.runsync(
        {"workflow": workflows.checkpoint("SDXL\\ultraRealisticByStable_v20FP16.safetensors")}
    )
    assert body["status"] == "COMPLETED", body


def test_validation_failure_shows_details_in_the_error_string(worker: WorkerServer) -> None:
    wf = workflows.checkpoint("missing.safetensors")
    wf["7"] = {"class_type": "NotInstalledNode", "inputs": {}}
    wf["8"] = {"class_type": "NotInstalledNode", "inputs": {}}
    body = worker.runsync({"workflow": wf})
    assert body["status"] == "FAILED"
    assert body["error"].startswith("Workflow validation failed: ")
    assert "Node type 'NotInstalledNode' is not installed (used by nodes 7, 8)" in body["error"]
    body = worker.runsync({"workflow": workflows.checkpoint("missing.safetensors")})
    assert (
        "Node 4 (CheckpointLoaderSimple) input 'ckpt_name': 'missing.safetensors'" in body["error"]
    )
    assert "SDXL/ultraRealisticByStable_v20FP16.safetensors" in body["error"]  # short list: shown


def test_status_of_a_failed_run_job_carries_details(worker: WorkerServer) -> None:
    _, status = worker.run_and_poll({"workflow": workflows.raises("kaboom")})
    assert status["status"] == "FAILED"
    assert status["error"].startswith("Node 5 (TestRaise) failed: RuntimeError: kaboom")


def test_failed_image_download_uses_the_guides_message(
    worker: WorkerServer, image_server: str
) -> None:
    body = worker.runsync(
        {
            "workflow": workflows.invert("a.png"),
            "images": [
                {"name": "a.png", "image": f"{image_server}/missing.png?token=s3cr3t"},
                {"name": "b.png", "image": f"{image_server}/notes.txt"},
                {"name": "c.png", "image": f"{image_server}/red.png"},
            ],
        }
    )
    assert body["status"] == "FAILED"
    error = body["error"]
    assert error.startswith("Failed to upload one or more input images: ")
    assert f"a.png: Failed to download image from URL: {image_server}/missing.png" in error
    assert "b.png" in error and "c.png" not in error
    assert "s3cr3t" not in error  # query strings can hold presigned credentials


def test_timeout_interrupts_and_the_next_job_runs(
    start_worker: Callable[..., WorkerServer],
) -> None:
    # A worker of its own: only this test's jobs run under the short limit.
    worker = start_worker(JOB_TIMEOUT_S="3")
    body = worker.runsync({"workflow": workflows.sleeps(30)})
    assert body["status"] == "FAILED"
    assert "JOB_TIMEOUT_S=3" in body["error"]
    assert worker.runsync({"workflow": workflows.batch(1)})["status"] == "COMPLETED"


def test_no_files_of_a_job_are_left_behind(worker: WorkerServer) -> None:
    worker.runsync({"workflow": workflows.media(frames=3)})
    worker.runsync(
        {
            "workflow": workflows.invert("x.png"),
            "images": [{"name": "x.png", "image": data_uri(png_bytes())}],
        }
    )
    assert files_left(worker.work_dir) == []


def test_secrets_never_reach_a_response_or_the_log(worker: WorkerServer) -> None:
    request_key = "request-level-key-91b2e"
    wf = workflows.raises(f"leaked {request_key} and {COMFY_KEY}")
    body = worker.runsync({"workflow": wf, "comfy_org_api_key": request_key})
    assert body["status"] == "FAILED"
    assert request_key not in body["error"] and COMFY_KEY not in body["error"]
    assert "leaked *** and ***" in body["error"]
    log = worker.log()
    assert request_key not in log and COMFY_KEY not in log


# The SDK's local server answers a non-object `input` with its own 422 before the
# handler runs; tests/unit/test_worker.py covers those against the handler itself.
BAD_INPUTS: list[tuple[Any, str]] = [
    ({}, "input.workflow: is required"),
    ({"workflow": None}, "input.workflow"),
    ({"workflow": "{}"}, "input.workflow"),
    ({"workflow": []}, "input.workflow"),
    ({"workflow": {}}, "the workflow is empty"),
    ({"workflow": {"nodes": [], "links": []}}, "UI format"),
    ({"workflow": {"1": "SaveImage"}}, "node '1' must be an object"),
    ({"workflow": {"1": {"inputs": {}}}}, "has no class_type"),
    ({"workflow": {"1": {"class_type": 7}}}, "has no class_type"),
    ({"workflow": {"1": {"class_type": "SaveImage", "inputs": "x"}}}, "inputs must be an object"),
    ({"workflow": workflows.batch(1), "images": {}}, "input.images"),
    ({"workflow": workflows.batch(1), "images": "a.png"}, "input.images"),
    ({"workflow": workflows.batch(1), "images": [None]}, "input.images[0]"),
    ({"workflow": workflows.batch(1), "images": [{"image": "AAAA"}]}, "input.images[0].name"),
    ({"workflow": workflows.batch(1), "images": [{"name": "a.png"}]}, "input.images[0].image"),
    (
        {
            "workflow": workflows.batch(1),
            "images": [{"name": "../../etc/passwd", "image": data_uri(png_bytes())}],
        },
        "../../etc/passwd",
    ),
    (
        {
            "workflow": workflows.batch(1),
            "images": [{"name": "/abs.png", "image": data_uri(png_bytes())}],
        },
        "/abs.png",
    ),
    (
        {
            "workflow": workflows.batch(1),
            "images": [{"name": "C:\\x.png", "image": data_uri(png_bytes())}],
        },
        "C:\\x.png",
    ),
    (
        {
            "workflow": workflows.batch(1),
            "images": [{"name": "a.png", "image": "not base64 at all!"}],
        },
        "a.png",
    ),
    (
        {
            "workflow": workflows.batch(1),
            "images": [{"name": "a.png", "image": base64.b64encode(b"plain text").decode()}],
        },
        "a.png",
    ),
    (
        {
            "workflow": workflows.batch(1),
            "images": [{"name": "a.png", "image": "ftp://example.com/a.png"}],
        },
        "a.png",
    ),
    (
        {
            "workflow": workflows.batch(1),
            "images": [{"name": "a.png", "image": "http://169.254.169.254/latest/meta-data"}],
        },
        "a.png",
    ),
    (
        {
            "workflow": workflows.batch(1),
            "images": [{"name": "a.png", "image": data_uri(png_bytes())}] * 2,
        },
        "a.png",
    ),
    ({"workflow": workflows.batch(1), "comfy_org_api_key": 12}, "input.comfy_org_api_key"),
    (
        {"workflow": workflows.batch(1), "frames_to_video": {"format": "avi"}},
        "input.frames_to_video.format",
    ),
    (
        {"workflow": {"1": {"class_type": "ImageInvert", "inputs": {}}}},
        "Workflow validation failed",
    ),
    ({"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}}, "Node 1 (SaveImage)"),
    (
        {"workflow": {"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}},
        "Node 1 (SaveImage) input 'images'",
    ),
    ({"workflow": workflows.invert("never-uploaded.png")}, "never-uploaded.png"),
]


def test_malformed_requests_get_clear_errors_and_the_worker_keeps_serving(
    worker: WorkerServer,
) -> None:
    assert len(BAD_INPUTS) >= 25
    for job_input, expected in BAD_INPUTS:
        body = worker.runsync(job_input)
        assert body["status"] == "FAILED", (job_input, body)
        assert expected in body["error"], (expected, body["error"])
        assert "Traceback" not in body["error"]
    assert worker.runsync({"workflow": workflows.batch(1)})["status"] == "COMPLETED"


def test_a_worker_is_ready_on_its_own_word_not_on_another_servers_answer(
    image_server: str, tmp_path: Path
) -> None:
    """The harness (WorkerServer): another server holding the worker's port answers any
    request there; that is not taken for the worker being up. The worker's start fails
    instead, saying the port was taken."""
    taken = int(image_server.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="worker exited early") as failed:
        WorkerServer({}, tmp_path / "worker.log", tmp_path / "work", port=taken)
    assert "address already in use" in str(failed.value)
