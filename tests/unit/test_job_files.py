"""A job's folders: made from a spare when there is one, removed (or kept empty) at the end."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

from engine.job_files import SpareFolders, is_job_folder, remove_job_folder, sweep_leftovers
from engine.runtime import Directories

SPARE = re.compile(r"job-spare-[0-9a-f]{8}")


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_emptied_folder_becomes_the_next_folders_in_the_same_place(tmp_path: Path) -> None:
    spares = SpareFolders()
    first = tmp_path / "job-a-0123abcd"
    spares.make(first)
    (first / "out.png").write_bytes(b"png")
    inode = first.stat().st_ino
    spares.remove(first)
    [spare] = entries(tmp_path)
    assert SPARE.fullmatch(spare) and not any((tmp_path / spare).iterdir())
    second = tmp_path / "job-b-4567cdef"
    spares.make(second)
    assert entries(tmp_path) == [second.name]
    assert second.stat().st_ino == inode  # renamed, not made anew


def test_one_spare_per_parent_the_rest_are_removed(tmp_path: Path) -> None:
    spares = SpareFolders()
    for parent in ("input", "output"):
        (tmp_path / parent).mkdir()
    folders = [tmp_path / p / f"job-{n}-0123abcd" for p in ("input", "output") for n in "ab"]
    for folder in folders:
        spares.make(folder)
        (folder / "f.bin").write_bytes(b"x")
    for folder in folders:
        spares.remove(folder)
    for parent in ("input", "output"):
        [left] = entries(tmp_path / parent)
        assert SPARE.fullmatch(left)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_folder_holding_sub_folders_is_emptied_and_kept(tmp_path: Path) -> None:
    # A filename_prefix such as "project/img" saves into a sub-folder of the job's.
    spares = SpareFolders()
    folder = tmp_path / "job-a-0123abcd"
    spares.make(folder)
    (folder / "videos" / "clips").mkdir(parents=True)
    (folder / "videos" / "clips" / "c.mp4").write_bytes(b"mp4")
    (folder / "videos" / "empty").mkdir()
    (folder / "a.png").write_bytes(b"png")
    inode = folder.stat().st_ino
    spares.remove(folder)
    [spare] = entries(tmp_path)
    assert SPARE.fullmatch(spare) and not any((tmp_path / spare).iterdir())
    second = tmp_path / "job-b-4567cdef"
    spares.make(second)
    assert entries(tmp_path) == [second.name]
    assert second.stat().st_ino == inode  # the spare, renamed


def test_a_tree_deeper_than_the_bound_goes_whole_and_is_not_kept(tmp_path: Path) -> None:
    spares = SpareFolders()
    folder = tmp_path / "job-a-0123abcd"
    spares.make(folder)
    deep = folder.joinpath(*(f"d{n}" for n in range(40)))
    deep.mkdir(parents=True)
    (deep / "x.png").write_bytes(b"png")
    for remove in (spares.remove, remove_job_folder):
        remove(folder)
        assert entries(tmp_path) == []
        deep.mkdir(parents=True)
    spares.make(tmp_path / "job-b-4567cdef")  # no spare: made anew
    assert sorted(entries(tmp_path)) == ["job-a-0123abcd", "job-b-4567cdef"]


def test_a_link_where_a_sub_folder_was_listed_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sub-folder swapped for a link between the listing and its removal: the link
    goes, what it points to stays."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"keep")
    folder = tmp_path / "work" / "job-a-0123abcd"
    (folder / "sub").mkdir(parents=True)
    real_open = os.open

    def swapping_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "sub":  # listed as a folder; now a link to the outside
            (folder / "sub").rmdir()
            (folder / "sub").symlink_to(outside, target_is_directory=True)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swapping_open)
    remove_job_folder(folder)
    assert not folder.exists()
    assert (outside / "keep.txt").read_bytes() == b"keep"


def test_a_link_in_a_job_folder_is_removed_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"keep")
    work = tmp_path / "work"
    work.mkdir()
    for remove in (SpareFolders().remove, remove_job_folder):
        folder = work / "job-a-0123abcd"
        folder.mkdir()
        (folder / "link").symlink_to(outside, target_is_directory=True)
        remove(folder)
        assert not folder.exists()
        assert (outside / "keep.txt").read_bytes() == b"keep"


def test_removing_a_folder_that_is_not_there_does_nothing(tmp_path: Path) -> None:
    spares = SpareFolders()
    spares.remove(tmp_path / "job-gone-0123abcd")
    remove_job_folder(tmp_path / "job-gone-0123abcd")
    assert entries(tmp_path) == []


def test_a_spare_that_vanished_is_replaced_by_a_new_folder(tmp_path: Path) -> None:
    spares = SpareFolders()
    folder = tmp_path / "job-a-0123abcd"
    spares.make(folder)
    spares.remove(folder)
    [spare] = entries(tmp_path)
    (tmp_path / spare).rmdir()  # someone else removed it
    spares.make(tmp_path / "job-b-4567cdef")
    assert entries(tmp_path) == ["job-b-4567cdef"]


def test_spares_a_killed_worker_left_are_swept_at_boot(tmp_path: Path) -> None:
    name = "job-spare-0123abcd"
    assert is_job_folder(name)
    dirs = Directories(input=tmp_path / "input", output=tmp_path / "output", temp=tmp_path / "t")
    for parent in (dirs.input, dirs.output):
        (parent / name).mkdir(parents=True)
    sweep_leftovers(dirs, tmp_path)
    assert entries(dirs.input) == [] and entries(dirs.output) == []


def test_an_empty_spare_is_tidied_without_blaming_a_killed_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every worker that ran a job leaves an empty spare: removed, and not reported as
    what killed jobs left behind; a spare holding a file is."""
    dirs = Directories(input=tmp_path / "input", output=tmp_path / "output", temp=tmp_path / "t")
    (dirs.input / "job-spare-0123abcd").mkdir(parents=True)
    (dirs.output / "job-spare-4567cdef").mkdir(parents=True)
    (dirs.output / "job-spare-4567cdef" / "ComfyUI_00001_.png").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        removed = sweep_leftovers(dirs, tmp_path)
    assert removed == [dirs.output / "job-spare-4567cdef"]
    assert entries(dirs.input) == [] and entries(dirs.output) == []
    assert "removed 1 file(s) or folder(s) that killed jobs left behind" in caplog.text
