"""Every request rule of the spec (baponi-api-spec.md §3.2, §3.3) against parse_execute_request.

Table-driven: each row is a body fragment merged into a minimal valid request, and either the
field that must be named in the refusal or the values that must come back unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sandboxd.errors import InvalidRequest
from sandboxd.service.requests import (
    RESERVED_ENV_NAMES,
    RESERVED_ENV_PREFIXES,
    ExecuteRequest,
    parse_execute_request,
)

MB = 1_048_576

#: The reserved names exactly as spec §3.3 lists them (also the SDK's RESERVED_ENV_VAR_NAMES).
SPEC_RESERVED_NAMES = frozenset(
    """
    PATH HOME TMPDIR PWD OLDPWD SHELL TERM USER LOGNAME MAIL EDITOR VISUAL
    LANG LANGUAGE LC_ALL LC_COLLATE LC_CTYPE LC_MESSAGES LC_MONETARY LC_NUMERIC LC_TIME
    PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE PYTHONUNBUFFERED PYTHONDONTWRITEBYTECODE
    PYTHONHASHSEED PYTHONWARNINGS PYTHONOPTIMIZE PYTHONINSPECT PYTHONDEBUG PYTHONIOENCODING
    PYTHONMALLOC PYTHONCOERCECLOCALE PYTHONFAULTHANDLER PYTHONPROFILEIMPORTTIME PYTHONPYCACHEPREFIX
    PIP_USER PIP_TARGET PIP_PREFIX
    LD_LIBRARY_PATH LD_PRELOAD LD_AUDIT LD_DEBUG LD_BIND_NOW LD_TRACE_LOADED_OBJECTS LD_PROFILE
    LD_DYNAMIC_WEAK
    BASH_ENV ENV CDPATH GLOBIGNORE BASH_XTRACEFD PS1 PS2 PS4 PROMPT_COMMAND IFS
    HTTP_PROXY HTTPS_PROXY FTP_PROXY ALL_PROXY NO_PROXY
    NODE_PATH NODE_OPTIONS NODE_EXTRA_CA_CERTS NPM_CONFIG_PREFIX NPM_CONFIG_CACHE
    NPM_CONFIG_GLOBALCONFIG
    CARGO_HOME RUSTUP_HOME GOPATH GOMODCACHE GOBIN R_LIBS_USER JULIA_DEPOT_PATH
    """.split()
)
SPEC_RESERVED_PREFIXES = ("BAPONI_", "NSJAIL_", "LD_", "LC_", "XDG_", "_")


def body(**fields: Any) -> dict[str, Any]:
    """A minimal valid body with `fields` merged over it."""
    return {"code": "print(1)", **fields}


def refused(data: Any) -> str:
    with pytest.raises(InvalidRequest) as info:
        parse_execute_request(data)
    err = info.value
    assert err.code == "validation_error"
    assert err.message == str(err)
    # A readable sentence, not pydantic's multi-line dump with its documentation links.
    assert "pydantic" not in err.message and "\n" not in err.message
    return err.message


def case(id_: str, *values: Any) -> Any:
    return pytest.param(*values, id=id_)


# --------------------------------------------------------------------------- refusals


def total_env(n: int) -> dict[str, str]:
    """16 entries whose len(key)+len(value) sums to exactly `n` (each value <= 4096)."""
    keys = [f"K{i:02d}" for i in range(16)]
    values_total = n - sum(len(k) for k in keys)
    values = [4096] * 15 + [values_total - 15 * 4096]
    assert 0 <= values[-1] <= 4096
    return {k: "v" * size for k, size in zip(keys, values)}


REFUSED = [
    # code
    case("code-missing", {"language": "python"}, "code"),
    case("code-empty", body(code=""), "code"),
    case("code-null", body(code=None), "code"),
    case("code-int", body(code=1), "code"),
    case("code-bytes-list", body(code=["print(1)"]), "code"),
    case("code-ascii-1MB+1", body(code="a" * (MB + 1)), "code"),
    # 524,289 characters but 1,048,578 bytes: counted in bytes, not characters.
    case("code-2byte-chars-over-in-bytes", body(code="é" * (MB // 2 + 1)), "code"),
    case("code-3byte-chars-1MB+1", body(code="€" * (MB // 3) + "ab"), "code"),
    case("code-4byte-chars-1MB+1", body(code="😀" * (MB // 4) + "a"), "code"),
    # language
    case("language-ruby", body(language="ruby"), "language"),
    case("language-uppercase", body(language="Python"), "language"),
    case("language-python3", body(language="python3"), "language"),
    case("language-javascript", body(language="javascript"), "language"),
    case("language-empty", body(language=""), "language"),
    case("language-null", body(language=None), "language"),
    case("language-int", body(language=1), "language"),
    # timeout
    case("timeout-0", body(timeout=0), "timeout"),
    case("timeout-negative", body(timeout=-1), "timeout"),
    case("timeout-3601", body(timeout=3601), "timeout"),
    case("timeout-huge", body(timeout=10**30), "timeout"),
    case("timeout-bool-true", body(timeout=True), "timeout"),
    case("timeout-bool-false", body(timeout=False), "timeout"),
    case("timeout-float", body(timeout=1.5), "timeout"),
    case("timeout-string", body(timeout="60"), "timeout"),
    case("timeout-null", body(timeout=None), "timeout"),
    # thread_id
    case("thread_id-empty", body(thread_id=""), "thread_id"),
    case("thread_id-129-chars", body(thread_id="a" * 129), "thread_id"),
    case("thread_id-leading-underscore", body(thread_id="_abc"), "thread_id"),
    case("thread_id-leading-dash", body(thread_id="-abc"), "thread_id"),
    case("thread_id-dot", body(thread_id="a.b"), "thread_id"),
    case("thread_id-slash", body(thread_id="a/b"), "thread_id"),
    case("thread_id-dotdot", body(thread_id=".."), "thread_id"),
    case("thread_id-space", body(thread_id="a b"), "thread_id"),
    case("thread_id-non-ascii-letter", body(thread_id="é"), "thread_id"),
    case("thread_id-non-ascii-digit", body(thread_id="a١"), "thread_id"),
    case("thread_id-int", body(thread_id=123), "thread_id"),
    # metadata
    case("metadata-11-keys", body(metadata={f"k{i}": "v" for i in range(11)}), "metadata"),
    case("metadata-key-empty", body(metadata={"": "v"}), "metadata"),
    case("metadata-key-41-chars", body(metadata={"k" * 41: "v"}), "metadata"),
    case("metadata-key-leading-dot", body(metadata={".k": "v"}), "metadata"),
    case("metadata-key-leading-underscore", body(metadata={"_k": "v"}), "metadata"),
    case("metadata-key-leading-dash", body(metadata={"-k": "v"}), "metadata"),
    case("metadata-key-space", body(metadata={"a b": "v"}), "metadata"),
    case("metadata-key-slash", body(metadata={"a/b": "v"}), "metadata"),
    case("metadata-key-colon", body(metadata={"a:b": "v"}), "metadata"),
    case("metadata-key-non-ascii", body(metadata={"ké": "v"}), "metadata"),
    case("metadata-value-257-chars", body(metadata={"k": "v" * 257}), "metadata"),
    case("metadata-value-int", body(metadata={"k": 1}), "metadata"),
    case("metadata-value-bool", body(metadata={"k": True}), "metadata"),
    case("metadata-value-null", body(metadata={"k": None}), "metadata"),
    case("metadata-value-object", body(metadata={"k": {"a": "b"}}), "metadata"),
    case("metadata-array", body(metadata=[["k", "v"]]), "metadata"),
    case("metadata-string", body(metadata="k=v"), "metadata"),
    # sub_paths: count, length, prefix
    case("sub_paths-11-entries", body(sub_paths=[f"/data/s/{i}" for i in range(11)]), "sub_paths"),
    case("sub_paths-513-chars", body(sub_paths=["/data/" + "a" * 507]), "sub_paths"),
    case("sub_paths-no-trailing-slash", body(sub_paths=["/data"]), "sub_paths"),
    case("sub_paths-similar-prefix", body(sub_paths=["/database/x"]), "sub_paths"),
    case("sub_paths-relative", body(sub_paths=["data/x"]), "sub_paths"),
    case("sub_paths-other-root", body(sub_paths=["/tmp/x"]), "sub_paths"),
    case("sub_paths-uppercase-prefix", body(sub_paths=["/DATA/x"]), "sub_paths"),
    case("sub_paths-double-slash-prefix", body(sub_paths=["//data/x"]), "sub_paths"),
    case("sub_paths-empty-string", body(sub_paths=[""]), "sub_paths"),
    case("sub_paths-string-not-array", body(sub_paths="/data/x"), "sub_paths"),
    case("sub_paths-entry-int", body(sub_paths=[1]), "sub_paths"),
    case("sub_paths-entry-null", body(sub_paths=[None]), "sub_paths"),
    case("sub_paths-second-entry-bad", body(sub_paths=["/data/ok", "/data/../etc"]), "sub_paths"),
    # env_vars: count and shape
    case("env_vars-51-entries", body(env_vars={f"K{i}": "v" for i in range(51)}), "env_vars"),
    case("env_vars-array", body(env_vars=[["A", "b"]]), "env_vars"),
    case("env_vars-string", body(env_vars="A=b"), "env_vars"),
    case("env_vars-value-int", body(env_vars={"A": 1}), "env_vars"),
    case("env_vars-value-null", body(env_vars={"A": None}), "env_vars"),
    case("env_vars-value-bool", body(env_vars={"A": True}), "env_vars"),
    # env_vars: keys
    case("env_vars-key-empty", body(env_vars={"": "v"}), "env_vars"),
    case("env_vars-key-129-chars", body(env_vars={"K" * 129: "v"}), "env_vars"),
    case("env_vars-key-lowercase", body(env_vars={"foo": "v"}), "env_vars"),
    case("env_vars-key-mixed-case", body(env_vars={"Foo": "v"}), "env_vars"),
    case("env_vars-key-lowercase-tail", body(env_vars={"FOo": "v"}), "env_vars"),
    case("env_vars-key-leading-digit", body(env_vars={"1A": "v"}), "env_vars"),
    case("env_vars-key-dash", body(env_vars={"A-B": "v"}), "env_vars"),
    case("env_vars-key-dot", body(env_vars={"A.B": "v"}), "env_vars"),
    case("env_vars-key-space", body(env_vars={"A B": "v"}), "env_vars"),
    case("env_vars-key-equals", body(env_vars={"A=B": "v"}), "env_vars"),
    case("env_vars-key-non-ascii", body(env_vars={"AÉ": "v"}), "env_vars"),
    case("env_vars-key-fullwidth-letter", body(env_vars={"Ａ": "v"}), "env_vars"),
    case("env_vars-key-nul", body(env_vars={"A\x00": "v"}), "env_vars"),
    # env_vars: values
    case("env_vars-value-4097-chars", body(env_vars={"A": "v" * 4097}), "env_vars"),
    case("env_vars-value-nul", body(env_vars={"A": "a\x00b"}), "env_vars"),
    case("env_vars-total-65537", body(env_vars=total_env(65_537)), "env_vars"),
    # webhook_url
    case("webhook_url-ftp", body(webhook_url="ftp://example.com/hook"), "webhook_url"),
    case("webhook_url-no-scheme", body(webhook_url="example.com/hook"), "webhook_url"),
    case("webhook_url-scheme-relative", body(webhook_url="//example.com/hook"), "webhook_url"),
    case("webhook_url-https-colon-only", body(webhook_url="https:example.com"), "webhook_url"),
    case("webhook_url-empty", body(webhook_url=""), "webhook_url"),
    case("webhook_url-scheme-only", body(webhook_url="https://"), "webhook_url"),
    case("webhook_url-no-host-path", body(webhook_url="https:///hook"), "webhook_url"),
    case("webhook_url-no-host-query", body(webhook_url="https://?x=1"), "webhook_url"),
    case("webhook_url-no-host-fragment", body(webhook_url="https://#x"), "webhook_url"),
    case("webhook_url-2049-chars", body(webhook_url="https://example.com/" + "a" * 2029), "webhook_url"),
    case("webhook_url-int", body(webhook_url=1), "webhook_url"),
    # unknown fields (names as the SDK does not send them, or misspelt)
    case("unknown-field", body(foo=1), "foo"),
    case("unknown-field-case", body(Code="x"), "Code"),
    case("unknown-field-stream", body(stream=True), "stream"),
    case("unknown-field-env", body(env={"A": "b"}), "env"),
    case("unknown-field-null", body(extra=None), "extra"),
]


@pytest.mark.parametrize(("data", "field"), REFUSED)
def test_refused_naming_the_field(data: Any, field: str) -> None:
    assert field in refused(data)


def test_refused_code_message_matches_docs() -> None:
    assert refused(body(code="")) == "code must be between 1 byte and 1 MB"


def test_unknown_field_message() -> None:
    assert refused(body(foo=1)) == "unknown field 'foo'"


# Every forbidden sequence of §3.2, in both cases where the spec lists both.
FORBIDDEN_SUB_PATH_SEQUENCES = [
    "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%00", "%25",
    "%c0", "%C0", "%c1", "%C1", "\x00", "\\",
]


@pytest.mark.parametrize(
    "seq", FORBIDDEN_SUB_PATH_SEQUENCES, ids=[repr(s).strip("'") for s in FORBIDDEN_SUB_PATH_SEQUENCES]
)
@pytest.mark.parametrize("where", ["middle", "end"])
def test_sub_paths_forbidden_sequence(seq: str, where: str) -> None:
    path = f"/data/bucket/{seq}/x" if where == "middle" else f"/data/bucket/x{seq}"
    message = refused(body(sub_paths=[path]))
    assert "sub_paths" in message


@pytest.mark.parametrize(
    "path",
    ["/data/a/%2e%2e/etc", "/data/%2E%2e/x", "/data/%2f..", "/data/x%5C%5cy", "/data/%252e"],
)
def test_sub_paths_mixed_encodings(path: str) -> None:
    assert "sub_paths" in refused(body(sub_paths=[path]))


def test_reserved_table_is_the_spec_list() -> None:
    assert RESERVED_ENV_NAMES == SPEC_RESERVED_NAMES
    assert set(SPEC_RESERVED_PREFIXES) <= set(RESERVED_ENV_PREFIXES)


@pytest.mark.parametrize("name", sorted(SPEC_RESERVED_NAMES | RESERVED_ENV_NAMES))
def test_env_vars_reserved_name(name: str) -> None:
    message = refused(body(env_vars={"OK_NAME": "1", name: "x"}))
    assert "env_vars" in message and "reserved" in message


@pytest.mark.parametrize("prefix", sorted(set(SPEC_RESERVED_PREFIXES) | set(RESERVED_ENV_PREFIXES)))
@pytest.mark.parametrize("rest", ["X", "FOO_BAR", ""])
def test_env_vars_reserved_prefix(prefix: str, rest: str) -> None:
    key = prefix + rest
    message = refused(body(env_vars={key: "x"}))
    assert "env_vars" in message
    if prefix != "_":  # '_X' already fails the key pattern; the message says so instead
        assert "reserved" in message


def test_env_vars_reserved_message_does_not_list_the_blocklist() -> None:
    message = refused(body(env_vars={"LD_PRELOAD": "/x.so"}))
    assert "PYTHONPATH" not in message and "NSJAIL" not in message


CONTROL_BYTES = [b for b in range(0x20) if b not in (9, 10, 13)]


@pytest.mark.parametrize("byte", CONTROL_BYTES, ids=[f"0x{b:02x}" for b in CONTROL_BYTES])
def test_env_vars_control_character_refused(byte: int) -> None:
    message = refused(body(env_vars={"A": f"before{chr(byte)}after"}))
    assert "env_vars" in message


@pytest.mark.parametrize(
    "document",
    [
        case("list", []),
        case("list-of-object", [{"code": "x"}]),
        case("string", "print(1)"),
        case("json-text", '{"code": "x"}'),
        case("int", 1),
        case("float", 1.5),
        case("true", True),
        case("null", None),
    ],
)
def test_non_object_body_refused(document: Any) -> None:
    message = refused(document)
    assert "body" in message and "JSON object" in message


def test_first_bad_field_is_named() -> None:
    message = refused({"code": "", "timeout": 0})
    assert message.startswith("code")


# --------------------------------------------------------------------------- acceptance


ACCEPTED = [
    # code boundaries, counted in UTF-8 bytes
    case("code-1-byte", body(code="x")),
    case("code-whitespace-only", body(code=" ")),
    case("code-ascii-exactly-1MB", body(code="a" * MB)),
    case("code-2byte-chars-exactly-1MB", body(code="é" * (MB // 2))),
    case("code-3byte-chars-exactly-1MB", body(code="€" * (MB // 3) + "a")),
    case("code-4byte-chars-exactly-1MB", body(code="😀" * (MB // 4))),
    # language
    case("language-python", body(language="python")),
    case("language-node", body(language="node")),
    case("language-bash", body(language="bash")),
    # timeout
    case("timeout-1", body(timeout=1)),
    case("timeout-3600", body(timeout=3600)),
    # thread_id
    case("thread_id-1-char", body(thread_id="a")),
    case("thread_id-digit-first", body(thread_id="0")),
    case("thread_id-128-chars", body(thread_id="A" * 128)),
    case("thread_id-all-classes", body(thread_id="Ab9_-z")),
    case("thread_id-null-is-omitted", body(thread_id=None)),
    # metadata
    case("metadata-empty", body(metadata={})),
    case("metadata-10-keys", body(metadata={f"k{i}": "v" for i in range(10)})),
    case("metadata-key-40-chars", body(metadata={"k" * 40: "v"})),
    case("metadata-key-1-char", body(metadata={"k": "v"})),
    case("metadata-key-all-classes", body(metadata={"a.B-9_c": "v"})),
    case("metadata-key-digit-first", body(metadata={"9x": "v"})),
    case("metadata-value-empty", body(metadata={"k": ""})),
    case("metadata-value-256-chars", body(metadata={"k": "v" * 256})),
    case("metadata-value-256-non-ascii", body(metadata={"k": "é" * 256})),
    # sub_paths
    case("sub_paths-empty-list", body(sub_paths=[])),
    case("sub_paths-10-entries", body(sub_paths=[f"/data/s/{i}" for i in range(10)])),
    case("sub_paths-512-chars", body(sub_paths=["/data/" + "a" * 506])),
    case("sub_paths-root-of-data", body(sub_paths=["/data/"])),
    case("sub_paths-single-dots", body(sub_paths=["/data/a.b/./c.d/"])),
    case("sub_paths-percent-not-forbidden", body(sub_paths=["/data/100%/%41%2g"])),
    # env_vars
    case("env_vars-empty", body(env_vars={})),
    case("env_vars-50-entries", body(env_vars={f"K{i}": "v" for i in range(50)})),
    case("env_vars-key-1-char", body(env_vars={"A": "v"})),
    case("env_vars-key-128-chars", body(env_vars={"K" * 128: "v"})),
    case("env_vars-key-all-classes", body(env_vars={"A_9Z_": "v"})),
    case("env_vars-key-resembles-reserved", body(env_vars={"PATHS": "1", "MY_PATH": "2", "LDX": "3"})),
    case(
        "env_vars-key-prefix-without-underscore",
        body(env_vars={"XDG": "1", "BAPONI": "2", "LC": "3"}),
    ),
    case("env_vars-value-empty", body(env_vars={"A": ""})),
    case("env_vars-value-4096-chars", body(env_vars={"A": "v" * 4096})),
    case("env_vars-value-4096-non-ascii-chars", body(env_vars={"A": "é" * 4096})),
    case("env_vars-value-tab-lf-cr", body(env_vars={"A": "a\tb\nc\rd\r\n"})),
    case("env_vars-value-del-and-high", body(env_vars={"A": "\x7f\u0085é😀"})),
    case("env_vars-value-shell-metachars", body(env_vars={"A": "$(id); `x` | & > '\" ="})),
    case("env_vars-total-exactly-65536", body(env_vars=total_env(65_536))),
    # webhook_url
    case("webhook_url-simple", body(webhook_url="https://example.com/hook")),
    # The scheme policy (https unless the server's development setting allows http) is the
    # webhook guard's, not the model's: see tests/unit/test_url_guard.py.
    case("webhook_url-http-syntax", body(webhook_url="http://example.com/hook")),
    case("webhook_url-host-only", body(webhook_url="https://a")),
    case("webhook_url-port-query", body(webhook_url="https://h.example:8443/p?a=1#f")),
    case("webhook_url-2048-chars", body(webhook_url="https://example.com/" + "a" * 2028)),
]


@pytest.mark.parametrize("data", ACCEPTED)
def test_accepted_and_values_preserved(data: dict[str, Any]) -> None:
    request = parse_execute_request(data)
    assert isinstance(request, ExecuteRequest)
    for key, value in data.items():
        assert getattr(request, key) == value, key


def test_integral_float_timeout_is_the_integer() -> None:
    """JSON Schema (OpenAPI 3.1) counts 60.0 as an integer, so the contract takes it: as int 60."""
    request = parse_execute_request(body(timeout=60.0))
    assert request.timeout == 60 and type(request.timeout) is int


def test_defaults_when_omitted() -> None:
    request = parse_execute_request({"code": "echo hi"})
    assert request.code == "echo hi"
    assert request.language == "python"
    assert request.timeout == 60
    assert request.thread_id is None
    assert request.metadata is None
    assert request.sub_paths is None
    assert request.env_vars is None
    assert request.webhook_url is None


def test_full_sdk_body_preserved() -> None:
    data = {
        "code": "console.log(process.env.API_TOKEN)",
        "language": "node",
        "timeout": 3600,
        "thread_id": "agent-7_thread",
        "metadata": {"user.id": "u-1", "run": "42"},
        "sub_paths": ["/data/bucket/tenant-a/", "/data/vol/x.csv"],
        "env_vars": {"API_TOKEN": "t0k\ten", "DEBUG": "1"},
        "webhook_url": "https://hooks.example.com/baponi?sig=1",
    }
    request = parse_execute_request(data)
    assert request.model_dump() == data
    # The order in which the client listed entries is kept (it becomes the env order).
    assert list(request.env_vars or {}) == ["API_TOKEN", "DEBUG"]
    assert list(request.sub_paths or []) == data["sub_paths"]


def test_request_is_immutable() -> None:
    request = parse_execute_request(body())
    with pytest.raises(ValidationError):
        request.timeout = 5  # type: ignore[misc]
    assert request.timeout == 60


# --------------------------------------------------------------------------- bugs found


@pytest.mark.parametrize(
    ("data", "field"),
    [
        case("thread_id", body(thread_id="abc\n"), "thread_id"),
        case("metadata-key", body(metadata={"key\n": "v"}), "metadata"),
        case("env_vars-key", body(env_vars={"FOO\n": "v"}), "env_vars"),
    ],
)
def test_trailing_newline_refused(data: dict[str, Any], field: str) -> None:
    assert field in refused(data)


@pytest.mark.parametrize(
    "url", ["https://:8443/hook", "https://user@/hook", "https://user:pw@:443/hook"]
)
def test_webhook_url_without_host_refused(url: str) -> None:
    assert "webhook_url" in refused(body(webhook_url=url))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        case("env_vars-value", body(env_vars={"A": "x\ud800y"}), "env_vars"),
        case("metadata-value", body(metadata={"k": "x\ud800y"}), "metadata"),
    ],
)
def test_lone_surrogate_refused(data: dict[str, Any], field: str) -> None:
    assert field in refused(data)
