"""Small API-format workflows, each proving one thing; shared by the test tiers.

They use core ComfyUI node types (plus ``TestRaise``/``TestSleep`` for the fake
runtime), so the same graphs run on the real engine in tests/engine.
"""

from __future__ import annotations

from typing import Any

Workflow = dict[str, Any]


def invert(image_name: str = "input.png", prefix: str = "ComfyUI") -> Workflow:
    """LoadImage -> ImageInvert -> SaveImage."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def batch(count: int = 3, size: int = 64, color: int = 0xFF8000) -> Workflow:
    """EmptyImage (a batch) -> SaveImage: one file per image."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": count, "color": color},
        },
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": "batch"},
        },
    }


def media(frames: int = 6, size: int = 64) -> Workflow:
    """One batch of frames to a PNG preview, an animated WEBP, an MP4 (SaveVideo) and a WebM (SaveWEBM)."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": frames, "color": 0x3366FF},
        },
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["1", 0],
                "filename_prefix": "anim",
                "fps": 6.0,
                "lossless": True,
                "quality": 80,
                "method": "default",
            },
        },
        "4": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
        "5": {
            "class_type": "SaveVideo",
            "inputs": {
                "video": ["4", 0],
                "filename_prefix": "video/clip",
                "format": "mp4",
                "codec": "h264",
            },
        },
        "6": {
            "class_type": "SaveWEBM",
            "inputs": {
                "images": ["1", 0],
                "filename_prefix": "video/clip",
                "codec": "vp9",
                "fps": 8.0,
                "crf": 32.0,
            },
        },
    }


def vhs_combine(
    images: list[Any], filename_prefix: str = "AnimateDiff", frame_rate: int = 8
) -> dict[str, Any]:
    """A VHS_VideoCombine node writing an H.264 MP4, with every input the pack requires."""
    return {
        "class_type": "VHS_VideoCombine",
        "inputs": {
            "images": images,
            "frame_rate": frame_rate,
            "loop_count": 0,
            "filename_prefix": filename_prefix,
            "format": "video/h264-mp4",
            "pingpong": False,
            "save_output": True,
            "pix_fmt": "yuv420p",
            "crf": 19,
            "save_metadata": True,
            "trim_to_audio": False,
        },
    }


def vhs(frames: int = 5) -> Workflow:
    """VideoHelperSuite's VHS_VideoCombine: an MP4 reported under ``gifs``."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": frames, "color": 0x00FF00},
        },
        "2": vhs_combine(["1", 0]),
    }


def checkpoint(ckpt_name: str) -> Workflow:
    """A loader whose file is missing, feeding a save: validation must name the file."""
    wf = batch(1)
    wf["4"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}}
    return wf


def raises(message: str = "boom") -> Workflow:
    """A node that fails at run time (fake runtime only)."""
    wf = batch(1)
    wf["5"] = {"class_type": "TestRaise", "inputs": {"message": message}}
    wf["2"]["inputs"]["images"] = ["5", 0]
    return wf


def sleeps(seconds: float) -> Workflow:
    """A node that takes ``seconds`` (fake runtime only)."""
    return {
        "1": {"class_type": "TestSleep", "inputs": {"seconds": seconds}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "slow"}},
    }


def hangs() -> Workflow:
    """A node stuck like native code deaf to interrupts (fake runtime only)."""
    return {
        "1": {"class_type": "TestHang", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "hang"}},
    }
