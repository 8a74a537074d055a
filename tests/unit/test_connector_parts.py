"""Connectors below the service: each kind's checks, what a run gets, the key file, redaction."""

from __future__ import annotations

import asyncio
import base64
import random
import json
import threading
from pathlib import Path
from urllib.parse import quote

import pytest

from sandboxd.connectors import kinds
from sandboxd.connectors.keyring import Keyring
from sandboxd.connectors.redact import Redactor
from sandboxd.errors import InvalidRequest

SECRET = "ghp_Secret-Value-0123456789"


# --- kinds --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"OPENAI_API_KEY": "sk-1", "B": "2"}', {"OPENAI_API_KEY": "sk-1", "B": "2"}),
        (b"# a .env file\nexport OPENAI_API_KEY=sk-1\n\nB=x=y\n", {"OPENAI_API_KEY": "sk-1", "B": "x=y"}),
    ],
)
def test_env_connector_takes_json_or_dotenv(raw: bytes, expected: dict[str, str]) -> None:
    parsed = kinds.parse("env", raw, kinds.Options())
    assert parsed.secret == {"values": expected}
    assert parsed.config == {"variables": sorted(expected)}
    assert "sk-1" not in repr(parsed)


@pytest.mark.parametrize(
    ("kind", "raw", "options", "message"),
    [
        ("env", b'{"PATH": "hunter2-value"}', kinds.Options(), "'PATH' is reserved"),
        ("env", b'{"LD_PRELOAD": "hunter2-value"}', kinds.Options(), "reserved"),
        ("env", b'{"lower": "hunter2-value"}', kinds.Options(), "the name of variable 1 must be an uppercase"),
        ("env", b"hunter2-value-no-equals=", kinds.Options(), "the name of variable 1 must be"),
        ("http", b"x" * 4097, kinds.Options(hosts=("api.test",), env_var="T"), "at most 4096 bytes"),
        ("env", b"NOEQUALS hunter2-value", kinds.Options(), "line 1 of the secret is not NAME=value"),
        ("env", b'{"A": "hunter2-value\\u0000"}', kinds.Options(), "control characters"),
        ("env", b"", kinds.Options(), "at least one variable"),
        ("env", b'{"A": "hunter2-value"}', kinds.Options(hosts=("x.org",)), "type http only"),
        ("http", b"hunter2-value", kinds.Options(env_var="TOKEN"), "at least one --host"),
        ("http", b"hunter2-value", kinds.Options(hosts=("10.0.0.1",), env_var="TOKEN"), "IP addresses"),
        ("http", b"hunter2-value", kinds.Options(hosts=("api.test",)), "--env-var"),
        ("http", b"hunter2-value", kinds.Options(hosts=("api.test",), env_var="PATH"), "reserved"),
        ("http", b"hunter2\r\nX-Evil: 1", kinds.Options(hosts=("api.test",), env_var="T"), "one line"),
        ("http", b"hunter2-value", kinds.Options(hosts=("api.test",), env_var="T", header="Authorization: Bearer"), "{secret} once"),
        ("http", b"hunter2-value", kinds.Options(hosts=("api.test",), env_var="T", header="Host: {secret}"), "may not set Host"),
        ("http", b"hunter2-value", kinds.Options(hosts=("api.test",), env_var="T", header="X: {secret}\r\nY: 1"), "one line"),
        ("http", b"short", kinds.Options(hosts=("api.test",), env_var="T"), "at least 8"),
        ("postgres", b"mysql://u:hunter2-value@db/x", kinds.Options(), "postgres URL"),
        ("postgres", b"postgresql://u:hunter2-value@:5432/x", kinds.Options(), "postgres URL"),
        ("mysql", b"mysql://u:hunter2-value@db:99999/x", kinds.Options(), "not valid"),
        ("ldap", b"hunter2-value", kinds.Options(), "connector type must be one of env, postgres, mysql, http"),
        ("env", b"\xff\xfe", kinds.Options(), "UTF-8"),
    ],
)
def test_bad_connectors_are_refused_without_echoing_the_secret(
    kind: str, raw: bytes, options: kinds.Options, message: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        kinds.parse(kind, raw, options)
    assert message in caught.value.message
    assert "hunter2" not in caught.value.message


def test_http_connector_keeps_hosts_header_and_variable_but_not_the_secret_in_config() -> None:
    options = kinds.Options(hosts=("API.test", "*.api.test:8443"), env_var="GITHUB_TOKEN", header="X-Api-Key: {secret}")
    parsed = kinds.parse("http", (SECRET + "\n").encode(), options)
    assert parsed.config == {
        "hosts": ["*.api.test:8443", "api.test"], "header": "X-Api-Key", "template": "{secret}",
        "variables": ["GITHUB_TOKEN"],
    }
    assert parsed.secret == {"secret": SECRET}
    parts = kinds.run_parts("gh", "http", parsed.config, parsed.secret, set())
    placeholder = parts.env["GITHUB_TOKEN"]
    assert placeholder.startswith("sandboxd-gh-") and SECRET not in placeholder
    (brokered,) = parts.brokered
    assert (brokered.secret, brokered.placeholder, brokered.header) == (SECRET, placeholder, "X-Api-Key")
    assert brokered.hosts[1].matches("api.test", 443) and brokered.hosts[0].matches("x.api.test", 8443)
    assert SECRET not in repr(brokered)
    again = kinds.run_parts("gh", "http", parsed.config, parsed.secret, set())
    assert again.env["GITHUB_TOKEN"] != placeholder  # one placeholder per run


def test_database_connector_points_the_conventional_variables_at_the_forwarded_port() -> None:
    url = b"postgresql://app%40x:p%3Ass-word@db.internal:6543/sales?sslmode=disable"
    parsed = kinds.parse("postgres", url, kinds.Options())
    assert parsed.config == {
        "host": "db.internal", "port": 6543, "database": "sales", "user": "app@x",
        "variables": ["DATABASE_URL", "PGDATABASE", "PGHOST", "PGPASSWORD", "PGPORT", "PGUSER"],
    }
    ports = {3128}
    first = kinds.run_parts("db", "postgres", parsed.config, parsed.secret, ports)
    second = kinds.run_parts("db2", "postgres", parsed.config, parsed.secret, ports)
    assert [f.port for f in first.forwards + second.forwards] == [5432, 5433]
    (forward,) = first.forwards
    assert (forward.host, forward.upstream_port) == ("db.internal", 6543)
    assert first.env == {
        "DATABASE_URL": "postgresql://app%40x:p%3Ass-word@127.0.0.1:5432/sales?sslmode=disable",
        "PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "app@x", "PGPASSWORD": "p:ss-word", "PGDATABASE": "sales",
    }
    assert first.redact == [("db", "p%3Ass-word"), ("db", "p:ss-word")]
    in_query = kinds.parse("postgres", b"postgresql://app@db/x?sslpassword=key-pass-1&password=query-pw-22", kinds.Options())
    assert kinds.run_parts("q", "postgres", in_query.config, in_query.secret, set()).redact == [
        ("q", "key-pass-1"), ("q", "query-pw-22")
    ]
    mysql = kinds.parse("mysql", b"mysql://root:secretpw@127.0.0.1/shop", kinds.Options())
    parts = kinds.run_parts("shop", "mysql", mysql.config, mysql.secret, {3128})
    assert parts.env["MYSQL_TCP_PORT"] == "3306" and parts.env["MYSQL_PWD"] == "secretpw"
    assert parts.forwards[0].upstream_port == 3306


# --- redaction -----------------------------------------------------------------------------------


def _stream(redactor: Redactor, data: bytes, cuts: list[int]) -> bytes:
    out: list[bytes] = []

    async def write(stream: str, chunk: bytes) -> None:
        assert stream == "stdout"
        out.append(chunk)

    async def go() -> None:
        sink = redactor.sink(write)
        last = 0
        for cut in [*cuts, len(data)]:
            await sink("stdout", data[last:cut])
            last = cut
        await redactor.flush(write)

    asyncio.run(go())
    return b"".join(out)


def test_redaction_replaces_values_and_their_base64_forms() -> None:
    redactor = Redactor([("gh", SECRET), ("db", "p:ss-word")])
    b64 = base64.b64encode(SECRET.encode())
    text = b"a " + SECRET.encode() + b" b " + b64 + b" c " + base64.urlsafe_b64encode(b"p:ss-word").rstrip(b"=") + b" d"
    assert redactor.redact(text) == b"a [redacted:gh] b [redacted:gh] c [redacted:db] d"


def test_redaction_holds_across_every_chunk_boundary() -> None:
    redactor_secrets = [("gh", SECRET), ("db", "p:ss-word")]
    data = (b"x" * 7 + SECRET.encode() + b"yy" + base64.b64encode(SECRET.encode()) + b"p:ss-wordp:ss-word" + b"tail")
    expected = Redactor(redactor_secrets).redact(data)
    assert SECRET.encode() not in expected and expected.endswith(b"[redacted:db][redacted:db]tail")
    for cut in range(len(data) + 1):
        assert _stream(Redactor(redactor_secrets), data, [cut]) == expected, cut
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(len(data)), rng.randint(1, 12)))
        assert _stream(Redactor(redactor_secrets), data, cuts) == expected


def test_redaction_finds_base64_of_a_longer_text_at_every_alignment() -> None:
    redactor = Redactor([("gh", SECRET)])
    for prefix in (b"", b"u", b"us", b"user:"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            out = redactor.redact(encode(prefix + SECRET.encode() + b":tail"))
            assert b"[redacted:gh]" in out, (prefix, out)
            assert base64.b64encode(SECRET.encode())[4:16] not in out


def test_a_stream_holds_back_only_what_could_begin_a_secret() -> None:
    """A program's progress line goes out at once; only a tail that could start a secret waits."""
    redactor = Redactor([("gh", SECRET)])
    out: list[bytes] = []

    async def write(stream: str, chunk: bytes) -> None:
        out.append(chunk)

    async def go() -> None:
        sink = redactor.sink(write)
        await sink("stdout", b"progress 50%\n")
        assert out == [b"progress 50%\n"]
        await sink("stdout", b"token: ghp_Sec")
        assert out[-1] == b"token: "
        await sink("stdout", SECRET.encode()[7:] + b" done\n")
        assert out[-1] == b"[redacted:gh] done\n"
        await sink("stdout", b"ends with gh")
        await redactor.flush(write)
        assert out[-2:] == [b"ends with ", b"gh"]

    asyncio.run(go())


def test_redaction_finds_escaped_percent_encoded_and_line_by_line_forms() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7/x+y=\n-----END PRIVATE KEY-----\n"
    password = "Xk9/q+Zr=T\"'\\"
    redactor = Redactor([("sa", pem), ("db", password)])
    printed = [
        json.dumps({"KEY": pem}), repr({"KEY": pem}), pem.splitlines()[1],
        json.dumps(password), json.dumps(password).replace("/", "\\/"), repr(password),
        "postgresql://app:" + quote(password, safe="") + "@127.0.0.1:5432/x", quote(password),
    ]
    for text in printed:
        out = redactor.redact(text.encode()).decode()
        assert "[redacted:" in out, text
        assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" not in out and "Xk9" not in out, (text, out)


def test_a_value_cut_short_at_the_end_of_the_output_is_masked() -> None:
    """An output cap can cut a value in half: its start must not be kept."""
    redactor = Redactor([("gh", SECRET)])
    assert redactor.redact(b"token " + SECRET.encode()[:12]) == b"token [redacted:gh]"
    assert redactor.redact(b"token " + SECRET.encode()[:3]) == b"token " + SECRET.encode()[:3]  # too short to tell


@pytest.mark.parametrize("secret", ["aaaaaaaa", "k3yk3yk3y", SECRET])
def test_streaming_redaction_equals_whole_redaction(secret: str) -> None:
    """Self-overlapping values included: what is held back is decided from the same matches
    the replacement makes."""
    rng = random.Random(secret)
    alphabet = sorted(set(secret)) + ["x", "\n"]
    for _ in range(300):
        data = "".join(rng.choice([secret, secret[: rng.randint(1, len(secret))], *alphabet]) for _ in range(12)).encode()
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(1, 6))))
        whole = Redactor([("s", secret)]).redact(data)
        assert _stream(Redactor([("s", secret)]), data, cuts) == whole, (data, cuts)
        assert secret.encode() not in whole


def test_short_values_are_not_redacted() -> None:
    assert Redactor([("x", "abc")]).redact(b"abcabc") == b"abcabc"
    assert not Redactor([("x", "abc")])


# --- the key file ---------------------------------------------------------------------------------


def test_keyring_rotation_keeps_every_sealed_value_readable(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "connectors.key")
    with ring.writing():
        sealed = ring.seal(b"value")
    assert (tmp_path / "connectors.key").stat().st_mode & 0o777 == 0o600
    with ring.rotation():
        ring.begin_rotation()
        assert ring.key_count == 2
        # A crash here: a second process still opens the old row.
        assert Keyring(tmp_path / "connectors.key").open(sealed) == b"value"
        resealed = ring.reseal(sealed)
        ring.end_rotation()
    assert ring.key_count == 1
    assert ring.open(resealed) == b"value"
    assert ring.open(sealed) is None  # the old key is gone
    assert Keyring(tmp_path / "connectors.key").open(resealed) == b"value"


def test_keyring_first_use_makes_one_key_even_when_racing(tmp_path: Path) -> None:
    path = tmp_path / "k" / "connectors.key"
    sealed: list[bytes] = []

    def seal() -> None:
        ring = Keyring(path)
        with ring.writing():
            sealed.append(ring.seal(b"v"))

    threads = [threading.Thread(target=seal) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ring = Keyring(path)
    assert ring.key_count == 1 and all(ring.open(s) == b"v" for s in sealed)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_keyring_missing_or_malformed_file_opens_nothing(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "connectors.key")
    with ring.writing():
        sealed = ring.seal(b"v")
    (tmp_path / "connectors.key").write_bytes(b"not a key\n")
    assert ring.open(sealed) is None
    (tmp_path / "connectors.key").unlink()
    assert ring.open(sealed) is None
