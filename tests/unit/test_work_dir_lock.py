"""One worker process per WORKER_DIR (work_dir_lock): a second one is refused, by name,
before its boot can remove the first one's running job's files."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine import work_dir_lock
from engine.errors import ConfigError
from engine.job_files import job_folder
from engine.settings import Settings
from engine.worker import Worker
from tests.fake_runtime import FakeRuntime

REPO = Path(__file__).resolve().parents[2]

# A worker process stand-in: claims the folder, says so, then holds it until its stdin
# closes. With "fork", it first forks a child that outlives it, holding the same stdin.
_HOLDER = r"""
import os, sys
from pathlib import Path
from engine import work_dir_lock
work_dir_lock.claim(Path(sys.argv[1]))
if sys.argv[2] == "fork" and os.fork() == 0:
    os.write(1, f"child {os.getpid()}\n".encode())  # one write: the two share the pipe
    sys.stdin.read()
    os._exit(0)
os.write(1, f"held {os.getpid()}\n".encode())
if sys.argv[2] != "fork":
    sys.stdin.read()
"""


@contextmanager
def holder(work_dir: Path, mode: str = "hold") -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(work_dir), mode],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)


def read_line(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    return proc.stdout.readline().split()


def test_a_folder_another_process_holds_is_refused_naming_it(tmp_path: Path) -> None:
    with holder(tmp_path) as proc:
        assert read_line(proc) == ["held", str(proc.pid)]
        with pytest.raises(ConfigError) as caught:
            work_dir_lock.claim(tmp_path)
        assert caught.value.message == (
            f"WORKER_DIR {tmp_path} is in use by another worker process (pid {proc.pid})"
        )
        assert f"WORKER_DIR={tmp_path}-2" in caught.value.summary()
    # The holder ended: the kernel dropped its lock, and the folder is this process's.
    work_dir_lock.claim(tmp_path)
    work_dir_lock.claim(tmp_path)  # a second claim in the same process is no conflict


def test_a_child_the_holder_forked_does_not_keep_the_folder(tmp_path: Path) -> None:
    with holder(tmp_path, "fork") as proc:
        lines = sorted([read_line(proc), read_line(proc)])
        assert lines[1] == ["held", str(proc.pid)]
        proc.wait(timeout=60)  # the holder is gone; its forked child still runs
        work_dir_lock.claim(tmp_path)


def test_a_second_worker_does_not_boot_and_leaves_the_first_ones_files(tmp_path: Path) -> None:
    settings = Settings(work_dir=tmp_path)
    runtime = FakeRuntime(settings)
    running_job = runtime.directories.output / job_folder("running-job")
    running_job.mkdir(parents=True)
    (running_job / "ComfyUI_00001_.png").write_bytes(b"the first worker's output")
    with holder(tmp_path) as proc:
        assert read_line(proc)[0] == "held"
        with pytest.raises(ConfigError, match="in use by another worker process"):
            Worker(settings, runtime).boot()
        assert (running_job / "ComfyUI_00001_.png").read_bytes() == b"the first worker's output"
        assert runtime.booted == 0
