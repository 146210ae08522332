"""engine.video: reading a video's numbers and joining frames, with the bundled ffmpeg."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import imageio_ffmpeg
import pytest

from engine import video
from engine.deadline import Deadline
from engine.errors import ItemError, JobInterruptedError, JobTimeoutError
from engine.video import PACKETS_PER_CHECK, VideoInfo, frames_to_video, probe
from tests.media_factory import (
    frame_color,
    make_audio,
    make_frames,
    make_png,
    make_video,
    tiny_frames_video,
)


@dataclass(frozen=True)
class DeadlineAtLook(Deadline):
    """A limit that passes at the ``at``-th time the code looks at it: the event is the
    reader's own progress, not the clock. ``looks`` counts the looks."""

    at: int = 2
    looks: list[int] = field(default_factory=list)

    def expired(self) -> bool:
        self.looks.append(len(self.looks) + 1)
        return len(self.looks) >= self.at


def decode(path: Path) -> tuple[dict[str, object], list[bytes]]:
    """The reader's metadata and every decoded RGB frame of a video."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return meta, list(reader)


def mean_rgb(frame: bytes) -> tuple[int, int, int]:
    """The average colour of a raw RGB frame."""
    pixels = len(frame) // 3
    return (
        sum(frame[0::3]) // pixels,
        sum(frame[1::3]) // pixels,
        sum(frame[2::3]) // pixels,
    )


def close_to(actual: tuple[int, int, int], expected: tuple[int, int, int], tolerance: int) -> bool:
    """Colours equal within a tolerance: YUV 4:2:0 and lossy coding shift them a little."""
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


class TestProbe:
    def test_mp4_numbers(self, tmp_path: Path) -> None:
        """An 8-frame, 8 fps, 64x48 H.264 MP4 is reported as exactly that."""
        path = make_video(tmp_path / "clip.mp4", frames=8, fps=8.0, size=(64, 48))
        assert probe(path) == VideoInfo(duration_s=1.0, fps=8.0, width=64, height=48, frames=8)

    def test_webm_numbers(self, tmp_path: Path) -> None:
        """WebM keeps no frame count in its header; probe counts the frames itself."""
        path = make_video(tmp_path / "clip.webm", frames=12, fps=24.0, size=(80, 64), fmt="webm")
        info = probe(path)
        assert (info.frames, info.fps, info.width, info.height) == (12, 24.0, 80, 64)
        assert info.duration_s == pytest.approx(0.5, abs=0.05)

    def test_missing_file_names_it(self, tmp_path: Path) -> None:
        """A video that is not there is an ItemError naming the file."""
        with pytest.raises(ItemError) as caught:
            probe(tmp_path / "gone.mp4")
        assert caught.value.name == "gone.mp4"
        assert "does not exist" in caught.value.reason

    def test_not_a_video_is_a_clear_error_without_local_paths(self, tmp_path: Path) -> None:
        """A file FFmpeg cannot read gives its name and FFmpeg's reason, not the worker's paths."""
        path = tmp_path / "broken.mp4"
        path.write_bytes(b"this is not a video" * 10)
        with pytest.raises(ItemError) as caught:
            probe(path)
        assert caught.value.name == "broken.mp4"
        assert caught.value.reason.startswith("cannot be read as a video: ")
        assert "Invalid data" in caught.value.reason
        assert str(tmp_path) not in str(caught.value)

    def test_audio_only_file_says_it_has_no_video(self, tmp_path: Path) -> None:
        """An .mp4 holding only sound is named as such, not as ffmpeg's pipe error."""
        with pytest.raises(ItemError) as caught:
            probe(make_audio(tmp_path / "sound.mp4"))
        assert caught.value.reason == "it has no video stream"

    def test_probe_starts_no_child_process(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Metadata is read in-process: a fork while PyAV objects live in other threads can
        deadlock the child (PyAV 19), so probe must never start one."""
        path = make_video(tmp_path / "clip.mp4", frames=3, fps=8.0, size=(32, 32))

        def no_child(*args: object, **kwargs: object) -> None:
            raise AssertionError("probe started a child process")

        monkeypatch.setattr(subprocess, "Popen", no_child)
        monkeypatch.setattr(os, "fork", no_child)
        assert probe(path).frames == 3

    def test_the_job_limit_passing_mid_count_stops_the_probe(self, tmp_path: Path) -> None:
        """A workflow's video of 5,000 frames: the limit passes at the probe's second look,
        after 256 packets, and the probe stops there with the job's own error instead of
        reading the file to its end (a hostile output would hold the job past its limit)."""
        path = tmp_path / "many.mkv"
        path.write_bytes(tiny_frames_video(5000))
        assert probe(path).frames == 5000  # the file is whole: counted to its end
        deadline = DeadlineAtLook(60.0, at=2)
        with pytest.raises(JobTimeoutError) as caught:
            probe(path, deadline)
        assert caught.value.message == (
            "The job ran longer than its time limit of 60 s and was stopped while reading "
            "output videos"
        )
        assert len(deadline.looks) == 2 < 5000 // PACKETS_PER_CHECK

    def test_a_cancel_stops_the_probe(self, tmp_path: Path) -> None:
        path = make_video(tmp_path / "clip.mp4", frames=3, fps=8.0, size=(32, 32))
        deadline = Deadline.start(None)
        deadline.cancel()
        with pytest.raises(JobInterruptedError, match="cancelled and stopped while reading"):
            probe(path, deadline)


class TestFramesToVideo:
    def test_mp4_round_trip(self, tmp_path: Path) -> None:
        """Five PNGs become an H.264 yuv420p MP4 of five frames, in order, at the fps asked."""
        frames = make_frames(tmp_path / "frames", 5, size=(64, 48))
        out = frames_to_video(frames, tmp_path / "out.mp4", 12.0, "mp4")
        meta, decoded = decode(out)
        assert meta["codec"] == "h264"
        assert str(meta["pix_fmt"]).startswith("yuv420p")
        assert meta["fps"] == 12.0
        assert meta["size"] == (64, 48)
        assert len(decoded) == 5
        for index, frame in enumerate(decoded):
            assert close_to(mean_rgb(frame), frame_color(index), tolerance=12), index

    def test_webm_round_trip(self, tmp_path: Path) -> None:
        """The WebM format is VP9 with the same frames and rate."""
        frames = make_frames(tmp_path / "frames", 4, size=(64, 48))
        out = frames_to_video(frames, tmp_path / "out.webm", 6.0, "webm")
        meta, decoded = decode(out)
        assert meta["codec"] == "vp9"
        assert meta["fps"] == 6.0
        assert len(decoded) == 4
        assert probe(out).frames == 4

    def test_fractional_fps_is_kept(self, tmp_path: Path) -> None:
        """NTSC's 23.976 fps is passed as a fraction, not rounded to 24."""
        frames = make_frames(tmp_path / "frames", 3)
        info = probe(frames_to_video(frames, tmp_path / "out.mp4", 23.976, "mp4"))
        assert info.fps == pytest.approx(23.976, abs=0.01)

    def test_odd_sizes_are_padded_to_even_for_h264(self, tmp_path: Path) -> None:
        """yuv420p H.264 needs even dimensions: 33x21 frames come out 34x22, none lost."""
        frames = make_frames(tmp_path / "frames", 3, size=(33, 21))
        info = probe(frames_to_video(frames, tmp_path / "out.mp4", 8.0, "mp4"))
        assert (info.width, info.height, info.frames) == (34, 22, 3)

    def test_frames_of_other_sizes_are_scaled_to_the_first(self, tmp_path: Path) -> None:
        """A frame of a different size is resized to the first frame's, not refused."""
        first = make_png(tmp_path / "a.png", (64, 48), frame_color(0))
        second = make_png(tmp_path / "b.png", (32, 32), frame_color(1))
        out = frames_to_video([first, second], tmp_path / "out.mp4", 8.0, "mp4")
        meta, decoded = decode(out)
        assert meta["size"] == (64, 48)
        assert len(decoded) == 2
        assert close_to(mean_rgb(decoded[1]), frame_color(1), tolerance=12)

    def test_unreadable_frame_names_it_and_leaves_no_video(self, tmp_path: Path) -> None:
        """A frame Pillow cannot decode is named; no half-written video is left behind."""
        frames = make_frames(tmp_path / "frames", 2)
        bad = tmp_path / "frames" / "ComfyUI_00003_.png"
        bad.write_bytes(b"not a png")
        dest = tmp_path / "out.mp4"
        with pytest.raises(ItemError) as caught:
            frames_to_video([*frames, bad], dest, 8.0, "mp4")
        assert caught.value.name == "ComfyUI_00003_.png"
        assert str(tmp_path) not in str(caught.value)
        assert not dest.exists()

    def test_a_frame_over_the_output_limit_is_refused_before_it_is_decoded(
        self, tmp_path: Path
    ) -> None:
        """OUTPUT_MAX_PIXELS bounds the frames, the first or a later one; no video is left."""
        small = make_png(tmp_path / "a.png", (16, 16), frame_color(0))
        big = make_png(tmp_path / "b.png", (64, 48), frame_color(1))
        for frames in ([big, small], [small, big]):
            dest = tmp_path / "out.mp4"
            with pytest.raises(ItemError) as caught:
                frames_to_video(frames, dest, 8.0, "mp4", max_pixels=16 * 16)
            assert caught.value.name == "b.png"
            assert "64x48" in caught.value.reason and "OUTPUT_MAX_PIXELS" in caught.value.reason
            assert not dest.exists()

    def test_ffmpeg_failure_is_an_item_error_with_its_reason(self, tmp_path: Path) -> None:
        """ffmpeg's exit status is checked: an unwritable destination is reported, not ignored."""
        frames = make_frames(tmp_path / "frames", 2)
        dest = tmp_path / "taken.mp4"
        dest.mkdir()  # ffmpeg cannot write a file where a folder is
        with pytest.raises(ItemError) as caught:
            frames_to_video(frames, dest, 8.0, "mp4")
        assert caught.value.name == "taken.mp4"
        assert caught.value.reason.startswith("ffmpeg failed to encode it: ")
        assert str(tmp_path) not in caught.value.reason

    def test_missing_encoder_says_what_to_do(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An ffmpeg build without H.264 names the encoder and suggests the other format."""
        monkeypatch.setattr(video, "available_encoders", lambda: frozenset({"libvpx-vp9"}))
        frames = make_frames(tmp_path / "frames", 2)
        with pytest.raises(ItemError) as caught:
            frames_to_video(frames, tmp_path / "out.mp4", 8.0, "mp4")
        assert caught.value.name == "out.mp4"
        assert "libx264" in caught.value.reason
        assert "'webm'" in caught.value.reason
        assert video.encoder_for("webm") == "libvpx-vp9"

    def test_the_job_limit_stops_the_join_between_frames(self, tmp_path: Path) -> None:
        """The limit passes at the third frame's look: ffmpeg is stopped, no video is left."""
        frames = make_frames(tmp_path, 6, size=(32, 32))
        dest = tmp_path / "out" / "joined.mp4"
        deadline = DeadlineAtLook(60.0, at=3)
        with pytest.raises(JobTimeoutError, match="while joining frames into a video"):
            frames_to_video(frames, dest, 8.0, "mp4", deadline=deadline)
        assert not dest.exists()
        assert len(deadline.looks) == 3

    def test_a_cancel_during_the_join_fails_it_and_leaves_no_video(self, tmp_path: Path) -> None:
        """The cancel comes as the last frame is read (the cue), after the last check
        between frames: ffmpeg is killed (a cancel listener) and the job gets its cancel
        error, not a video."""
        frames = make_frames(tmp_path, 3, size=(32, 32))
        deadline = Deadline.start(None)
        real_open = video.Image.open
        opened: list[Path] = []

        def open_then_cancel_at_the_last(path: Path, *args: object, **kwargs: object) -> object:
            opened.append(path)
            if len(opened) == 1 + len(frames):  # the size probe, then each frame
                deadline.cancel()
            return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

        dest = tmp_path / "joined.mp4"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(video.Image, "open", open_then_cancel_at_the_last)
            with pytest.raises(JobInterruptedError, match="while joining frames into a video"):
                frames_to_video(frames, dest, 8.0, "mp4", deadline=deadline)
        assert not dest.exists()

    def test_bundled_ffmpeg_has_both_encoders(self) -> None:
        """imageio-ffmpeg's build encodes H.264 (libx264) and VP9 (libvpx-vp9)."""
        assert {"libx264", "libvpx-vp9"} <= video.available_encoders()
        assert video.encoder_for("mp4") == "libx264"
