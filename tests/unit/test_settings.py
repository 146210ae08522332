"""Settings: one typed object, parsed from an env mapping, errors naming the variable."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.settings import Settings, sdk_log_level, secrets_in_env


def test_defaults_from_an_empty_environment() -> None:
    s = Settings.from_env({})
    assert s.bucket is None
    assert s.comfy_log_level == "DEBUG"
    assert s.input_max_image_bytes == 50 * 1024 * 1024
    assert s.input_allow_private_urls is False
    assert s.job_timeout_s == 3600.0  # every job is bounded unless JOB_TIMEOUT_S=0
    assert s.job_stop_grace_s == 60.0
    assert s.response_budget_bytes == int(20 * 1024 * 1024 * 0.9)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False), ("no", False)],
)
def test_booleans_are_parsed_explicitly(raw: str, expected: bool) -> None:
    assert Settings.from_env({"INPUT_ALLOW_PRIVATE_URLS": raw}).input_allow_private_urls is expected


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"INPUT_ALLOW_PRIVATE_URLS": "maybe"}, "INPUT_ALLOW_PRIVATE_URLS"),
        ({"INPUT_MAX_IMAGE_MB": "lots"}, "INPUT_MAX_IMAGE_MB"),
        ({"JOB_TIMEOUT_S": "-1"}, "JOB_TIMEOUT_S"),
        ({"COMFY_LOG_LEVEL": "LOUD"}, "COMFY_LOG_LEVEL"),
        ({"BUCKET_ENDPOINT_URL": "https://s3.example.com/b"}, "BUCKET_ACCESS_KEY_ID"),
        (
            {
                "BUCKET_ENDPOINT_URL": "ftp://x/b",
                "BUCKET_ACCESS_KEY_ID": "k",
                "BUCKET_SECRET_ACCESS_KEY": "s",
            },
            "BUCKET_ENDPOINT_URL",
        ),
        ({"WORKFLOW_MAX_STRING_BYTES": "1MB"}, "WORKFLOW_MAX_STRING_BYTES"),
        ({"OUTPUT_METADATA": "sometimes"}, "OUTPUT_METADATA"),
        ({"OUTPUT_BASE64": "raw"}, "OUTPUT_BASE64 must be data-uri or bare, got 'raw'"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert names in err.value.message


def test_every_bad_value_is_named_at_once() -> None:
    """One error, one detail per variable: a deployment is fixed in one round."""
    env = {
        "INPUT_MAX_IMAGE_MB": "lots",
        "JOB_TIMEOUT_S": "-1",
        "COMFY_LOG_LEVEL": "LOUD",
        "COMFY_CACHE_TYPE": "big",
        "PNG_ENCODER": "zopfli",
        "INPUT_ALLOW_PRIVATE_URLS": "maybe",
        "BUCKET_ENDPOINT_URL": "https://s3.example.com/b",
        "RUNPOD_LOG_LEVEL": "CHATTY",
    }
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert err.value.message == "8 environment variables have unusable values"
    named = [d.split(" ")[0] for d in err.value.details]
    assert sorted(named) == sorted(
        [
            "INPUT_MAX_IMAGE_MB",
            "JOB_TIMEOUT_S",
            "COMFY_LOG_LEVEL",
            "COMFY_CACHE_TYPE",
            "PNG_ENCODER",
            "INPUT_ALLOW_PRIVATE_URLS",
            "BUCKET_ENDPOINT_URL",  # "... is set but BUCKET_ACCESS_KEY_ID and ... is not"
            "RUNPOD_LOG_LEVEL",
        ]
    )
    assert all(name in err.value.summary() for name in named)


@pytest.mark.parametrize(
    "env",
    [
        {"WEBSOCKET_RECONNECT_ATTEMPTS": "abc"},
        {"WEBSOCKET_RECONNECT_DELAY_S": "-3", "WEBSOCKET_TRACE": "maybe"},
        {"WEBSOCKET_RECONNECT_ATTEMPTS": "5", "WEBSOCKET_RECONNECT_DELAY_S": "3"},
    ],
)
def test_websocket_settings_never_fail_and_warn_once(env: dict[str, str]) -> None:
    """worker-comfyui's socket settings: any value is accepted, and one line says so."""
    s = Settings.from_env(env)
    assert s.ignored_variables == tuple(env)
    (warning,) = s.boot_warnings()
    assert all(name in warning for name in env)
    assert "no effect" in warning


def test_no_warning_without_websocket_settings() -> None:
    assert Settings.from_env({}).boot_warnings() == []


def test_worker_comfyui_variables_each_say_what_instead() -> None:
    """Its other variables start the worker too, one line per kind saying what to use."""
    env = {
        "SERVE_API_LOCALLY": "true",
        "NETWORK_VOLUME_DEBUG": "yes please",
        "COMFY_API_AVAILABLE_INTERVAL_MS": "50",
        "COMFY_API_AVAILABLE_MAX_RETRIES": "x",
    }
    serve, volume, api = Settings.from_env(env).boot_warnings()
    assert "SERVE_API_LOCALLY" in serve and "--rp_serve_api" in serve
    assert "NETWORK_VOLUME_DEBUG" in volume and "COMFY_LOG_LEVEL=DEBUG" in volume
    assert "COMFY_API_AVAILABLE_INTERVAL_MS, COMFY_API_AVAILABLE_MAX_RETRIES" in api
    assert "in-process" in api


def test_public_key_for_ssh_says_there_is_no_ssh_server() -> None:
    """worker-comfyui starts sshd when PUBLIC_KEY is set; here a boot line says there is
    none, so a user whose ssh is refused finds why in the log."""
    (line,) = Settings.from_env({"PUBLIC_KEY": "ssh-ed25519 AAAAC3Nz user@host"}).boot_warnings()
    assert line.startswith("PUBLIC_KEY is set but has no effect here")
    assert "SSH server" in line and "ssh-ed25519" not in line


def test_refresh_worker_is_a_boolean() -> None:
    assert Settings.from_env({"REFRESH_WORKER": "true"}).refresh_worker is True
    assert Settings.from_env({}).refresh_worker is False
    with pytest.raises(ConfigError, match="REFRESH_WORKER must be true or false"):
        Settings.from_env({"REFRESH_WORKER": "sometimes"})


@pytest.mark.parametrize(
    ("raw", "level"),
    [(None, "INFO"), ("", "INFO"), ("debug", "DEBUG"), ("WARNING", "INFO"), ("loud", "INFO")],
)
def test_the_sdk_level_is_always_one_it_knows(raw: str | None, level: str) -> None:
    """handler.py hands this to the SDK before importing it: never a name it refuses."""
    assert sdk_log_level({} if raw is None else {"RUNPOD_LOG_LEVEL": raw}) == level


def test_secrets_in_env_need_no_valid_settings() -> None:
    env = {
        "HF_TOKEN": " hf-token-1 ",
        "BUCKET_SECRET_ACCESS_KEY": "s3-secret",
        "JOB_TIMEOUT_S": "x",
    }
    assert sorted(secrets_in_env(env)) == ["hf-token-1", "s3-secret"]


def test_workflow_limits_and_metadata_switch() -> None:
    s = Settings.from_env({})
    assert (s.workflow_max_string_bytes, s.output_metadata) == (1024 * 1024, True)
    s = Settings.from_env({"WORKFLOW_MAX_STRING_BYTES": "2048", "OUTPUT_METADATA": "false"})
    assert (s.workflow_max_string_bytes, s.output_metadata) == (2048, False)


@pytest.mark.parametrize(
    ("url", "endpoint", "bucket"),
    [
        ("http://127.0.0.1:9000/outputs", "http://127.0.0.1:9000", "outputs"),
        (
            "https://my-bucket.s3.eu-west-1.amazonaws.com",
            "https://s3.eu-west-1.amazonaws.com",
            "my-bucket",
        ),
        ("https://s3.example.com/b/extra", "https://s3.example.com", "b"),
    ],
)
def test_bucket_url_forms(url: str, endpoint: str, bucket: str) -> None:
    s = Settings.from_env(
        {
            "BUCKET_ENDPOINT_URL": url,
            "BUCKET_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "BUCKET_SECRET_ACCESS_KEY": "s3cr3t-value",
        }
    )
    assert s.bucket is not None
    assert (s.bucket.endpoint_url, s.bucket.bucket) == (endpoint, bucket)


@pytest.mark.parametrize(
    ("url", "region"),
    [
        # worker-comfyui's documented form: RunPod's rp_upload signs for the host's region.
        ("https://my-bucket.s3.eu-west-1.amazonaws.com", "eu-west-1"),
        ("https://s3.ap-southeast-2.amazonaws.com/my-bucket", "ap-southeast-2"),
        ("https://my-bucket.s3-us-west-2.amazonaws.com", "us-west-2"),
        ("https://my-bucket.s3.dualstack.eu-central-1.amazonaws.com", "eu-central-1"),
        ("https://my-bucket.s3.us-west-004.backblazeb2.com", "us-west-004"),
        ("https://s3.amazonaws.com/my-bucket", "us-east-1"),
        ("http://127.0.0.1:9000/outputs", "us-east-1"),
        ("https://acct.r2.cloudflarestorage.com/b", "us-east-1"),
    ],
)
def test_the_region_comes_from_an_s3_host_that_names_one(url: str, region: str) -> None:
    env = {
        "BUCKET_ENDPOINT_URL": url,
        "BUCKET_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "BUCKET_SECRET_ACCESS_KEY": "s3cr3t-value",
    }
    bucket = Settings.from_env(env).bucket
    assert bucket is not None and bucket.region == region
    # BUCKET_REGION still decides when set.
    bucket = Settings.from_env({**env, "BUCKET_REGION": "auto"}).bucket
    assert bucket is not None and bucket.region == "auto"


def test_secrets_never_in_repr() -> None:
    s = Settings.from_env(
        {
            "COMFY_ORG_API_KEY": "comfy-key-123456",
            "BUCKET_ENDPOINT_URL": "http://127.0.0.1:9000/b",
            "BUCKET_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "BUCKET_SECRET_ACCESS_KEY": "s3cr3t-value",
        }
    )
    text = repr(s)
    for secret in ("comfy-key-123456", "AKIAEXAMPLE", "s3cr3t-value"):
        assert secret not in text
    assert set(s.secrets()) == {"comfy-key-123456", "AKIAEXAMPLE", "s3cr3t-value"}
    assert set(s.response_secrets()) == {"comfy-key-123456", "s3cr3t-value"}


def test_job_timeout_zero_means_no_limit() -> None:
    """JOB_TIMEOUT_S=0 lifts the default one-hour bound; JOB_STOP_GRACE_S is read."""
    s = Settings.from_env({"JOB_TIMEOUT_S": "0", "JOB_STOP_GRACE_S": "5"})
    assert s.job_timeout_s is None
    assert s.job_stop_grace_s == 5.0
    with pytest.raises(ConfigError, match="JOB_STOP_GRACE_S"):
        Settings.from_env({"JOB_STOP_GRACE_S": "-1"})


def test_upload_timeout_defaults_to_two_minutes_and_is_read() -> None:
    """UPLOAD_TIMEOUT_S bounds S3 delivery; it travels with the bucket settings."""
    bucket_env = {
        "BUCKET_ENDPOINT_URL": "https://s3.example.com/outputs",
        "BUCKET_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "BUCKET_SECRET_ACCESS_KEY": "s3cr3t-value",
    }
    default = Settings.from_env(bucket_env).bucket
    assert default is not None and default.upload_timeout_s == 120.0
    bucket = Settings.from_env({**bucket_env, "UPLOAD_TIMEOUT_S": "2.5"}).bucket
    assert bucket is not None and bucket.upload_timeout_s == 2.5


def test_max_concurrent_jobs_defaults_to_two_and_is_read() -> None:
    """Two jobs held at once unless told; 1 is one job at a time."""
    assert Settings.from_env({}).max_concurrent_jobs == 2
    assert Settings.from_env({"MAX_CONCURRENT_JOBS": "1"}).max_concurrent_jobs == 1
    assert Settings.from_env({"MAX_CONCURRENT_JOBS": " 3 "}).max_concurrent_jobs == 3


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5"])
def test_max_concurrent_jobs_must_be_a_whole_number_of_at_least_one(raw: str) -> None:
    with pytest.raises(ConfigError, match="MAX_CONCURRENT_JOBS"):
        Settings.from_env({"MAX_CONCURRENT_JOBS": raw})


@pytest.mark.parametrize("raw", ["0", "-5", "soon"])
def test_upload_timeout_must_be_a_positive_number(raw: str) -> None:
    """A bad value fails at start, even before a bucket is configured."""
    with pytest.raises(ConfigError, match="UPLOAD_TIMEOUT_S"):
        Settings.from_env({"UPLOAD_TIMEOUT_S": raw})


def test_transfer_bounds_are_read_with_their_defaults() -> None:
    """The download and upload bounds of issue 18: defaults, values, and the stall limit
    travelling with the bucket."""
    bucket_env = {
        "BUCKET_ENDPOINT_URL": "https://s3.example.com/outputs",
        "BUCKET_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "BUCKET_SECRET_ACCESS_KEY": "s3cr3t-value",
    }
    default = Settings.from_env(bucket_env)
    assert (default.download_stall_s, default.download_min_kb_per_s) == (30.0, 32.0)
    assert (default.download_rate_window_s, default.input_max_frames) == (30.0, 200_000)
    assert default.bucket is not None and default.bucket.upload_stall_s == 30.0
    env = {
        **bucket_env,
        "DOWNLOAD_STALL_S": "5",
        "DOWNLOAD_MIN_KB_PER_S": "0",
        "DOWNLOAD_RATE_WINDOW_S": "10",
        "INPUT_MAX_FRAMES": "1000",
        "UPLOAD_STALL_S": "7.5",
    }
    s = Settings.from_env(env)
    assert (s.download_stall_s, s.download_min_kb_per_s, s.download_rate_window_s) == (5, 0, 10)
    assert s.input_max_frames == 1000
    assert s.bucket is not None and s.bucket.upload_stall_s == 7.5


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("DOWNLOAD_STALL_S", "0"),
        ("DOWNLOAD_MIN_KB_PER_S", "-1"),
        ("DOWNLOAD_RATE_WINDOW_S", "never"),
        ("INPUT_MAX_FRAMES", "0"),
        ("UPLOAD_STALL_S", "0"),
    ],
)
def test_transfer_bounds_name_a_bad_value(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: raw})


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, "fast"), ("Pillow", "pillow"), ("fast", "fast")]
)
def test_png_encoder_is_fast_unless_pillow_is_asked_for(raw: str | None, expected: str) -> None:
    env = {} if raw is None else {"PNG_ENCODER": raw}
    assert Settings.from_env(env).png_encoder == expected


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, "data-uri"), ("BARE", "bare"), ("data-uri", "data-uri")]
)
def test_output_base64_is_a_data_uri_unless_bare_is_asked_for(
    raw: str | None, expected: str
) -> None:
    env = {} if raw is None else {"OUTPUT_BASE64": raw}
    assert Settings.from_env(env).output_base64 == expected


def test_model_prefetch_bound_defaults_to_16_gb_and_zero_turns_it_off() -> None:
    assert Settings.from_env({}).model_prefetch_max_bytes == 16 * 1024**3
    assert Settings.from_env({"MODEL_PREFETCH_MAX_GB": "0"}).model_prefetch_max_bytes == 0
    assert (
        Settings.from_env({"MODEL_PREFETCH_MAX_GB": "0.5"}).model_prefetch_max_bytes
        == 512 * 1024**2
    )
    with pytest.raises(ConfigError, match="MODEL_PREFETCH_MAX_GB"):
        Settings.from_env({"MODEL_PREFETCH_MAX_GB": "-1"})
