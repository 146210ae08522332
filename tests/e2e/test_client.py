"""The client CLI as a user runs it: a subprocess against the worker under the runpod SDK's
local API server (fake runtime), and against S3 (moto), all on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
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
from tests.e2e import conftest as e2e_conftest
from tests.e2e.conftest import REPO, WorkerServer

CLIENT_SRC = REPO / "client" / "src"

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
    """``python -m comfy_worker_client ...`` with a clean environment, as a user would run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "COMFY"))}
    env["PYTHONPATH"] = str(CLIENT_SRC)  # the checkout's client, alone
    proc = subprocess.run(
        [sys.executable, "-m", "comfy_worker_client", *args],
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
    # The SDK's local /status answers only when the job ends: said, not shown as a frozen state.
    assert "note: this is the runpod SDK's local API server" in result.stderr
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


# -- RunPod's conventions: test_input.json, local serving, existing jobs ----------------------


def test_handler_py_runs_the_shipped_test_input_json(tmp_path: Path) -> None:
    """``python handler.py`` with no arguments: the runpod SDK's local test mode reads
    ./test_input.json (the bundled example with its image inline) and exits 0 on success."""
    shipped = json.loads((REPO / "test_input.json").read_text())
    assert shipped["input"]["workflow"] == json.loads(
        (REPO / "examples" / "invert_png_mp4.json").read_text()
    )
    (image,) = shipped["input"]["images"]
    header, _, payload = image["image"].partition(",")
    assert header == "data:image/png;base64"
    assert base64.b64decode(payload) == (REPO / "examples" / "example.png").read_bytes()

    env = {k: v for k, v in os.environ.items() if not k.startswith(_WORKER_PREFIXES)}
    env |= {
        "PYTHONPATH": str(REPO),
        "WORKER_RUNTIME": "tests.fake_runtime:FakeRuntime",
        "WORKER_DIR": str(tmp_path / "work"),
        "COMFY_LOG_LEVEL": "INFO",
    }
    proc = subprocess.run(
        [sys.executable, "handler.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "Using test_input.json as job input." in log
    assert "Job local_test completed successfully." in log
    # The SDK logs the handler's answer as a Python dict, its middle cut past 4096 characters.
    result = log.split("Job result: ", 1)[1]
    assert result.startswith("{'output': {'images': [{'filename': 'inverted_00001_.png'")
    assert "'mime_type': 'video/mp4', 'node_id': '7'" in result
    assert "'frames': 24}}], 'errors': [], 'stats': {" in result


_WORKER_PREFIXES = ("BUCKET_", "COMFY", "INPUT_", "JOB_", "RESPONSE_", "WORKER_", "RUNPOD_")


class Client:
    """The client CLI in a subprocess whose stderr the test reads line by line, for cues."""

    def __init__(self, cwd: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "COMFY"))}
        env["PYTHONPATH"] = str(CLIENT_SRC)  # the checkout's client, alone
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "comfy_worker_client", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.err_lines: list[str] = []

    def wait_for_line(self, text: str, worker: WorkerServer | None = None) -> None:
        """Read stderr until a line holds ``text``; fail if the client exits first (saying
        what ``worker`` printed, if given)."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err_lines.append(line)
            if text in line:
                return
        seen = "" if worker is None else f"\n{worker.state()}"
        raise AssertionError(f"the client exited without saying {text!r}: {self.err_lines}{seen}")

    def finish(self) -> Result:
        out, err = self.proc.communicate(timeout=120)
        return Result(self.proc.returncode, out, "".join(self.err_lines) + err)


def test_the_client_waits_for_a_worker_that_starts_later(tmp_path: Path) -> None:
    """Run back to back, the README's commands: the client meets a refused connection while
    the worker boots, says it waits, and sends the job once the worker listens."""
    port = e2e_conftest.free_port()
    url = f"http://127.0.0.1:{port}"
    write_json(tmp_path / "wf.json", workflows.batch(1))
    client = Client(tmp_path, "wf.json", "--url", url, "--out", "out", "--wait-start", "120")
    server = None
    try:
        client.wait_for_line(f"waiting for the worker at {url} to start")
        server = WorkerServer({}, tmp_path / "worker.log", tmp_path / "work", port=port)
        result = client.finish()
    finally:
        if client.proc.poll() is None:
            client.proc.kill()
        if server is not None:
            server.close()
    assert result.code == 0, result
    assert f"the worker at {url} is up" in result.stderr
    assert len(result.saved()) == 1


def test_a_request_file_and_json_output(worker: WorkerServer, tmp_path: Path) -> None:
    """A whole request ``{"input": {...}}`` is sent as it is; --json prints one object."""
    request = {"input": {"workflow": workflows.batch(2), "convert_output": {"format": "jpeg"}}}
    write_json(tmp_path / "request.json", request)
    result = run_client(tmp_path, "request.json", "--url", worker.url, "--sync", "--json")
    assert result.code == 0, (result, worker.log())
    summary = json.loads(result.stdout)
    assert summary["status"] == "COMPLETED" and summary["exit_code"] == 0
    assert [f["mime_type"] for f in summary["files"]] == ["image/jpeg", "image/jpeg"]
    for saved in summary["files"]:
        assert (tmp_path / saved["path"]).stat().st_size == saved["size_bytes"]


def test_job_fetches_the_result_of_an_earlier_run(worker: WorkerServer, tmp_path: Path) -> None:
    """``--job ID``: a job submitted with /run earlier (here by plain HTTP) is waited for and
    saved; the SDK's local server then forgets it, and says so on a second try."""
    queued = worker.client.post("/run", json={"input": {"workflow": workflows.batch(1)}})
    job_id = queued.json()["id"]
    first = run_client(tmp_path, "--job", job_id, "--url", worker.url, "--out", "out", "--json")
    assert first.code == 0, (first, worker.log())
    (saved,) = json.loads(first.stdout)["files"]
    assert (tmp_path / saved["path"]).is_file()
    again = run_client(tmp_path, "--job", job_id, "--url", worker.url, "--json")
    assert again.code == 1, again
    assert json.loads(again.stdout)["error"] == "Job ID not found"
    assert "forgets a job once a /status has answered it" in again.stderr


def test_ctrl_c_with_cancel_on_interrupt_on_the_local_server(
    start_worker: Callable[..., WorkerServer], tmp_path: Path
) -> None:
    """The SDK's local server has no /cancel: the client says so instead of pretending."""
    worker = start_worker()  # its own: the interrupted job goes on running there
    write_json(tmp_path / "slow.json", workflows.sleeps(60))
    client = Client(tmp_path, "slow.json", "--url", worker.url, "--cancel-on-interrupt")
    try:
        client.wait_for_line("note: this is the runpod SDK's local API server", worker)
        client.proc.send_signal(signal.SIGINT)
        result = client.finish()
    finally:
        if client.proc.poll() is None:
            client.proc.kill()
    # What the worker printed and whether it still runs: a failure here says what it saw.
    assert result.code == 130, (result, worker.state())
    assert "could not be cancelled: the runpod SDK's local API server has no /cancel" in (
        result.stderr
    ), (result, worker.state())
