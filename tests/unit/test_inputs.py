"""Input images: names, sources, verification, all-or-nothing storing, and the HTTP fetcher.

The fetcher's tests (engine/fetch.py) use httpx's MockTransport and a fake resolver:
no socket is opened. The same fetcher against a real server is in tests/e2e.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import logging
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from PIL import Image

from engine.addresses import IPAddress, refusal_reason
from engine.deadline import Deadline
from engine.errors import InputImageError, ItemError, JobInterruptedError
from engine.fetch import HttpFetcher
from engine.guarded_http import USER_AGENT
from engine.inputs import safe_input_path, store_images
from engine.request import InputImage
from engine.settings import Settings
from engine.urls import redact_url

# --- helpers -----------------------------------------------------------------------


def png_bytes(size: tuple[int, int] = (8, 8), color: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    """A real PNG made by Pillow."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def gif_of_tiny_frames(width: int, height: int, frames: int) -> bytes:
    """A GIF whose ``width`` x ``height`` canvas holds ``frames`` one-pixel frames: 15 bytes
    a frame, each of which ComfyUI's LoadImage decodes to the whole canvas."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame * frames + b"\x3b"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def details(exc_info: pytest.ExceptionInfo[InputImageError]) -> list[str]:
    return exc_info.value.details


def files_under(folder: Path) -> list[str]:
    """Every file (hidden temporaries included) below ``folder``, relative, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


class FakeFetcher:
    """Serves bytes per URL from a dict; counts calls and records peak concurrency."""

    def __init__(self, bodies: dict[str, bytes | ItemError], delay_s: float = 0.0) -> None:
        self.bodies = bodies
        self.delay_s = delay_s
        self.calls: list[str] = []
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def fetch(self, url: str) -> bytes:
        with self._lock:
            self.calls.append(url)
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay_s)
            body = self.bodies[url]
            if isinstance(body, ItemError):
                raise body
            return body
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def input_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "input"
    folder.mkdir()
    return folder


def store(
    images: Sequence[tuple[str, str]],
    input_dir: Path,
    settings: Settings | None = None,
    fetcher: FakeFetcher | None = None,
) -> list[Path]:
    request = [InputImage(name=name, image=image) for name, image in images]
    return store_images(request, input_dir, settings or Settings(), fetcher or FakeFetcher({}))


# --- names -------------------------------------------------------------------------


class TestSafeInputPath:
    @pytest.mark.parametrize(
        ("name", "relative"),
        [
            ("a.png", "a.png"),
            ("masks/a.png", "masks/a.png"),
            ("deep/er/still/a.png", "deep/er/still/a.png"),
            ("masks\\a.png", "masks/a.png"),  # a Windows sub-folder, as the workflow will say
            ("name with spaces.png", "name with spaces.png"),
            ("ünïcødé.png", "ünïcødé.png"),
            ("..hidden.png", "..hidden.png"),  # dots inside a segment are just a name
        ],
    )
    def test_good_names_stay_under_the_input_dir(
        self, input_dir: Path, name: str, relative: str
    ) -> None:
        assert safe_input_path(input_dir, name) == input_dir.resolve() / relative

    @pytest.mark.parametrize(
        ("name", "why"),
        [
            ("", "empty"),
            ("   ", "empty"),
            ("/etc/passwd", "absolute"),
            ("\\\\server\\share\\a.png", "absolute"),  # UNC path
            ("../a.png", "'..'"),
            ("masks/../../a.png", "'..'"),
            ("masks/../a.png", "'..'"),  # inside, but not canonical: refused all the same
            ("..", "'..'"),
            ("./a.png", "'.'"),
            ("a//b.png", "empty"),
            ("masks/", "empty"),
            ("a\x00.png", "control character"),
            ("a\nb.png", "control character"),
            ("C:\\Windows\\a.png", "drive letter"),
            ("C:a.png", "drive letter"),
            ("c:/a.png", "drive letter"),
            ("x" * 256 + ".png", "255 bytes"),
        ],
    )
    def test_bad_names_are_refused_with_a_reason(
        self, input_dir: Path, name: str, why: str
    ) -> None:
        with pytest.raises(ItemError) as exc_info:
            safe_input_path(input_dir, name)
        assert exc_info.value.name == name
        assert why in exc_info.value.reason

    def test_a_symlinked_folder_pointing_outside_is_refused(
        self, input_dir: Path, tmp_path: Path
    ) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        (input_dir / "linked").symlink_to(outside, target_is_directory=True)
        with pytest.raises(ItemError, match="outside the input directory"):
            safe_input_path(input_dir, "linked/a.png")

    def test_a_dangling_symlink_pointing_outside_is_refused(
        self, input_dir: Path, tmp_path: Path
    ) -> None:
        (input_dir / "a.png").symlink_to(tmp_path / "elsewhere" / "a.png")
        with pytest.raises(ItemError, match="outside the input directory"):
            safe_input_path(input_dir, "a.png")

    def test_a_symlink_that_stays_inside_is_allowed(self, input_dir: Path) -> None:
        (input_dir / "real").mkdir()
        (input_dir / "alias").symlink_to(input_dir / "real", target_is_directory=True)
        assert safe_input_path(input_dir, "alias/a.png") == input_dir.resolve() / "real" / "a.png"


# --- sources: data URIs and base64 ---------------------------------------------------


class TestSources:
    def test_a_data_uri_with_line_breaks_and_no_padding_is_decoded(self, input_dir: Path) -> None:
        data = png_bytes()
        encoded = b64(data).rstrip("=")
        assert len(encoded) % 4  # the padding really is missing
        wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
        [path] = store([("a.png", f"data:image/png;base64,\n{wrapped}\n")], input_dir)
        assert path.read_bytes() == data

    def test_bare_base64_with_spaces_is_decoded(self, input_dir: Path) -> None:
        data = png_bytes()
        spaced = " ".join(b64(data)[i : i + 10] for i in range(0, len(b64(data)), 10))
        [path] = store([("a.png", f"  {spaced}\t\r\n")], input_dir)
        assert path.read_bytes() == data

    def test_unicode_spaces_around_base64_are_tolerated(self, input_dir: Path) -> None:
        data = png_bytes()
        [path] = store([("a.png", f"\u00a0{b64(data)}\u2028")], input_dir)
        assert path.read_bytes() == data

    def test_url_safe_base64_is_decoded(self, input_dir: Path) -> None:
        data = png_bytes(size=(33, 17))
        [path] = store([("a.png", base64.urlsafe_b64encode(data).decode())], input_dir)
        assert path.read_bytes() == data

    def test_a_jpeg_data_uri_is_accepted_whatever_its_media_type_says(
        self, input_dir: Path
    ) -> None:
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (1, 2, 3)).save(buffer, "JPEG")
        uri = f"data:application/octet-stream;base64,{b64(buffer.getvalue())}"
        [path] = store([("photo.jpg", uri)], input_dir)
        assert Image.open(path).format == "JPEG"

    @pytest.mark.parametrize(
        ("source", "why"),
        [
            ("not base64 at all!", "not valid base64 (found '!')"),
            ("data:image/png;base64,iVBOR%%%", "not valid base64 (found '%')"),
            ("abcde", "cut short"),
            ("data:image/png;base64,", "empty"),
            ("====", "empty"),
            ("data:image/png,rawbytes", "not base64-encoded"),
            ("data:image/png;base64", "no ','"),
            # Not ASCII: the decoder's own ValueError is not a binascii.Error.
            ("iVBOR\u00e9w0KGgo", "not valid base64 (found '\u00e9')"),
        ],
    )
    def test_bad_base64_is_refused_with_a_reason(
        self, input_dir: Path, source: str, why: str
    ) -> None:
        with pytest.raises(InputImageError) as exc_info:
            store([("a.png", source)], input_dir)
        [detail] = details(exc_info)
        assert detail.startswith("a.png: ")
        assert why in detail

    @pytest.mark.parametrize(
        "source",
        ["ftp://example.com/a.png", "file:///etc/passwd", "s3://bucket/a.png", "C:\\img.png"],
    )
    def test_unsupported_sources_say_what_is_accepted(self, input_dir: Path, source: str) -> None:
        fetcher = FakeFetcher({})
        with pytest.raises(InputImageError) as exc_info:
            store([("a.png", source)], input_dir, fetcher=fetcher)
        [detail] = details(exc_info)
        assert "unsupported source" in detail
        assert "http(s) URL" in detail
        assert fetcher.calls == []

    def test_base64_over_the_size_limit_is_refused(self, input_dir: Path) -> None:
        data = png_bytes(size=(64, 64))
        settings = Settings(input_max_image_bytes=len(data) - 1)
        with pytest.raises(InputImageError) as exc_info:
            store([("a.png", b64(data))], input_dir, settings)
        [detail] = details(exc_info)
        assert "over the" in detail
        assert "INPUT_MAX_IMAGE_MB" in detail

    def test_base64_exactly_at_the_size_limit_is_accepted(self, input_dir: Path) -> None:
        data = png_bytes(size=(64, 64))
        [path] = store([("a.png", b64(data))], input_dir, Settings(input_max_image_bytes=len(data)))
        assert path.read_bytes() == data


# --- verification --------------------------------------------------------------------


class TestVerification:
    def test_bytes_that_are_not_an_image_are_refused(self, input_dir: Path) -> None:
        with pytest.raises(InputImageError) as exc_info:
            store([("a.png", b64(b"just some text, not pixels"))], input_dir)
        [detail] = details(exc_info)
        assert detail.startswith("a.png: not a decodable image")
        assert "PNG, JPEG" in detail  # says what would be accepted

    def test_a_truncated_png_is_refused(self, input_dir: Path) -> None:
        data = png_bytes(size=(256, 256))
        with pytest.raises(InputImageError) as exc_info:
            store([("a.png", b64(data[: len(data) * 2 // 3]))], input_dir)
        [detail] = details(exc_info)
        assert "not a decodable image" in detail
        assert "corrupt or truncated" in detail

    def test_a_truncated_jpeg_is_refused(self, input_dir: Path) -> None:
        """Pillow's verify() does not check JPEG data: only decoding the pixels finds the cut."""
        buffer = io.BytesIO()
        Image.effect_noise((128, 128), 64).convert("RGB").save(buffer, "JPEG")
        data = buffer.getvalue()
        with pytest.raises(InputImageError) as exc_info:
            store([("a.jpg", b64(data[: len(data) // 2]))], input_dir)
        assert "corrupt or truncated" in details(exc_info)[0]

    def test_a_png_whose_checksums_pass_but_pixels_are_missing_is_refused(
        self, input_dir: Path
    ) -> None:
        with pytest.raises(InputImageError) as exc_info:
            store([("a.png", b64(png_declaring(64, 64)))], input_dir)
        assert "corrupt or truncated" in details(exc_info)[0]

    def test_a_format_outside_the_allow_list_is_refused(self, input_dir: Path) -> None:
        """EPS would be rendered by Ghostscript: it must never reach Pillow's EPS plugin."""
        eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
        with pytest.raises(InputImageError) as exc_info:
            store([("a.eps", b64(eps))], input_dir)
        assert "not a decodable image" in details(exc_info)[0]

    def test_a_header_declaring_billions_of_pixels_is_refused_as_a_bomb(
        self, input_dir: Path
    ) -> None:
        with pytest.raises(InputImageError) as exc_info:
            store([("bomb.png", b64(png_declaring(100_000, 100_000)))], input_dir)
        [detail] = details(exc_info)
        assert "decompression bomb" in detail
        assert "INPUT_MAX_PIXELS" in detail

    def test_the_pixel_limit_is_checked_from_the_header_before_decoding(
        self, input_dir: Path
    ) -> None:
        # 9000 x 9000 is under Pillow's own guard but over the default 8192 x 8192 limit;
        # the file holds no pixel data, so a decode would fail with another message.
        with pytest.raises(InputImageError) as exc_info:
            store([("big.png", b64(png_declaring(9000, 9000)))], input_dir)
        [detail] = details(exc_info)
        assert "9000x9000" in detail
        assert "INPUT_MAX_PIXELS" in detail

    def test_an_animated_image_whose_frames_together_are_over_the_pixel_limit_is_refused(
        self, input_dir: Path
    ) -> None:
        """1,000 frames of 4096x4096 in 15 KB: LoadImage would decode 200 GB of them."""
        bomb = gif_of_tiny_frames(4096, 4096, 1000)
        with pytest.raises(InputImageError) as exc_info:
            store([("bomb.gif", b64(bomb))], input_dir)
        [detail] = details(exc_info)
        assert "1000 frames of 4096x4096 = 16777216000 pixels together" in detail
        assert "(INPUT_MAX_PIXELS)" in detail
        assert files_under(input_dir) == []

    def test_an_animated_image_of_too_many_frames_is_refused(self, input_dir: Path) -> None:
        settings = Settings(input_max_frames=10)
        with pytest.raises(InputImageError) as exc_info:
            store([("a.gif", b64(gif_of_tiny_frames(2, 2, 11)))], input_dir, settings)
        assert "over the 10-frame limit (INPUT_MAX_FRAMES)" in details(exc_info)[0]
        [path] = store([("a.gif", b64(gif_of_tiny_frames(2, 2, 10)))], input_dir, settings)
        assert path.exists()

    def test_a_tiff_of_too_many_pages_is_refused_at_the_cap_not_walked_whole(
        self, input_dir: Path
    ) -> None:
        """Pillow walks every TIFF page to count them (about 180 us a page): the check
        stops one past the limit."""
        pages = [Image.new("L", (2, 2)) for _ in range(40)]
        buffer = io.BytesIO()
        pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
        images = [("a.tiff", b64(buffer.getvalue()))]
        with pytest.raises(InputImageError) as exc_info:
            store(images, input_dir, Settings(input_max_frames=10))
        [detail] = details(exc_info)
        assert "has more than 10 frames of 2x2, over the 10-frame limit" in detail
        [path] = store(images, input_dir, Settings(input_max_frames=40))
        assert Image.open(path).n_frames == 40

    def test_counting_tiff_pages_stops_when_the_job_is_cancelled(self, input_dir: Path) -> None:
        pages = [Image.new("L", (1, 1)) for _ in range(600)]
        buffer = io.BytesIO()
        pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
        deadline = Deadline.start(None)
        deadline.cancel()
        request = [InputImage(name="a.tiff", image=b64(buffer.getvalue()))]
        with pytest.raises(JobInterruptedError) as exc_info:
            store_images(request, input_dir, Settings(), FakeFetcher({}), deadline)
        assert exc_info.value.message.endswith("while checking input images")
        assert files_under(input_dir) == []

    def test_an_animated_image_within_the_limits_is_stored(self, input_dir: Path) -> None:
        settings = Settings(input_max_pixels=64 * 64 * 3)
        frames = [Image.new("RGB", (64, 64), (i * 80, 0, 0)) for i in range(3)]
        buffer = io.BytesIO()
        frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
        [path] = store([("a.webp", b64(buffer.getvalue()))], input_dir, settings)
        assert Image.open(path).n_frames == 3
        with pytest.raises(InputImageError) as exc_info:
            store(
                [("b.webp", b64(buffer.getvalue()))],
                input_dir,
                Settings(input_max_pixels=64 * 64 * 2),
            )
        assert "3 frames of 64x64 = 12288 pixels together" in details(exc_info)[0]

    def test_a_lower_pixel_limit_from_settings_applies(self, input_dir: Path) -> None:
        settings = Settings(input_max_pixels=100)
        with pytest.raises(InputImageError) as exc_info:
            store([("a.png", b64(png_bytes(size=(11, 10))))], input_dir, settings)
        assert "11x10 = 110 pixels" in details(exc_info)[0]
        [path] = store([("a.png", b64(png_bytes(size=(10, 10))))], input_dir, settings)
        assert path.exists()


# --- storing: all or nothing, concurrently ---------------------------------------------


class TestStoreImages:
    def test_every_image_is_written_and_returned_in_request_order(self, input_dir: Path) -> None:
        first, second = png_bytes(color=(1, 1, 1)), png_bytes(color=(2, 2, 2))
        fetcher = FakeFetcher({"https://images.example.com/b.png": second})
        paths = store(
            [("a.png", b64(first)), ("masks/b.png", "https://images.example.com/b.png")],
            input_dir,
            fetcher=fetcher,
        )
        root = input_dir.resolve()
        assert paths == [root / "a.png", root / "masks" / "b.png"]
        assert [p.read_bytes() for p in paths] == [first, second]
        assert files_under(input_dir) == ["a.png", "masks/b.png"]  # no temporaries left

    def test_no_images_writes_nothing(self, input_dir: Path) -> None:
        assert store_images([], input_dir, Settings()) == []
        assert files_under(input_dir) == []

    def test_an_existing_file_of_the_same_name_is_replaced(self, input_dir: Path) -> None:
        (input_dir / "a.png").write_bytes(b"a previous job's leftover")
        data = png_bytes()
        [path] = store([("a.png", b64(data))], input_dir)
        assert path.read_bytes() == data

    def test_one_bad_image_leaves_no_file_behind(self, input_dir: Path) -> None:
        fetcher = FakeFetcher(
            {
                "https://h.example/good.png": png_bytes(),
                "https://h.example/gone.png": ItemError("u", "HTTP 404 Not Found"),
            }
        )
        images = [
            ("a.png", b64(png_bytes())),
            ("sub/dir/b.png", "https://h.example/good.png"),
            ("c.png", "https://h.example/gone.png"),
        ]
        with pytest.raises(InputImageError):
            store(images, input_dir, fetcher=fetcher)
        assert list(input_dir.iterdir()) == []  # no files, no temporaries, no new folders

    def test_every_failure_is_reported_naming_its_image(self, input_dir: Path) -> None:
        fetcher = FakeFetcher(
            {"https://h.example/x.png?X-Amz-Signature=s3cr3t": ItemError("u", "HTTP 403 Forbidden")}
        )
        images = [
            ("ok.png", b64(png_bytes())),
            ("bad64.png", "%%%"),
            ("text.png", b64(b"hello")),
            ("remote.png", "https://h.example/x.png?X-Amz-Signature=s3cr3t"),
        ]
        with pytest.raises(InputImageError) as exc_info:
            store(images, input_dir, fetcher=fetcher)
        error = exc_info.value
        assert error.message == "Failed to upload one or more input images"
        assert [d.split(":", 1)[0] for d in error.details] == [
            "bad64.png",
            "text.png",
            "remote.png",
        ]
        assert error.details[2] == (
            "remote.png: Failed to download image from URL: https://h.example/x.png "
            "(HTTP 403 Forbidden)"
        )
        assert "s3cr3t" not in error.summary()

    @pytest.mark.parametrize("second", ["a.png", "./a.png", "sub/../a.png"])
    def test_duplicate_names_are_refused_before_fetching(
        self, input_dir: Path, second: str
    ) -> None:
        fetcher = FakeFetcher({"https://h.example/a.png": png_bytes()})
        images = [("a.png", "https://h.example/a.png"), (second, "https://h.example/a.png")]
        with pytest.raises(InputImageError) as exc_info:
            store(images, input_dir, fetcher=fetcher)
        assert len(details(exc_info)) == 1
        assert fetcher.calls == []

    def test_a_backslash_and_a_slash_spelling_of_one_file_are_duplicates(
        self, input_dir: Path
    ) -> None:
        data = b64(png_bytes())
        with pytest.raises(InputImageError) as exc_info:
            store([("masks/a.png", data), ("masks\\a.png", data)], input_dir)
        [detail] = details(exc_info)
        assert "duplicate name (images[0] and images[1]" in detail

    def test_more_images_than_the_limit_are_refused_before_fetching(self, input_dir: Path) -> None:
        fetcher = FakeFetcher({"https://h.example/a.png": png_bytes()})
        images = [(f"{i}.png", "https://h.example/a.png") for i in range(3)]
        with pytest.raises(InputImageError) as exc_info:
            store(images, input_dir, Settings(input_max_images=2), fetcher)
        assert details(exc_info) == [
            "input.images: 3 images sent, at most 2 are accepted per request (INPUT_MAX_IMAGES)"
        ]
        assert fetcher.calls == []

    def test_a_bad_name_fails_the_request_before_any_fetch(self, input_dir: Path) -> None:
        fetcher = FakeFetcher({"https://h.example/a.png": png_bytes()})
        images = [("a.png", "https://h.example/a.png"), ("../b.png", "https://h.example/a.png")]
        with pytest.raises(InputImageError) as exc_info:
            store(images, input_dir, fetcher=fetcher)
        assert [d.split(":", 1)[0] for d in details(exc_info)] == ["../b.png"]
        assert fetcher.calls == []

    def test_images_are_fetched_concurrently(self, input_dir: Path) -> None:
        """Every fetch waits until all of them have started: only concurrent fetches get
        through (sequential ones break the barrier), however fast the machine is."""
        count = 6
        urls = {f"https://h.example/{i}.png": png_bytes(color=(i, i, i)) for i in range(count)}
        all_started = threading.Barrier(count, timeout=60)

        class BarrierFetcher(FakeFetcher):
            def fetch(self, url: str) -> bytes:
                all_started.wait()  # raises BrokenBarrierError if the fetches ran one by one
                return super().fetch(url)

        fetcher = BarrierFetcher(dict(urls))
        paths = store([(f"{i}.png", url) for i, url in enumerate(urls)], input_dir, fetcher=fetcher)
        assert len(paths) == count
        assert sorted(fetcher.calls) == sorted(urls)

    def test_a_file_that_cannot_be_placed_rolls_back_the_others(self, input_dir: Path) -> None:
        (input_dir / "taken").mkdir()
        (input_dir / "taken" / "keep.txt").write_text("a directory is in the way")
        data = b64(png_bytes())
        with pytest.raises(InputImageError) as exc_info:
            store([("a.png", data), ("taken", data)], input_dir)
        [detail] = details(exc_info)
        assert detail.startswith("taken: could not be written")
        assert files_under(input_dir) == ["taken/keep.txt"]

    def test_a_folder_that_cannot_be_created_is_reported(self, input_dir: Path) -> None:
        (input_dir / "masks").write_bytes(b"a file where a folder is needed")
        with pytest.raises(InputImageError) as exc_info:
            store([("masks/a.png", b64(png_bytes()))], input_dir)
        assert "cannot create the folder masks/" in details(exc_info)[0]

    def test_a_fetcher_bug_propagates_and_leaves_nothing(self, input_dir: Path) -> None:
        class Broken:
            def fetch(self, url: str) -> bytes:
                raise RuntimeError("bug in a fetcher")

        images = [
            InputImage(name="a.png", image=b64(png_bytes())),
            InputImage(name="b/c.png", image="https://h.example/c.png"),
        ]
        with pytest.raises(RuntimeError, match="bug in a fetcher"):
            store_images(images, input_dir, Settings(), Broken())
        assert list(input_dir.iterdir()) == []


# --- addresses and URLs (engine/addresses.py, engine/urls.py) ---------------------------


class TestRefusalReason:
    @pytest.mark.parametrize(
        ("address", "why"),
        [
            ("127.0.0.1", "loopback"),
            ("127.1.2.3", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),  # AWS/GCP/Azure metadata
            ("100.64.0.1", "carrier-grade NAT"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "reserved"),
            ("192.0.2.1", "private"),  # TEST-NET-1, documentation only
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00::1", "private"),
            ("fd00:ec2::254", "private"),  # AWS metadata over IPv6 (a ULA)
            ("ff02::1", "multicast"),
            ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
            ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
        ],
    )
    def test_non_public_addresses_are_refused(self, address: str, why: str) -> None:
        reason = refusal_reason(ipaddress.ip_address(address))
        assert reason is not None
        assert why in reason

    @pytest.mark.parametrize(
        "address", ["93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:2800:220:1:248:1893:25c8:1946"]
    )
    def test_public_addresses_are_allowed(self, address: str) -> None:
        assert refusal_reason(ipaddress.ip_address(address)) is None


class TestRedactUrl:
    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            (
                "https://b.s3.amazonaws.com/k.png?X-Amz-Signature=abc",
                "https://b.s3.amazonaws.com/k.png",
            ),
            ("https://user:pw@h.example/a.png#frag", "https://h.example/a.png"),
            ("http://h.example:8080/a.png?", "http://h.example:8080/a.png"),
            ("https://[::1/a.png?token=x", "https://[::1/a.png"),  # unparseable
            ("https://u:p@[::1/a.png?token=x", "https://[::1/a.png"),
        ],
    )
    def test_credentials_are_stripped(self, url: str, shown: str) -> None:
        assert redact_url(url) == shown

    def test_long_urls_are_shortened(self) -> None:
        shown = redact_url("https://h.example/" + "a" * 1000)
        assert len(shown) == 200
        assert shown.endswith("...")


# --- the HTTP fetcher, over a mock transport -------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


class _Body(httpx.SyncByteStream):
    def __init__(self, body: bytes) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        yield self._body


def streamed(response: httpx.Response) -> httpx.Response:
    """``response`` with its body unread, as a network transport hands it over: httpx reads
    a body given as bytes at once, and the fetcher reads the raw stream."""
    if not response.is_stream_consumed:  # a body given as an iterator: unread already
        return response
    return httpx.Response(
        response.status_code, headers=response.headers, stream=_Body(response.content)
    )


def make_fetcher(
    handler: Handler,
    dns: dict[str, list[str]],
    settings: Settings | None = None,
) -> tuple[HttpFetcher, list[httpx.Request]]:
    """A fetcher whose requests go to ``handler`` and whose names resolve through ``dns``."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return streamed(handler(request))

    def resolver(host: str, port: int) -> list[IPAddress]:
        if host not in dns:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return [ipaddress.ip_address(a) for a in dns[host]]

    client = httpx.Client(transport=httpx.MockTransport(record))
    return HttpFetcher(settings or Settings(), client, resolver=resolver), seen


def fetch_error(fetcher: HttpFetcher, url: str) -> ItemError:
    with pytest.raises(ItemError) as exc_info:
        fetcher.fetch(url)
    return exc_info.value


PUBLIC = "93.184.216.34"


class TestHttpFetcher:
    def test_the_request_goes_to_the_checked_address_with_the_host_name_kept(self) -> None:
        fetcher, seen = make_fetcher(
            lambda r: httpx.Response(200, content=b"png"), {"images.example.com": [PUBLIC]}
        )
        assert fetcher.fetch("https://images.example.com/a.png?sig=1") == b"png"
        [request] = seen
        assert request.url.host == PUBLIC  # pinned: no second DNS lookup can redirect it
        assert request.url.query == b"sig=1"
        assert request.headers["host"] == "images.example.com"
        assert request.extensions["sni_hostname"] == "images.example.com"
        assert request.headers["user-agent"] == USER_AGENT
        assert request.headers["connection"] == "close"  # never reused for another name

    def test_a_name_with_any_private_address_is_refused_without_a_request(self) -> None:
        fetcher, seen = make_fetcher(
            lambda r: httpx.Response(200, content=b"png"),
            {"rebind.example.com": [PUBLIC, "10.0.0.7"]},
        )
        error = fetch_error(fetcher, "http://rebind.example.com/a.png?token=secret")
        assert error.name == "http://rebind.example.com/a.png"
        assert "rebind.example.com resolves to 10.0.0.7, a private address" in error.reason
        assert "INPUT_ALLOW_PRIVATE_URLS" in error.reason
        assert seen == []

    def test_an_ip_literal_metadata_url_is_refused(self) -> None:
        fetcher, seen = make_fetcher(
            lambda r: httpx.Response(200), {"169.254.169.254": ["169.254.169.254"]}
        )
        error = fetch_error(fetcher, "http://169.254.169.254/latest/meta-data/")
        assert error.reason.startswith("refused: 169.254.169.254 is a link-local address")
        assert seen == []

    @pytest.mark.parametrize("url", ["http://0177.0.0.1/a.png", "http://[::1/a.png"])
    def test_a_url_httpx_cannot_parse_is_a_named_item_error(self, url: str) -> None:
        """Before: httpx.InvalidURL (no HTTPError) escaped the fetcher and failed the job
        as an unexpected error instead of naming the image."""
        fetcher, seen = make_fetcher(lambda r: httpx.Response(200), {})
        assert fetch_error(fetcher, url).reason.startswith("not a valid URL (Invalid ")
        assert seen == []

    @pytest.mark.parametrize("cancel", [True, False])
    def test_a_name_whose_lookup_never_ends_is_given_up_at_the_cancel_or_the_limit(
        self, cancel: bool
    ) -> None:
        """The system resolver has no timeout of its own to set: before, the fetch waited
        for the lookup (here, until the test released it), past the job's cancel and the
        download's limit."""
        entered, release, answered = threading.Event(), threading.Event(), threading.Event()

        def stuck(host: str, port: int) -> list[IPAddress]:
            entered.set()
            release.wait(10)  # the bound only guards a broken test
            answered.set()
            return [ipaddress.ip_address(PUBLIC)]

        client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
        timeout_s = 60.0 if cancel else 0.3
        settings = Settings(input_download_timeout_s=timeout_s)
        fetcher = HttpFetcher(settings, client, resolver=stuck)
        job = Deadline.start(None)
        if cancel:
            threading.Thread(target=lambda: entered.wait(30) and job.cancel()).start()
        try:
            if cancel:
                with pytest.raises(JobInterruptedError, match="cancelled"):
                    fetcher.fetch_within("https://slow-dns.example/a.png", job)
            else:
                with pytest.raises(ItemError, match=r"timed out after 0\.3 s"):
                    fetcher.fetch_within("https://slow-dns.example/a.png", job)
            assert entered.is_set() and not answered.is_set()  # given up, not answered
        finally:
            release.set()

    def test_private_addresses_are_fetched_when_allowed(self) -> None:
        fetcher, seen = make_fetcher(
            lambda r: httpx.Response(200, content=b"png"),
            {"nas.lan": ["192.168.1.20"]},
            Settings(input_allow_private_urls=True),
        )
        assert fetcher.fetch("http://nas.lan/a.png") == b"png"
        assert seen[0].url.host == "192.168.1.20"
        assert "sni_hostname" not in seen[0].extensions  # plain http

    def test_every_redirect_target_is_checked(self) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(302, headers={"location": "http://metadata.internal/x"})

        fetcher, seen = make_fetcher(
            handler, {"h.example": [PUBLIC], "metadata.internal": ["169.254.169.254"]}
        )
        error = fetch_error(fetcher, "https://h.example/a.png")
        assert error.reason.startswith("redirected to http://metadata.internal/x: refused:")
        assert "link-local" in error.reason
        assert len(seen) == 1

    def test_a_redirect_to_another_scheme_is_refused(self) -> None:
        fetcher, _ = make_fetcher(
            lambda r: httpx.Response(301, headers={"location": "file:///etc/passwd"}),
            {"h.example": [PUBLIC]},
        )
        error = fetch_error(fetcher, "http://h.example/a.png")
        assert "only http and https URLs are fetched, not file" in error.reason

    def test_relative_redirects_are_followed_up_to_the_limit(self) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            hop = int(request.url.path.strip("/") or 0)
            if hop < 2:
                return httpx.Response(307, headers={"location": f"/{hop + 1}"})
            return httpx.Response(200, content=b"done")

        fetcher, seen = make_fetcher(
            handler, {"h.example": [PUBLIC]}, Settings(input_max_redirects=2)
        )
        assert fetcher.fetch("http://h.example/") == b"done"
        assert [r.url.path for r in seen] == ["/", "/1", "/2"]
        assert all(r.headers["host"] == "h.example" for r in seen)

        fetcher, _ = make_fetcher(handler, {"h.example": [PUBLIC]}, Settings(input_max_redirects=1))
        assert "too many redirects (more than 1" in fetch_error(fetcher, "http://h.example/").reason

    @pytest.mark.parametrize(
        ("status", "reason"),
        [
            (404, "HTTP 404 Not Found; check the URL"),
            (403, "HTTP 403 Forbidden; the URL must be public, or the presigned link has expired"),
            (500, "HTTP 500 Internal Server Error"),
            (302, "HTTP 302 without a Location"),
        ],
    )
    def test_a_non_success_status_is_named(self, status: int, reason: str) -> None:
        fetcher, _ = make_fetcher(lambda r: httpx.Response(status), {"h.example": [PUBLIC]})
        assert fetch_error(fetcher, "http://h.example/a.png").reason == reason

    def test_a_declared_length_over_the_limit_is_refused_before_reading(self) -> None:
        class Unread(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                raise AssertionError("the body was read")

        fetcher, _ = make_fetcher(
            lambda r: httpx.Response(200, headers={"content-length": "2048"}, stream=Unread()),
            {"h.example": [PUBLIC]},
            Settings(input_max_image_bytes=1024),
        )
        reason = fetch_error(fetcher, "http://h.example/a.png").reason
        assert "over the 0.0 MB limit (INPUT_MAX_IMAGE_MB)" in reason

    def test_an_undeclared_body_is_cut_at_the_limit(self) -> None:
        chunks_sent = []

        def endless() -> Iterator[bytes]:
            for _ in range(1000):
                chunks_sent.append(1)
                yield b"x" * 512

        fetcher, _ = make_fetcher(
            lambda r: httpx.Response(200, content=endless()),
            {"h.example": [PUBLIC]},
            Settings(input_max_image_bytes=1024),
        )
        assert "download was stopped" in fetch_error(fetcher, "http://h.example/a").reason
        assert len(chunks_sent) <= 3

    def test_a_web_page_is_refused_with_a_hint(self) -> None:
        fetcher, _ = make_fetcher(
            lambda r: httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>"),
            {"drive.example": [PUBLIC]},
        )
        assert "link the image file" in fetch_error(fetcher, "https://drive.example/view").reason

    def test_the_next_address_is_tried_when_one_cannot_be_reached(self) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.host == "2001:db8::1":
                raise httpx.ConnectError("Network is unreachable", request=request)
            return httpx.Response(200, content=b"png")

        # 2001:db8::/32 is documentation space, so it must be allowed for this test.
        fetcher, seen = make_fetcher(
            handler, {"h.example": ["2001:db8::1", PUBLIC]}, Settings(input_allow_private_urls=True)
        )
        assert fetcher.fetch("http://h.example/a.png") == b"png"
        assert [r.url.host for r in seen] == ["2001:db8::1", PUBLIC]

    def test_an_unknown_host_is_named(self) -> None:
        fetcher, _ = make_fetcher(lambda r: httpx.Response(200), {})
        assert (
            "could not resolve host nowhere.invalid"
            in fetch_error(fetcher, "https://nowhere.invalid/a.png").reason
        )

    def test_httpx_log_lines_carry_no_query_string(self, caplog: pytest.LogCaptureFixture) -> None:
        fetcher, _ = make_fetcher(
            lambda r: httpx.Response(200, content=b"png"), {"h.example": [PUBLIC]}
        )
        with caplog.at_level(logging.DEBUG):
            fetcher.fetch("https://h.example/a.png?X-Amz-Signature=s3cr3t")
        assert "HTTP Request: GET" in caplog.text  # httpx did log the request...
        assert "s3cr3t" not in caplog.text  # ...without the signature
