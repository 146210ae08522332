"""Hostile output names and output limits through the real local API server (fake runtime).

Each job comes over real HTTP to ``handler.py --rp_serve_api``, as RunPod sends it: a
prefix that climbs out of the job's folder, a loader that names a file of the output or
temp folder (where other jobs' files live), and a ``convert_output`` on a worker whose
``INPUT_MAX_PIXELS`` is tiny. Each gets a clear answer, nothing is written outside the
job's folder, and the worker serves the next job. The real engine's side of the same
promises (values wired while the graph runs) is in ``tests/engine/test_outputs_real.py``.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from tests import workflows
from tests.e2e.conftest import WorkerServer, files_left

pytestmark = pytest.mark.e2e


def test_no_job_writes_out_of_its_folder_or_reads_another_jobs_files(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "output").mkdir(parents=True)
    # A file in the shared output folder, as an escaped prefix used to leave one.
    Image.new("RGB", (8, 8), (255, 0, 0)).save(work / "output" / "leak_00001_.png")
    server = WorkerServer({"INPUT_MAX_PIXELS": "100"}, tmp_path / "worker.log", work)
    try:
        before = [work / "output" / "leak_00001_.png"]
        assert files_left(work / "output", before) == before
        escape = workflows.batch(1, size=16)
        escape["2"]["inputs"]["filename_prefix"] = "../leak"
        body = server.runsync({"workflow": escape})
        assert body["status"] == "FAILED", body
        assert "'../leak' climbs out of the job's output folder" in body["error"]

        for name in ("leak_00001_.png [output]", "ComfyUI_temp_abcde_00001_.png [temp]"):
            body = server.runsync({"workflow": workflows.invert(name)})
            assert body["status"] == "FAILED", body
            assert f"'{name}' names a file of the worker's" in body["error"]
        assert files_left(work / "output", before) == before

        # Outputs have their own limit: INPUT_MAX_PIXELS=100 leaves a 128x128 output be.
        body = server.runsync(
            {"workflow": workflows.batch(1, size=128), "convert_output": {"format": "jpeg"}}
        )
        assert body["status"] == "COMPLETED", body
        assert body["output"]["errors"] == []
        (item,) = body["output"]["images"]
        assert item["filename"] == "batch_00001_.jpg"
        raw = item["data"].partition(",")[2]
        with Image.open(io.BytesIO(base64.b64decode(raw))) as image:
            assert image.size == (128, 128)
        assert files_left(work / "output", before) == before
    finally:
        server.close()
