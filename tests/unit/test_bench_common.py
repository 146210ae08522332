"""scripts/_bench_common.py's reading of its servers' logs: the port uvicorn bound, and
whether ComfyUI's server holds the port picked for it. ``tests/e2e/test_bench_ports.py``
starts real processes on those ports."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.unit.test_manifests import load_script

UVICORN = "INFO:     Uvicorn running on http://127.0.0.1:43121 (Press CTRL+C to quit)"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("_bench_common")


def test_the_port_comes_from_uvicorns_running_on_line(bench: ModuleType) -> None:
    assert bench.listening_port(UVICORN) == 43121
    assert bench.listening_port("INFO:     Started server process [12]") is None
    assert bench.listening_port(UVICORN.replace("127.0.0.1", "0.0.0.0")) is None


def test_a_log_is_read_line_by_line_as_it_grows(bench: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    tail = bench.LogTail(log)
    assert tail.new_lines() == []  # not written yet
    log.write_bytes(b"first\nsec")
    assert tail.new_lines() == ["first"]
    with log.open("ab") as out:
        out.write(b"ond\n" + UVICORN.encode() + b"\n")
    assert tail.new_lines() == ["second", UVICORN]
    assert tail.new_lines() == []


def _server(bench: ModuleType, port: int, *lines: str) -> object:
    server = bench.ComfyServer("python", Path("/nonexistent"), Path("/nonexistent"))
    server.port = port
    server.log_lines = [(0.0, line) for line in lines]
    return server


def test_comfyuis_server_holds_its_port_once_it_says_so(bench: ModuleType) -> None:
    gui = "To see the GUI go to: http://127.0.0.1:8190"
    assert _server(bench, 8190, "Starting server", gui).bound() is True  # type: ignore[attr-defined]
    # Another port's line (8190 is not 819) or no line yet: not known.
    assert _server(bench, 819, gui).bound() is None  # type: ignore[attr-defined]
    assert _server(bench, 8190, "Starting server").bound() is None  # type: ignore[attr-defined]


def test_a_port_another_process_bound_first_is_told_apart(bench: ModuleType) -> None:
    error = (
        "OSError: [Errno 98] error while attempting to bind on address "
        "('127.0.0.1', 8190): address already in use"
    )
    assert _server(bench, 8190, "Starting server", error).bound() is False  # type: ignore[attr-defined]
