"""The ComfyUI runtime's parts that need no ComfyUI: combo inputs, the folders behind
a file input, the headless server stand-in, finding the checkout.

ComfyUI's ``folder_paths`` module and node classes are replaced by small fakes with
the same calls; the real ones are exercised by ``tests/engine/``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from engine.errors import RuntimeBootError
from engine.runtime import JobSpec
from engine.runtime.comfy import ComfyRuntime
from engine.runtime.comfy_boot import find_checkout
from engine.runtime.comfy_folders import combo_options, folders_backing_input
from engine.runtime.headless_server import HeadlessPromptServer
from engine.settings import Settings

# -- combo inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "options"),
    [
        (
            (["a.safetensors", "b.safetensors"], {"tooltip": "x"}),
            ["a.safetensors", "b.safetensors"],
        ),
        (("COMBO", {"options": ["mp4", "auto"], "default": "auto"}), ["mp4", "auto"]),  # V3
        ((["only"],), ["only"]),
        (([],), []),  # an empty model folder is still a file input
        (("COMBO", {"options": [1, 2]}), None),  # not names
        (("INT", {"default": 1}), None),
        (("IMAGE",), None),
        ("STRING", None),
    ],
)
def test_combo_options(config: Any, options: list[str] | None) -> None:
    assert combo_options(config) == options


# -- which folders back a file input ---------------------------------------------------------


class FakeFolderPaths:
    """ComfyUI's ``folder_paths``, reduced to the calls the runtime makes."""

    def __init__(self, tmp_path: Path, listings: dict[str, list[str]]) -> None:
        self.listings = listings
        self.folders = {
            name: [str(tmp_path / "models" / name), f"/runpod-volume/models/{name}"]
            for name in listings
        }
        for paths in self.folders.values():
            Path(paths[0]).mkdir(parents=True, exist_ok=True)

    def get_filename_list(self, folder_name: str) -> list[str]:
        return list(self.listings[folder_name])

    def get_folder_paths(self, folder_name: str) -> list[str]:
        return list(self.folders[folder_name])


def make_node(inputs: dict[str, Any]) -> type:
    """A V1 node class whose INPUT_TYPES() builds its lists through ``folder_paths``."""

    class Node:
        folder_paths: ClassVar[Any] = None

        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            built = {name: build(cls.folder_paths) for name, build in inputs.items()}
            return {"required": built}

    return Node


def test_checkpoint_input_names_every_checkpoint_folder(tmp_path: Path) -> None:
    """The folders of the listing that built the input, the absent one marked."""
    fp = FakeFolderPaths(tmp_path, {"checkpoints": ["sd15.safetensors"], "configs": ["v1.yaml"]})
    node = make_node(
        {
            "config_name": lambda f: (f.get_filename_list("configs"),),
            "ckpt_name": lambda f: (f.get_filename_list("checkpoints"), {}),
        }
    )
    node.folder_paths = fp
    assert folders_backing_input(fp, node, "ckpt_name", "missing.safetensors") == [
        str(tmp_path / "models" / "checkpoints"),
        "/runpod-volume/models/checkpoints (missing)",
    ]


def test_a_volume_filled_one_level_too_high_is_named_with_where_to_move_it(
    tmp_path: Path,
) -> None:
    """worker-comfyui's first volume mistake: checkpoints/ at the volume's root, not
    under models/. The error's folder list says so instead of a bare "(missing)"."""
    fp = FakeFolderPaths(tmp_path, {"checkpoints": []})
    volume = tmp_path / "volume"
    (volume / "checkpoints").mkdir(parents=True)
    fp.folders["checkpoints"][1] = str(volume / "models" / "checkpoints")
    fp.folders["checkpoints"].append(str(tmp_path / "elsewhere" / "models" / "checkpoints"))
    node = make_node({"ckpt_name": lambda f: (f.get_filename_list("checkpoints"),)})
    node.folder_paths = fp
    assert folders_backing_input(fp, node, "ckpt_name", "sd15.safetensors") == [
        str(tmp_path / "models" / "checkpoints"),
        f"{volume}/models/checkpoints (missing; {volume}/checkpoints exists: move it to "
        f"{volume}/models/checkpoints)",
        f"{tmp_path}/elsewhere/models/checkpoints (missing)",
    ]


def test_another_threads_listings_do_not_count_as_the_nodes(tmp_path: Path) -> None:
    """Jobs overlap: while a lane records one node's INPUT_TYPES(), the engine thread runs
    another job and lists folders too. Only the recording thread's listings count, and
    ComfyUI's own function is back in place afterwards."""
    fp = FakeFolderPaths(tmp_path, {"checkpoints": [], "loras": []})
    original = fp.get_filename_list

    def listing_from_elsewhere() -> None:
        # The engine thread's loader asks for loras while the node's INPUT_TYPES() runs.
        other = threading.Thread(target=lambda: fp.get_filename_list("loras"))
        other.start()
        other.join()

    node = make_node(
        {"ckpt_name": lambda f: (listing_from_elsewhere(), f.get_filename_list("checkpoints"))[1:]}
    )
    node.folder_paths = fp
    folders = folders_backing_input(fp, node, "ckpt_name", "missing.safetensors")
    assert folders == [
        str(tmp_path / "models" / "checkpoints"),
        "/runpod-volume/models/checkpoints (missing)",
    ]
    assert fp.get_filename_list == original


def test_a_list_with_names_of_its_own_still_finds_its_folder(tmp_path: Path) -> None:
    """VAELoader adds names to the vae folder's listing; the listing still fits."""
    fp = FakeFolderPaths(tmp_path, {"vae": ["sdxl_vae.safetensors"], "vae_approx": []})
    node = make_node(
        {"vae_name": lambda f: ([*f.get_filename_list("vae"), "pixel_space", "taesd"],)}
    )
    node.folder_paths = fp
    folders = folders_backing_input(fp, node, "vae_name", "missing.safetensors")
    assert folders[0] == str(tmp_path / "models" / "vae")


def test_an_empty_model_folder_matches_a_missing_file(tmp_path: Path) -> None:
    """A fresh worker has no checkpoints at all: the list is empty, the folder known."""
    fp = FakeFolderPaths(tmp_path, {"loras": []})
    node = make_node({"lora_name": lambda f: (f.get_filename_list("loras"),)})
    node.folder_paths = fp
    assert folders_backing_input(fp, node, "lora_name", "styles/pixel.safetensors")[0].endswith(
        "loras"
    )


def test_an_enum_beside_an_empty_folder_is_no_file(tmp_path: Path) -> None:
    """A bad sampler name is not taken for a file missing from an empty folder."""
    fp = FakeFolderPaths(tmp_path, {"checkpoints": []})
    node = make_node(
        {
            "ckpt_name": lambda f: (f.get_filename_list("checkpoints"),),
            "sampler_name": lambda f: (["euler", "dpmpp_2m"],),
        }
    )
    node.folder_paths = fp
    assert folders_backing_input(fp, node, "sampler_name", "no_such_sampler") == []


def test_a_node_whose_input_types_raises_has_no_folders(tmp_path: Path) -> None:
    fp = FakeFolderPaths(tmp_path, {"checkpoints": []})

    class Broken:
        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            raise OSError("volume gone")

    original = fp.get_filename_list
    assert folders_backing_input(fp, Broken, "ckpt_name", "x.safetensors") == []
    assert fp.get_filename_list == original  # the recording wrapper is always removed


# -- the headless server ------------------------------------------------------------------


class FakeQueue:
    def __init__(self, server: Any) -> None:
        self.server = server
        self.currently_running: dict[int, Any] = {}


@pytest.fixture
def server() -> HeadlessPromptServer:
    return HeadlessPromptServer(SimpleNamespace(PromptQueue=FakeQueue))


def test_messages_go_to_the_listener_in_the_callers_thread(server: HeadlessPromptServer) -> None:
    seen: list[tuple[str, Any, str]] = []
    server.send_sync("dropped", {})  # no listener: nothing happens
    server.set_listener(lambda e, d: seen.append((e, d, threading.current_thread().name)))
    server.send_sync("executing", {"node": "3"}, "client")
    server.send_sync(7, b"binary preview")  # binary events (previews) are not for the listener
    asyncio.run(server.send_json("executed", {"node": "3"}))
    server.send_progress_text(b"width: 8", "3")
    me = threading.current_thread().name
    assert seen == [("executing", {"node": "3"}, me), ("executed", {"node": "3"}, me)]


def test_on_prompt_handlers_run_in_order_and_a_failing_one_is_skipped(
    server: HeadlessPromptServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("oops")

    server.add_on_prompt_handler(lambda r: {**r, "a": 1})
    server.add_on_prompt_handler(broken)
    server.add_on_prompt_handler(lambda r: {**r, "b": r["a"] + 1})
    assert server.trigger_on_prompt({"prompt": {}}) == {"prompt": {}, "a": 1, "b": 2}
    assert "on-prompt handler" in caplog.text


def test_what_packs_touch_at_import(server: HeadlessPromptServer) -> None:
    @server.routes.get("/pack/ping")
    async def ping(request: Any) -> Any:
        return None

    assert [r.path for r in server.routes] == ["/pack/ping"]
    assert server.sockets_metadata == {} and server.client_id is None
    assert server.prompt_queue.currently_running == {}
    assert server.get_queue_info() == {"exec_info": {"queue_remaining": 0}}
    with pytest.raises(
        AttributeError, match=r"no attribute 'user_manager'.*no ComfyUI HTTP server"
    ):
        _ = server.user_manager


def test_node_init_runs_on_the_loop_that_keeps_running(server: HeadlessPromptServer) -> None:
    """As main.py: init on the server's loop; afterwards that loop serves other threads."""

    async def init() -> asyncio.AbstractEventLoop:
        return asyncio.get_event_loop()

    assert server.run_until_complete(init()) is server.loop
    server.start_loop()
    assert asyncio.run_coroutine_threadsafe(init(), server.loop).result(timeout=5) is server.loop
    with pytest.raises(RuntimeError, match="already runs"):
        server.run_until_complete(init())
    server.loop.call_soon_threadsafe(server.loop.stop)


# -- before boot ------------------------------------------------------------------------------


def test_a_missing_checkout_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RuntimeBootError) as caught:
        find_checkout(Settings(comfyui_path=tmp_path / "nope"))
    assert f"COMFYUI_PATH={tmp_path / 'nope'}" in caught.value.message
    assert "scripts/setup.sh --with-comfyui" in caught.value.details[0]


def test_jobs_need_a_booted_runtime(tmp_path: Path) -> None:
    runtime = ComfyRuntime(Settings(work_dir=tmp_path))
    assert runtime.directories.output == tmp_path.resolve() / "output"
    with pytest.raises(RuntimeError, match="boot"):
        runtime.run(JobSpec(prompt_id="x", workflow={}))
    runtime.after_job()  # nothing to free yet: no error
