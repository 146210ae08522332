"""Everything the worker does with video: read a video's numbers, join frames into a video.

Metadata comes from PyAV (ComfyUI's own video library), in this process. Joining frames
runs imageio-ffmpeg's bundled ffmpeg (or the one ``IMAGEIO_FFMPEG_EXE`` names) as a
child process started without ``preexec_fn``, so Python's vfork path runs no Python code
between fork and exec; the worker needs no system ffmpeg. Every failure is an
:class:`~engine.errors.ItemError` naming the file, ready to become one line of the
response's ``errors[]``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Literal

import av
import imageio_ffmpeg
from PIL import Image

from engine.deadline import Deadline
from engine.errors import ItemError
from engine.media import PACKETS_PER_CHECK

log = logging.getLogger(__name__)

VideoFormat = Literal["mp4", "webm"]

# Encoders tried in order for each container. libx264 gives the smallest files that
# every browser plays; OpenH264 is the fallback some LGPL ffmpeg builds ship instead.
_ENCODERS: dict[str, tuple[str, ...]] = {
    "mp4": ("libx264", "libopenh264"),
    "webm": ("libvpx-vp9",),
}

_ENCODER_ARGS: dict[str, tuple[str, ...]] = {
    # CRF 18 is visually lossless for generated frames; faststart puts the index first
    # so a browser can play the file from an S3 URL before it has all of it.
    "libx264": ("-preset", "medium", "-crf", "18", "-movflags", "+faststart"),
    "libopenh264": ("-b:v", "8M", "-movflags", "+faststart"),
    # Constant quality (-b:v 0); cpu-used 4 and row-mt keep VP9, which is slow, bearable.
    "libvpx-vp9": ("-crf", "30", "-b:v", "0", "-cpu-used", "4", "-row-mt", "1"),
}

# H.264 in yuv420p (the only pixel format every player decodes) needs even width and
# height; ComfyUI's latents are multiples of 8, but an upscale or crop can make them odd.
_EVEN_PAD = "pad=ceil(iw/2)*2:ceil(ih/2)*2"

# Encoding is bounded by the number of frames: this is per frame, plus a start-up allowance.
_ENCODE_S_PER_FRAME = 2.0
_ENCODE_BASE_S = 60.0

# The last lines of ffmpeg's log are the ones that say what went wrong.
_STDERR_TAIL_LINES = 3


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, as the response reports it."""

    duration_s: float
    fps: float
    width: int
    height: int
    frames: int


def probe(path: Path, deadline: Deadline | None = None) -> VideoInfo:
    """Duration, frame rate, size and frame count of the video at ``path``.

    Read with PyAV in this process, never through a child process: with PyAV 19 in the
    image, forking while PyAV objects live in other threads (ComfyUI's SaveVideo) could
    deadlock the child before exec (imageio-ffmpeg's probe forks with ``preexec_fn``),
    and the job never returned. Counting the frames reads every packet, so a workflow
    that writes a huge video (or millions of tiny frames) makes it long: ``deadline``
    (the job's limit and cancel) is checked as it goes, and raises its own error.
    """
    if not path.is_file():
        raise ItemError(path.name, "the video file does not exist")
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise ItemError(path.name, "it has no video stream")
            stream = container.streams.video[0]
            # One packet per frame for every codec ComfyUI writes (H.264, VP9, AV1...):
            # counting packets is exact without decoding, where the container's own count
            # is missing from WebM and wrong for variable-frame-rate files.
            frames = _count_frames(container, stream, deadline)
            duration = _duration_s(container, stream)
            rate = stream.average_rate or stream.guessed_rate
            width, height = stream.width, stream.height
    except av.FFmpegError as exc:
        # strerror is FFmpeg's own sentence, without the errno and the worker's path.
        reason = exc.strerror or str(exc).replace(str(path), path.name)
        raise ItemError(path.name, f"cannot be read as a video: {reason}") from exc
    fps = float(rate) if rate else (frames / duration if duration else 0.0)
    return VideoInfo(
        duration_s=round(duration or (frames / fps if fps else 0.0), 3),
        fps=round(fps, 3),
        width=int(width),
        height=int(height),
        frames=frames,
    )


def _count_frames(container: Any, stream: Any, deadline: Deadline | None) -> int:
    """The video stream's packets that hold data, the job's deadline checked between any
    two packets of any stream (a demux of the video stream alone would skip the others'
    packets in C, however many)."""
    frames = 0
    for read, packet in enumerate(container.demux()):
        if read % PACKETS_PER_CHECK == 0 and deadline is not None and deadline.expired():
            raise deadline.exceeded("while reading output videos")
        if packet.size and packet.stream.index == stream.index:
            frames += 1
    return frames


def _duration_s(container: Any, stream: Any) -> float:
    """The stream's duration, else the container's (WebM keeps only the latter)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return float(container.duration / av.time_base)
    return 0.0


@functools.cache
def available_encoders() -> frozenset[str]:
    """Names of the encoders the ffmpeg in use was built with (asked once per process)."""
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-encoders"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    names = set()
    # Lines look like " V....D libx264   libx264 H.264 / AVC ...", after a "------" rule.
    _, _, table = result.stdout.partition("------")
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            names.add(fields[1])
    return frozenset(names)


def encoder_for(fmt: VideoFormat) -> str:
    """The encoder ``frames_to_video`` uses for ``fmt``; an ``ItemError`` if there is none."""
    have = available_encoders()
    for name in _ENCODERS[fmt]:
        if name in have:
            return name
    wanted = " or ".join(_ENCODERS[fmt])
    other = "webm" if fmt == "mp4" else "mp4"
    raise ItemError(
        f"{fmt} video",
        f"the ffmpeg in use has no {wanted} encoder: ask for format {other!r}, or point "
        "IMAGEIO_FFMPEG_EXE at an ffmpeg build that has it",
    )


def frames_to_video(
    frames: Sequence[Path],
    dest: Path,
    fps: float,
    fmt: VideoFormat,
    *,
    timeout_s: float | None = None,
    max_pixels: int | None = None,
    deadline: Deadline | None = None,
) -> Path:
    """Join still images, in order, into one MP4 (H.264) or WebM (VP9) at ``dest``.

    Every frame is scaled to the first frame's size. Raises ``ItemError`` naming
    the frame or the video when something cannot be read or encoded, or when a frame
    is over ``max_pixels`` (``OUTPUT_MAX_PIXELS``), before it is decoded. ``deadline``
    (the job's limit and cancel) is checked at every frame and bounds the wait for ffmpeg;
    a cancel kills ffmpeg at once. Either raises the deadline's own error.
    """
    if len(frames) < 1:
        raise ValueError("frames_to_video needs at least one frame")
    try:
        encoder = encoder_for(fmt)
    except ItemError as exc:
        raise ItemError(dest.name, exc.reason) from exc
    width, height = _image_size(frames[0], max_pixels)
    rate = Fraction(fps).limit_denominator(1001)
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        *("-hide_banner", "-nostdin", "-loglevel", "error", "-y"),
        # Raw RGB frames on stdin: Pillow decodes them, so any size or mode ComfyUI wrote works.
        *("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"),
        *("-framerate", str(rate), "-i", "-"),
        *("-an", "-c:v", encoder, "-pix_fmt", "yuv420p"),
        *_ENCODER_ARGS[encoder],
    ]
    if fmt == "mp4" and (width % 2 or height % 2):
        cmd += ["-vf", _EVEN_PAD]
    cmd.append(str(dest))
    limit = timeout_s or _ENCODE_BASE_S + _ENCODE_S_PER_FRAME * len(frames)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        rgb = _rgb_frames(frames, (width, height), max_pixels, deadline)
        _encode(cmd, rgb, dest, limit, deadline)
    except BaseException:
        if dest.is_file():  # a half-written video must not be delivered
            dest.unlink()
        raise
    log.info(
        "joined %d frames into %s (%dx%d, %s fps, %s)",
        len(frames),
        dest.name,
        width,
        height,
        rate,
        encoder,
    )
    return dest


def _encode(
    cmd: list[str],
    frames: Iterator[bytes],
    dest: Path,
    timeout_s: float,
    deadline: Deadline | None = None,
) -> None:
    """Run ffmpeg on ``cmd``, feeding it raw frames; raise ``ItemError`` if it fails, the
    deadline's error once the job must stop."""
    # imageio_ffmpeg.write_frames never checks ffmpeg's exit status and lets its log go
    # to the worker's stderr, so a failed encode would pass silently; hence our own pipe.
    # The log goes to a file: a pipe nobody reads while frames are written can fill up.
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr
        )
        stdin = process.stdin
        if stdin is None:  # cannot happen with stdin=PIPE; narrows the type
            raise RuntimeError("ffmpeg was started without a stdin pipe")
        stop = deadline.on_cancel(process.kill) if deadline else contextlib.nullcontext()
        with stop:
            _feed_and_wait(process, stdin, frames, dest, timeout_s, deadline, stderr)


def _feed_and_wait(
    process: subprocess.Popen[bytes],
    stdin: IO[bytes],
    frames: Iterator[bytes],
    dest: Path,
    timeout_s: float,
    deadline: Deadline | None,
    stderr: IO[bytes],
) -> None:
    """:func:`_encode`'s body, while a cancel kills ``process``."""
    try:
        for frame in frames:
            stdin.write(frame)
    except BrokenPipeError:
        pass  # ffmpeg quit early (or a cancel killed it); its exit status and log say why
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        with contextlib.suppress(BrokenPipeError):  # ffmpeg exited: nothing to flush
            stdin.close()
    remaining = deadline.remaining() if deadline is not None else None
    wait_s = timeout_s if remaining is None else min(timeout_s, remaining)
    try:
        returncode = process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        if deadline is not None and deadline.expired():
            raise deadline.exceeded("while joining frames into a video") from None
        raise ItemError(
            dest.name, f"ffmpeg did not finish encoding within {timeout_s:.0f} s"
        ) from None
    if deadline is not None and deadline.expired():
        raise deadline.exceeded("while joining frames into a video")
    if returncode != 0:
        reason = _tail(stderr).replace(str(dest), dest.name)
        raise ItemError(dest.name, f"ffmpeg failed to encode it: {reason}")


def _rgb_frames(
    frames: Sequence[Path],
    size: tuple[int, int],
    max_pixels: int | None,
    deadline: Deadline | None = None,
) -> Iterator[bytes]:
    """Each frame as raw RGB bytes at ``size``, read one at a time to bound memory; the
    deadline checked before each."""
    for path in frames:
        if deadline is not None and deadline.expired():
            raise deadline.exceeded("while joining frames into a video")
        try:
            with Image.open(path) as image:
                _check_pixels(path, image.size, max_pixels)
                rgb = image.convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:
            raise _unreadable_image(path, exc) from exc
        if rgb.size != size:
            log.info(
                "resizing frame %s from %s to %s to match the first frame",
                path.name,
                rgb.size,
                size,
            )
            rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        yield rgb.tobytes()


def _image_size(path: Path, max_pixels: int | None) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            size: tuple[int, int] = image.size
    except (OSError, Image.DecompressionBombError) as exc:
        raise _unreadable_image(path, exc) from exc
    _check_pixels(path, size, max_pixels)
    return size


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    """Refuse a frame over the output pixel limit, from its header, before decoding it."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ItemError(
            path.name,
            f"the frame is {width}x{height} = {width * height} pixels, over the "
            f"{max_pixels}-pixel limit (OUTPUT_MAX_PIXELS)",
        )


def _unreadable_image(path: Path, exc: Exception) -> ItemError:
    # UnidentifiedImageError is an OSError. Pillow quotes the full path; the worker's
    # folders are no business of the user.
    return ItemError(
        path.name, f"cannot be read as an image: {str(exc).replace(str(path), path.name)}"
    )


def _tail(log_file: IO[bytes]) -> str:
    log_file.seek(0)
    lines = [line.strip() for line in log_file.read().decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return " | ".join(lines[-_STDERR_TAIL_LINES:]) or "no message from ffmpeg"
