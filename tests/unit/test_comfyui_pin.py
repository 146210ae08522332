"""Moving the ComfyUI pin, without ComfyUI: refs resolved in a real git repository made
here, pin.env and image.in rewritten, the lock's changes and the report."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine.packs import PackError
from engine.packs import comfyui_pin as pins

REPO = Path(__file__).resolve().parents[2]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def comfy_repo(tmp_path: Path) -> Path:
    """Three releases of a ComfyUI-shaped repository; only the last is tagged."""
    repo = tmp_path / "ComfyUI"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "master")
    for version, requirement in (("0.3.60", "torch"), ("0.3.61", "numpy"), ("0.3.62", "av")):
        for name in pins.IDENTITY_FILES:
            (repo / name).write_text(f"# {name} at {version}\n")
        (repo / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
        (repo / "requirements.txt").write_text(f"{requirement}\n# a comment\n")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"ComfyUI version {version}")
        (repo / "later.txt").write_text(version)  # a later commit keeps the version
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", "work")
    _git(repo, "tag", "v0.3.62", "HEAD~1")
    return repo


def test_a_ref_is_a_commit_a_tag_or_a_version_even_without_tags(comfy_repo: Path) -> None:
    git_dir = pins.git_dir_of(comfy_repo)
    head = _git(comfy_repo, "rev-parse", "HEAD")
    assert pins.resolve(git_dir, head[:10]) == pins.Pin("0.3.62", head)
    tagged = _git(comfy_repo, "rev-parse", "HEAD~1")
    assert pins.resolve(git_dir, "v0.3.62") == pins.Pin("0.3.62", tagged)
    assert pins.resolve(git_dir, "0.3.62").commit == tagged  # the tag, by its version
    # 0.3.60 has no tag: the commit that set the version string (not the later one).
    first = _git(comfy_repo, "rev-list", "--max-parents=0", "HEAD")
    assert pins.resolve(git_dir, "0.3.60") == pins.Pin("0.3.60", first)
    with pytest.raises(PackError, match="names no commit, tag or ComfyUI version"):
        pins.resolve(git_dir, "0.9.99")


def test_a_bare_mirror_serves_as_well_as_a_clone(comfy_repo: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror.git"
    _git(tmp_path, "clone", "-q", "--bare", str(comfy_repo), str(mirror))
    assert pins.git_dir_of(mirror) == mirror
    assert pins.resolve(mirror, "0.3.61").version == "0.3.61"
    with pytest.raises(PackError, match="is no git repository"):
        pins.git_dir_of(tmp_path)


def test_a_tree_is_written_and_recognised_file_by_file(comfy_repo: Path, tmp_path: Path) -> None:
    git_dir = pins.git_dir_of(comfy_repo)
    pin = pins.resolve(git_dir, "0.3.61")
    dest = tmp_path / "checkout"
    pins.export_tree(git_dir, pin.commit, dest)
    assert (dest / "requirements.txt").read_text() == "numpy\n# a comment\n"
    assert pins.blob_matches(git_dir, pin.commit, dest, pins.IDENTITY_FILES) == []
    newer = pins.resolve(git_dir, "0.3.62")
    assert "comfyui_version.py" in pins.blob_matches(
        git_dir, newer.commit, dest, pins.IDENTITY_FILES
    )
    with pytest.raises(PackError, match="is not empty"):
        pins.export_tree(git_dir, newer.commit, dest)


def test_pin_env_keeps_its_comments_and_image_in_its_other_sections() -> None:
    pin_text = (REPO / "comfyui" / "pin.env").read_text()
    moved = pins.write_pin(pin_text, pins.Pin("0.3.60", "b" * 40))
    assert pins.read_pin(moved) == pins.Pin("0.3.60", "b" * 40)
    assert [line for line in moved.splitlines() if line.startswith("#")] == [
        line for line in pin_text.splitlines() if line.startswith("#")
    ]

    inputs = (REPO / "comfyui" / "image.in").read_text()
    rewritten = pins.with_comfyui_section(inputs, pins.Pin("0.3.60", "b" * 40), ["torch", "av"])
    old = {s.name: s for s in pins.parse_inputs(inputs)}
    new = {s.name: s for s in pins.parse_inputs(rewritten)}
    assert list(old) == list(new)
    assert new["ComfyUI"].lines == ("torch", "av")
    assert new["ComfyUI"].source == f"ComfyUI 0.3.60 {'b' * 40} requirements.txt"
    assert {n: s for n, s in new.items() if n != "ComfyUI"} == {
        n: s for n, s in old.items() if n != "ComfyUI"
    }


def test_lock_changes_name_every_version_that_moved() -> None:
    before = "a==1.0 \\\n    --hash=sha256:x\nb==2.0\nc==3.0\n"
    after = "a==1.1 \\\n    --hash=sha256:y\nb==2.0\nd==4.0\n"
    assert pins.lock_changes(before, after) == ["a 1.0 -> 1.1", "+d 4.0", "-c 3.0"]


def test_the_report_lists_added_and_removed_types_and_broken_patches() -> None:
    report = pins.MoveReport(
        before=pins.Pin("0.3.64", "a" * 40),
        after=pins.Pin("0.3.60", "b" * 40),
        node_types_before=frozenset({"SaveImage", "NewNode"}),
        node_types_after=frozenset({"SaveImage", "OldNode"}),
        patches_skipped={"parallel_png": "nodes.SaveImage.save_images"},
        patches_applied=["headless_server"],
        lock=[],
    )
    text = report.render()
    assert "0.3.64 (aaaaaaaaaaaa) -> 0.3.60 (bbbbbbbbbbbb)" in text
    assert "- added: OldNode" in text and "- removed: NewNode" in text
    assert "parallel_png (this ComfyUI has no nodes.SaveImage.save_images)" in text
    assert "## Lock (comfyui/image.lock)\n- unchanged" in text
    assert "not run (--no-tests)" in text
