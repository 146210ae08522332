"""The client CLI in-process: arguments, the request it builds, and how it reads RunPod's
answers, with RunPod (and S3) replaced by an ``httpx.MockTransport``."""

from __future__ import annotations

import ast
import base64
import io
import json
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import comfy_worker_client as client
import httpx
import pytest
from comfy_worker_client import ClientConfig, ExitCode, ImageSpec
from comfy_worker_client import api as client_api
from PIL import Image

from tests import workflows

KEY = "rp_test_key_3b9f0c71d2"
ENDPOINT = "abc123xyz"
API = f"https://api.runpod.ai/v2/{ENDPOINT}"
BUCKET = "https://bucket.example"


def png(color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, "PNG")
    return buf.getvalue()


def data_uri(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def item(name: str, raw: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "filename": name,
        "type": "base64",
        "data": data_uri(raw),
        "mime_type": "image/png",
        "node_id": "9",
        "size_bytes": len(raw),
        **extra,
    }


def completed(job_id: str, items: list[dict[str, Any]], errors: list[str] | None = None) -> Any:
    return {
        "id": job_id,
        "status": "COMPLETED",
        "output": {"images": items, "errors": errors or []},
        "delayTime": 1500,
        "executionTime": 4200,
    }


class FakeRunPod:
    """Answers each request from a queue per (method, path); records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[httpx.Response]] = {}
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._handle)

    def add(self, method: str, url: str, *answers: Any, status: int = 200) -> None:
        queue = self.routes.setdefault((method, url), [])
        for answer in answers:
            if isinstance(answer, httpx.Response):
                queue.append(answer)
            elif isinstance(answer, bytes):
                queue.append(httpx.Response(status, content=answer))
            else:
                queue.append(httpx.Response(status, json=answer))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = str(request.url.copy_with(query=None))
        queue = self.routes.get((request.method, url))
        if not queue:
            return httpx.Response(404, text=f"no route for {request.method} {url}")
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def sent(self, method: str, path_end: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path.endswith(path_end)]


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflows.batch(1)))
    return path


@pytest.fixture
def fake() -> FakeRunPod:
    return FakeRunPod()


def outputs(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out, captured.err


# -- arguments -------------------------------------------------------------------------------


class TestParseArgs:
    def test_endpoint_uses_runpod_with_the_key_from_the_environment(self) -> None:
        config = client.parse_args(["wf.json", "--endpoint", ENDPOINT], {"RUNPOD_API_KEY": KEY})
        assert config.base_url == API
        assert config.api_key == KEY
        assert KEY not in repr(config)

    def test_endpoint_without_a_key_says_which_variable_to_set(self) -> None:
        with pytest.raises(client.UsageError, match="set RUNPOD_API_KEY"):
            client.parse_args(["wf.json", "--endpoint", ENDPOINT], {})

    def test_api_key_env_names_another_variable(self) -> None:
        config = client.parse_args(
            ["wf.json", "--endpoint", ENDPOINT, "--api-key-env", "MY_KEY"], {"MY_KEY": KEY}
        )
        assert config.api_key == KEY and config.api_key_env == "MY_KEY"

    def test_url_sends_no_key_even_if_one_is_set(self) -> None:
        config = client.parse_args(
            ["wf.json", "--url", "http://127.0.0.1:8000/"], {"RUNPOD_API_KEY": KEY}
        )
        assert config.base_url == "http://127.0.0.1:8000"
        assert config.api_key is None and config.endpoint_id is None

    @pytest.mark.parametrize(
        "argv",
        [["wf.json"], ["wf.json", "--endpoint", "e", "--url", "http://127.0.0.1:1"]],
        ids=["neither", "both"],
    )
    def test_exactly_one_target_is_required(self, argv: list[str]) -> None:
        with pytest.raises(SystemExit) as exc:
            client.parse_args(argv, {"RUNPOD_API_KEY": KEY})
        assert exc.value.code == ExitCode.USAGE

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--endpoint", "abc/../other"], "is not an endpoint id"),
            (["--url", "127.0.0.1:8000"], "http"),
            (["--url", "http://h", "--timeout", "-1"], "--timeout"),
            (["--url", "http://h", "--poll-interval", "0"], "--poll-interval"),
            (["--url", "http://h", "--keep-frames"], "needs --frames-to-video"),
            (["--url", "http://h", "--frames-to-video", "fast"], "FPS must be a number"),
            (["--url", "http://h", "--frames-to-video", "0"], "FPS must be in"),
            (["--url", "http://h", "--frames-to-video", "12:avi"], "mp4 or webm"),
            (["--url", "http://h", "--api-key-env", "UNSET_VAR"], "UNSET_VAR"),
            (["--url", "http://h", "--comfy-org-api-key-env", "UNSET_VAR"], "UNSET_VAR"),
            (["--url", "http://h", "--job", "j1"], "give a workflow or request file, or --job"),
            (["--url", "http://h", "--wait-start", "-1"], "--wait-start must be >= 0"),
            (["--endpoint", "e", "--wait-start", "5"], "for a local worker"),
        ],
    )
    def test_bad_values_are_usage_errors(self, argv: list[str], message: str) -> None:
        with pytest.raises(client.UsageError, match=message):
            client.parse_args(["wf.json", *argv], {"RUNPOD_API_KEY": KEY})

    def test_job_alone_needs_no_workflow_and_refuses_request_options(self) -> None:
        config = client.parse_args(["--job", "j1", "--url", "http://h"], {})
        assert (config.job_id, config.workflow) == ("j1", None)
        with pytest.raises(client.UsageError, match="give a workflow"):
            client.parse_args(["--url", "http://h"], {})
        with pytest.raises(client.UsageError, match="--job fetches an existing job"):
            client.parse_args(["--job", "j1", "--url", "http://h", "--image", "a.png"], {})

    def test_a_local_worker_is_waited_for_runpod_is_not(self) -> None:
        local = client.parse_args(["wf.json", "--url", "http://h"], {})
        assert local.wait_start_s == client.cli.DEFAULT_WAIT_START_S
        assert (
            client.parse_args(
                ["wf.json", "--url", "http://h", "--wait-start", "0"], {}
            ).wait_start_s
            == 0
        )
        remote = client.parse_args(["wf.json", "--endpoint", "e"], {"RUNPOD_API_KEY": KEY})
        assert remote.wait_start_s == 0

    def test_frames_to_video_timeout_and_comfy_key(self) -> None:
        config = client.parse_args(
            [
                "wf.json",
                "--url",
                "http://h",
                "--frames-to-video",
                "12.5:webm",
                "--keep-frames",
                "--timeout",
                "0",
                "--comfy-org-api-key-env",
                "COMFY_KEY",
            ],
            {"COMFY_KEY": "comfy-secret"},
        )
        assert config.frames_to_video == {"fps": 12.5, "format": "webm", "keep_frames": True}
        assert config.timeout_s is None  # 0: wait for as long as the job takes
        assert config.comfy_org_api_key == "comfy-secret"
        assert "comfy-secret" not in repr(config)


class TestImageArgs:
    def test_name_and_path(self) -> None:
        assert client.parse_image_arg("face.png=photos/me.jpg") == ImageSpec(
            "face.png", "photos/me.jpg"
        )

    def test_name_defaults_to_the_basename(self) -> None:
        assert client.parse_image_arg("photos/me.jpg").name == "me.jpg"

    def test_a_url_with_a_query_is_taken_whole_and_named_after_its_path(self) -> None:
        url = "https://cdn.example.com/in/cat%20photo.png?X-Amz-Signature=abc&x=1"
        assert client.parse_image_arg(url) == ImageSpec("cat photo.png", url)
        assert client.parse_image_arg(f"a.png={url}") == ImageSpec("a.png", url)

    def test_an_existing_file_with_equals_in_its_name_is_a_path(self, tmp_path: Path) -> None:
        path = tmp_path / "x=1.png"
        path.write_bytes(png())
        assert client.parse_image_arg(str(path)) == ImageSpec("x=1.png", str(path))

    def test_sub_folder_names_are_kept(self) -> None:
        assert client.parse_image_arg("masks/a.png=m.png").name == "masks/a.png"

    @pytest.mark.parametrize("text", ["a.png=", "https://example.com/"])
    def test_unnamed_or_empty_sources_are_refused(self, text: str) -> None:
        with pytest.raises(client.UsageError, match="--image"):
            client.parse_image_arg(text)

    def test_a_local_file_becomes_a_data_uri_with_its_type(self, tmp_path: Path) -> None:
        raw = png()
        (tmp_path / "in.png").write_bytes(raw)
        encoded = client.encode_image(ImageSpec("in.png", str(tmp_path / "in.png")))
        header, _, payload = encoded["image"].partition(",")
        assert encoded["name"] == "in.png"
        assert header == "data:image/png;base64"
        assert base64.b64decode(payload) == raw

    def test_a_url_is_passed_through(self) -> None:
        spec = ImageSpec("a.jpg", "https://example.com/a.jpg")
        assert client.encode_image(spec) == {"name": "a.jpg", "image": spec.source}

    def test_a_missing_file_is_a_usage_error(self, tmp_path: Path) -> None:
        with pytest.raises(client.UsageError, match=r"--image a\.png: cannot read"):
            client.encode_image(ImageSpec("a.png", str(tmp_path / "nope.png")))


class TestWorkflowFile:
    def test_ui_format_is_passed_to_the_worker_which_converts_it(self, tmp_path: Path) -> None:
        path = tmp_path / "ui.json"
        ui = {"nodes": [], "links": [], "version": 0.4}
        path.write_text(json.dumps(ui))
        assert client.load_workflow(path) == ui
        assert client.read_request(path) == {"input": {"workflow": ui}}

    def test_a_request_file_is_sent_whole_and_the_options_add_to_it(self, tmp_path: Path) -> None:
        (tmp_path / "new.png").write_bytes(png())
        request = {
            "id": "local_test",
            "webhook": "https://hooks.example/done",
            "input": {
                "workflow": workflows.batch(1),
                "images": [
                    {"name": "keep.png", "image": "https://example.com/k.png"},
                    {"name": "new.png", "image": "https://example.com/old.png"},
                ],
                "convert_output": {"format": "webp"},
            },
        }
        path = tmp_path / "request.json"
        path.write_text(json.dumps(request))
        config = ClientConfig(
            workflow=path,
            base_url="http://h",
            images=(ImageSpec("new.png", str(tmp_path / "new.png")),),
        )
        body = client.build_request(config)
        # The SDK's local job id is not sent: RunPod gives each job its own.
        assert set(body) == {"input", "webhook"}
        assert body["input"]["convert_output"] == {"format": "webp"}
        names = [(i["name"], i["image"][:15]) for i in body["input"]["images"]]
        assert names == [("keep.png", "https://example"), ("new.png", "data:image/png;")]

    @pytest.mark.parametrize(
        ("request_body", "message"),
        [
            ({"input": {"images": []}}, 'has no "workflow"'),
            ({"input": {"workflow": {"1": {}}}}, "input.workflow: '1' is not a node"),
            ({"input": {"workflow": workflows.batch(1), "images": "a.png"}}, "must be a list"),
        ],
    )
    def test_unusable_request_files(
        self, tmp_path: Path, request_body: dict[str, Any], message: str
    ) -> None:
        path = tmp_path / "request.json"
        path.write_text(json.dumps(request_body))
        with pytest.raises(client.UsageError, match=message):
            client.read_request(path)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("{not json", "not valid JSON"),
            ("[]", "non-empty JSON object"),
            ("{}", "non-empty JSON object"),
            ('{"1": {"inputs": {}}}', "'1' is not a node with a class_type"),
        ],
    )
    def test_other_unusable_files(self, tmp_path: Path, text: str, message: str) -> None:
        path = tmp_path / "wf.json"
        path.write_text(text)
        with pytest.raises(client.UsageError, match=message):
            client.load_workflow(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(client.UsageError, match="cannot read workflow"):
            client.load_workflow(tmp_path / "missing.json")

    def test_request_body_carries_every_option(self, tmp_path: Path, workflow_file: Path) -> None:
        (tmp_path / "in.png").write_bytes(png())
        config = ClientConfig(
            workflow=workflow_file,
            base_url="http://h",
            images=(ImageSpec("in.png", str(tmp_path / "in.png")),),
            frames_to_video={"fps": 8.0, "format": "mp4", "keep_frames": False},
            comfy_org_api_key="ck",
        )
        body = client.build_request(config)["input"]
        assert body["workflow"] == workflows.batch(1)
        assert body["images"][0]["image"].startswith("data:image/png;base64,")
        assert body["frames_to_video"]["fps"] == 8.0
        assert body["comfy_org_api_key"] == "ck"


class TestFileNames:
    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("ComfyUI_00001_.png", "ComfyUI_00001_.png"),
            ("../../.ssh/authorized_keys", "authorized_keys"),
            ("..\\..\\evil.png", "evil.png"),
            ("/etc/passwd", "passwd"),
            ("..", "output-3"),
            ("", "output-3"),
            (None, "output-3"),
            ("a\x00b\n.png", "ab.png"),
        ],
    )
    def test_server_names_never_leave_the_folder(self, name: Any, expected: str) -> None:
        assert client.safe_filename(name, 3) == expected

    def test_existing_files_are_never_overwritten(self, tmp_path: Path) -> None:
        (tmp_path / "a.png").write_bytes(b"mine")
        names = []
        for _ in range(2):
            path, handle = client.open_unique(tmp_path, "a.png")
            with handle:
                handle.write(b"new")
            names.append(path.name)
        assert names == ["a-1.png", "a-2.png"]
        assert (tmp_path / "a.png").read_bytes() == b"mine"

    def test_human_sizes(self) -> None:
        assert [client.human_size(n) for n in (93, 1536, 5 * 1024 * 1024)] == [
            "93 B",
            "1.5 kB",
            "5.0 MB",
        ]


# -- talking to RunPod -------------------------------------------------------------------------


def cli(
    fake: FakeRunPod, workflow_file: Path, out: Path, *extra: str, env: dict[str, str] | None = None
) -> int:
    argv = [str(workflow_file), "--endpoint", ENDPOINT, "--out", str(out)]
    argv += ["--poll-interval", "0.001", *extra]
    return client.main(
        argv, env={"RUNPOD_API_KEY": KEY} if env is None else env, transport=fake.transport
    )


class TestRunAndPoll:
    def test_run_then_get_status_saves_outputs(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        raw = png()
        fake.add("POST", f"{API}/run", {"id": "j1", "status": "IN_QUEUE"})
        fake.add(
            "GET",
            f"{API}/status/j1",
            {"id": "j1", "status": "IN_QUEUE"},
            {"id": "j1", "status": "IN_PROGRESS", "delayTime": 2500, "output": "KSampler 3/8"},
            completed("j1", [item("ComfyUI_00001_.png", raw)]),
        )
        assert cli(fake, workflow_file, tmp_path / "out") == ExitCode.OK
        out, err = outputs(capsys)
        saved = tmp_path / "out" / "ComfyUI_00001_.png"
        assert saved.read_bytes() == raw
        assert out == f"{saved}\timage/png\t{len(raw)} B\n"
        assert "queued 2.5 s  KSampler 3/8" in err
        assert "COMPLETED (queued 1.5 s, ran 4.2 s): 1 file(s)" in err
        (run,) = fake.sent("POST", "/run")
        assert run.headers["Authorization"] == f"Bearer {KEY}"
        assert json.loads(run.content)["input"]["workflow"] == workflows.batch(1)
        assert KEY not in out + err

    def test_local_server_gets_post_after_405_and_keeps_using_it(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        url = "http://127.0.0.1:8000"
        fake.add("POST", f"{url}/run", {"id": "t1", "status": "IN_PROGRESS"})
        fake.add("GET", f"{url}/status/t1", {"detail": "Method Not Allowed"}, status=405)
        fake.add(
            "POST",
            f"{url}/status/t1",
            {"id": "t1", "status": "IN_PROGRESS"},
            completed("t1", [item("a.png", png())]),
        )
        argv = [
            str(workflow_file),
            "--url",
            url,
            "--out",
            str(tmp_path),
            "--poll-interval",
            "0.001",
        ]
        assert client.main(argv, env={}, transport=fake.transport) == ExitCode.OK
        assert [r.method for r in fake.requests] == ["POST", "GET", "POST", "POST"]
        assert all("Authorization" not in r.headers for r in fake.requests)
        assert (tmp_path / "a.png").exists()
        outputs(capsys)

    def test_runsync_that_outlives_runpods_wait_falls_back_to_polling(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        fake.add("POST", f"{API}/runsync", {"id": "s1", "status": "IN_PROGRESS"})
        fake.add("GET", f"{API}/status/s1", completed("s1", [item("a.png", png())]))
        assert cli(fake, workflow_file, tmp_path / "out", "--sync") == ExitCode.OK
        assert fake.sent("POST", "/run") == []
        assert len(fake.sent("GET", "/status/s1")) == 1
        assert (tmp_path / "out" / "a.png").exists()
        outputs(capsys)

    def test_runsync_that_completes_needs_no_status(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        fake.add("POST", f"{API}/runsync", completed("s2", [item("a.png", png())]))
        assert cli(fake, workflow_file, tmp_path / "out", "--sync") == ExitCode.OK
        assert [r.url.path for r in fake.requests] == [f"/v2/{ENDPOINT}/runsync"]
        outputs(capsys)

    def test_a_dropped_poll_is_retried(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        fake.add("POST", f"{API}/run", {"id": "j2", "status": "IN_QUEUE"})
        fake.add(
            "GET",
            f"{API}/status/j2",
            httpx.Response(503, text="upstream unavailable"),
            completed("j2", [item("a.png", png())]),
        )
        assert cli(fake, workflow_file, tmp_path / "out") == ExitCode.OK
        assert "answered 503: upstream unavailable; retrying (1/5)" in outputs(capsys)[1]


class TestErrors:
    @pytest.mark.parametrize("status", [401, 403])
    def test_rejected_key(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        status: int,
    ) -> None:
        fake.add("POST", f"{API}/run", b"Unauthorized", status=status)
        assert cli(fake, workflow_file, tmp_path) == ExitCode.API
        out, err = outputs(capsys)
        assert err == "error: RunPod rejected the API key: check RUNPOD_API_KEY\n"
        assert KEY not in out + err

    def test_unknown_endpoint(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        assert cli(fake, workflow_file, tmp_path) == ExitCode.API  # no route: 404
        assert f"error: unknown endpoint {ENDPOINT}" in outputs(capsys)[1]

    def test_network_failure_names_the_url(
        self, workflow_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

        argv = [str(workflow_file), "--endpoint", ENDPOINT, "--out", str(tmp_path)]
        code = client.main(argv, env={"RUNPOD_API_KEY": KEY}, transport=httpx.MockTransport(refuse))
        assert code == ExitCode.API
        assert f"cannot reach {API}/run: [Errno 111] Connection refused" in outputs(capsys)[1]

    def test_an_answer_that_is_not_a_job_status(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        fake.add("POST", f"{API}/run", b"<html>gateway</html>")
        assert cli(fake, workflow_file, tmp_path) == ExitCode.API
        assert "did not answer a RunPod job status" in outputs(capsys)[1]

    def test_failed_job_prints_its_error_with_details(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        error = (
            "Failed to upload one or more input images: a.png: Failed to download image "
            "from URL: https://example.com/a.png (HTTP 404)"
        )
        fake.add("POST", f"{API}/run", {"id": "f1", "status": "IN_QUEUE"})
        fake.add(
            "GET",
            f"{API}/status/f1",
            {
                "id": "f1",
                "status": "FAILED",
                "error": error,
                "output": {"code": "input_images_failed"},
            },
        )
        assert cli(fake, workflow_file, tmp_path) == ExitCode.JOB_FAILED
        assert f"error: job f1 FAILED: {error} [input_images_failed]\n" in outputs(capsys)[1]

    def test_a_worker_bug_shows_the_exception_not_the_json_dump(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        dump = json.dumps(
            {
                "error_type": "<class 'KeyError'>",
                "error_message": "'images'",
                "error_traceback": "Traceback (most recent call last): ...",
            }
        )
        fake.add("POST", f"{API}/runsync", {"id": "b1", "status": "FAILED", "error": dump})
        assert cli(fake, workflow_file, tmp_path, "--sync") == ExitCode.JOB_FAILED
        err = outputs(capsys)[1]
        assert "the worker raised KeyError: 'images'" in err
        assert "Traceback" not in err

    @pytest.mark.parametrize(
        ("status", "message"),
        [("TIMED_OUT", "RunPod stopped job x1 (TIMED_OUT)"), ("CANCELLED", "job x1 was cancelled")],
    )
    def test_timed_out_and_cancelled(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        status: str,
        message: str,
    ) -> None:
        fake.add("POST", f"{API}/run", {"id": "x1", "status": "IN_QUEUE"})
        fake.add("GET", f"{API}/status/x1", {"id": "x1", "status": status})
        assert cli(fake, workflow_file, tmp_path) == ExitCode.JOB_FAILED
        assert message in outputs(capsys)[1]

    def test_unknown_job_on_status(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        fake.add("POST", f"{API}/run", {"id": "gone", "status": "IN_QUEUE"})
        fake.add("GET", f"{API}/status/gone", b"job not found", status=404)
        assert cli(fake, workflow_file, tmp_path) == ExitCode.API
        assert "job gone not found: RunPod keeps a result 30 minutes" in outputs(capsys)[1]

    def test_a_client_error_on_status_is_not_retried(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        fake.add("POST", f"{API}/run", {"id": "j3", "status": "IN_QUEUE"})
        fake.add("GET", f"{API}/status/j3", b"bad request", status=400)
        assert cli(fake, workflow_file, tmp_path) == ExitCode.API
        assert len(fake.sent("GET", "/status/j3")) == 1
        assert "answered 400: bad request" in outputs(capsys)[1]

    def test_timeout_names_the_job_and_how_to_cancel_it_without_the_key(
        self, fake: FakeRunPod, workflow_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fake.add("POST", f"{API}/run", {"id": "slow1", "status": "IN_QUEUE"})
        fake.add("GET", f"{API}/status/slow1", {"id": "slow1", "status": "IN_QUEUE"})
        now = [0.0]

        def sleep(seconds: float) -> None:
            now[0] += seconds

        config = ClientConfig(
            workflow=workflow_file,
            base_url=API,
            endpoint_id=ENDPOINT,
            api_key=KEY,
            timeout_s=30.0,
            poll_interval_s=5.0,
        )
        with pytest.raises(client.WaitTimeoutError) as exc:
            client.execute(
                config,
                transport=fake.transport,
                progress=client.Progress(tty=False),
                clock=lambda: now[0],
                sleep=sleep,
            )
        message = exc.value.message
        assert exc.value.exit_code == ExitCode.WAIT_TIMEOUT
        assert "--timeout 30 s; job slow1 is still IN_QUEUE and was not cancelled" in message
        assert f'curl -X POST -H "Authorization: Bearer $RUNPOD_API_KEY" {API}/cancel/slow1' in (
            message
        )
        assert KEY not in message
        # At once, then every 5 s until the 30 s are up (the last one at 30 s).
        assert len(fake.sent("GET", "/status/slow1")) == 7
        # One line per change of state, not per poll, when stderr is not a terminal.
        assert outputs(capsys)[1].count("IN_QUEUE") == 1

    def test_ctrl_c_while_waiting_names_the_job_which_goes_on(
        self, fake: FakeRunPod, workflow_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fake.add("POST", f"{API}/run", {"id": "long1", "status": "IN_QUEUE"})
        fake.add("GET", f"{API}/status/long1", {"id": "long1", "status": "IN_QUEUE"})

        def interrupt(seconds: float) -> None:
            raise KeyboardInterrupt

        config = ClientConfig(
            workflow=workflow_file, base_url=API, endpoint_id=ENDPOINT, api_key=KEY
        )
        with pytest.raises(client.UserInterrupt) as exc:
            client.execute(config, transport=fake.transport, sleep=interrupt)
        assert exc.value.exit_code == ExitCode.INTERRUPTED
        assert "job long1 was not cancelled" in exc.value.message
        assert f"{API}/cancel/long1" in exc.value.message
        outputs(capsys)

    def test_server_text_cannot_drive_the_terminal(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        fake.add("POST", f"{API}/run", {"id": "e1", "status": "IN_QUEUE"})
        fake.add(
            "GET",
            f"{API}/status/e1",
            {"id": "e1", "status": "IN_PROGRESS", "output": "\x1b]0;pwned\x07step 1/2"},
            {"id": "e1", "status": "FAILED", "error": "boom \x1b[2J\x1b[31mred"},
        )
        assert cli(fake, workflow_file, tmp_path) == ExitCode.JOB_FAILED
        err = outputs(capsys)[1]
        assert "\x1b" not in err and "\x07" not in err
        assert "]0;pwnedstep 1/2" in err and "FAILED: boom [2J[31mred" in err

    def test_a_too_large_request_is_refused_before_sending(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setitem(client_api._REQUEST_LIMIT_BYTES, "/run", 100)
        assert cli(fake, workflow_file, tmp_path) == ExitCode.USAGE
        assert "over the 0 MB RunPod accepts on /run" in outputs(capsys)[1]
        assert fake.requests == []


class TestSavingOutputs:
    def test_s3_urls_are_downloaded_without_the_api_key(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 10
        url = f"{BUCKET}/j5/clip_00001_.mp4"
        s3_item = {
            "filename": "clip_00001_.mp4",
            "type": "s3_url",
            "data": f"{url}?X-Amz-Signature=secret-sig",
            "mime_type": "video/mp4",
            "size_bytes": len(video),
            "video": {"width": 832, "height": 480, "frames": 81, "fps": 16.0},
        }
        fake.add("POST", f"{API}/runsync", completed("j5", [s3_item]))
        fake.add("GET", url, video)
        assert cli(fake, workflow_file, tmp_path, "--sync") == ExitCode.OK
        assert (tmp_path / "clip_00001_.mp4").read_bytes() == video
        (download,) = fake.sent("GET", "clip_00001_.mp4")
        assert "Authorization" not in download.headers
        out = outputs(capsys)[0]
        assert out.endswith("\tvideo/mp4\t2.5 kB\t832x480 81 frames 16 fps\n")

    def test_failed_items_are_reported_and_the_rest_saved(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        good = png()
        items = [
            {**item("short.png", b"abc"), "type": "s3_url", "data": f"{BUCKET}/short.png?sig=s"},
            {
                **item("expired.png", b""),
                "type": "s3_url",
                "data": f"{BUCKET}/expired.png?X-Amz-Signature=s",
            },
            item("bad.png", b"", data="data:image/png;base64,@@@"),
            item("odd.png", b"", type="ftp"),
            item("good.png", good),
        ]
        fake.add("POST", f"{API}/runsync", completed("j6", items, ["x.png: upload failed"]))
        fake.add("GET", f"{BUCKET}/short.png", b"ab")
        fake.add("GET", f"{BUCKET}/expired.png", b"Request has expired", status=403)
        assert cli(fake, workflow_file, tmp_path, "--sync") == ExitCode.INCOMPLETE
        assert sorted(p.name for p in tmp_path.iterdir()) == ["good.png", "wf.json"]
        out, err = outputs(capsys)
        assert out.count("\n") == 1 and "good.png" in out
        assert "short.png: got 2 bytes, the worker reported 3" in err
        assert "expired.png: download from https://bucket.example/expired.png answered 403" in err
        assert "a presigned URL expires after the worker's BUCKET_URL_EXPIRY_S" in err
        assert "bad.png: its base64 is invalid" in err
        assert "odd.png: unknown type 'ftp'" in err
        assert "warning: the worker reported: x.png: upload failed" in err
        assert "sig=s" not in err and "Signature=s" not in err  # a signature is a credential
        assert "1 file(s)" in err

    def test_output_without_images_is_an_api_error(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        fake.add("POST", f"{API}/runsync", {"id": "o1", "status": "COMPLETED", "output": "hi"})
        assert cli(fake, workflow_file, tmp_path, "--sync") == ExitCode.API
        assert "its output has no images[]" in outputs(capsys)[1]

    def test_default_folder_is_outputs_slash_job_id(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.chdir(tmp_path)
        fake.add("POST", f"{API}/runsync", completed("sync-7f", [item("a.png", png())]))
        argv = [str(workflow_file), "--endpoint", ENDPOINT, "--sync"]
        assert client.main(argv, env={"RUNPOD_API_KEY": KEY}, transport=fake.transport) == 0
        assert (tmp_path / "outputs" / "sync-7f" / "a.png").is_file()
        outputs(capsys)


class TestProgress:
    def test_a_terminal_gets_one_rewritten_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        progress = client.Progress(tty=True)
        progress.show({"id": "j", "status": "IN_QUEUE"}, 1.0)
        progress.show({"id": "j", "status": "IN_PROGRESS", "output": "KSampler 2/8\nmore"}, 2.0)
        progress.close()
        err = outputs(capsys)[1]
        assert "\n" not in err
        assert err.count("\r\x1b[K") == 3
        assert "IN_PROGRESS  KSampler 2/8  2 s" in err

    def test_ticking_moves_the_time_on_a_terminal_and_beats_in_a_log(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """While a request blocks, the time moves (the frozen ``IN_PROGRESS 0 s`` of issue 12)."""
        for tty, expected in ((True, "IN_PROGRESS  3 s"), (False, "(still waiting, 3 s)")):
            progress = client.Progress(tty=tty, tick_s=0.001, heartbeat_s=1)
            progress.show({"id": "j", "status": "IN_PROGRESS"}, 0.0)
            ticks = iter(range(100))
            seen = threading.Event()

            def elapsed(ticks: Iterator[int] = ticks, seen: threading.Event = seen) -> float:
                n = next(ticks, 99)
                if n >= 3:
                    seen.set()
                return float(min(n, 3))

            with progress.ticking(elapsed):
                assert seen.wait(30)  # a safety net only: the ticker sets it after 3 ticks
            progress.close()
            err = outputs(capsys)[1]
            assert expected in err, (tty, err)


# -- local serving, existing jobs, cancelling, --json -------------------------------------------


class FakeClock:
    """time.monotonic and time.sleep for code that waits: sleeping moves the clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def local_config(workflow: Path | None, out: Path, **extra: Any) -> ClientConfig:
    return ClientConfig(
        workflow=workflow,
        base_url="http://127.0.0.1:8000",
        out_dir=out,
        poll_interval_s=0.001,
        **extra,
    )


class TestLocalServing:
    @pytest.mark.parametrize("tty", [False, True])
    def test_a_booting_worker_is_waited_for_with_a_message(
        self, workflow_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tty: bool
    ) -> None:
        clock, refusals = FakeClock(), [0]

        def handle(request: httpx.Request) -> httpx.Response:
            if clock.now < 20:  # ComfyUI still booting: nothing listens on the port yet
                refusals[0] += 1
                raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
            if request.url.path == "/runsync":
                return httpx.Response(200, json=completed("s1", [item("a.png", png())]))
            return httpx.Response(404)

        config = local_config(workflow_file, tmp_path / "out", sync=True, wait_start_s=60)
        code = client.execute(
            config,
            transport=httpx.MockTransport(handle),
            progress=client.Progress(tty=tty),
            clock=clock,
            sleep=clock.sleep,
        )
        assert code == ExitCode.OK
        err = outputs(capsys)[1]
        assert err.count("waiting for the worker at http://127.0.0.1:8000 to start") == 1
        if tty:  # the /runsync line is erased first: the message starts a line of its own
            assert "\r\x1b[Kwaiting for the worker at" in err
        assert "the worker at http://127.0.0.1:8000 is up (20 s)" in err
        assert refusals[0] == 40  # every half second, and the job sent once
        assert (tmp_path / "out" / "a.png").is_file()

    def test_the_wait_for_a_worker_is_bounded(
        self, workflow_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        clock = FakeClock()

        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

        config = local_config(workflow_file, tmp_path, wait_start_s=5)
        with pytest.raises(client.ServerDownError) as exc:
            client.execute(
                config, transport=httpx.MockTransport(refuse), clock=clock, sleep=clock.sleep
            )
        assert clock.now == 5
        assert "no worker started there within --wait-start 5 s" in exc.value.message
        assert exc.value.exit_code == ExitCode.API
        outputs(capsys)

    def test_a_blocking_local_status_is_named_once(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        url = "http://127.0.0.1:8000"
        fake.add("POST", f"{url}/run", {"id": "t1", "status": "IN_PROGRESS"})
        fake.add("GET", f"{url}/status/t1", {"detail": "Method Not Allowed"}, status=405)
        fake.add("POST", f"{url}/status/t1", completed("t1", [item("a.png", png())]))
        config = local_config(workflow_file, tmp_path)
        assert client.execute(config, transport=fake.transport) == ExitCode.OK
        err = outputs(capsys)[1]
        assert err.count("runs the job inside the /status request") == 1
        # The note comes before the request that blocks, so it is seen while the job runs.
        assert err.index("runs the job inside") < err.index("COMPLETED")


class TestExistingJobs:
    def test_job_fetches_a_result_without_submitting(
        self, fake: FakeRunPod, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fake.add(
            "GET",
            f"{API}/status/old-1",
            {"id": "old-1", "status": "IN_PROGRESS"},
            completed("old-1", [item("a.png", png())]),
        )
        argv = ["--job", "old-1", "--endpoint", ENDPOINT, "--out", str(tmp_path)]
        argv += ["--poll-interval", "0.001"]
        assert client.main(argv, env={"RUNPOD_API_KEY": KEY}, transport=fake.transport) == 0
        assert fake.sent("POST", "/run") == [] and fake.sent("POST", "/runsync") == []
        assert (tmp_path / "a.png").is_file()
        assert "asking for its status" in outputs(capsys)[1]

    def test_a_job_the_local_server_forgot_says_why(
        self, fake: FakeRunPod, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = "http://127.0.0.1:8000"
        fake.add("GET", f"{url}/status/gone", {"detail": "Method Not Allowed"}, status=405)
        fake.add(
            "POST",
            f"{url}/status/gone",
            {"id": "gone", "status": "FAILED", "error": "Job ID not found"},
        )
        argv = ["--job", "gone", "--url", url, "--out", str(tmp_path)]
        assert client.main(argv, env={}, transport=fake.transport) == ExitCode.JOB_FAILED
        assert "forgets a job once a /status has answered it" in outputs(capsys)[1]


class TestCancelOnInterrupt:
    def interrupt(self, seconds: float) -> None:
        raise KeyboardInterrupt

    def test_ctrl_c_cancels_the_job_when_asked(
        self, fake: FakeRunPod, workflow_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fake.add("POST", f"{API}/run", {"id": "c1", "status": "IN_QUEUE"})
        fake.add("GET", f"{API}/status/c1", {"id": "c1", "status": "IN_QUEUE"})
        fake.add("POST", f"{API}/cancel/c1", {"id": "c1", "status": "CANCELLED"})
        config = ClientConfig(
            workflow=workflow_file,
            base_url=API,
            endpoint_id=ENDPOINT,
            api_key=KEY,
            cancel_on_interrupt=True,
        )
        with pytest.raises(client.UserInterrupt) as exc:
            client.execute(config, transport=fake.transport, sleep=self.interrupt)
        assert exc.value.message == "interrupted; asked to cancel job c1: it is CANCELLED"
        (cancel,) = fake.sent("POST", "/cancel/c1")
        assert cancel.headers["Authorization"] == f"Bearer {KEY}"
        outputs(capsys)

    def test_the_local_server_cannot_cancel_and_says_so(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        url = "http://127.0.0.1:8000"
        fake.add("POST", f"{url}/run", {"id": "t2", "status": "IN_PROGRESS"})
        fake.add("GET", f"{url}/status/t2", {"detail": "Method Not Allowed"}, status=405)
        fake.add("POST", f"{url}/status/t2", {"id": "t2", "status": "IN_PROGRESS"})
        config = local_config(workflow_file, tmp_path, cancel_on_interrupt=True)
        with pytest.raises(client.UserInterrupt) as exc:
            client.execute(config, transport=fake.transport, sleep=self.interrupt)
        assert "job t2 could not be cancelled" in exc.value.message
        assert "local API server has no /cancel" in exc.value.message
        assert fake.sent("POST", "/cancel/t2") == []
        outputs(capsys)


class TestJsonOutput:
    def test_completed_job_prints_one_json_object(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        raw = png()
        body = completed("j9", [item("a.png", raw)], ["b.png: upload failed"])
        body["output"]["stats"] = {"total_s": 1.5}
        fake.add("POST", f"{API}/runsync", body)
        assert cli(fake, workflow_file, tmp_path, "--sync", "--json") == ExitCode.INCOMPLETE
        out, err = outputs(capsys)
        summary = json.loads(out)
        assert summary == {
            "id": "j9",
            "status": "COMPLETED",
            "exit_code": 3,
            "folder": str(tmp_path),
            "files": [
                {"path": str(tmp_path / "a.png"), "mime_type": "image/png", "size_bytes": len(raw)}
            ],
            "problems": ["the worker reported: b.png: upload failed"],
            "stats": {"total_s": 1.5},
            "delayTime": 1500,
            "executionTime": 4200,
        }
        assert "COMPLETED" in err  # the human summary still goes to stderr

    def test_a_failed_job_prints_its_error_as_json(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        failed = {
            "id": "f9",
            "status": "FAILED",
            "error": "Workflow validation failed: ...",
            "output": {"code": "workflow_validation_failed"},
        }
        fake.add("POST", f"{API}/runsync", failed)
        assert cli(fake, workflow_file, tmp_path, "--sync", "--json") == ExitCode.JOB_FAILED
        summary = json.loads(outputs(capsys)[0])
        assert summary["exit_code"] == 1 and summary["id"] == "f9"
        assert summary["error"] == "Workflow validation failed: ..."
        assert summary["code"] == "workflow_validation_failed"
        assert summary["message"].startswith("job f9 FAILED")


class TestPublicBucketHint:
    def test_an_unsigned_url_refused_blames_public_reads_not_expiry(
        self,
        fake: FakeRunPod,
        workflow_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        public = {**item("p.png", b""), "type": "s3_url", "data": f"{BUCKET}/j/p.png"}
        fake.add("POST", f"{API}/runsync", completed("p1", [public]))
        fake.add("GET", f"{BUCKET}/j/p.png", b"AccessDenied", status=403)
        assert cli(fake, workflow_file, tmp_path, "--sync") == ExitCode.INCOMPLETE
        err = outputs(capsys)[1]
        assert "BUCKET_PUBLIC_URL is set, but the bucket" in err
        assert "does not allow public reads" in err
        assert "expire" not in err


# -- the client as its own distribution -----------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "client" / "src" / "comfy_worker_client"


def test_the_client_imports_only_itself_the_stdlib_and_httpx() -> None:
    """What lets ``client/pyproject.toml`` ship comfy_worker_client alone with httpx."""
    outside = []
    for path in sorted(CLIENT_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom):
                names = ["comfy_worker_client"]  # relative: inside the package
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                allowed = (
                    root in sys.stdlib_module_names
                    or root == "httpx"
                    or name == "comfy_worker_client"
                    or name.startswith("comfy_worker_client.")
                )
                if not allowed:
                    outside.append(f"{path.name}: {name}")
    assert outside == []


def test_importing_the_client_loads_no_engine_module() -> None:
    code = (
        "import sys, comfy_worker_client.run; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'engine'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=CLIENT_DIR.parent,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "", "PYTHONPATH": str(CLIENT_DIR.parent)},
    )
    assert proc.stdout.strip() == "[]"


def test_the_client_and_the_worker_are_two_distributions_sharing_no_file() -> None:
    """The client's package is comfy_worker_client from client/src; the worker ships engine*
    and no console script of the client's, so both install into one environment."""
    worker = tomllib.loads((REPO / "pyproject.toml").read_text())
    dist = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())
    (httpx_pin,) = [d for d in worker["project"]["dependencies"] if d.startswith("httpx")]
    assert dist["project"]["dependencies"] == [httpx_pin]
    assert dist["project"]["version"] == worker["project"]["version"]
    assert dist["project"]["scripts"] == {"comfy-worker-client": "comfy_worker_client:main"}
    assert dist["tool"]["flit"]["module"]["name"] == CLIENT_DIR.name
    assert dist["build-system"]["build-backend"] == "flit_core.buildapi"
    assert "scripts" not in worker["project"]
    assert worker["tool"]["setuptools"]["packages"]["find"]["include"] == ["engine*"]
    assert not (REPO / "engine" / "client").exists()


def test_pip_install_client_writes_nothing_into_the_checkout(tmp_path: Path) -> None:
    """``pip install ./client`` (flit_core, no network: the build backend from this
    environment) installs a client that runs, and leaves client/ as it was."""
    pytest.importorskip("flit_core", reason="flit_core (the dev extra) builds the client")
    before = sorted(p.relative_to(REPO) for p in (REPO / "client").rglob("*"))
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-build-isolation",
         "--no-deps", "--no-compile", "--quiet", "--target", str(target), "./client"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    after = sorted(p.relative_to(REPO) for p in (REPO / "client").rglob("*"))
    assert after == before
    assert (target / "comfy_worker_client" / "run.py").is_file()
    assert (target / "bin" / "comfy-worker-client").is_file()
    ran = subprocess.run(
        [sys.executable, "-m", "comfy_worker_client", "--help"],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": "", "PYTHONPATH": str(target)},
    )  # fmt: skip
    assert ran.returncode == 0 and "comfy-worker-client" in ran.stdout, ran.stderr


def test_the_migration_pages_snippet_reads_both_workers_outputs() -> None:
    """docs/migration.md's ``output_bytes``, run as printed, on a data URI and bare base64."""
    page = (REPO / "docs" / "migration.md").read_text()
    (snippet,) = [
        block
        for block in page.split("```python\n")[1:]
        if block.split("```", 1)[0].count("def output_bytes")
    ]
    namespace: dict[str, Any] = {}
    exec(snippet.split("```", 1)[0], namespace)  # noqa: S102 (the docs' own code, on purpose)
    raw = png()
    ours = item("a.png", raw)
    theirs = {"filename": "a.png", "type": "base64", "data": base64.b64encode(raw).decode()}
    assert namespace["output_bytes"](ours) == raw
    assert namespace["output_bytes"](theirs) == raw
