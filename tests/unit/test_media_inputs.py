"""Videos and audio in ``input.images[]`` (engine/media.py, engine/inputs.py), and names of
the full 255 bytes.

Real files made by tests/media_factory.py (H.264 MP4, VP9 WebM, Matroska, WAV, MP3,
FLAC, Ogg, M4A), decoded by PyAV as the worker does.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path

import imageio_ffmpeg
import pytest

from engine.deadline import Deadline
from engine.errors import InputImageError, JobInterruptedError
from engine.inputs import store_images
from engine.media import media_kind
from engine.request import InputImage
from engine.settings import Settings
from tests import media_factory


class OneUrl:
    """A fetcher serving one body for any URL."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls: list[str] = []

    def fetch(self, url: str) -> bytes:
        self.calls.append(url)
        return self.body


def remux(source: Path, target: Path) -> Path:
    """``source``'s streams in another container (by ``target``'s suffix), not re-encoded."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-y", "-i", str(source), "-c", "copy", str(target)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return target


MAKERS: dict[str, Callable[[Path], Path]] = {
    "clip.mp4": lambda p: media_factory.make_video(p, fmt="mp4"),
    "clip.webm": lambda p: media_factory.make_video(p, fmt="webm"),
    "clip.mkv": lambda p: remux(media_factory.make_video(p.with_suffix(".mp4")), p),
    "clip.mov": lambda p: remux(media_factory.make_video(p.with_suffix(".mp4")), p),
    "tone.wav": media_factory.make_audio,
    "tone.mp3": media_factory.make_audio,
    "tone.flac": media_factory.make_audio,
    "tone.ogg": media_factory.make_audio,
    "tone.m4a": media_factory.make_audio,
}


@pytest.fixture
def input_dir(tmp_path: Path) -> Path:
    return tmp_path / "input"


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_each_media_kind_is_stored_from_each_form(
    name: str, tmp_path: Path, input_dir: Path, settings: Settings
) -> None:
    data = MAKERS[name](tmp_path / "made" / name).read_bytes()
    encoded = base64.b64encode(data).decode()
    images = [
        InputImage(name=f"url/{name}", image="https://media.example/file?sig=1"),
        InputImage(name=f"data/{name}", image=f"data:application/octet-stream;base64,{encoded}"),
        InputImage(name=f"bare/{name}", image=encoded),
    ]
    paths = store_images(images, input_dir, settings, OneUrl(data))
    assert [p.read_bytes() for p in paths] == [data] * 3
    assert sorted(p.name for p in input_dir.rglob("*") if p.is_file()) == [name] * 3


def test_gif_stays_an_image() -> None:
    assert media_kind("a.gif") is None
    assert media_kind("A.MP4") == "video"
    assert media_kind("x\\y.FLAC") == "audio"


def test_a_corrupt_video_is_refused_naming_the_url(
    tmp_path: Path, input_dir: Path, settings: Settings
) -> None:
    data = media_factory.make_video(tmp_path / "v.mp4").read_bytes()
    images = [InputImage(name="v.mp4", image="https://media.example/v.mp4?X-Amz-Signature=s")]
    with pytest.raises(InputImageError) as exc_info:
        store_images(images, input_dir, settings, OneUrl(data[: len(data) // 2]))
    [detail] = exc_info.value.details
    assert detail.startswith(
        "v.mp4: not a decodable video file downloaded from https://media.example/v.mp4 "
        "(InvalidDataError: Invalid data found"
    )
    assert list(input_dir.rglob("*.*")) == []


def test_an_image_named_like_audio_is_refused(
    tmp_path: Path, input_dir: Path, settings: Settings
) -> None:
    png = media_factory.make_png(tmp_path / "a.png").read_bytes()
    images = [InputImage(name="a.wav", image=base64.b64encode(png).decode())]
    with pytest.raises(InputImageError) as exc_info:
        store_images(images, input_dir, settings)
    assert exc_info.value.details[0].startswith("a.wav: ")
    assert "audio" in exc_info.value.details[0]


def test_a_video_without_its_video_stream_is_refused_as_audio_only_for_audio_names(
    tmp_path: Path, input_dir: Path, settings: Settings
) -> None:
    video = base64.b64encode(media_factory.make_video(tmp_path / "v.mp4").read_bytes()).decode()
    with pytest.raises(InputImageError) as exc_info:
        store_images([InputImage(name="v.mp3", image=video)], input_dir, settings)
    assert exc_info.value.details == ["v.mp3: the file holds no audio stream"]


def test_video_frames_obey_the_pixel_limit(
    tmp_path: Path, input_dir: Path, settings: Settings
) -> None:
    data = media_factory.make_video(tmp_path / "v.mp4", size=(64, 48)).read_bytes()
    limited = Settings(input_max_pixels=1000)
    with pytest.raises(InputImageError) as exc_info:
        store_images(
            [InputImage(name="v.mp4", image=base64.b64encode(data).decode())], input_dir, limited
        )
    assert exc_info.value.details == [
        "v.mp4: the video is 64x48 = 3072 pixels a frame, over the 1000-pixel limit "
        "(INPUT_MAX_PIXELS)"
    ]


def test_a_video_of_more_frames_than_the_limit_is_refused(input_dir: Path) -> None:
    """Tiny frames are cheap to send and each costs the check a read: the count is
    bounded by INPUT_MAX_FRAMES, whatever the file's size."""
    data = media_factory.tiny_frames_video(2000)
    limited = Settings(input_max_frames=1000)
    images = [InputImage(name="many.mkv", image=base64.b64encode(data).decode())]
    with pytest.raises(InputImageError) as exc_info:
        store_images(images, input_dir, limited)
    assert exc_info.value.details == [
        "many.mkv: the file holds more than 1000 frames (INPUT_MAX_FRAMES); send a shorter "
        "video, or raise INPUT_MAX_FRAMES"
    ]
    store_images(images, input_dir, Settings(input_max_frames=2000))  # at the limit: fine


def test_a_video_whose_frames_together_are_over_the_pixel_limit_is_refused(
    input_dir: Path,
) -> None:
    """The loaders decode every frame: a still frame costs H.264 43 bytes, so frames
    times their size is bounded, not the file's size."""
    data = media_factory.tiny_frames_video(2000)  # 4x4 frames: 32,000 pixels in all
    images = [InputImage(name="long.mkv", image=base64.b64encode(data).decode())]
    with pytest.raises(InputImageError) as exc_info:
        store_images(images, input_dir, Settings(input_max_video_pixels=16 * 1999))
    [detail] = exc_info.value.details
    assert detail.startswith(
        "long.mkv: the video holds more than 1999 frames of 4x4, over the 31984-pixel limit "
        "of all its frames together (INPUT_MAX_VIDEO_PIXELS"
    )
    store_images(images, input_dir, Settings(input_max_video_pixels=16 * 2000))  # at the limit


@pytest.mark.parametrize("name", ["tone.flac", "tone.wav", "tone.mp3", "tone.ogg", "tone.m4a"])
def test_audio_of_more_samples_than_the_limit_is_refused(
    name: str, tmp_path: Path, input_dir: Path
) -> None:
    """LoadAudio decodes it all: silence compresses past any size limit, so the samples
    are counted (half a second of mono 44.1 kHz: 22,050, and an encoder's padding)."""
    data = media_factory.make_audio(tmp_path / name, seconds=0.5).read_bytes()
    images = [InputImage(name=name, image=base64.b64encode(data).decode())]
    with pytest.raises(InputImageError) as exc_info:
        store_images(images, input_dir, Settings(input_max_audio_samples=20_000))
    [detail] = exc_info.value.details
    assert detail.startswith(
        f"{name}: the file's audio holds more than 20000 samples, all channels together "
        "(INPUT_MAX_AUDIO_SAMPLES"
    )
    store_images(images, input_dir, Settings(input_max_audio_samples=30_000))


def test_the_media_check_stops_when_the_job_is_cancelled(input_dir: Path) -> None:
    """The check reads the job's deadline as it goes: a cancelled job gets its own error,
    not a verdict on the file."""
    deadline = Deadline.start(None)
    deadline.cancel()
    images = [
        InputImage(
            name="many.mkv", image=base64.b64encode(media_factory.tiny_frames_video(600)).decode()
        )
    ]
    with pytest.raises(JobInterruptedError) as exc_info:
        store_images(images, input_dir, Settings(), deadline=deadline)
    assert exc_info.value.message == (
        "The job was cancelled and stopped while checking input videos and audio"
    )
    assert list(input_dir.rglob("*")) == []


def test_media_obey_the_size_limit_in_their_own_words(input_dir: Path) -> None:
    limited = Settings(input_max_image_bytes=1000)
    images = [InputImage(name="v.webm", image=base64.b64encode(b"\0" * 2000).decode())]
    with pytest.raises(InputImageError) as exc_info:
        store_images(images, input_dir, limited)
    assert exc_info.value.details == [
        "v.webm: the video is 0.0 MB, over the 0.0 MB limit (INPUT_MAX_IMAGE_MB)"
    ]


# --- names of the full 255 bytes (issue 10.4) -------------------------------------------


@pytest.mark.parametrize("size", [237, 250, 255])
def test_names_up_to_255_bytes_are_stored_whole(
    size: int, tmp_path: Path, input_dir: Path, settings: Settings
) -> None:
    png = media_factory.make_png(tmp_path / "a.png").read_bytes()
    video = media_factory.make_video(tmp_path / "v.mp4").read_bytes()
    image_name = "a" * (size - 4) + ".png"
    video_name = "é" * ((size - 4) // 2) + "v" * ((size - 4) % 2) + ".mp4"
    assert len(image_name.encode()) == len(video_name.encode()) == size
    images = [
        InputImage(name=image_name, image=base64.b64encode(png).decode()),
        InputImage(name=f"sub/{video_name}", image=base64.b64encode(video).decode()),
    ]
    paths = store_images(images, input_dir, settings)
    assert [p.name for p in paths] == [image_name, video_name]
    # No temporary file is left beside them.
    assert sorted(p.name for p in input_dir.rglob("*") if p.is_file()) == sorted(
        [image_name, video_name]
    )
