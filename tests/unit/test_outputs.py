"""engine.outputs: ComfyUI's ui outputs, in the shapes real nodes report, become typed files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from engine import video
from engine.errors import JobTimeoutError
from engine.outputs import OutputFile, _png_frames, collect_outputs, mime_type_for
from engine.request import FramesToVideo
from engine.runtime import Directories
from engine.video import VideoInfo
from tests.media_factory import (
    make_animated_webp,
    make_apng,
    make_audio,
    make_frames,
    make_gif,
    make_jpeg,
    make_png,
    make_video,
    tiny_frames_video,
)
from tests.unit.test_video import DeadlineAtLook


@pytest.fixture
def dirs(tmp_path: Path) -> Directories:
    """ComfyUI's three folders, empty."""
    folders = Directories(
        input=tmp_path / "comfy" / "input",
        output=tmp_path / "comfy" / "output",
        temp=tmp_path / "comfy" / "temp",
    )
    for folder in (folders.input, folders.output, folders.temp):
        folder.mkdir(parents=True)
    return folders


def item(filename: str, subfolder: str = "", folder_type: str = "output") -> dict[str, str]:
    """One entry of a ui file list, as ComfyUI writes it."""
    return {"filename": filename, "subfolder": subfolder, "type": folder_type}


def names(files: list[OutputFile]) -> list[str]:
    return [f.filename for f in files]


def test_every_node_shape_in_node_order(dirs: Directories) -> None:
    """SaveImage, SaveAnimatedWEBP, SaveVideo and VHS_VideoCombine outputs all come back,
    ordered by node id as a person reads it (2, 9, 10, 11), previews and text left out."""
    out = dirs.output
    make_png(out / "ComfyUI_00001_.png")
    make_animated_webp(out / "anim" / "ComfyUI_00001_.webp", frames=3)
    make_video(out / "video" / "ComfyUI_00001_.mp4", frames=8, fps=8.0, size=(64, 48))
    make_video(out / "AnimateDiff_00001.mp4", frames=4, fps=8.0, size=(64, 48))
    make_png(out / "AnimateDiff_00001.png")  # VHS's workflow-metadata PNG: not an output
    make_png(dirs.temp / "ComfyUI_temp_abcde_00001_.png")
    ui: dict[str, dict[str, Any]] = {
        "10": {
            "gifs": [
                {
                    "filename": "AnimateDiff_00001.mp4",
                    "subfolder": "",
                    "type": "output",
                    "format": "video/h264-mp4",
                    "frame_rate": 8.0,
                    "workflow": "AnimateDiff_00001.png",
                    "fullpath": "/abs/path/AnimateDiff_00001.mp4",
                }
            ]
        },
        "9": {"images": [item("ComfyUI_00001_.png")]},
        "11": {"images": [item("ComfyUI_00001_.mp4", "video")], "animated": [True]},
        "2": {"images": [item("ComfyUI_00001_.webp", "anim")], "animated": (True,)},
        "12": {"images": [item("ComfyUI_temp_abcde_00001_.png", folder_type="temp")]},
        "13": {"text": ["hello"]},
    }
    files, errors = collect_outputs(ui, dirs)
    assert errors == []
    assert [(f.node_id, f.filename, f.subfolder) for f in files] == [
        ("2", "ComfyUI_00001_.webp", "anim"),
        ("9", "ComfyUI_00001_.png", ""),
        ("10", "AnimateDiff_00001.mp4", ""),
        ("11", "ComfyUI_00001_.mp4", "video"),
    ]
    assert [(f.kind, f.mime_type) for f in files] == [
        ("animation", "image/webp"),
        ("image", "image/png"),
        ("video", "video/mp4"),
        ("video", "video/mp4"),
    ]
    assert files[0].path == (out / "anim" / "ComfyUI_00001_.webp").resolve()
    assert files[2].video == VideoInfo(duration_s=0.5, fps=8.0, width=64, height=48, frames=4)
    assert files[3].video == VideoInfo(duration_s=1.0, fps=8.0, width=64, height=48, frames=8)
    assert files[0].video is None


def test_keys_keep_the_order_the_node_reported(dirs: Directories) -> None:
    """Within a node, files follow the node's own key order, then list order."""
    make_png(dirs.output / "b.png")
    make_png(dirs.output / "a.png")
    make_video(dirs.output / "clip.webm", fmt="webm")
    ui = {"5": {"videos": [item("clip.webm")], "images": [item("b.png"), item("a.png")]}}
    files, errors = collect_outputs(ui, dirs)
    assert errors == []
    assert names(files) == ["clip.webm", "b.png", "a.png"]


def test_previews_beside_saved_files_text_and_flags_are_not_outputs(dirs: Directories) -> None:
    """Beside a saved file, PreviewImage's temp files are left out; text outputs and the
    animated flag never produce a file."""
    make_png(dirs.temp / "preview.png")
    make_png(dirs.output / "saved.png")
    ui: dict[str, dict[str, Any]] = {
        "3": {"images": [item("preview.png", folder_type="temp")]},
        "4": {"text": ["hello"], "animated": (True,), "value": [1, 2.5, None]},
        "5": {"images": [item("saved.png")]},
    }
    files, errors = collect_outputs(ui, dirs)
    assert (names(files), errors) == (["saved.png"], [])


def test_a_workflow_of_previews_only_returns_the_previews(dirs: Directories) -> None:
    """With nothing saved, the previews are the results, typed like saved files."""
    make_png(dirs.temp / "ComfyUI_temp_abcde_00001_.png")
    make_png(dirs.temp / "ComfyUI_temp_fghij_00001_.png")
    ui: dict[str, dict[str, Any]] = {
        "7": {"images": [item("ComfyUI_temp_fghij_00001_.png", folder_type="temp")]},
        "3": {"images": [item("ComfyUI_temp_abcde_00001_.png", folder_type="temp")]},
        "4": {"text": ["hello"]},
    }
    files, errors = collect_outputs(ui, dirs)
    assert errors == []
    assert [(f.node_id, f.filename, f.kind, f.mime_type) for f in files] == [
        ("3", "ComfyUI_temp_abcde_00001_.png", "image", "image/png"),
        ("7", "ComfyUI_temp_fghij_00001_.png", "image", "image/png"),
    ]
    assert files[0].path == (dirs.temp / "ComfyUI_temp_abcde_00001_.png").resolve()


def test_a_saved_file_that_is_missing_is_not_replaced_by_previews(dirs: Directories) -> None:
    """The choice follows what the nodes reported: a missing saved file gets its error
    line, and the previews still stay out."""
    make_png(dirs.temp / "preview.png")
    ui: dict[str, dict[str, Any]] = {
        "3": {"images": [item("preview.png", folder_type="temp")]},
        "5": {"images": [item("gone.png")]},
    }
    files, errors = collect_outputs(ui, dirs)
    assert files == []
    assert len(errors) == 1 and errors[0].startswith("gone.png (node 5): ")


@pytest.mark.parametrize(
    ("make", "filename", "kind"),
    [
        (lambda p: make_animated_webp(p, frames=3), "a.webp", "animation"),
        (lambda p: make_animated_webp(p, frames=1), "still.webp", "image"),
        (lambda p: make_gif(p, frames=3), "a.gif", "animation"),
        (lambda p: make_apng(p, frames=3), "ComfyUI_00001_.png", "animation"),
        (lambda p: make_png(p), "still.png", "image"),
        (lambda p: make_jpeg(p), "photo.jpg", "image"),
    ],
)
def test_animations_are_told_apart_by_their_frames(
    dirs: Directories, make: Any, filename: str, kind: str
) -> None:
    """Multi-frame WEBP, GIF and APNG are "animation"; single-frame ones are "image"."""
    make(dirs.output / filename)
    files, errors = collect_outputs({"1": {"images": [item(filename)]}}, dirs)
    assert errors == []
    assert files[0].kind == kind


def test_a_one_frame_file_the_node_calls_animated_is_an_animation(dirs: Directories) -> None:
    """SaveAnimatedWEBP of identical frames: the encoder merged them into one frame."""
    make_animated_webp(dirs.output / "anim.webp", frames=1)
    files, errors = collect_outputs(
        {"1": {"images": [item("anim.webp")], "animated": (True,)}}, dirs
    )
    assert (errors, files[0].kind) == ([], "animation")


def test_undecodable_image_falls_back_to_the_animated_flag(dirs: Directories) -> None:
    """A .webp Pillow cannot read is still delivered, typed by the node's animated flag."""
    (dirs.output / "odd.webp").write_bytes(b"RIFF....WEBPVP8X")
    files, errors = collect_outputs(
        {"1": {"images": [item("odd.webp")], "animated": (True,)}}, dirs
    )
    assert errors == []
    assert files[0].kind == "animation"


@pytest.mark.parametrize(
    ("filename", "mime"),
    [
        ("a.png", "image/png"),
        ("a.JPG", "image/jpeg"),
        ("a.jpeg", "image/jpeg"),
        ("a.webp", "image/webp"),
        ("a.gif", "image/gif"),
        ("a.apng", "image/apng"),
        ("a.mp4", "video/mp4"),
        ("a.webm", "video/webm"),
        ("a.mov", "video/quicktime"),
        ("a.avi", "video/x-msvideo"),
        ("a.mkv", "video/x-matroska"),
        ("a.mp3", "audio/mpeg"),
        ("a.wav", "audio/wav"),
        ("a.flac", "audio/flac"),
        ("a.ogg", "audio/ogg"),
        ("a.m4a", "audio/mp4"),
        ("a.opus", "audio/opus"),
        ("a.latent", "application/octet-stream"),
        ("no_extension", "application/octet-stream"),
    ],
)
def test_mime_type_by_extension(filename: str, mime: str) -> None:
    """The MIME type comes from a fixed table, the same on every host."""
    assert mime_type_for(filename) == mime


def test_audio_and_unknown_files_are_delivered_too(dirs: Directories) -> None:
    """SaveAudio's ``audio`` key and a custom node's ``files`` key are outputs as well."""
    make_audio(dirs.output / "audio" / "ComfyUI_00001_.flac")
    (dirs.output / "mesh.glb").write_bytes(b"glTF")
    (dirs.output / "weights.safetensors").write_bytes(b"{}")
    ui = {
        "7": {"audio": [item("ComfyUI_00001_.flac", "audio")]},
        "8": {"files": [item("mesh.glb"), item("weights.safetensors")]},
    }
    files, errors = collect_outputs(ui, dirs)
    assert errors == []
    assert [(f.kind, f.mime_type) for f in files] == [
        ("audio", "audio/flac"),
        ("other", "model/gltf-binary"),
        ("other", "application/octet-stream"),
    ]


def test_missing_file_is_an_error_line_and_the_rest_are_returned(dirs: Directories) -> None:
    """A reported file that is gone is named in errors; the node's other files still come."""
    make_png(dirs.output / "here.png")
    ui = {"9": {"images": [item("gone.png"), item("here.png")]}}
    files, errors = collect_outputs(ui, dirs)
    assert names(files) == ["here.png"]
    assert len(errors) == 1
    assert errors[0].startswith("gone.png (node 9):")
    assert "does not exist" in errors[0]


def test_unreadable_file_is_an_error_line(dirs: Directories) -> None:
    """A path that cannot be opened for reading (here a folder) is reported by name."""
    (dirs.output / "weird.png").mkdir()
    files, errors = collect_outputs({"9": {"images": [item("weird.png")]}}, dirs)
    assert files == []
    assert len(errors) == 1
    assert errors[0].startswith("weird.png (node 9): cannot be read")


@pytest.mark.parametrize(
    ("filename", "subfolder"),
    [
        ("secret.png", "../.."),
        ("../../secret.png", ""),
        ("secret.png", "SUBFOLDER_ABS"),
        ("FILENAME_ABS", ""),
        ("", ""),
        (".", ""),
        ("nul\x00.png", ""),
    ],
)
def test_paths_outside_the_folder_are_refused(
    dirs: Directories, tmp_path: Path, filename: str, subfolder: str
) -> None:
    """No ui entry makes the worker read a file outside ComfyUI's folder, even one that exists."""
    secret = make_png(tmp_path / "secret.png")
    filename = filename.replace("FILENAME_ABS", str(secret))
    subfolder = subfolder.replace("SUBFOLDER_ABS", str(tmp_path))
    files, errors = collect_outputs({"9": {"images": [item(filename, subfolder)]}}, dirs)
    assert files == []
    assert len(errors) == 1
    assert "refused" in errors[0]


def test_symlink_out_of_the_folder_is_refused(dirs: Directories, tmp_path: Path) -> None:
    """A link inside the output folder pointing outside it is refused like ``..``."""
    secret = make_png(tmp_path / "secret.png")
    (dirs.output / "link.png").symlink_to(secret)
    files, errors = collect_outputs({"9": {"images": [item("link.png")]}}, dirs)
    assert files == []
    assert "refused" in errors[0]


def test_unknown_folder_type_is_an_error_line(dirs: Directories) -> None:
    """A ``type`` ComfyUI does not have is reported, not a crash."""
    files, errors = collect_outputs({"9": {"images": [item("a.png", folder_type="cloud")]}}, dirs)
    assert files == []
    assert "unknown ComfyUI folder type 'cloud'" in errors[0]


def test_input_type_is_read_from_the_input_folder(dirs: Directories) -> None:
    """Some nodes point at a file of type ``input``; it is found there."""
    make_png(dirs.input / "mask.png")
    files, errors = collect_outputs(
        {"9": {"images": [item("mask.png", folder_type="input")]}}, dirs
    )
    assert errors == []
    assert files[0].path == (dirs.input / "mask.png").resolve()


def test_a_file_reported_twice_is_returned_once(dirs: Directories) -> None:
    """The same path under two keys or two nodes is one output, at its first place."""
    make_png(dirs.output / "a.png")
    make_png(dirs.output / "sub" / "b.png")
    ui = {
        "3": {"images": [item("a.png"), item("a.png")], "files": [item("b.png", "sub")]},
        "4": {"images": [item("b.png", "sub/./"), item("a.png")]},
    }
    files, errors = collect_outputs(ui, dirs)
    assert errors == []
    assert [(f.node_id, f.filename) for f in files] == [("3", "a.png"), ("3", "b.png")]


def test_unreadable_video_is_returned_with_an_error_line(dirs: Directories) -> None:
    """A video FFmpeg cannot read is still delivered; errors says its numbers are missing."""
    (dirs.output / "broken.mp4").write_bytes(b"\x00" * 64)
    files, errors = collect_outputs({"5": {"gifs": [item("broken.mp4")]}}, dirs)
    assert names(files) == ["broken.mp4"]
    assert files[0].video is None
    assert len(errors) == 1
    assert errors[0].startswith("broken.mp4 (node 5): cannot be read as a video: Invalid data")


def test_a_huge_output_video_is_read_only_while_the_job_has_time(dirs: Directories) -> None:
    """A workflow wrote 5,000 frames: the job's limit, passing at the count's second look,
    stops the reading of outputs with the job's own error (not an errors[] line: the job
    must stop), after a few hundred packets."""
    (dirs.output / "many.mkv").write_bytes(tiny_frames_video(5000))
    deadline = DeadlineAtLook(60.0, at=2)
    with pytest.raises(JobTimeoutError, match="stopped while reading output videos"):
        collect_outputs({"7": {"gifs": [item("many.mkv")]}}, dirs, deadline=deadline)
    assert len(deadline.looks) == 2


class TestFramesToVideo:
    @pytest.fixture
    def scratch(self, tmp_path: Path) -> Path:
        return tmp_path / "scratch"

    def test_stills_become_one_video(self, dirs: Directories, scratch: Path) -> None:
        """A node's four stills become one MP4 of four frames at the requested fps."""
        frames = make_frames(dirs.output, 4, size=(64, 48))
        ui = {"9": {"images": [item(p.name) for p in frames]}}
        files, errors = collect_outputs(
            ui, dirs, frames_to_video=FramesToVideo(fps=12.0), scratch_dir=scratch
        )
        assert errors == []
        assert len(files) == 1
        joined = files[0]
        assert (joined.node_id, joined.filename, joined.kind) == ("9", "ComfyUI_video.mp4", "video")
        assert joined.mime_type == "video/mp4"
        assert joined.path == scratch / "ComfyUI_video.mp4"
        assert joined.video is not None
        assert (joined.video.frames, joined.video.fps) == (4, 12.0)

    def test_keep_frames_returns_the_stills_after_the_video(
        self, dirs: Directories, scratch: Path
    ) -> None:
        """With keep_frames the stills follow the video, in their order."""
        frames = make_frames(dirs.output, 3)
        ui = {"9": {"images": [item(p.name) for p in frames]}}
        request = FramesToVideo(fps=8.0, format="webm", keep_frames=True)
        files, errors = collect_outputs(ui, dirs, frames_to_video=request, scratch_dir=scratch)
        assert errors == []
        assert names(files) == ["ComfyUI_video.webm", *[p.name for p in frames]]
        assert files[0].mime_type == "video/webm"
        assert files[0].video is not None
        assert files[0].video.frames == 3

    def test_single_stills_and_animations_are_left_alone(
        self, dirs: Directories, scratch: Path
    ) -> None:
        """One still is not a sequence; an animation is already moving."""
        make_png(dirs.output / "one.png")
        make_animated_webp(dirs.output / "anim.webp")
        make_png(dirs.output / "two.png")
        ui = {"3": {"images": [item("one.png")]}, "4": {"images": [item("anim.webp")]}}
        files, errors = collect_outputs(
            ui, dirs, frames_to_video=FramesToVideo(), scratch_dir=scratch
        )
        assert errors == []
        assert names(files) == ["one.png", "anim.webp"]

    def test_two_nodes_with_one_prefix_get_distinct_videos(
        self, dirs: Directories, scratch: Path
    ) -> None:
        """Two nodes saving with the same prefix do not overwrite each other's video."""
        first = make_frames(dirs.output / "a", 2)
        second = make_frames(dirs.output / "b", 3)
        ui = {
            "3": {"images": [item(p.name, "a") for p in first]},
            "4": {"images": [item(p.name, "b") for p in second]},
        }
        files, errors = collect_outputs(
            ui, dirs, frames_to_video=FramesToVideo(), scratch_dir=scratch
        )
        assert errors == []
        assert names(files) == ["ComfyUI_video.mp4", "ComfyUI_4_video.mp4"]
        assert [f.subfolder for f in files] == ["a", "b"]
        assert [f.video.frames if f.video else None for f in files] == [2, 3]

    def test_failure_returns_the_frames_and_says_why(
        self, dirs: Directories, scratch: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When no video can be made the stills are delivered and errors explains."""
        monkeypatch.setattr(video, "available_encoders", lambda: frozenset())
        frames = make_frames(dirs.output, 2)
        ui = {"9": {"images": [item(p.name) for p in frames]}}
        files, errors = collect_outputs(
            ui, dirs, frames_to_video=FramesToVideo(), scratch_dir=scratch
        )
        assert names(files) == [p.name for p in frames]
        assert len(errors) == 1
        assert errors[0].startswith(
            "ComfyUI_video.mp4 (node 9): could not join 2 frames into a video, "
            "returning the frames instead: the ffmpeg in use has no libx264"
        )

    def test_a_bad_frame_is_named(self, dirs: Directories, scratch: Path) -> None:
        """A frame that cannot be decoded is named in the error; all frames still come back."""
        frames = make_frames(dirs.output, 2)
        bad = dirs.output / "ComfyUI_00003_.png"
        bad.write_bytes(b"not a png")
        ui = {"9": {"images": [item(p.name) for p in [*frames, bad]]}}
        files, errors = collect_outputs(
            ui, dirs, frames_to_video=FramesToVideo(), scratch_dir=scratch
        )
        assert names(files) == [p.name for p in [*frames, bad]]
        assert errors == [
            "ComfyUI_video.mp4 (node 9): could not join 3 frames into a video, returning the "
            "frames instead: ComfyUI_00003_.png: cannot be read as an image: "
            "cannot identify image file 'ComfyUI_00003_.png'"
        ]
        assert not (scratch / "ComfyUI_video.mp4").exists()

    def test_needs_a_scratch_folder(self, dirs: Directories) -> None:
        """Asking for a video without saying where to write it is a programming error."""
        with pytest.raises(ValueError, match="scratch_dir"):
            collect_outputs({}, dirs, frames_to_video=FramesToVideo())


def test_a_png_frame_count_is_read_from_its_chunks_as_pillow_reads_it(tmp_path: Path) -> None:
    """The chunk walk that types PNG outputs agrees with Pillow's ``n_frames``: stills
    (with ComfyUI's text metadata before the pixels), APNGs, and a file that only starts
    like a PNG, which is left to Pillow."""
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", "x" * 50_000)  # a big workflow, as SaveImage writes it
    still = tmp_path / "still.png"
    Image.new("RGB", (8, 8)).save(still, pnginfo=info)
    cases = [still, make_apng(tmp_path / "three.png", frames=3)]
    for path in cases:
        with path.open("rb") as file, Image.open(path) as image:
            assert _png_frames(file) == getattr(image, "n_frames", 1), path.name
    cut = tmp_path / "cut.png"
    cut.write_bytes(still.read_bytes()[:20])
    with cut.open("rb") as file:
        assert _png_frames(file) is None
