"""One video's frames as 8-bit RGB, written to a file the way ComfyUI's SaveVideo writes it.

ComfyUI 0.3.64's ``VideoFromComponents.save_to`` turns each frame into bytes
(``(frame * 255).clamp(0, 255).byte()``) and encodes it with PyAV: an MP4 opened with
``movflags=use_metadata_tags``, each metadata entry as JSON text, an ``h264`` stream at
the frame rate rounded to 1/1000, ``yuv420p`` from ``rgb24``, then an ``aac`` stream
when the video has audio. :class:`VideoFile` holds what those calls need, taken from
the video by :func:`engine.runtime.video_save.video_file` (torch stays there), and
:meth:`VideoFile.save` makes the same PyAV calls in the same order, in an encoder
process (``engine.runtime.png_encoders``) or, when none can run, in the worker. The
``deferred_video`` patch checks that ``save_to`` still makes those calls before it
applies, and a real-engine test checks that the arrays it is given are the ones ComfyUI
gives PyAV and compares its file with ComfyUI's own: all but the H.264 packets' bytes,
which x264 does not repeat exactly on a CPU with AVX-512 (ComfyUI's own file neither).

Imported by the encoder process too: it needs only PyAV and numpy, imported when a
video is saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any


@dataclass
class VideoFile:
    """What ``save_to`` encodes, as picklable data: the frames and the stream settings."""

    frames: Any
    """A C-contiguous ``uint8`` numpy array, (frames, height, width, 3): ``rgb24``."""
    frame_rate: Fraction
    """Already rounded to 1/1000, as ``save_to`` rounds it."""
    metadata: dict[str, str] | None
    """Each value already JSON text, as ``save_to`` writes it."""
    audio: Any = None
    """``float32`` numpy array (1, samples x channels), interleaved; ``None``: no audio."""
    audio_rate: int = 1
    audio_layout: str = "mono"

    @property
    def size(self) -> tuple[int, int]:
        """The pixels of every frame, as one image's (width, height): what the encoder
        pool's answer bound counts (``png_encoders.answer_bound_s``)."""
        count, height, width = self.frames.shape[:3]
        return width, height * count

    def save(self, path: str) -> None:
        """Write the MP4 at ``path`` with the calls ComfyUI's ``save_to`` makes."""
        import av

        with av.open(path, mode="w", options={"movflags": "use_metadata_tags"}) as output:
            if self.metadata is not None:
                for key, value in self.metadata.items():
                    output.metadata[key] = value
            video_stream = output.add_stream("h264", rate=self.frame_rate)
            video_stream.width = self.frames.shape[2]
            video_stream.height = self.frames.shape[1]
            video_stream.pix_fmt = "yuv420p"
            audio_stream = None
            if self.audio is not None:
                audio_stream = output.add_stream("aac", rate=self.audio_rate)
            for pixels in self.frames:
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame = frame.reformat(format="yuv420p")
                output.mux(video_stream.encode(frame))
            output.mux(video_stream.encode(None))
            if audio_stream is not None:
                sound = av.AudioFrame.from_ndarray(
                    self.audio, format="flt", layout=self.audio_layout
                )
                sound.sample_rate = self.audio_rate
                sound.pts = 0
                output.mux(audio_stream.encode(sound))
                output.mux(audio_stream.encode(None))
