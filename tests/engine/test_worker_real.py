"""The whole worker over the real engine: request -> inputs -> ComfyUI -> outputs -> base64."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from engine.worker import Worker
from tests import workflows
from tests.engine.support import ENGINE_MARKS
from tests.local_http import serve_directory

pytestmark = ENGINE_MARKS

REPO = Path(__file__).resolve().parents[2]


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, "PNG")
    return buf.getvalue()


def pixel(item: dict[str, Any]) -> tuple[int, ...]:
    raw = base64.b64decode(item["data"].partition(",")[2])
    value: tuple[int, ...] = Image.open(io.BytesIO(raw)).convert("RGB").getpixel((0, 0))
    return value


@pytest.fixture(scope="module")
def image_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("www")
    (root / "green.png").write_bytes(png((0, 200, 0)))

    with serve_directory(root) as url:
        yield f"{url}/green.png"


@pytest.fixture
def worker(runtime: ComfyRuntime) -> Worker:
    # The session's runtime is booted; the worker shares its folders. The image
    # server is on loopback, which the worker refuses unless told otherwise.
    settings = Settings(work_dir=runtime.directories.input.parent, input_allow_private_urls=True)
    return Worker(settings, runtime)


def test_load_image_from_each_input_form(worker: Worker, image_url: str) -> None:
    wf: dict[str, Any] = {}
    sources = {
        "url.png": image_url,
        "forms/data.png": "data:image/png;base64," + base64.b64encode(png((200, 0, 0))).decode(),
        "bare.png": base64.b64encode(png((0, 0, 200))).decode(),
    }
    for i, name in enumerate(sources):
        for node_id, node in workflows.invert(name, f"form{i}").items():
            inputs = {
                k: [f"{i}{v[0]}", v[1]] if isinstance(v, list) else v
                for k, v in node["inputs"].items()
            }
            wf[f"{i}{node_id}"] = {**node, "inputs": inputs}
    body = worker.handle(
        {
            "id": "forms",
            "input": {
                "workflow": wf,
                "images": [{"name": n, "image": s} for n, s in sources.items()],
            },
        }
    )
    assert body.get("errors") == [], body
    expected = [(255, 55, 255), (55, 255, 255), (255, 255, 55)]
    got = [pixel(i) for i in body["images"]]
    # SaveImage truncates floats to bytes: an inverted 200 comes back as 54, not 55.
    assert all(
        abs(a - b) <= 1
        for g, e in zip(got, expected, strict=True)
        for a, b in zip(g, e, strict=True)
    ), got
    # Other tests share the session's runtime: look only at this job's files.
    input_dir = worker.runtime.directories.input
    assert [name for name in sources if (input_dir / name).exists()] == []
    assert not (input_dir / "forms").exists()


def test_images_and_videos_come_back_with_metadata(worker: Worker) -> None:
    body = worker.handle({"id": "media", "input": {"workflow": workflows.media(frames=6)}})
    assert body.get("errors") == [], body
    kinds = [(i["filename"].rsplit(".", 1)[1], i["mime_type"]) for i in body["images"]]
    assert kinds == [("webp", "image/webp"), ("mp4", "video/mp4"), ("webm", "video/webm")]
    for video in body["images"][1:]:
        assert video["video"]["frames"] == 6
        assert (video["video"]["width"], video["video"]["height"]) == (64, 64)


def test_the_readme_example_job(worker: Worker) -> None:
    """The README's job command runs this workflow: a PNG and a 24-frame MP4."""
    wf = json.loads((REPO / "examples" / "invert_png_mp4.json").read_text())
    image = base64.b64encode((REPO / "examples" / "example.png").read_bytes()).decode()
    body = worker.handle(
        {
            "id": "example",
            "input": {"workflow": wf, "images": [{"name": "example.png", "image": image}]},
        }
    )
    assert body.get("errors") == [], body
    png_item, mp4_item = body["images"]
    assert png_item["mime_type"] == "image/png" and mp4_item["mime_type"] == "video/mp4"
    assert mp4_item["video"]["frames"] == 24 and mp4_item["video"]["fps"] == pytest.approx(8.0)


def test_repeat_of_a_job_through_the_worker_still_delivers(worker: Worker) -> None:
    job = {"input": {"workflow": workflows.batch(2, size=32)}}
    first = worker.handle({"id": "r1", **job})
    second = worker.handle({"id": "r2", **job})
    assert len(first["images"]) == len(second["images"]) == 2
    # Other tests share the session's runtime: look only at this test's job folders.
    assert list(worker.runtime.directories.output.glob("job-r[12]-*")) == []
