"""Every validation rule of the execute body (spec §3.2, §3.3), over HTTP on the real server.

Each refusal must be `400 {"error": "validation_error", "message": ...}` with exactly those two
keys and a message that names the offending field. Edge inputs just inside every limit must be
accepted and run.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

EXECUTE = "/v1/sandbox/execute"
MB = 1_048_576

# Every reserved name of spec §3.3, so a gap in the server's blocklist cannot go unnoticed.
RESERVED_NAMES = """
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
RESERVED_PREFIXES = ["BAPONI_", "NSJAIL_", "LD_", "LC_", "XDG_"]


def body(**fields: Any) -> dict[str, Any]:
    return {"code": "print(1)", **fields}


def case(id: str, payload: Any, field: str, *, raw: bytes | None = None, marks: Any = ()) -> Any:
    return pytest.param(payload, raw, field, id=id, marks=marks)


def many_env(n: int) -> dict[str, str]:
    return {f"V{i:03d}": "x" for i in range(n)}


REFUSED = [
    # --- code --------------------------------------------------------------------------------
    case("code-empty", {"code": ""}, "code"),
    case("code-over-1mb", {"code": "#" * (MB + 1)}, "code"),
    # 524,289 two-byte characters: under 1 M characters but over 1 MB of UTF-8.
    case("code-over-1mb-utf8-bytes", {"code": "é" * (MB // 2 + 1)}, "code"),
    case("code-not-string", {"code": 42}, "code"),
    case("code-null", {"code": None}, "code"),
    case("code-list", {"code": ["print(1)"]}, "code"),
    case("code-missing", {"language": "python"}, "code"),
    # --- language ----------------------------------------------------------------------------
    case("language-unknown", body(language="ruby"), "language"),
    case("language-wrong-case", body(language="Python"), "language"),
    case("language-alias", body(language="javascript"), "language"),
    case("language-empty", body(language=""), "language"),
    case("language-not-string", body(language=1), "language"),
    # --- timeout -----------------------------------------------------------------------------
    case("timeout-zero", body(timeout=0), "timeout"),
    case("timeout-negative", body(timeout=-5), "timeout"),
    case("timeout-over-3600", body(timeout=3601), "timeout"),
    case("timeout-huge", body(timeout=10**12), "timeout"),
    case("timeout-fraction", body(timeout=1.5), "timeout"),
    case("timeout-string", body(timeout="10"), "timeout"),
    case("timeout-bool-true", body(timeout=True), "timeout"),
    case("timeout-bool-false", body(timeout=False), "timeout"),
    # --- thread_id ---------------------------------------------------------------------------
    case("thread_id-empty", body(thread_id=""), "thread_id"),
    case("thread_id-leading-dash", body(thread_id="-abc"), "thread_id"),
    case("thread_id-leading-underscore", body(thread_id="_abc"), "thread_id"),
    case("thread_id-space", body(thread_id="a b"), "thread_id"),
    case("thread_id-slash", body(thread_id="a/b"), "thread_id"),
    case("thread_id-dot", body(thread_id="a.b"), "thread_id"),
    case("thread_id-traversal", body(thread_id="../x"), "thread_id"),
    case("thread_id-non-ascii", body(thread_id="thréad"), "thread_id"),
    case("thread_id-trailing-newline", body(thread_id="abc\n"), "thread_id"),
    case("thread_id-129-chars", body(thread_id="a" * 129), "thread_id"),
    case("thread_id-not-string", body(thread_id=7), "thread_id"),
    # --- metadata ----------------------------------------------------------------------------
    case("metadata-11-keys", body(metadata={f"k{i}": "v" for i in range(11)}), "metadata"),
    case("metadata-key-empty", body(metadata={"": "v"}), "metadata"),
    case("metadata-key-41-chars", body(metadata={"k" * 41: "v"}), "metadata"),
    case("metadata-key-leading-dot", body(metadata={".k": "v"}), "metadata"),
    case("metadata-key-leading-dash", body(metadata={"-k": "v"}), "metadata"),
    case("metadata-key-space", body(metadata={"a b": "v"}), "metadata"),
    case("metadata-key-slash", body(metadata={"a/b": "v"}), "metadata"),
    case("metadata-key-non-ascii", body(metadata={"ké": "v"}), "metadata"),
    case("metadata-key-trailing-newline", body(metadata={"k\n": "v"}), "metadata"),
    case("metadata-value-257-chars", body(metadata={"k": "v" * 257}), "metadata"),
    case("metadata-value-int", body(metadata={"k": 1}), "metadata"),
    case("metadata-value-null", body(metadata={"k": None}), "metadata"),
    case("metadata-value-object", body(metadata={"k": {"a": "b"}}), "metadata"),
    case("metadata-not-object", body(metadata=["k", "v"]), "metadata"),
    case("metadata-string", body(metadata="k=v"), "metadata"),
    # --- sub_paths ---------------------------------------------------------------------------
    case("sub_paths-11-entries", body(sub_paths=[f"/data/p{i}" for i in range(11)]), "sub_paths"),
    case("sub_paths-513-chars", body(sub_paths=["/data/" + "a" * 507]), "sub_paths"),
    case("sub_paths-outside-data", body(sub_paths=["/tmp/x"]), "sub_paths"),
    case("sub_paths-relative", body(sub_paths=["data/x"]), "sub_paths"),
    case("sub_paths-data-no-slash", body(sub_paths=["/data"]), "sub_paths"),
    case("sub_paths-dataset-prefix", body(sub_paths=["/dataset/x"]), "sub_paths"),
    case("sub_paths-empty-string", body(sub_paths=[""]), "sub_paths"),
    case("sub_paths-dotdot", body(sub_paths=["/data/a/../../etc"]), "sub_paths"),
    case("sub_paths-dotdot-end", body(sub_paths=["/data/.."]), "sub_paths"),
    case("sub_paths-pct-2e", body(sub_paths=["/data/%2e%2e/x"]), "sub_paths"),
    case("sub_paths-pct-2E", body(sub_paths=["/data/%2E%2E/x"]), "sub_paths"),
    case("sub_paths-pct-2f", body(sub_paths=["/data/a%2fb"]), "sub_paths"),
    case("sub_paths-pct-2F", body(sub_paths=["/data/a%2Fb"]), "sub_paths"),
    case("sub_paths-pct-5c", body(sub_paths=["/data/a%5cb"]), "sub_paths"),
    case("sub_paths-pct-5C", body(sub_paths=["/data/a%5Cb"]), "sub_paths"),
    case("sub_paths-pct-00", body(sub_paths=["/data/a%00"]), "sub_paths"),
    case("sub_paths-pct-25", body(sub_paths=["/data/a%252e"]), "sub_paths"),
    case("sub_paths-pct-c0", body(sub_paths=["/data/%c0%ae"]), "sub_paths"),
    case("sub_paths-pct-C0", body(sub_paths=["/data/%C0%AE"]), "sub_paths"),
    case("sub_paths-pct-c1", body(sub_paths=["/data/%c1%9c"]), "sub_paths"),
    case("sub_paths-pct-C1", body(sub_paths=["/data/%C1%9C"]), "sub_paths"),
    case("sub_paths-nul", body(sub_paths=["/data/a\x00b"]), "sub_paths"),
    case("sub_paths-backslash", body(sub_paths=["/data/a\\..\\b"]), "sub_paths"),
    case("sub_paths-one-bad-among-good", body(sub_paths=["/data/a", "/data/b/../c"]), "sub_paths"),
    # well formed, but the key has no mount there (the shared key has none)
    case("sub_paths-no-such-mount", body(sub_paths=[f"/data/p{i}/x.y" for i in range(10)]), "sub_paths"),
    case("sub_paths-no-such-mount-512-chars", body(sub_paths=["/data/" + "a" * 250 + "/" + "b" * 255]), "sub_paths"),
    case("sub_paths-no-such-mount-single-dots", body(sub_paths=["/data/a/./b.c/.hidden"]), "sub_paths"),
    case("sub_paths-name-over-255-bytes", body(sub_paths=["/data/" + "a" * 256]), "sub_paths"),
    case("sub_paths-newline", body(sub_paths=["/data/a/x\ny"]), "sub_paths"),
    case("sub_paths-escape", body(sub_paths=["/data/a/\x1b[2J"]), "sub_paths"),
    case("sub_paths-entry-not-string", body(sub_paths=[1]), "sub_paths"),
    case("sub_paths-not-array", body(sub_paths="/data/x"), "sub_paths"),
    # --- env_vars ----------------------------------------------------------------------------
    case("env_vars-51-entries", body(env_vars=many_env(51)), "env_vars"),
    case("env_vars-key-empty", body(env_vars={"": "v"}), "env_vars"),
    case("env_vars-key-lowercase", body(env_vars={"foo": "v"}), "env_vars"),
    case("env_vars-key-mixed-case", body(env_vars={"Foo": "v"}), "env_vars"),
    case("env_vars-key-leading-digit", body(env_vars={"1FOO": "v"}), "env_vars"),
    case("env_vars-key-dash", body(env_vars={"FOO-BAR": "v"}), "env_vars"),
    case("env_vars-key-equals", body(env_vars={"FOO=BAR": "v"}), "env_vars"),
    case("env_vars-key-space", body(env_vars={"FOO BAR": "v"}), "env_vars"),
    case("env_vars-key-leading-underscore", body(env_vars={"_FOO": "v"}), "env_vars"),
    case("env_vars-key-non-ascii", body(env_vars={"FOOÄ": "v"}), "env_vars"),
    case("env_vars-key-129-chars", body(env_vars={"A" * 129: "v"}), "env_vars"),
    case("env_vars-key-trailing-newline", body(env_vars={"FOO\n": "v"}), "env_vars"),
    case("env_vars-value-4097-chars", body(env_vars={"FOO": "x" * 4097}), "env_vars"),
    case("env_vars-value-nul", body(env_vars={"FOO": "a\x00b"}), "env_vars"),
    case("env_vars-value-control-01", body(env_vars={"FOO": "a\x01b"}), "env_vars"),
    case("env_vars-value-escape", body(env_vars={"FOO": "\x1b[31m"}), "env_vars"),
    case("env_vars-value-control-1f", body(env_vars={"FOO": "a\x1f"}), "env_vars"),
    case("env_vars-value-lone-high-surrogate", None, "env_vars",
         raw=b'{"code": "print(1)", "env_vars": {"FOO": "\\ud800"}}'),
    case("env_vars-value-lone-low-surrogate", None, "env_vars",
         raw=b'{"code": "print(1)", "env_vars": {"FOO": "a\\udc80"}}'),
    case("env_vars-value-int", body(env_vars={"FOO": 1}), "env_vars"),
    case("env_vars-value-null", body(env_vars={"FOO": None}), "env_vars"),
    case("env_vars-not-object", body(env_vars=["FOO=1"]), "env_vars"),
    case(
        "env_vars-total-over-64k",
        # 16 x (3 + 4096) = 65,584 > 65,536; every entry is within its own limits.
        body(env_vars={f"K{i:02d}": "x" * 4096 for i in range(16)}),
        "env_vars",
    ),
    *[case(f"env_vars-reserved-{n}", body(env_vars={n: "x"}), "env_vars") for n in RESERVED_NAMES],
    *[
        case(f"env_vars-reserved-prefix-{p}", body(env_vars={f"{p}FOO": "x"}), "env_vars")
        for p in RESERVED_PREFIXES
    ],
    # --- webhook_url -------------------------------------------------------------------------
    case("webhook_url-http", body(webhook_url="http://127.0.0.1/hook"), "webhook_url"),
    case("webhook_url-ftp", body(webhook_url="ftp://127.0.0.1/hook"), "webhook_url"),
    case("webhook_url-no-scheme", body(webhook_url="127.0.0.1/hook"), "webhook_url"),
    case("webhook_url-scheme-only", body(webhook_url="https://"), "webhook_url"),
    case("webhook_url-no-host-path", body(webhook_url="https:///hook"), "webhook_url"),
    case("webhook_url-no-host-query", body(webhook_url="https://?x=1"), "webhook_url"),
    case("webhook_url-empty", body(webhook_url=""), "webhook_url"),
    case(
        "webhook_url-2049-chars",
        body(webhook_url="https://127.0.0.1/" + "a" * (2049 - len("https://127.0.0.1/"))),
        "webhook_url",
    ),
    case("webhook_url-not-string", body(webhook_url=1), "webhook_url"),
    # --- body shape --------------------------------------------------------------------------
    case("unknown-field", body(foo=1), "foo"),
    case("unknown-field-camel-case", body(envVars={"A": "b"}), "envVars"),
    case("non-json-body", None, "JSON", raw=b"{not json"),
    case("truncated-json-body", None, "JSON", raw=b'{"code": "print(1)"'),
    case("json-array-body", [{"code": "print(1)"}], "JSON object"),
    case("json-string-body", "print(1)", "JSON object"),
    case("json-number-body", 42, "JSON object"),
    case("json-null-body", None, "JSON object", raw=b"null"),
    case("empty-body", None, "body", raw=b""),
    case("empty-object", {}, "code"),
]


def assert_validation_error(r: Any, field: str) -> str:
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()
    assert isinstance(err, dict) and set(err) == {"error", "message"}, err
    assert err["error"] == "validation_error"
    assert isinstance(err["message"], str) and err["message"]
    assert field.lower() in err["message"].lower(), f"{field!r} not named in {err['message']!r}"
    return err["message"]


@pytest.mark.parametrize(("payload", "raw", "field"), REFUSED)
async def test_refused(client, payload: Any, raw: bytes | None, field: str) -> None:
    if raw is not None:
        r = await client.post(EXECUTE, content=raw, headers={"Content-Type": "application/json"})
    else:
        r = await client.post(EXECUTE, content=json.dumps(payload), headers={"Content-Type": "application/json"})
    message = assert_validation_error(r, field)
    assert "Traceback" not in message and "pydantic" not in message.lower()


@pytest.mark.parametrize("name", ["PATH", "NODE_OPTIONS", "LD_PRELOAD", "BAPONI_TOKEN"])
async def test_reserved_env_message_is_generic(client, name: str) -> None:
    """One generic 'reserved by the system' message; the blocklist itself is not disclosed."""
    r = await client.post(EXECUTE, json=body(env_vars={name: "x"}))
    message = assert_validation_error(r, "env_vars")
    assert "reserved" in message.lower()
    for other in ("PYTHONPATH", "LD_LIBRARY_PATH", "HTTP_PROXY", "JULIA_DEPOT_PATH"):
        if other != name:
            assert other not in message


async def test_refused_body_never_runs(client) -> None:
    """A refused body never runs: code with a side effect visible in the output is not executed."""
    r = await client.post(EXECUTE, json={"code": "print('ran')", "timeout": 0})
    assert_validation_error(r, "timeout")
    assert "ran" not in r.text


# --- accepted edge inputs ---------------------------------------------------------------------

_ONE_MB_CODE = "print(1)\n#" + "x" * (MB - len("print(1)\n#"))
_ONE_MB_UTF8 = "print(1)\n#" + "é" * ((MB - len("print(1)\n#")) // 2)
assert len(_ONE_MB_CODE.encode()) == MB and len(_ONE_MB_UTF8.encode()) == MB

_ENV_TOTAL_EXACT = {f"K{i:02d}": "x" * 4096 for i in range(15)} | {"K15": "x" * (65_536 - 16 * 3 - 15 * 4096)}
assert sum(len(k) + len(v) for k, v in _ENV_TOTAL_EXACT.items()) == 65_536



def ok(id: str, payload: dict[str, Any], stdout: str | None = "1\n") -> Any:
    return pytest.param(payload, stdout, id=id)


ACCEPTED = [
    ok("code-1-byte", {"code": "1"}, ""),
    ok("code-exactly-1mb", {"code": _ONE_MB_CODE}),
    ok("code-exactly-1mb-utf8", {"code": _ONE_MB_UTF8}),
    ok("language-omitted-is-python", {"code": "import sys; print(sys.version_info[0] - 2)"}),
    ok("language-python", body(language="python")),
    ok("language-node", {"code": "console.log(1)", "language": "node"}),
    ok("language-bash", {"code": "echo 1", "language": "bash"}),
    ok("timeout-1", body(timeout=1)),
    ok("timeout-3600", body(timeout=3600)),
    ok("timeout-integral-float", body(timeout=30.0)),  # JSON Schema: 30.0 is an integer
    ok("thread_id-1-char", body(thread_id="a")),
    ok("thread_id-128-chars", body(thread_id="A" + "b_-9" * 31 + "xyz")),
    ok("thread_id-digit-first", body(thread_id="0-_Z")),
    ok("metadata-empty", body(metadata={})),
    ok("metadata-10-keys", body(metadata={f"k{i}": str(i) for i in range(10)})),
    ok("metadata-key-40-chars", body(metadata={"k" * 40: "v"})),
    ok("metadata-key-dots-dashes", body(metadata={"0a.b-c_d": "v", "Z": "w"})),
    ok("metadata-value-256-chars", body(metadata={"k": "v" * 256})),
    ok("metadata-value-empty", body(metadata={"k": ""})),
    ok("metadata-value-unicode", body(metadata={"k": "日本語 ✓"})),
    # With sub_paths, only the listed directories are mounted: none here. Entries well formed
    # but outside every mount of the key are refused (below); the accepted ones at the limits
    # are in test_volume_sub_paths.py, on a key with volumes.
    ok("sub_paths-empty", body(sub_paths=[])),
    ok("env_vars-empty", body(env_vars={})),
    ok(
        "env_vars-50-entries",
        {"code": "import os; print(sum(1 for k in os.environ if k.startswith('V0')))", "env_vars": many_env(50)},
        "50\n",
    ),
    ok(
        "env_vars-key-128-chars",
        {"code": "import os; print(len(os.environ['A' + 'B' * 127]))", "env_vars": {"A" + "B" * 127: "xyz"}},
        "3\n",
    ),
    ok("env_vars-key-single-letter", {"code": "import os; print(os.environ['A'])", "env_vars": {"A": "1"}}),
    ok(
        "env_vars-value-4096-chars",
        {"code": "import os; print(len(os.environ['FOO']))", "env_vars": {"FOO": "x" * 4096}},
        "4096\n",
    ),
    ok(
        "env_vars-value-tab-lf-cr",
        {"code": "import os; print(repr(os.environ['FOO']))", "env_vars": {"FOO": "a\tb\nc\rd"}},
        "'a\\tb\\nc\\rd'\n",
    ),
    ok(
        "env_vars-value-empty",
        {"code": "import os; print(repr(os.environ['FOO']))", "env_vars": {"FOO": ""}},
        "''\n",
    ),
    ok(
        "env_vars-value-del-and-unicode",
        {"code": "import os; print(ascii(os.environ['FOO']))", "env_vars": {"FOO": "\x7fé✓"}},
        "'\\x7f\\xe9\\u2713'\n",
    ),
    ok(
        "env_vars-total-exactly-64k",
        {"code": "import os; print(sum(len(k)+len(v) for k, v in os.environ.items() if k[0]=='K' and k[1:].isdigit()))",
         "env_vars": _ENV_TOTAL_EXACT},
        "65536\n",
    ),
    ok(
        "env_vars-names-near-reserved",
        {"code": "import os; print(os.environ['PATHX'] + os.environ['MY_HOME'] + os.environ['LDX'] + os.environ['XDG'])",
         "env_vars": {"PATHX": "a", "MY_HOME": "b", "LDX": "c", "XDG": "d"}},
        "abcd\n",
    ),
    ok(
        "all-fields",
        {
            "code": "import os; print(os.environ['GREETING'])",
            "language": "python",
            "timeout": 30,
            "thread_id": "t-1",
            "metadata": {"run": "1"},
            "sub_paths": [],
            "env_vars": {"GREETING": "1"},
        },
    ),
]


@pytest.mark.parametrize(("payload", "stdout"), ACCEPTED)
async def test_accepted(client, payload: dict[str, Any], stdout: str | None) -> None:
    r = await client.post(EXECUTE, json=payload)
    assert r.status_code == 200, r.text[:500]
    result = r.json()
    assert result["success"] is True, result
    assert result["exit_code"] == 0
    assert result["error"] is None
    if stdout is not None:
        assert result["stdout"] == stdout
