"""engine.convert: still images re-encoded into the asked format; everything else untouched."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine import convert
from engine.convert import convert_outputs
from engine.deadline import Deadline
from engine.errors import JobInterruptedError, JobTimeoutError
from engine.outputs import OutputFile, OutputKind, mime_type_for
from engine.request import ConvertOutput
from tests.media_factory import make_animated_webp, make_gif, make_jpeg, make_png, make_video


def output(path: Path, kind: OutputKind = "image", node_id: str = "9") -> OutputFile:
    """An OutputFile as collect_outputs types it."""
    return OutputFile(
        node_id=node_id,
        filename=path.name,
        subfolder="sub",
        path=path,
        mime_type=mime_type_for(path.name),
        kind=kind,
    )


def test_rgba_png_to_jpeg_composites_on_white(tmp_path: Path) -> None:
    """JPEG has no alpha: transparent pixels become white, opaque ones keep their colour;
    the size, node, subfolder and stem are kept, the extension and MIME type follow."""
    source = tmp_path / "ComfyUI_00001_.png"
    image = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    image.paste((200, 30, 30, 255), (0, 0, 20, 30))
    image.save(source)
    (converted,), errors = convert_outputs(
        [output(source)], ConvertOutput(format="jpeg"), tmp_path / "scratch"
    )
    assert errors == []
    assert (converted.filename, converted.mime_type) == ("ComfyUI_00001_.jpg", "image/jpeg")
    assert (converted.node_id, converted.subfolder, converted.kind) == ("9", "sub", "image")
    assert converted.path.is_relative_to(tmp_path / "scratch") and converted.path.is_file()
    assert source.is_file()  # the original is ComfyUI's; the worker's cleanup removes it
    with Image.open(converted.path) as jpeg:
        assert (jpeg.format, jpeg.mode, jpeg.size) == ("JPEG", "RGB", (40, 30))
        left, right = jpeg.getpixel((5, 15)), jpeg.getpixel((35, 15))
    assert all(abs(a - b) <= 8 for a, b in zip(left, (200, 30, 30), strict=True)), left
    assert all(v >= 250 for v in right), right


def test_png_to_webp_follows_the_quality(tmp_path: Path) -> None:
    """A lower quality makes a smaller lossy WEBP; alpha is kept (WEBP has it)."""
    source = tmp_path / "noise.png"
    noisy = Image.effect_noise((128, 128), 64).convert("RGBA")
    noisy.paste((0, 0, 0, 0), (0, 0, 16, 16))  # some transparency for WEBP to keep
    noisy.save(source)
    sizes = {}
    for quality in (10, 95):
        (converted,), errors = convert_outputs(
            [output(source)],
            ConvertOutput(format="webp", quality=quality),
            tmp_path / f"scratch{quality}",
        )
        assert errors == [] and converted.filename == "noise.webp"
        assert converted.mime_type == "image/webp"
        with Image.open(converted.path) as webp:
            assert (webp.format, webp.mode, webp.size) == ("WEBP", "RGBA", (128, 128))
        sizes[quality] = converted.path.stat().st_size
    assert sizes[10] < sizes[95]


def test_jpeg_to_png(tmp_path: Path) -> None:
    (converted,), errors = convert_outputs(
        [output(make_jpeg(tmp_path / "photo.jpg"))], ConvertOutput(format="png"), tmp_path / "s"
    )
    assert errors == [] and (converted.filename, converted.mime_type) == ("photo.png", "image/png")
    with Image.open(converted.path) as png:
        assert png.format == "PNG" and png.size == (64, 64)


def test_animations_videos_audio_and_the_target_format_are_left_as_they_are(
    tmp_path: Path,
) -> None:
    """Only still images in another format are re-encoded; the list keeps its order."""
    files = [
        output(make_animated_webp(tmp_path / "anim.webp", frames=3), "animation"),
        output(make_gif(tmp_path / "anim.gif", frames=3), "animation"),
        output(make_video(tmp_path / "clip.mp4", frames=4), "video"),
        output(make_png(tmp_path / "still.png")),
        output(make_jpeg(tmp_path / "already.jpg")),
    ]
    converted, errors = convert_outputs(files, ConvertOutput(format="jpeg"), tmp_path / "s")
    assert errors == []
    assert converted[:3] == files[:3] and converted[4] == files[4]
    assert converted[3].filename == "still.jpg"


def test_several_files_convert_in_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three files are encoded at the same time: each waits for the other two before it
    encodes, which only threads side by side get past (a serial loop breaks the barrier)."""
    barrier = threading.Barrier(3, timeout=30)
    encode = convert._encode

    def encode_together(*args: Any) -> OutputFile:
        barrier.wait()
        return encode(*args)

    monkeypatch.setattr(convert, "_encode", encode_together)
    monkeypatch.setattr(convert.os, "cpu_count", lambda: 4)
    files = [
        output(make_png(tmp_path / f"ComfyUI_0000{i}_.png"), node_id=str(i)) for i in (1, 2, 3)
    ]
    converted, errors = convert_outputs(files, ConvertOutput(format="webp"), tmp_path / "s")
    assert errors == []
    assert [(f.node_id, f.filename) for f in converted] == [
        ("1", "ComfyUI_00001_.webp"),
        ("2", "ComfyUI_00002_.webp"),
        ("3", "ComfyUI_00003_.webp"),
    ]


def test_same_names_do_not_overwrite_each_other(tmp_path: Path) -> None:
    """a.png and a.webp both become a.jpg, each in its own file."""
    files = [
        output(make_png(tmp_path / "a.png", color=(255, 0, 0))),
        output(make_png(tmp_path / "x" / "a.png", color=(0, 0, 255))),
    ]
    converted, errors = convert_outputs(files, ConvertOutput(format="jpeg"), tmp_path / "s")
    assert errors == [] and converted[0].path != converted[1].path
    with Image.open(converted[0].path) as red, Image.open(converted[1].path) as blue:
        assert red.getpixel((0, 0))[0] > 200 and blue.getpixel((0, 0))[2] > 200


def test_a_file_that_cannot_be_converted_is_returned_as_it_was(tmp_path: Path) -> None:
    """An unreadable PNG is delivered unchanged with an errors[] line; the others convert."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    files = [output(broken, node_id="4"), output(make_png(tmp_path / "fine.png"))]
    converted, errors = convert_outputs(files, ConvertOutput(format="jpeg"), tmp_path / "s")
    assert converted[0] == files[0]
    assert converted[1].filename == "fine.jpg"
    (line,) = errors
    assert line.startswith("broken.png (node 4): could not convert to jpeg, returned as it was: ")
    assert not (tmp_path / "s" / "converted" / "0" / "broken.jpg").exists()


def noise_png(path: Path, side: int) -> Path:
    """A PNG that does not compress (about ``side * side * 3`` bytes): many blocks."""
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(path)
    return path


def count_checks(monkeypatch: pytest.MonkeyPatch, deadline: Deadline, cancel_at: int) -> list[int]:
    """Count the deadline checks (before each file and at every block Pillow reads or
    writes) and cancel ``deadline`` at check ``cancel_at`` (0: never)."""
    counted = [0]
    real_check = convert._check

    def check(job: Deadline | None) -> None:
        counted[0] += 1
        if counted[0] == cancel_at:
            deadline.cancel()
        real_check(job)

    monkeypatch.setattr(convert, "_check", check)
    return counted


@pytest.mark.parametrize("target", ["jpeg", "webp"])
@pytest.mark.parametrize("where", ["decoding", "encoding"])
def test_a_cancel_mid_file_stops_the_conversion_at_that_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, where: str
) -> None:
    """A 1024x1024 noise PNG (3 MB): a whole conversion passes many checks; cancelled at
    the 10th (reading the PNG) or the second to last (writing the result, or for WEBP
    just before its one encode call), it stops at that very check, with the job's cancel
    error, and the file it was writing is removed."""
    file = output(noise_png(tmp_path / "n.png", 1024))
    request = ConvertOutput(format=target, quality=90)
    whole = count_checks(monkeypatch, Deadline.start(600.0), cancel_at=0)
    convert_outputs([file], request, tmp_path / "whole", deadline=Deadline.start(600.0))
    assert whole[0] > 20
    cancel_at = 10 if where == "decoding" else whole[0] - 1
    deadline = Deadline.start(600.0)
    counted = count_checks(monkeypatch, deadline, cancel_at)
    with pytest.raises(JobInterruptedError) as caught:
        convert_outputs([file], request, tmp_path / "cut", deadline=deadline)
    assert caught.value.message == "The job was cancelled and stopped while converting outputs"
    assert counted[0] == cancel_at  # not one block after the cancel
    assert [p for p in (tmp_path / "cut").rglob("*") if p.is_file()] == []


def test_files_not_started_are_not_converted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled at the first check: six files, none converted, none written."""
    files = [output(make_png(tmp_path / f"{n}.png")) for n in range(6)]
    deadline = Deadline.start(600.0)
    count_checks(monkeypatch, deadline, cancel_at=1)
    with pytest.raises(JobInterruptedError, match="cancelled"):
        convert_outputs(files, ConvertOutput(format="jpeg"), tmp_path / "s", deadline=deadline)
    assert [p for p in (tmp_path / "s").rglob("*") if p.is_file()] == []


def test_a_passed_limit_stops_the_conversion_with_the_jobs_timeout(tmp_path: Path) -> None:
    file = output(make_png(tmp_path / "a.png"))
    passed = Deadline(limit_s=1.0, started=time.monotonic() - 2.0)
    with pytest.raises(JobTimeoutError) as caught:
        convert_outputs([file], ConvertOutput(format="jpeg"), tmp_path / "s", deadline=passed)
    assert caught.value.message == (
        "The job ran longer than its time limit of 1 s and was stopped while converting outputs"
    )
