"""ComfyUI's own input folder (where worker-comfyui's Dockerfiles COPY static inputs) is
linked into the worker's input folder at boot: engine/baked_inputs.py."""

from __future__ import annotations

import os
from pathlib import Path

from engine.baked_inputs import link_baked_inputs


def test_each_entry_is_linked_by_its_name_and_read_through_the_link(tmp_path: Path) -> None:
    source, input_dir = tmp_path / "ComfyUI" / "input", tmp_path / "work" / "input"
    (source / "masks").mkdir(parents=True)
    (source / "example.png").write_bytes(b"png")
    (source / "masks" / "a.png").write_bytes(b"mask")
    input_dir.mkdir(parents=True)

    assert link_baked_inputs(source, input_dir) == ["example.png", "masks"]

    assert (input_dir / "example.png").read_bytes() == b"png"
    assert (input_dir / "masks" / "a.png").read_bytes() == b"mask"
    # A second boot finds its links in place and adds nothing.
    assert link_baked_inputs(source, input_dir) == []


def test_the_workers_own_file_wins_and_job_folder_names_are_never_shadowed(
    tmp_path: Path,
) -> None:
    source, input_dir = tmp_path / "src", tmp_path / "input"
    source.mkdir()
    input_dir.mkdir()
    (source / "a.png").write_bytes(b"baked in ComfyUI")
    (input_dir / "a.png").write_bytes(b"baked in WORKER_DIR")
    (source / "job-in-0123456789abcdef").mkdir()

    assert link_baked_inputs(source, input_dir) == []

    assert (input_dir / "a.png").read_bytes() == b"baked in WORKER_DIR"
    assert not (input_dir / "job-in-0123456789abcdef").exists()


def test_a_link_to_a_file_since_removed_goes_and_other_links_stay(tmp_path: Path) -> None:
    source, input_dir, elsewhere = tmp_path / "src", tmp_path / "input", tmp_path / "other"
    for folder in (source, input_dir, elsewhere):
        folder.mkdir()
    (source / "old.png").write_bytes(b"x")
    assert link_baked_inputs(source, input_dir) == ["old.png"]
    (source / "old.png").unlink()
    (input_dir / "theirs.png").symlink_to(elsewhere / "gone.png")  # not ours: left alone

    assert link_baked_inputs(source, input_dir) == []

    assert not os.path.lexists(input_dir / "old.png")
    assert os.path.lexists(input_dir / "theirs.png")


def test_nothing_when_the_folder_is_missing_or_is_the_input_folder_itself(tmp_path: Path) -> None:
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    (input_dir / "a.png").write_bytes(b"x")

    assert link_baked_inputs(tmp_path / "absent", input_dir) == []
    assert link_baked_inputs(input_dir, input_dir) == []
    assert [p.name for p in input_dir.iterdir()] == ["a.png"]
