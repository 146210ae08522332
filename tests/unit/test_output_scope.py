"""ComfyUI's folder functions held to the running job's folders, without ComfyUI.

A small module stands in for ComfyUI's ``folder_paths`` with the same three functions
and their behaviour as the worker relies on it (annotated names resolve against the
output, temp or input folder; a save prefix is split into folder and file name under
the node's folder). ``tests/engine/test_outputs_real.py`` runs the real ones.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.runtime import output_scope

_FOLDER_PATHS = """
import os

def _dirs():
    return {"output": OUTPUT, "temp": TEMP, "input": INPUT}

def annotated_filepath(name):
    for kind, folder in _dirs().items():
        if name.endswith(f" [{kind}]"):
            return name[: -len(kind) - 3], folder
    return name, None

def get_annotated_filepath(name, default_dir=None):
    name, base = annotated_filepath(name)
    return os.path.join(base or default_dir or INPUT, name)

def exists_annotated_filepath(name):
    name, base = annotated_filepath(name)
    return os.path.exists(os.path.join(base or INPUT, name))

def get_save_image_path(filename_prefix, output_dir, width=0, height=0):
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full = os.path.join(output_dir, subfolder)
    os.makedirs(full, exist_ok=True)
    return full, filename, 1, subfolder, filename_prefix
"""


@pytest.fixture
def folder_paths(tmp_path: Path) -> Iterator[types.ModuleType]:
    module = types.ModuleType("fake_folder_paths")
    for kind in ("output", "temp", "input"):
        (tmp_path / kind).mkdir()
        module.__dict__[kind.upper()] = str(tmp_path / kind)
    exec(compile(_FOLDER_PATHS, "fake_folder_paths", "exec"), module.__dict__)  # noqa: S102  (a fixed fake)
    assert output_scope.install(module)
    yield module


@pytest.fixture
def in_job(folder_paths: types.ModuleType) -> Iterator[types.ModuleType]:
    with output_scope.scoped("job-a", folder_paths.OUTPUT, folder_paths.TEMP):
        yield folder_paths


def test_a_prefix_made_while_the_graph_runs_lands_in_the_jobs_folder(
    in_job: types.ModuleType,
) -> None:
    """A linked prefix and a preview's made-up prefix: put under the job's folder."""
    full, name, _, subfolder, _ = in_job.get_save_image_path("renders/x", in_job.OUTPUT)
    assert (subfolder, name) == ("job-a/renders", "x")
    assert full == str(Path(in_job.OUTPUT) / "job-a" / "renders")
    _, _, _, subfolder, _ = in_job.get_save_image_path("ComfyUI_temp_abcde", in_job.TEMP)
    assert subfolder == "job-a"
    # Already scoped by the worker: left as it is.
    _, _, _, subfolder, _ = in_job.get_save_image_path("job-a/y", in_job.OUTPUT)
    assert subfolder == "job-a"


@pytest.mark.parametrize("prefix", ["../leak", "job-a/../../leak", "a/../../x"])
def test_a_prefix_that_climbs_out_fails_the_node(in_job: types.ModuleType, prefix: str) -> None:
    with pytest.raises(ValueError, match="climbs out of the job's output folder"):
        in_job.get_save_image_path(prefix, in_job.OUTPUT)
    assert sorted(p.name for p in Path(in_job.OUTPUT).iterdir()) == []


def test_a_node_folder_inside_another_jobs_folder_is_refused(in_job: types.ModuleType) -> None:
    other = Path(in_job.OUTPUT) / "job-b"
    with pytest.raises(ValueError, match="another job's folder"):
        in_job.get_save_image_path("x", str(other))


def test_another_jobs_files_cannot_be_read_by_any_name(in_job: types.ModuleType) -> None:
    """``[output]``, ``[temp]``, absolute paths and ``..`` all resolve, and are refused."""
    for kind in ("OUTPUT", "TEMP"):
        other = Path(getattr(in_job, kind)) / "job-b" / "secret.png"
        other.parent.mkdir()
        other.write_bytes(b"png")
    names = [
        "job-b/secret.png [output]",
        "job-b/secret.png [temp]",
        str(Path(in_job.OUTPUT) / "job-b" / "secret.png"),
        "../output/job-b/secret.png",
        "../temp/job-b/../job-b/secret.png",
    ]
    for name in names:
        assert not in_job.exists_annotated_filepath(name), name
        with pytest.raises(ValueError, match="is not this job's file"):
            in_job.get_annotated_filepath(name)


def test_the_jobs_own_files_and_inputs_still_resolve(in_job: types.ModuleType) -> None:
    own = Path(in_job.OUTPUT) / "job-a" / "mine.png"
    own.parent.mkdir()
    own.write_bytes(b"png")
    (Path(in_job.INPUT) / "a.png").write_bytes(b"png")
    assert in_job.exists_annotated_filepath("job-a/mine.png [output]")
    assert in_job.exists_annotated_filepath("a.png")
    assert in_job.get_annotated_filepath("a.png [input]") == str(Path(in_job.INPUT) / "a.png")


def test_outside_a_job_comfyui_behaves_as_it_is(folder_paths: types.ModuleType) -> None:
    """Boot and the warm-up: no scope, nothing refused or moved."""
    leftover = Path(folder_paths.OUTPUT) / "x.png"
    leftover.write_bytes(b"png")
    assert folder_paths.exists_annotated_filepath("x.png [output]")
    _, _, _, subfolder, _ = folder_paths.get_save_image_path("plain/y", folder_paths.OUTPUT)
    assert subfolder == "plain"
    with output_scope.scoped(None, folder_paths.OUTPUT, folder_paths.TEMP):
        assert folder_paths.exists_annotated_filepath("x.png [output]")


def test_install_twice_wraps_once(folder_paths: types.ModuleType) -> None:
    assert not output_scope.install(folder_paths)
    assert folder_paths.get_save_image_path.__wrapped__.__name__ == "get_save_image_path"


def test_a_job_checked_on_its_lane_sees_its_own_scope_not_the_running_jobs(
    in_job: types.ModuleType,
) -> None:
    """Job A runs (the module-wide scope, ``job-a``); job B's checks run meanwhile on
    another thread with ``this_thread=True``: B resolves its own files and is refused A's,
    A's run (and a thread its node starts) still sees A's scope; after B's checks, B's
    thread sees the running job's scope again."""
    for job in ("job-a", "job-b"):
        own = Path(in_job.OUTPUT) / job / "mine.png"
        own.parent.mkdir()
        own.write_bytes(b"png")
    seen: dict[str, object] = {}

    def check_b() -> None:
        with output_scope.scoped("job-b", in_job.OUTPUT, in_job.TEMP, this_thread=True):
            seen["own"] = in_job.exists_annotated_filepath("job-b/mine.png [output]")
            seen["other"] = in_job.exists_annotated_filepath("job-a/mine.png [output]")
        seen["after"] = in_job.exists_annotated_filepath("job-b/mine.png [output]")

    lane = threading.Thread(target=check_b)
    lane.start()
    lane.join(10)
    assert seen == {"own": True, "other": False, "after": False}
    assert in_job.exists_annotated_filepath("job-a/mine.png [output]")
    assert not in_job.exists_annotated_filepath("job-b/mine.png [output]")


def test_a_warm_ups_checks_never_take_a_running_jobs_scope(in_job: types.ModuleType) -> None:
    """``None`` for this thread: ComfyUI as it is there, whatever job runs meanwhile."""
    other = Path(in_job.OUTPUT) / "job-b" / "x.png"
    other.parent.mkdir()
    other.write_bytes(b"png")
    with output_scope.scoped(None, in_job.OUTPUT, in_job.TEMP, this_thread=True):
        assert in_job.exists_annotated_filepath("job-b/x.png [output]")
    assert not in_job.exists_annotated_filepath("job-b/x.png [output]")
