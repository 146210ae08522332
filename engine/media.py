"""Input videos and audio: which names are media, and whether the bytes really are.

``input.images[]`` entries whose name ends in a video or audio suffix are stored for
``LoadVideo``, ``VHS_LoadVideo`` and ``LoadAudio`` instead of being checked as
images. ``.gif`` stays an image (Pillow checks it, under the pixel limit); since
the file is stored as sent, ``VHS_LoadVideo`` reads it too.

The check decodes with PyAV (ComfyUI's own video library) in this process: the
container must open, hold a video or audio stream, and yield a first frame; every
packet is then demuxed, which finds a file cut short without decoding all of it.
A video's frame size is held to ``INPUT_MAX_PIXELS`` like an image's.

The check is bounded: a file of millions of tiny frames (50 MB holds several million)
is refused past ``INPUT_MAX_FRAMES`` packets, and the job's deadline and cancel are
checked every few hundred packets, so the check never holds a job past its limit.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath
from typing import Any, Literal

import av

from engine.deadline import Deadline
from engine.errors import ItemError, WorkerError

MediaKind = Literal["video", "audio"]

VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mov", ".mkv"})
AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".flac", ".ogg", ".m4a"})
PACKETS_PER_CHECK = 256
"""The job's deadline is read every this many packets while a file's packets are read
(inputs here, outputs in engine/video.py): demuxing one takes about a microsecond, so a
limit or a cancel is seen within a millisecond or so."""


def media_kind(name: str) -> MediaKind | None:
    """``video`` or ``audio`` by the name's suffix; None for images (``.gif`` included)."""
    suffix = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    return None


def verify_media(
    name: str,
    data: bytes,
    kind: MediaKind,
    max_pixels: int,
    source: str,
    *,
    max_frames: int,
    max_video_pixels: int | None = None,
    max_audio_samples: int | None = None,
    deadline: Deadline | None = None,
) -> None:
    """Raise :class:`ItemError` unless ``data`` is a decodable ``kind`` within the pixel
    and frame limits; the deadline's own error once the job must stop.

    A video suffix accepts a file with only an audio stream (``LoadAudio`` reads
    videos too); an audio suffix needs an audio stream. ``source`` says where the
    bytes came from in messages (`` downloaded from <url>`` or empty). ``max_frames``
    bounds the packets of every stream together (``INPUT_MAX_FRAMES``); ``max_video_pixels``
    the video stream's frames times their size (``INPUT_MAX_VIDEO_PIXELS``): ComfyUI's
    LoadVideo and VideoHelperSuite's loaders (with no frame cap) decode every frame into
    one tensor of 12 bytes a pixel, and a still 1080p frame cost libx264 (ultrafast, crf 51)
    43 bytes, so a file of 8.5 MB holds 200,000 of them: 5 TB once loaded.
    ``max_audio_samples`` bounds the samples of its audio streams, all channels together
    (``INPUT_MAX_AUDIO_SAMPLES``): LoadAudio decodes them whole at 4 bytes a sample, and a
    FLAC of 8-channel silence from PyAV's encoder took 26.7 KB for 73.7 million of them.
    """
    what = "video or audio" if kind == "video" else "audio"
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = _stream(container, kind)
            if stream is None:
                raise ItemError(name, f"the file{source} holds no {what} stream")
            if stream.type == "video":
                width, height = stream.codec_context.width, stream.codec_context.height
                if width * height > max_pixels:
                    raise ItemError(
                        name,
                        f"the video is {width}x{height} = {width * height} pixels a frame, over "
                        f"the {max_pixels}-pixel limit (INPUT_MAX_PIXELS)",
                    )
            frame_pixels = (
                stream.codec_context.width * stream.codec_context.height
                if stream.type == "video"
                else 0
            )
            decoded = False
            count = 0
            frames = 0
            samples = 0
            # Every packet of every stream, one by one, so that the bounds are checked
            # between any two (a demux of one stream skips the others' packets in C).
            for read, packet in enumerate(container.demux()):
                if read % PACKETS_PER_CHECK == 0 and deadline is not None and deadline.expired():
                    raise deadline.exceeded("while checking input videos and audio")
                count += 1 if packet.size else 0  # not the empty packets that flush decoders
                if count > max_frames:
                    raise ItemError(
                        name,
                        f"the file holds more than {max_frames} frames (INPUT_MAX_FRAMES); "
                        f"send a shorter {kind}, or raise INPUT_MAX_FRAMES",
                    )
                if packet.size and frame_pixels and packet.stream.index == stream.index:
                    frames += 1
                    if max_video_pixels is not None and frames * frame_pixels > max_video_pixels:
                        width, height = stream.codec_context.width, stream.codec_context.height
                        raise ItemError(
                            name,
                            f"the video holds more than {max_video_pixels // frame_pixels} "
                            f"frames of {width}x{height}, over the {max_video_pixels}-pixel "
                            "limit of all its frames together (INPUT_MAX_VIDEO_PIXELS; the "
                            "video loaders decode every frame): send a shorter or smaller "
                            "video, or raise INPUT_MAX_VIDEO_PIXELS",
                        )
                if packet.size and packet.stream.type == "audio":
                    samples += _samples(packet)
                    if max_audio_samples is not None and samples > max_audio_samples:
                        raise ItemError(
                            name,
                            f"the file's audio holds more than {max_audio_samples} samples, "
                            "all channels together (INPUT_MAX_AUDIO_SAMPLES; the audio "
                            f"loaders decode all of it): send a shorter {kind}, or raise "
                            "INPUT_MAX_AUDIO_SAMPLES",
                        )
                if not decoded and packet.stream.index == stream.index:
                    # Until the first frame comes out; flush packets at the end count too.
                    decoded = next(iter(packet.decode()), None) is not None
            if not decoded:
                raise ItemError(
                    name, f"no {stream.type} frame could be decoded from the file{source}"
                )
    except (ItemError, WorkerError):
        raise
    except MemoryError:
        raise
    except Exception as exc:
        # PyAV raises FFmpeg's errors (InvalidDataError...) and others on hostile input;
        # each means the bytes are not a usable file of this kind.
        # FFmpeg's errors carry the file name PyAV was given ('<none>' for bytes): keep
        # only their text.
        detail = getattr(exc, "strerror", None) or str(exc)
        raise ItemError(
            name, f"not a decodable {kind} file{source} ({type(exc).__name__}: {detail})"
        ) from exc


def _samples(packet: Any) -> int:
    """The samples, all channels together, one audio packet decodes to; 0 when unknown."""
    context = packet.stream.codec_context
    rate = context.sample_rate or 0
    if packet.duration and packet.time_base and rate:
        per_channel = int(packet.duration * packet.time_base * rate)
    else:  # a container that gives no durations: the codec's fixed frame, if it has one
        per_channel = context.frame_size or 0
    return per_channel * (context.channels or 1)


def _stream(container: Any, kind: MediaKind) -> Any:
    """The stream the loader will read: the first video stream, else the first audio one."""
    if kind == "video" and container.streams.video:
        return container.streams.video[0]
    if container.streams.audio:
        return container.streams.audio[0]
    return None
