"""real_paths.resolve gives os.path.realpath's answer, looking up less."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import real_paths


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``real/out`` (ComfyUI's folder, reached through the link ``root``), a job folder
    in it with a file, a link inside it that leaves it, and a folder elsewhere."""
    (tmp_path / "real" / "out" / "job-a" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "out" / "job-a" / "x.png").write_bytes(b"png")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real" / "out" / "job-a" / "away").symlink_to(
        tmp_path / "elsewhere", target_is_directory=True
    )
    return tmp_path


@pytest.mark.parametrize(
    "below",
    [
        "",
        "job-a",
        "job-a/x.png",
        "job-a/sub/",
        "job-a//x.png",
        "job-a/missing/y.png",
        "job-a/away/y.png",
        "job-a/away",
        "job-a/../../elsewhere/y.png",
        "job-a/./x.png",
        "job-a/away/../x.png",
    ],
)
def test_a_path_below_a_folder_resolves_as_realpath_does(tree: Path, below: str) -> None:
    folder = str(tree / "root" / "out")
    path = f"{folder}/{below}" if below else folder
    assert real_paths.resolve(path, [folder]) == os.path.realpath(path)


def test_paths_outside_the_folders_and_relative_ones_resolve_whole(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = str(tree / "root" / "out")
    outside = str(tree / "root" / "other" / "z.png")
    assert real_paths.resolve(outside, [folder]) == os.path.realpath(outside)
    monkeypatch.chdir(tree / "root")
    assert real_paths.resolve("out/job-a/x.png", [folder]) == os.path.realpath("out/job-a/x.png")
    assert real_paths.resolve(folder + "-not-it/x.png", [folder]) == os.path.realpath(
        folder + "-not-it/x.png"
    )


def test_a_link_below_the_folder_is_followed_however_it_was_made(tree: Path) -> None:
    folder = str(tree / "root" / "out")
    path = f"{folder}/job-a/sub/late.png"
    assert real_paths.resolve(path, [folder]) == str(tree / "real/out/job-a/sub/late.png")
    # The sub-folder becomes a link after the first answer: the next answer follows it.
    (tree / "real" / "out" / "job-a" / "sub").rmdir()
    (tree / "real" / "out" / "job-a" / "sub").symlink_to(tree / "elsewhere")
    assert real_paths.resolve(path, [folder]) == str(tree / "elsewhere" / "late.png")
