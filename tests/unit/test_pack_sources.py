"""A pack folder's origin and commit, and the requirement behind a missing module (pack_sources)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine.pack_sources import PackOrigin, read_origin, requirement_for_module, requirement_lines


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A real git checkout with one commit, as a pod's ``git clone`` leaves it."""
    folder = tmp_path / "ComfyUI-Some-Pack"
    folder.mkdir()
    git(folder, "init", "--quiet")
    (folder / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    git(folder, "add", ".")
    git(folder, "commit", "--quiet", "-m", "first")
    return folder


def test_origin_and_commit_are_read_from_the_checkout_without_git(checkout: Path) -> None:
    git(checkout, "remote", "add", "origin", "https://github.com/someone/ComfyUI-Some-Pack.git")
    head = git(checkout, "rev-parse", "HEAD")
    origin = read_origin(checkout)
    assert origin == PackOrigin("https://github.com/someone/ComfyUI-Some-Pack.git", head)
    assert origin.add_command() == (
        f"scripts/add_custom_nodes.py https://github.com/someone/ComfyUI-Some-Pack.git@{head}"
    )


def test_packed_refs_a_detached_head_and_an_ssh_remote(checkout: Path) -> None:
    git(checkout, "remote", "add", "origin", "git@github.com:someone/pack.git")
    git(checkout, "pack-refs", "--all")  # what a fresh clone has: no loose branch ref
    head = git(checkout, "rev-parse", "HEAD")
    assert read_origin(checkout) == PackOrigin("https://github.com/someone/pack.git", head)
    git(checkout, "checkout", "--quiet", "--detach", head)
    assert read_origin(checkout) == PackOrigin("https://github.com/someone/pack.git", head)


def test_credentials_in_the_remote_url_are_dropped(checkout: Path) -> None:
    git(checkout, "remote", "add", "origin", "https://user:ghp_secret@github.com/o/p.git")
    origin = read_origin(checkout)
    assert origin is not None and origin.url == "https://github.com/o/p.git"


def test_no_origin_or_no_git_is_unknown(checkout: Path, tmp_path: Path) -> None:
    assert read_origin(checkout) is None  # no remote
    plain = tmp_path / "copied-pack"
    plain.mkdir()
    assert read_origin(plain) is None


def test_a_worktree_reads_its_main_checkout_and_a_broken_commondir_is_unknown(
    checkout: Path, tmp_path: Path
) -> None:
    git(checkout, "remote", "add", "origin", "https://github.com/someone/ComfyUI-Some-Pack.git")
    linked = tmp_path / "linked-pack"
    git(checkout, "worktree", "add", "--quiet", "-b", "side", str(linked))
    head = git(linked, "rev-parse", "HEAD")
    assert read_origin(linked) == PackOrigin(
        "https://github.com/someone/ComfyUI-Some-Pack.git", head
    )
    # What a half-copied volume leaves: the worktree's commondir is not valid text, then
    # not readable at all (a folder in its place). Unknown origin either way, no crash.
    commondir = Path(git(linked, "rev-parse", "--git-dir")) / "commondir"
    commondir.write_bytes(b"\xff\xfe../..\x00")
    assert read_origin(linked) is None
    commondir.unlink()
    commondir.mkdir()
    assert read_origin(linked) is None


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("rembg", "rembg[gpu]>=2.0"),
        ("cv2", "opencv-python-headless"),
        ("skimage.filters", "scikit-image"),
        ("segment_anything", "segment-anything"),
        ("google.protobuf", "protobuf<5"),
        ("not_listed", None),
    ],
)
def test_a_missing_module_is_traced_to_its_requirement(
    tmp_path: Path, module: str, expected: str | None
) -> None:
    (tmp_path / "requirements.txt").write_text(
        "# comment\nrembg[gpu]>=2.0  # background removal\nopencv-python-headless\n"
        "scikit-image\n-r other.txt\nsegment-anything\nprotobuf<5\n"
    )
    lines = requirement_lines(tmp_path)
    assert "-r other.txt" not in lines
    assert requirement_for_module(module, lines) == expected
