"""The benchmarks' servers on ports no other process can take from them: the runpod SDK's
API server binds port 0 and says which port it got; ComfyUI's server, which must be told
its port, is started again on another when another process took the one picked for it.

A stand-in for ComfyUI's ``main.py`` (a few lines written here) binds the ``--port`` it is
given and logs ComfyUI's line, or fails as ComfyUI does when the port is taken.
"""

from __future__ import annotations

import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import _bench_common  # noqa: E402  (scripts/ is not a package)

MAIN_PY = textwrap.dedent(
    """
    import socket, sys, time
    port = int(sys.argv[sys.argv.index("--port") + 1])
    print("Starting server", flush=True)
    listener = socket.create_server(("127.0.0.1", port))  # raises when the port is taken
    print(f"To see the GUI go to: http://127.0.0.1:{port}", flush=True)
    time.sleep(300)
    """
)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "ComfyUI"
    root.mkdir()
    (root / "main.py").write_text(MAIN_PY)
    return root


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    """A port this test holds, as another process on the machine would."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener


def test_a_picked_port_taken_before_comfyui_binds_it_is_told(
    checkout: Path, tmp_path: Path, taken: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = taken.getsockname()[1]
    monkeypatch.setattr(_bench_common, "free_port", lambda: port)
    server = _bench_common.ComfyServer(sys.executable, checkout, tmp_path / "server")
    server.start(cpu=True)
    try:
        with pytest.raises(_bench_common.PortTaken, match=str(port)):
            server.wait_bound(timeout_s=60)
        assert server.bound() is False
    finally:
        server.stop()


def test_comfyui_starts_again_on_another_port_when_its_first_was_taken(
    checkout: Path, tmp_path: Path, taken: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = [taken.getsockname()[1]]
    pick = _bench_common.free_port

    def first_taken() -> int:
        return ports.pop() if ports else pick()

    monkeypatch.setattr(_bench_common, "free_port", first_taken)
    server = _bench_common.ComfyServer(sys.executable, checkout, tmp_path / "server")
    try:
        server.start_bound(cpu=True)
        assert server.port != taken.getsockname()[1]
        assert server.bound() is True
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    finally:
        server.stop()


def test_the_api_server_binds_a_port_of_its_own_and_names_it(tmp_path: Path) -> None:
    """Our handler.py on port 0 (the fake runtime: no ComfyUI): the port comes from
    uvicorn's line, and the worker answers there."""
    from tests.e2e.conftest import worker_env

    env = worker_env(tmp_path / "work", {"UVICORN_LOG_LEVEL": "warning"})
    api = _bench_common.ApiProcess(
        [sys.executable, "handler.py"], REPO, env, tmp_path / "worker.log"
    )
    api.start()
    try:
        api.wait_listening(timeout_s=120)
        assert api.port > 0
        assert f"127.0.0.1:{api.port}" in api.log_tail()
        output = api.runsync({"workflow": {}}, timeout_s=120)
    finally:
        api.stop()
    # The worker itself answered: its own error for an empty workflow.
    assert "workflow" in str(output.get("error", "")).lower()
