"""The client CLI as a user runs it: a subprocess against the worker under the runpod SDK's
local API server (fake runtime), and against S3 (moto), all on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import imageio_ffmpeg
import pytest
from PIL import Image

from tests import workflows
from tests.e2e.conftest import REPO, WorkerServer

KEY_ID = "AKIACLIENTE2E0000001"
SECRET = "client/e2e+secret/key/0000000000000000000"


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def saved(self) -> list[Path]:
        """The paths the client printed, one per line of stdout."""
        return [Path(line.split("\t")[0]) for line in self.stdout.splitlines()]


def run_client(cwd: Path, *args: str) -> Result:
    """``python -m engine.client ...`` with a clean environment, as a user would run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "COMFY"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "engine.client", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerServer]) -> WorkerServer:
    return start_worker()


def test_run_and_poll_saves_the_inverted_image(worker: WorkerServer, tmp_path: Path) -> None:
    wf = write_json(tmp_path / "wf.json", workflows.invert("photo.png"))
    Image.new("RGB", (16, 16), (200, 40, 10)).save(tmp_path / "photo.png")
    result = run_client(tmp_path, "wf.json", "--image", "photo.png", "--url", worker.url)
    assert result.code == 0, (result, worker.log())
    (path,) = result.saved()
    # Default folder: ./outputs/<job id>, relative to where the client ran.
    assert path.parts[0] == "outputs" and path.parent.name.startswith("test-")
    assert result.stdout.split("\t")[1:] == ["image/png", f"{(tmp_path / path).stat().st_size} B\n"]
    with Image.open(tmp_path / path) as image:
        assert image.convert("RGB").getpixel((0, 0)) == (55, 215, 245)
    assert "IN_PROGRESS" in result.stderr and "COMPLETED" in result.stderr
    assert wf.exists()


def test_sync_saves_every_kind_of_media(worker: WorkerServer, tmp_path: Path) -> None:
    write_json(tmp_path / "media.json", workflows.media(frames=6))
    result = run_client(tmp_path, "media.json", "--url", worker.url, "--sync", "--out", "got")
    assert result.code == 0, (result, worker.log())
    names = [p.name for p in result.saved()]
    assert names == ["anim_00001_.webp", "clip_00001_.mp4", "clip_00002_.webm"]
    with Image.open(tmp_path / "got" / names[0]) as webp:
        assert webp.format == "WEBP"
    for name in names[1:]:
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "got" / name))
        assert frames == 6
    assert "\t64x64 6 frames 8 fps" in result.stdout


def test_frames_to_video_and_no_overwrite(worker: WorkerServer, tmp_path: Path) -> None:
    write_json(tmp_path / "batch.json", workflows.batch(4))
    args = ("batch.json", "--url", worker.url, "--out", "out", "--frames-to-video", "12")
    first, second = run_client(tmp_path, *args), run_client(tmp_path, *args)
    assert (first.code, second.code) == (0, 0), (first, second)
    (video,) = first.saved()
    (again,) = second.saved()
    assert video.suffix == ".mp4"
    assert again == video.with_name(f"{video.stem}-1.mp4")
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / video))[0] == 4
    assert (tmp_path / video).read_bytes() == (tmp_path / again).read_bytes()


def test_failed_job_prints_the_error_and_exits_1(worker: WorkerServer, tmp_path: Path) -> None:
    write_json(tmp_path / "bad.json", workflows.raises("kaboom"))
    result = run_client(tmp_path, "bad.json", "--url", worker.url, "--out", "out")
    assert result.code == 1, result
    assert "FAILED: Node 5 (TestRaise) failed: RuntimeError: kaboom" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_a_url_that_is_not_a_worker_exits_4(worker: WorkerServer, tmp_path: Path) -> None:
    write_json(tmp_path / "wf.json", workflows.batch(1))
    result = run_client(tmp_path, "wf.json", "--url", f"{worker.url}/nope")
    assert result.code == 4, result
    assert f"{worker.url}/nope/run not found" in result.stderr


def test_s3_outputs_are_downloaded_and_match_the_bucket(
    start_worker: Callable[..., WorkerServer], s3_endpoint: str, tmp_path: Path
) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="client-outputs")
    worker = start_worker(
        BUCKET_ENDPOINT_URL=f"{s3_endpoint}/client-outputs",
        BUCKET_ACCESS_KEY_ID=KEY_ID,
        BUCKET_SECRET_ACCESS_KEY=SECRET,
    )
    write_json(tmp_path / "media.json", workflows.media(frames=4))
    result = run_client(tmp_path, "media.json", "--url", worker.url, "--out", "s3")
    assert result.code == 0, (result, worker.log())
    stored = {
        obj["Key"].rsplit("/", 1)[1]: s3.get_object(Bucket="client-outputs", Key=obj["Key"])
        for obj in s3.list_objects_v2(Bucket="client-outputs")["Contents"]
    }
    saved = result.saved()
    assert sorted(p.name for p in saved) == sorted(stored)
    for path in saved:
        assert (tmp_path / path).read_bytes() == stored[path.name]["Body"].read()
    with Image.open(io.BytesIO((tmp_path / saved[0]).read_bytes())) as webp:
        assert webp.format == "WEBP"
    # Presigned URLs carry their signature in the query string: never printed.
    assert "X-Amz-Signature" not in result.stdout + result.stderr
