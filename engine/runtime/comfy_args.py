"""``COMFY_ARGS``: ComfyUI's own command-line flags, parsed by its own parser at boot.

A ComfyUI server takes flags on its command line (``--fast``, ``--reserve-vram 2``,
``--lowvram``...); this worker runs ComfyUI in-process with argument parsing left off
(engine/runtime/comfy_boot.py), so ``COMFY_ARGS`` stands in for that command line.
Each flag is parsed by the pinned ComfyUI's ``comfy.cli_args.parser`` exactly as it is
spelled there (no abbreviations), and the values land in ``comfy.cli_args.args``
before ``comfy.model_management`` reads them at import.

Flags that only a server uses, or whose job the worker does itself, are refused by
name (:data:`REFUSED`): accepting them would change nothing, or fight the worker.
Nothing here imports ComfyUI: the parser is passed in, so tests drive this with a
parser rebuilt from the shape recorded at the pin.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from engine.errors import RuntimeBootError

_NO_SERVER = "this worker runs no ComfyUI server (no HTTP, no socket, no web page)"

REFUSED: dict[str, str] = {
    # Only ComfyUI's server (server.py, main.py's start-up) reads these.
    "listen": _NO_SERVER,
    "port": _NO_SERVER,
    "tls_keyfile": _NO_SERVER,
    "tls_certfile": _NO_SERVER,
    "enable_cors_header": _NO_SERVER,
    "max_upload_size": f"{_NO_SERVER}; the size of input files is INPUT_MAX_IMAGE_MB",
    "auto_launch": _NO_SERVER,
    "disable_auto_launch": _NO_SERVER,
    "windows_standalone_build": f"{_NO_SERVER}; it only turns on --auto-launch",
    "dont_print_server": _NO_SERVER,
    "front_end_version": _NO_SERVER,
    "front_end_root": _NO_SERVER,
    "enable_compress_response_body": _NO_SERVER,
    "multi_user": _NO_SERVER,
    "user_directory": f"{_NO_SERVER}; the user directory holds the editor's settings",
    "database_url": f"{_NO_SERVER}; only the server opens ComfyUI's database",
    "quick_test_for_ci": "main.py's own CI switch; the worker does not run main.py",
    # The worker owns these; each has the worker's own variable.
    "base_directory": "the worker owns ComfyUI's folders: per-job folders under WORKER_DIR, "
    "models through EXTRA_MODEL_PATHS",
    "input_directory": "the worker gives each job its own input folder (under WORKER_DIR)",
    "output_directory": "the worker gives each job its own output folder (under WORKER_DIR)",
    "temp_directory": "the worker owns the temp folder (under WORKER_DIR)",
    "extra_model_paths_config": "set EXTRA_MODEL_PATHS to the yaml instead",
    "disable_metadata": "set OUTPUT_METADATA=false instead",
    "verbose": "set COMFY_LOG_LEVEL instead",
    "log_stdout": "the worker configures logging itself (COMFY_LOG_LEVEL)",
    "cpu": "the worker runs on the CPU by itself when torch sees no CUDA device; on a GPU "
    "endpoint it would leave the GPU idle",
    "disable_api_nodes": "API node files cost nothing here until a job names one of their "
    "types (they load then)",
    "disable_all_custom_nodes": "the packs are those baked into the image (its manifest) and "
    "those on the network volume: leave a pack out there instead",
    "whitelist_custom_nodes": "the packs are those baked into the image (its manifest) and "
    "those on the network volume: leave a pack out there instead",
    # main.py turns these into environment variables before torch loads; the worker does
    # not run main.py, so the variable itself is the way to say it.
    "cuda_device": "set CUDA_VISIBLE_DEVICES in the endpoint's environment instead",
    "default_device": "set CUDA_VISIBLE_DEVICES in the endpoint's environment instead "
    "(the default device first)",
    "oneapi_device_selector": "set ONEAPI_DEVICE_SELECTOR in the endpoint's environment instead",
    "help": "COMFY_ARGS is read at boot; ComfyUI's flags are listed in docs/deployment.md",
}
"""``comfy.cli_args`` destinations refused in ``COMFY_ARGS``, with the reason given."""

NEEDS_PACKAGE: dict[str, str] = {
    "use_sage_attention": "sageattention",
    "use_flash_attention": "flash_attn",
}
"""Flags whose package ComfyUI imports at boot, and ``exit(-1)``s without (the pin's
comfy/ldm/modules/attention.py): checked first, so the worker answers instead of dying."""

CACHE_FLAGS = ("cache_classic", "cache_lru", "cache_none")
"""ComfyUI's cache flags: main.py builds its executor from them, so the worker does too."""

# argparse's own test for "a negative number, not a flag" (its _negative_number_matcher).
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


@dataclass(frozen=True)
class ComfyArgs:
    """What ``COMFY_ARGS`` set: ``comfy.cli_args`` destinations and their parsed values."""

    values: dict[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    """The flags as the user spelled them, in order, for the boot log."""

    def named(self, dest: str) -> bool:
        """Whether ``COMFY_ARGS`` named the flag that sets ``dest``."""
        return dest in self.values


class _ParseError(Exception):
    pass


def parse(
    parser: argparse.ArgumentParser,
    tokens: Sequence[str],
    installed: Callable[[str], bool] | None = None,
) -> ComfyArgs:
    """Parse ``tokens`` (COMFY_ARGS, split) with ComfyUI's ``parser``, refusing by name.

    Raises :class:`RuntimeBootError` naming every refused flag, every unknown flag
    (with its close matches), a flag whose package is not ``installed`` and argparse's
    own complaint about a bad value.
    """
    installed = installed or _importable
    if not tokens:
        return ComfyArgs()
    actions = _option_actions(parser)
    problems: list[str] = []
    named: dict[str, argparse.Action] = {}
    flags: list[str] = []
    for word in tokens:
        if not word.startswith("-") or word == "--" or _NEGATIVE_NUMBER.match(word):
            continue
        name = word.split("=", 1)[0]
        action = actions.get(name)
        if action is None:
            problems.append(_unknown(name, actions))
            continue
        flags.append(name)
        if action.dest in REFUSED:
            problems.append(f"{name} is refused here: {REFUSED[action.dest]}")
        package = NEEDS_PACKAGE.get(action.dest)
        if package is not None and not installed(package):
            problems.append(
                f"{name} needs the Python package {package}, which this image does not have: "
                "add it to the image's lock (docs/deployment.md), or take the flag out"
            )
        named[action.dest] = action
    if not problems:
        try:
            namespace, extras = _strict(parser).parse_known_args(list(tokens))
        except (_ParseError, argparse.ArgumentError) as exc:
            problems.append(str(exc))
        else:
            problems.extend(f"unexpected value {extra!r}" for extra in extras)
    if problems:
        raise RuntimeBootError(
            "COMFY_ARGS holds flags ComfyUI cannot take here: " + "; ".join(problems),
            [*problems, "COMFY_ARGS takes the pinned ComfyUI's own flags: see docs/deployment.md"],
        )
    values = {dest: _finish(action, getattr(namespace, dest)) for dest, action in named.items()}
    return ComfyArgs(values=values, flags=tuple(flags))


def apply(parsed: ComfyArgs, target: Any) -> None:
    """Set the parsed values on ComfyUI's ``comfy.cli_args.args``, as its own parse would.

    cli_args.py adjusts a few fields after parsing; those steps are repeated here.
    """
    for dest, value in parsed.values.items():
        setattr(target, dest, value)
    # cli_args.py at the pin: "if args.force_fp16: args.fp16_unet = True".
    if parsed.values.get("force_fp16"):
        target.fp16_unet = True


def cache_choice(parsed: ComfyArgs, cache_type: str | None) -> tuple[str, int] | None:
    """The executor's cache from ComfyUI's cache flags, as main.py reads them.

    ``(kind, size)`` with kind ``classic``, ``lru`` or ``none``; ``None`` when no cache
    flag was given. Raises :class:`RuntimeBootError` when ``COMFY_CACHE_TYPE`` is set too.
    """
    given = [dest for dest in CACHE_FLAGS if parsed.named(dest)]
    if not given:
        return None
    if cache_type is not None:
        flag = "--" + given[0].replace("_", "-")
        raise RuntimeBootError(
            f"COMFY_ARGS sets the cache with {flag} and COMFY_CACHE_TYPE is set too",
            [f"Keep one: unset COMFY_CACHE_TYPE, or take {flag} out of COMFY_ARGS"],
        )
    size = int(parsed.values.get("cache_lru") or 0)
    if size > 0:
        return "lru", size
    if parsed.values.get("cache_none"):
        return "none", 0
    return "classic", 0


def _importable(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


def _unknown(name: str, actions: dict[str, argparse.Action]) -> str:
    close = difflib.get_close_matches(name, list(actions), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"ComfyUI has no flag {name}{hint}"


def _strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A copy of ``parser`` that raises instead of exiting, and takes no abbreviation.

    ComfyUI's own parser exits the process on an error; its copy shares the options.
    """
    strict = copy.copy(parser)
    strict.exit_on_error = False
    strict.allow_abbrev = False

    def error(message: str) -> NoReturn:
        raise _ParseError(message)

    strict.error = error  # type: ignore[method-assign]
    return strict


def _finish(action: argparse.Action, value: Any) -> Any:
    """cli_args.py's own post-parse step for ``--fast``: a set; no feature named = all."""
    if action.dest == "fast" and isinstance(value, list):
        features = action.type
        if not value and isinstance(features, type):
            return set(features)  # type: ignore[call-overload]
        return set(value)
    return value
