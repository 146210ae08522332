"""The boot log's filters: ComfyUI's and torio's noise told in a few lines, nothing lost."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from engine import logs


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose lines go through the worker's handler filters into a string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(logs._SearchPathSummary(handler))
    handler.addFilter(logs._FileListFilter())
    handler.addFilter(logs._JobFilter())
    logger = logging.getLogger("test.boot")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_search_paths_become_one_line_before_the_next(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    for kind in ("checkpoints", "loras"):
        for root in ("/comfyui/models", "/runpod-volume/models"):
            # ComfyUI formats the message itself (utils/extra_config.py).
            logger.info("Adding extra search path {} {}".format(kind, f"{root}/{kind}"))
    assert stream.getvalue() == ""  # held until something else is said
    logger.info("Total VRAM 24105 MB")
    assert stream.getvalue().splitlines() == [
        "INFO test.boot: 4 extra model search paths added (2 folder types) under "
        "/comfyui/models, /runpod-volume/models",
        "INFO test.boot: Total VRAM 24105 MB",
    ]


def test_a_file_listing_pair_becomes_one_line(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    logger.debug("recursive file list on directory /comfyui/models/loras")
    logger.debug("found 3 files")
    logger.debug("found 3 files")  # without its directory line: left as it is
    assert stream.getvalue().splitlines() == [
        "DEBUG test.boot: found 3 files in /comfyui/models/loras",
        "DEBUG test.boot: found 3 files",
    ]


@pytest.mark.parametrize("level", ["WARNING", "INFO", "DEBUG"])
def test_torio_ffmpeg_probing_has_no_traceback_and_one_info_line(level: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    torio = logging.getLogger("test.torio")
    torio.addFilter(logs._TorioFfmpegFilter())
    torio.addHandler(handler)
    torio.setLevel(logging.DEBUG)
    torio.propagate = False
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)  # COMFY_LOG_LEVEL: the filter shows the attempts only at DEBUG
    try:
        for version in ("6", "5", ""):
            torio.debug("Loading FFmpeg%s", version)
            try:
                raise OSError(f"libavutil.so.5{version or 0}: cannot open shared object file")
            except OSError:
                torio.debug("Failed to load FFmpeg%s extension.", version, exc_info=True)
    finally:
        root.setLevel(before)
        torio.removeHandler(handler)
        torio.filters.clear()
    lines = stream.getvalue().splitlines()
    if level == "WARNING":  # the summary is an INFO line: not shown above that level
        assert lines == []
        return
    assert "Traceback" not in stream.getvalue()
    gave_up = (
        "INFO torio (torchaudio's FFmpeg binding) found no FFmpeg 4-6 libraries; "
        "ComfyUI's own audio and video nodes do not use it (they use PyAV)"
    )
    assert lines[-1] == gave_up
    if level == "INFO":
        assert lines == [gave_up]
    else:
        assert lines[:2] == [
            "DEBUG Loading FFmpeg6",
            "DEBUG Failed to load FFmpeg6 extension. "
            "(OSError: libavutil.so.56: cannot open shared object file)",
        ]
        assert len(lines) == 6


# -- URLs: no query, fragment or user info in any line or error answer --------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Invalid image file: https://h.example/a.png?token=abc123", "Invalid image file: https://h.example/a.png?***"),
        ("got 'https://user:pw@h.example/m.safetensors' here", "got 'https://h.example/m.safetensors' here"),
        ("['s3://bucket/k?X-Amz-Signature=f00d', 'b']", "['s3://bucket/k?***', 'b']"),
        ("https://h.example/x.bin#sha256=00ff and more", "https://h.example/x.bin?*** and more"),
        ("plain https://h.example/a.png stays", "plain https://h.example/a.png stays"),
        ("no url at all: a?b=c", "no url at all: a?b=c"),
    ],
)  # fmt: skip
def test_urls_lose_their_query_and_user_info(text: str, shown: str) -> None:
    assert logs.redact_urls(text) == shown


def test_every_log_line_shows_urls_without_their_secrets(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    logger.warning("Failed to validate prompt: %s", "image 'https://u:p@h.example/a?sig=s3cr3t'")
    try:
        raise ValueError("cannot open https://h.example/b.png?token=t0ken")
    except ValueError:
        logger.exception("node failed")
    text = stream.getvalue()
    assert "s3cr3t" not in text and "u:p@" not in text and "t0ken" not in text
    assert "https://h.example/a?***" in text and "https://h.example/b.png?***" in text


def test_an_error_answer_is_walked_whole() -> None:
    answer = {
        "error": "Workflow validation failed: https://h.example/a?token=x1",
        "details": ["https://h.example/a?token=x1"],
        "node_errors": {"1": {"errors": [{"extra_info": {"received_value": "http://h/a?k=v"}}]}},
    }
    assert "token" not in str(logs.redact_urls_obj(answer))
    assert "k=v" not in str(logs.redact_urls_obj(answer))


def test_jobs_in_flight_at_once_keep_their_ids_and_every_key_is_redacted() -> None:
    """Two jobs overlap (MAX_CONCURRENT_JOBS): each thread's lines carry its own job's id,
    both jobs' keys are cut from every line, ComfyUI's thread (bound to no job) logs
    under the job whose run holds the engine, and nothing is left once both end."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(job_id)s] %(message)s"))
    handler.addFilter(logs._JobFilter())
    logger = logging.getLogger("test.jobs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    a_in, b_in, both_in, a_said, b_said, leave = (threading.Event() for _ in range(6))

    def job(job_id: str, key: str, entered: threading.Event, said: threading.Event) -> None:
        with logs.job_context(job_id, [key]):
            entered.set()
            both_in.wait(5)  # said while the other job is in flight too
            logger.info("%s saw key-of-a-123456 and key-of-b-654321", job_id)
            said.set()
            leave.wait(5)

    threads = [
        threading.Thread(target=job, args=("a", "key-of-a-123456", a_in, a_said)),
        threading.Thread(target=job, args=("b", "key-of-b-654321", b_in, b_said)),
    ]
    try:
        for thread in threads:
            thread.start()
        assert a_in.wait(5) and b_in.wait(5)  # both in flight now
        with logs.engine_job("b"):
            engine = threading.Thread(target=lambda: logger.info("ComfyUI: got prompt"))
            engine.start()
            engine.join(5)
        logger.info("boot thread line")  # this thread: bound to no job, engine free, two jobs
        both_in.set()
        assert a_said.wait(5) and b_said.wait(5)
        leave.set()
        for thread in threads:
            thread.join(5)
        logger.info("after")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[:2] == ["[b] ComfyUI: got prompt", "[-] boot thread line"]
    assert sorted(lines[2:4]) == ["[a] a saw *** and ***", "[b] b saw *** and ***"]
    assert lines[4:] == ["[-] after"]


def test_jobs_side_by_side_keep_each_others_secrets_out_of_every_line(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    """Two jobs in flight: a line of either loses both keys, and the later job's key is
    still redacted after the earlier job ends (it once restored the set before it)."""
    logger, stream = capture
    first = logs.job_context("job-a", ["key-of-job-a-123"])
    second = logs.job_context("job-b", ["key-of-job-b-456"])
    first.__enter__()
    second.__enter__()
    logger.warning("job a failed: key-of-job-a-123")
    first.__exit__(None, None, None)
    logger.warning("job b failed: key-of-job-b-456")
    second.__exit__(None, None, None)
    text = stream.getvalue()
    assert "key-of-job-a" not in text and "key-of-job-b" not in text
    assert text.count("***") == 2


class _Line:
    """A log message that notes each time it is made into text (what redaction needs)."""

    def __init__(self, text: str) -> None:
        self.text, self.made = text, 0

    def __str__(self) -> str:
        self.made += 1
        return self.text


@pytest.fixture
def sdk_logger() -> Iterator[Any]:
    """The runpod SDK's own logger (a singleton), guarded, its level put back after."""
    from runpod.serverless.modules.rp_logger import RunPodLogger

    logger = RunPodLogger()
    level = logger.level
    logs.guard_sdk_logger(logger)
    try:
        yield logger
    finally:
        logger.level = level


def test_sdk_lines_below_its_level_are_dropped_before_any_redaction(
    sdk_logger: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DEBUG line (the SDK's ``Handler output``, a whole result) at INFO is never made
    into text, let alone redacted; lines at or above the level are printed, redacted."""
    sdk_logger.level = "INFO"
    capsys.readouterr()
    hidden = _Line("Handler output: https://user:pw@example.com/x?sig=abc")
    sdk_logger.debug(hidden)
    assert hidden.made == 0 and capsys.readouterr().out == ""
    shown = _Line("Finished: https://user:pw@example.com/x?sig=abc")
    sdk_logger.info(shown)
    out = capsys.readouterr().out
    assert shown.made == 1 and "Finished" in out and "sig=abc" not in out and "pw@" not in out
    sdk_logger.level = "DEBUG"
    sdk_logger.debug(hidden)
    out = capsys.readouterr().out
    assert hidden.made == 1 and "Handler output" in out and "sig=abc" not in out
    sdk_logger.level = "NOTSET"
    sdk_logger.error(shown)
    assert shown.made == 1 and capsys.readouterr().out == ""
