"""Each sandbox limit has one name and one default: the runtime's `Limits` field, which the
server setting (config.py) or the sandbox config (cpus, memory) of the same name reads."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from sandboxd.app import sandbox_defaults
from sandboxd.config import Settings
from sandboxd.runtime import DEFAULT_TIMEOUT_S, Limits
from sandboxd.service import SandboxConfig
from sandboxd.service.requests import ExecuteRequest

#: Limits a sandbox config sets (per API key), and the one each request sets.
_PER_SANDBOX = {"cpus", "memory_mib"}
_PER_REQUEST = {"timeout_s"}


def test_every_server_limit_is_a_setting_of_the_same_name_and_default() -> None:
    settings = Settings(data_dir=Path("/nonexistent/sandboxd-test"))
    defaults = Limits()
    server_limits = {f.name for f in fields(Limits)} - _PER_SANDBOX - _PER_REQUEST
    for name in server_limits:
        assert name in Settings.model_fields, name
        assert getattr(settings, name) == getattr(defaults, name), name
    assert sandbox_defaults(settings) == defaults


def test_sandbox_config_and_request_defaults_are_the_limits_defaults() -> None:
    config = SandboxConfig()
    for name in _PER_SANDBOX:
        assert getattr(config, name) == getattr(Limits(), name), name
    assert ExecuteRequest(code="x").timeout == DEFAULT_TIMEOUT_S == Limits().timeout_s


def test_settings_pass_through_to_the_limits() -> None:
    settings = Settings(
        data_dir=Path("/nonexistent/sandboxd-test"), tmp_size_mib=7, workdir_size_mib=8, home_size_mib=9,
        file_size_mib=10, open_files_max=111, pids_max=17, output_limit_bytes=4096,
    )
    assert sandbox_defaults(settings) == Limits(
        tmp_size_mib=7, workdir_size_mib=8, home_size_mib=9, file_size_mib=10, open_files_max=111,
        pids_max=17, output_limit_bytes=4096,
    )
