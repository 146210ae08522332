"""The whole worker over the real engine: request -> inputs -> ComfyUI -> outputs -> base64."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
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


def _load_and_preview(name: str) -> dict[str, Any]:
    """LoadImage -> PreviewImage: a workflow that saves nothing."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def test_a_preview_only_workflow_returns_its_preview_every_time(worker: Worker) -> None:
    """With nothing saved, the preview is the result, also on a repeat that ComfyUI's
    cache would otherwise answer with the earlier job's (deleted) temp file."""
    job = {
        "input": {
            "workflow": _load_and_preview("preview-in.png"),
            "images": [
                {"name": "preview-in.png", "image": base64.b64encode(png((200, 0, 0))).decode()}
            ],
        }
    }
    for job_id in ("preview-1", "preview-2"):
        body = worker.handle({"id": job_id, **job})
        assert body.get("errors") == [], body
        (item,) = body["images"]
        assert item["node_id"] == "2" and item["mime_type"] == "image/png"
        assert pixel(item) == (200, 0, 0)
    # The repeat ran the preview again but took the loaded image from the cache.
    assert list(body["stats"]["nodes"]) == ["2"]


def test_previews_stay_out_beside_a_saved_image(worker: Worker) -> None:
    wf = _load_and_preview("preview-save.png")
    wf["3"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "kept"}}
    body = worker.handle(
        {
            "id": "preview-save",
            "input": {
                "workflow": wf,
                "images": [
                    {
                        "name": "preview-save.png",
                        "image": base64.b64encode(png((0, 0, 200))).decode(),
                    }
                ],
            },
        }
    )
    assert body.get("errors") == [], body
    (item,) = body["images"]
    assert item["node_id"] == "3" and item["filename"].startswith("kept_")


def test_stats_time_the_phases_and_the_nodes_that_ran(worker: Worker) -> None:
    """Node times come from ComfyUI's executing events; a repeat's cached nodes are absent."""
    job = {"input": {"workflow": workflows.batch(1, size=32, color=0x123456)}}
    first = worker.handle({"id": "stats-1", **job})["stats"]
    second = worker.handle({"id": "stats-2", **job})["stats"]
    for stats in (first, second):
        phases = {k: v for k, v in stats.items() if k != "nodes"}
        assert set(phases) == {
            "total_s",
            "inputs_s",
            "models_s",
            "wait_s",
            "validate_s",
            "execute_s",
            "outputs_s",
            "deliver_s",
        }
        assert all(isinstance(v, float) and v >= 0 for v in phases.values()), stats
        assert stats["total_s"] >= max(phases.values())
        assert all(v >= 0 for v in stats["nodes"].values())
    assert list(first["nodes"]) == ["1", "2"]
    # EmptyImage's inputs did not change: ComfyUI served it from the cache.
    assert list(second["nodes"]) == ["2"]


def test_convert_output_to_jpeg_and_webp(worker: Worker) -> None:
    """SaveImage's PNGs re-encoded; the animated WEBP and the videos left as they are."""
    for fmt, ext, mime in (("jpeg", "jpg", "image/jpeg"), ("webp", "webp", "image/webp")):
        wf = workflows.media(frames=3)
        wf["7"] = {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": "still"},
        }
        body = worker.handle(
            {
                "id": f"convert-{fmt}",
                "input": {"workflow": wf, "convert_output": {"format": fmt, "quality": 80}},
            }
        )
        assert body.get("errors") == [], body
        kinds = [
            (i["node_id"], i["filename"].rsplit(".", 1)[1], i["mime_type"]) for i in body["images"]
        ]
        assert kinds == [
            ("3", "webp", "image/webp"),
            ("5", "mp4", "video/mp4"),
            ("6", "webm", "video/webm"),
            *[("7", ext, mime)] * 3,
        ]
        still = body["images"][3]
        raw = base64.b64decode(still["data"].partition(",")[2])
        with Image.open(io.BytesIO(raw)) as image:
            assert image.format == fmt.upper() and image.size == (64, 64)


def test_the_reference_convert_output_example(worker: Worker) -> None:
    """docs/reference.md's convert_output request, on the real engine: one 512x512 JPEG."""
    text = (REPO / "docs" / "reference.md").read_text()
    block = text.split("<!-- example: convert_output -->\n```json\n", 1)[1].split("\n```", 1)[0]
    body = worker.handle({"id": "doc-convert", **json.loads(block)})
    assert body.get("errors") == [], body
    (item,) = body["images"]
    assert (item["filename"], item["mime_type"]) == ("orange_00001_.jpg", "image/jpeg")
    raw = base64.b64decode(item["data"].partition(",")[2])
    with Image.open(io.BytesIO(raw)) as image:
        assert (image.format, image.size) == ("JPEG", (512, 512))
    assert set(body["stats"]["nodes"]) <= {"1", "2"}


@pytest.mark.parametrize(
    ("jobs", "extra", "in_place"),
    [(1, {}, True), (2, {}, True), (2, {"convert_output": {"format": "png"}}, False)],
    ids=["one-at-a-time", "alone", "alone-converting"],
)
def test_a_job_runs_on_the_engine_thread_with_no_hand_over(
    worker: Worker,
    runtime: ComfyRuntime,
    monkeypatch: pytest.MonkeyPatch,
    jobs: int,
    extra: dict[str, Any],
    in_place: bool,
) -> None:
    """One job at a time, or a job alone whose end is local work: the worker runs the
    whole job on the runtime's engine thread, so ComfyUI runs the workflow in place. A
    job with a conversion to make after its run has a lane of its own and hands its run
    over to the engine thread. A caller on another thread (the warm-up, this test) hands
    it over too."""
    worker = Worker(dataclasses.replace(worker.settings, max_concurrent_jobs=jobs), runtime)
    threads: dict[str, int] = {}
    run_job = runtime._run_job

    def noting(*args: Any, **kwargs: Any) -> Any:
        threads.setdefault("comfyui", threading.get_ident())
        return run_job(*args, **kwargs)

    monkeypatch.setattr(runtime, "_run_job", noting)
    original_run = worker.run

    def noting_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        threads["job"] = threading.get_ident()
        return original_run(*args, **kwargs)

    monkeypatch.setattr(worker, "run", noting_run)
    image = base64.b64encode(png((10, 20, 30))).decode()
    body = worker.handle(
        {
            "id": "in-place",
            "input": {
                "workflow": workflows.invert("t.png", "in-place"),
                "images": [{"name": "t.png", "image": image}],
                **extra,
            },
        }
    )
    assert body.get("errors") == [], body
    if in_place:
        assert threads["comfyui"] == threads["job"] != threading.get_ident()
    else:
        assert len({threads["comfyui"], threads["job"], threading.get_ident()}) == 3
    assert runtime.job_thread.is_current() is False  # this thread is not the engine's
