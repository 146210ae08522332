"""scripts/bench_cold_start.py's reading of our handler's boot log (its profile rows)."""

from __future__ import annotations

import datetime
from types import ModuleType

import pytest

from tests.unit.test_manifests import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_cold_start")


def test_the_boot_phases_come_from_the_log_lines_the_worker_writes(bench: ModuleType) -> None:
    """The two lines engine/runtime/comfy.py and engine/worker.py log at the end of boot."""
    log = (
        "2026-12-07 13:46:00,934 INFO [-] engine.runtime.comfy_boot: model paths from x\n"
        "2026-12-07 13:46:07,958 INFO [-] engine.runtime.comfy: ComfyUI booted in 7.04 s "
        "(torch import 1.61 s, ComfyUI import 3.63 s, node init 1.77 s)\n"
        "2026-12-07 13:46:07,960 INFO [-] engine.worker: worker ready in 7.04 s (outputs: base64)\n"
    )
    ready = datetime.datetime(2026, 12, 7, 13, 46, 7, 960000).timestamp()
    phases = bench.boot_phases(log, ready - 8.0)
    assert phases["ready"] == pytest.approx(8.0)
    assert phases["pre_boot"] == pytest.approx(0.96)
    assert (phases["torch_import"], phases["comfy_import"], phases["node_init"]) == (
        1.61,
        3.63,
        1.77,
    )
    assert bench.boot_phases("no such lines", 0.0) == {}


class _Server:
    def __init__(self, bound: bool | None) -> None:
        self.port, self._bound = 8190, bound

    def bound(self) -> bool | None:
        return self._bound


def test_a_sample_whose_comfyui_did_not_hold_its_port_is_run_again(bench: ModuleType) -> None:
    """The handler's answer came from whatever held the port: PortTaken, which main()
    answers with the same start again."""
    common = load_script("_bench_common")  # imported by name inside the function
    bench._check_own_port(_Server(True))
    for state in (None, False):
        with pytest.raises(common.PortTaken, match="8190"):
            bench._check_own_port(_Server(state))
