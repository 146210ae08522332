"""Real media files for tests, made on the fly: nothing binary is committed.

Every frame of an animation or video has its own colour, because encoders merge
identical frames (an animated WEBP of three equal frames comes back as one).
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import av
import imageio_ffmpeg
from PIL import Image

Color = tuple[int, int, int]
VideoFormat = Literal["mp4", "webm"]

# Far enough apart that lossy encoders keep neighbouring frames distinct.
_PALETTE: Sequence[Color] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
)


def frame_color(index: int) -> Color:
    """The colour of frame ``index`` in every animation and video made here."""
    return _PALETTE[index % len(_PALETTE)]


def _frames(count: int, size: tuple[int, int]) -> list[Image.Image]:
    return [Image.new("RGB", size, frame_color(i)) for i in range(count)]


def make_png(path: Path, size: tuple[int, int] = (64, 64), color: Color = (200, 30, 30)) -> Path:
    """A single-colour PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")
    return path


def make_jpeg(path: Path, size: tuple[int, int] = (64, 64), color: Color = (200, 30, 30)) -> Path:
    """A single-colour JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")
    return path


def make_animated_webp(
    path: Path, frames: int = 3, size: tuple[int, int] = (64, 64), duration_ms: int = 100
) -> Path:
    """An animated WEBP, as SaveAnimatedWEBP writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = _frames(frames, size)
    first.save(path, format="WEBP", save_all=True, append_images=rest, duration=duration_ms, loop=0)
    return path


def make_gif(
    path: Path, frames: int = 3, size: tuple[int, int] = (64, 64), duration_ms: int = 100
) -> Path:
    """An animated GIF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = _frames(frames, size)
    first.save(path, format="GIF", save_all=True, append_images=rest, duration=duration_ms, loop=0)
    return path


def make_apng(
    path: Path, frames: int = 3, size: tuple[int, int] = (64, 64), duration_ms: int = 100
) -> Path:
    """An animated PNG (``.png``), as SaveAnimatedPNG writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = _frames(frames, size)
    first.save(path, format="PNG", save_all=True, append_images=rest, duration=duration_ms)
    return path


def write_video(
    path: Path,
    frames: Sequence[Image.Image],
    fps: float = 8.0,
    fmt: VideoFormat | None = None,
) -> Path:
    """Encode Pillow images as H.264 MP4 or VP9 WebM (``fmt``, else by the file's suffix).

    Odd widths or heights are scaled up by one pixel: yuv420p needs even ones.
    """
    if not frames:
        raise ValueError("a video needs at least one frame")
    fmt = fmt or ("webm" if path.suffix.lower() == ".webm" else "mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    size = frames[0].size
    writer = imageio_ffmpeg.write_frames(
        str(path),
        size,
        fps=fps,
        codec="libvpx-vp9" if fmt == "webm" else "libx264",
        quality=None,
        macro_block_size=2,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start the generator
    for image in frames:
        writer.send(image.convert("RGB").resize(size).tobytes())
    writer.close()
    return path


def make_video(
    path: Path,
    frames: int = 8,
    fps: float = 8.0,
    size: tuple[int, int] = (64, 48),
    fmt: VideoFormat = "mp4",
) -> Path:
    """A video of ``frames`` distinct single-colour frames."""
    return write_video(path, _frames(frames, size), fps, fmt)


def make_audio(path: Path, seconds: float = 0.5) -> Path:
    """A 440 Hz tone; ffmpeg picks the codec from the suffix (.wav, .flac, .mp3, .mp4...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    tone = f"sine=frequency=440:duration={seconds}"
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i", tone, str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


def make_frames(
    folder: Path, count: int, size: tuple[int, int] = (64, 48), prefix: str = "ComfyUI"
) -> list[Path]:
    """PNG frames named as ComfyUI's SaveImage names them (``ComfyUI_00001_.png``...)."""
    return [
        make_png(folder / f"{prefix}_{i + 1:05d}_.png", size, frame_color(i)) for i in range(count)
    ]


def tiny_frames_video(frames: int) -> bytes:
    """A Matroska video of ``frames`` 4x4 grey raw frames, about 41 bytes each: the most
    frames a byte can buy (50 MB holds 1.2 million), to bound the check of inputs."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("rawvideo", rate=1000)
        stream.width = stream.height = 4
        stream.pix_fmt = "gray"
        (first, *_) = [*stream.encode(av.VideoFrame(4, 4, "gray")), *stream.encode(None)]
        data = bytes(first)
        for index in range(frames):
            packet = av.Packet(data)
            packet.stream = stream
            packet.pts = packet.dts = index
            packet.is_keyframe = True
            out.mux(packet)
    return buffer.getvalue()
