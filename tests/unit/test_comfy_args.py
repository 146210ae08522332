"""COMFY_ARGS: ComfyUI's own flags, by a parser rebuilt from the shape recorded at the pin.

``tests/fixtures/comfyui/cli_args.json`` is ``comfy.cli_args.parser`` as data
(scripts/record_comfy_shapes.py --parser-only); tests/engine/test_comfy_args_real.py
runs the same checks against the real parser.
"""

from __future__ import annotations

import argparse
import enum
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.errors import ConfigError, RuntimeBootError
from engine.runtime import comfy_args
from engine.settings import Settings

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui" / "cli_args.json"
_TYPES: dict[str | None, Any] = {"int": int, "float": float, "str": str, None: None}


def recorded_parser() -> argparse.ArgumentParser:
    """An ArgumentParser with the recorded options, groups, types and choices."""
    shape = json.loads(FIXTURE.read_text())["parser"]["actions"]
    parser = argparse.ArgumentParser()
    groups: dict[int, Any] = {}
    for action in shape:
        if action["action"] == "_HelpAction":
            continue  # argparse adds -h/--help itself
        group = action["group"]
        owner: Any = parser
        if group is not None:
            owner = groups.setdefault(group, parser.add_mutually_exclusive_group())
        kwargs: dict[str, Any] = {"dest": action["dest"], "help": action["help"]}
        if action["action"] == "_StoreTrueAction":
            kwargs["action"] = "store_true"
        else:
            kwargs["action"] = "append" if action["action"] == "_AppendAction" else "store"
            kwargs.update(nargs=action["nargs"], const=action["const"], default=action["default"])
            kind = action["type"]
            if kind == "enum":
                values = action["choices"]
                kwargs["type"] = enum.Enum("Recorded", {v.upper(): v for v in values})  # type: ignore[misc]
            else:
                kwargs["type"] = _TYPES.get(kind, str)
                if action["choices"] is not None:
                    kwargs["choices"] = action["choices"]
        owner.add_argument(*action["option_strings"], **kwargs)
    return parser


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return recorded_parser()


def refusal(parser: argparse.ArgumentParser, *tokens: str) -> RuntimeBootError:
    with pytest.raises(RuntimeBootError) as caught:
        comfy_args.parse(parser, tokens)
    return caught.value


def test_gpu_flags_are_parsed_as_comfyui_spells_them(parser: argparse.ArgumentParser) -> None:
    """Values come out typed, and only the flags named are set."""
    parsed = comfy_args.parse(
        parser,
        ["--reserve-vram", "1.5", "--cache-lru", "8", "--lowvram", "--use-sage-attention"],
        installed=lambda package: package == "sageattention",
    )
    assert parsed.values == {
        "reserve_vram": 1.5,
        "cache_lru": 8,
        "lowvram": True,
        "use_sage_attention": True,
    }
    assert parsed.flags == ("--reserve-vram", "--cache-lru", "--lowvram", "--use-sage-attention")


def test_fast_alone_means_every_feature_and_a_list_means_those(
    parser: argparse.ArgumentParser,
) -> None:
    """As cli_args.py does after parsing: ``--fast`` is a set; empty means all."""
    everything = comfy_args.parse(parser, ["--fast"]).values["fast"]
    assert {f.value for f in everything} == {
        "fp16_accumulation",
        "fp8_matrix_mult",
        "cublas_ops",
        "autotune",
    }
    some = comfy_args.parse(parser, ["--fast", "fp16_accumulation", "autotune"]).values["fast"]
    assert isinstance(some, set) and {f.value for f in some} == {"fp16_accumulation", "autotune"}


def test_apply_sets_fields_and_repeats_cli_args_own_steps(parser: argparse.ArgumentParser) -> None:
    target = SimpleNamespace(fp16_unet=False, force_fp16=False, reserve_vram=None, highvram=False)
    comfy_args.apply(comfy_args.parse(parser, ["--force-fp16", "--reserve-vram=2"]), target)
    assert target.force_fp16 is True and target.fp16_unet is True  # cli_args.py's own rule
    assert target.reserve_vram == 2.0
    assert target.highvram is False  # untouched: not named


@pytest.mark.parametrize(
    ("tokens", "flag", "why"),
    [
        (["--listen"], "--listen", "no ComfyUI server"),
        (["--listen", "0.0.0.0", "--port", "8188"], "--port", "no ComfyUI server"),
        (["--enable-cors-header"], "--enable-cors-header", "no ComfyUI server"),
        (["--tls-keyfile", "k.pem"], "--tls-keyfile", "no ComfyUI server"),
        (["--output-directory", "/data"], "--output-directory", "WORKER_DIR"),
        (
            ["--extra-model-paths-config", "a.yaml"],
            "--extra-model-paths-config",
            "EXTRA_MODEL_PATHS",
        ),
        (["--disable-metadata"], "--disable-metadata", "OUTPUT_METADATA"),
        (["--verbose", "INFO"], "--verbose", "COMFY_LOG_LEVEL"),
        (["--cpu"], "--cpu", "no CUDA device"),
        (["--cuda-device", "1"], "--cuda-device", "CUDA_VISIBLE_DEVICES"),
        (["--help"], "--help", "docs/deployment.md"),
    ],
)
def test_server_and_worker_owned_flags_are_refused_by_name(
    parser: argparse.ArgumentParser, tokens: list[str], flag: str, why: str
) -> None:
    error = refusal(parser, "--fast", *tokens)
    assert f"{flag} is refused here" in error.message and why in error.message
    assert "--fast" not in error.message  # an accepted flag is not blamed


def test_every_refusal_names_a_flag_the_pinned_parser_has(parser: argparse.ArgumentParser) -> None:
    """The table follows the pin: a destination it names that ComfyUI lost is a stale entry."""
    dests = {action.dest for action in parser._actions}
    assert sorted(set(comfy_args.REFUSED) - dests) == []
    assert set(comfy_args.CACHE_FLAGS) <= dests


def test_an_unknown_flag_lists_the_close_matches(parser: argparse.ArgumentParser) -> None:
    error = refusal(parser, "--fsat", "--reserve-vrm", "2", "--no-such-thing-at-all")
    assert "ComfyUI has no flag --fsat; did you mean --fast?" in error.message
    assert "did you mean --reserve-vram?" in error.message
    assert "ComfyUI has no flag --no-such-thing-at-all" in error.message
    assert any("docs/deployment.md" in d for d in error.details)


def test_an_attention_flag_without_its_package_is_an_error_not_an_exit(
    parser: argparse.ArgumentParser,
) -> None:
    """ComfyUI calls exit(-1) at import when sageattention is missing: a dead worker."""
    with pytest.raises(RuntimeBootError) as caught:
        comfy_args.parse(parser, ["--use-sage-attention"], installed=lambda package: False)
    assert "--use-sage-attention needs the Python package sageattention" in caught.value.message
    with pytest.raises(RuntimeBootError, match="needs the Python package flash_attn"):
        comfy_args.parse(parser, ["--use-flash-attention"], installed=lambda p: p != "flash_attn")


def test_abbreviations_are_not_taken(parser: argparse.ArgumentParser) -> None:
    """Flags are taken exactly as ComfyUI spells them (a prefix would hide a refusal)."""
    assert "ComfyUI has no flag --reserve" in refusal(parser, "--reserve", "2").message


@pytest.mark.parametrize(
    ("tokens", "complaint"),
    [
        (["--reserve-vram", "lots"], "invalid float value"),
        (["--lowvram", "--highvram"], "not allowed with argument"),
        (["--preview-method", "sometimes"], "invalid choice"),
        (["--reserve-vram"], "expected one argument"),
        (["--lowvram", "stray"], "unexpected value 'stray'"),
    ],
)
def test_bad_values_get_argparses_own_words(
    parser: argparse.ArgumentParser, tokens: list[str], complaint: str
) -> None:
    assert complaint in refusal(parser, *tokens).message


def test_no_flags_parse_to_nothing(parser: argparse.ArgumentParser) -> None:
    assert comfy_args.parse(parser, []) == comfy_args.ComfyArgs()


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([], None),
        (["--cache-lru", "12"], ("lru", 12)),
        (["--cache-none"], ("none", 0)),
        (["--cache-classic"], ("classic", 0)),
    ],
)
def test_the_executors_cache_follows_comfyuis_cache_flags(
    parser: argparse.ArgumentParser, tokens: list[str], expected: tuple[str, int] | None
) -> None:
    assert comfy_args.cache_choice(comfy_args.parse(parser, tokens), None) == expected


def test_a_cache_flag_and_comfy_cache_type_together_are_refused(
    parser: argparse.ArgumentParser,
) -> None:
    with pytest.raises(RuntimeBootError, match="COMFY_CACHE_TYPE is set too"):
        comfy_args.cache_choice(comfy_args.parse(parser, ["--cache-none"]), "lru")
    # Without a cache flag, COMFY_CACHE_TYPE decides (the boot's default path).
    assert comfy_args.cache_choice(comfy_args.parse(parser, ["--fast"]), "lru") is None


def test_settings_split_comfy_args_as_a_shell_would() -> None:
    settings = Settings.from_env({"COMFY_ARGS": "--fast  --reserve-vram 2 --preview-method 'auto'"})
    assert settings.comfy_args == ("--fast", "--reserve-vram", "2", "--preview-method", "auto")
    assert Settings.from_env({}).comfy_args == ()
    assert Settings.from_env({}).cache_type is None
    with pytest.raises(ConfigError, match="COMFY_ARGS could not be split"):
        Settings.from_env({"COMFY_ARGS": "--front-end-root 'unclosed"})
