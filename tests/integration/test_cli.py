"""The `sandboxd` command: run, keys, sandboxes, orgs; each test in a fresh data directory."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_cli

Cli = Callable[..., subprocess.CompletedProcess[str]]
KEY = re.compile(r"^sk-local-[A-Za-z0-9]{40}$")


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    data_dir = str(tmp_path / "d")

    def call(*args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--data-dir", data_dir, input=input, timeout=timeout)

    return call


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    return result


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, f"{word!r} not in {result.stderr!r}"
    return result.stderr


def create_key(cli: Cli, *args: str) -> tuple[str, str]:
    result = ok(cli("keys", "create", *args))
    secret = result.stdout.strip()
    key_id = re.search(r"key id (\S+)", result.stderr).group(1)  # type: ignore[union-attr]
    return secret, key_id


# --- run --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "code", "rc"),
    [
        ("python", "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)\n", 3),
        ("node", "console.log('out'); console.error('err'); process.exit(4)", 4),
        ("bash", "echo out; echo err >&2; exit 5", 5),
    ],
)
def test_run_prints_output_and_exits_with_the_code(cli: Cli, language: str, code: str, rc: int) -> None:
    result = cli("run", "--language", language, code)
    assert result.returncode == rc, result.stderr
    assert result.stdout == "out\n"
    assert result.stderr.startswith("err\n")
    assert "out" not in result.stderr


@pytest.mark.parametrize("language", ["python", "node", "bash"])
def test_run_success_exits_zero(cli: Cli, language: str) -> None:
    code = {"python": "print(2 + 3)", "node": "console.log(2 + 3)", "bash": "echo $((2 + 3))"}[language]
    result = ok(cli("run", "-l", language, code))
    assert result.stdout == "5\n"


def test_run_reads_code_from_stdin(cli: Cli) -> None:
    code = "import sys\nfor i in range(3):\n    print(i)\nsys.exit(7)\n"
    result = cli("run", "-", input=code)
    assert result.returncode == 7, result.stderr
    assert result.stdout == "0\n1\n2\n"


def test_run_reads_bash_from_stdin(cli: Cli) -> None:
    result = ok(cli("run", "--language", "bash", "-", input="x=hello\necho \"$x from stdin\"\n"))
    assert result.stdout == "hello from stdin\n"


def test_run_timeout(cli: Cli) -> None:
    t0 = time.monotonic()
    result = cli("run", "--timeout", "1", "import time\nprint('begun', flush=True)\ntime.sleep(120)\n")
    assert time.monotonic() - t0 < 60
    assert result.returncode != 0
    assert result.stdout == "begun\n"
    assert "timeout" in result.stderr


def test_run_sandbox_timeout_cap(cli: Cli) -> None:
    ok(cli("sandboxes", "create", "quick", "--timeout-cap", "1"))
    t0 = time.monotonic()
    result = cli("run", "--sandbox", "quick", "--timeout", "30", "import time; time.sleep(120)")
    assert time.monotonic() - t0 < 30  # capped at 1 s, not the 30 s asked for
    assert result.returncode != 0
    assert "timeout" in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--language", "ruby", "puts 1"), ("language",)),
        (("--timeout", "0", "print(1)"), ("timeout",)),
        (("--timeout", "3601", "print(1)"), ("timeout",)),
        (("",), ("code",)),
        (("--sandbox", "nope", "print(1)"), ("nope",)),
        (("--org", "nope", "print(1)"), ("nope",)),
    ],
)
def test_run_refuses_bad_input(cli: Cli, args: tuple[str, ...], words: tuple[str, ...]) -> None:
    result = cli("run", *args)
    assert result.stdout == ""
    refused(result, *words)


# --- keys -------------------------------------------------------------------------------------


def test_keys_create_prints_exactly_the_key(cli: Cli) -> None:
    result = ok(cli("keys", "create", "--name", "ci"))
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stdout.endswith("\n")
    assert KEY.match(lines[0]), lines[0]
    assert lines[0] not in result.stderr  # the key goes to stdout only, for `$(...)`
    assert "key id" in result.stderr


def test_keys_create_region(cli: Cli) -> None:
    secret, _ = create_key(cli, "--region", "eu")
    assert re.match(r"^sk-eu-[A-Za-z0-9]{40}$", secret), secret


@pytest.mark.parametrize("region", ["EU", "e-u", "", "a" * 17])
def test_keys_create_bad_region(cli: Cli, region: str) -> None:
    result = cli("keys", "create", "--region", region)
    assert result.stdout == ""
    refused(result, "region")


def test_keys_are_unique(cli: Cli) -> None:
    secrets = {create_key(cli)[0] for _ in range(3)}
    assert len(secrets) == 3


def test_keys_create_unknown_sandbox_or_org(cli: Cli) -> None:
    result = cli("keys", "create", "--sandbox", "missing")
    assert result.stdout == ""
    refused(result, "missing")
    result = cli("keys", "create", "--org", "ghost")
    assert result.stdout == ""
    refused(result, "ghost")


def test_keys_list_never_prints_a_full_key(cli: Cli) -> None:
    keys = [create_key(cli, "--name", f"k{i}") for i in range(2)]
    listed = ok(cli("keys", "list"))
    lines = listed.stdout.splitlines()
    assert len(lines) == 2
    for secret, key_id in keys:
        assert secret not in listed.stdout and secret not in listed.stderr
        assert secret[len("sk-local-"):][:20] not in listed.stdout  # not even most of the random part
        line = next(line for line in lines if line.startswith(key_id))
        assert "active" in line
        assert secret[:13] in line  # a display prefix identifies it


def test_keys_revoke(cli: Cli) -> None:
    _, keep_id = create_key(cli, "--name", "keep")
    _, drop_id = create_key(cli, "--name", "drop")
    result = ok(cli("keys", "revoke", drop_id))
    assert drop_id in result.stdout
    lines = {line.split("\t")[0]: line for line in ok(cli("keys", "list")).stdout.splitlines()}
    assert "revoked" in lines[drop_id]
    assert "active" in lines[keep_id]


def test_keys_revoke_unknown(cli: Cli) -> None:
    ok(cli("keys", "list"))  # initialise the data dir
    result = cli("keys", "revoke", "key_doesnotexist")
    refused(result, "key_doesnotexist")
    assert "no API key" in result.stderr
    assert result.stdout == ""


def test_keys_list_by_org(cli: Cli) -> None:
    ok(cli("orgs", "create", "acme"))
    _, default_id = create_key(cli)
    _, acme_id = create_key(cli, "--org", "acme")
    only_acme = ok(cli("keys", "list", "--org", "acme")).stdout
    assert acme_id in only_acme and default_id not in only_acme
    everything = ok(cli("keys", "list")).stdout
    assert acme_id in everything and default_id in everything


def test_keys_create_with_an_expiry(cli: Cli) -> None:
    _, key_id = create_key(cli, "--expires", "30d")
    line = next(line for line in ok(cli("keys", "list")).stdout.splitlines() if line.startswith(key_id))
    assert "\tactive\t" in line
    refused(cli("keys", "create", "--expires", "2001-01-01T00:00Z"), "future")
    refused(cli("keys", "create", "--expires", "soon"), "--expires")


# --- sandboxes --------------------------------------------------------------------------------


def test_default_sandbox_on_first_start(cli: Cli) -> None:
    shown = json.loads(ok(cli("sandboxes", "show", "default")).stdout)
    assert shown["name"] == "default"
    assert shown["cpus"] == 1
    assert shown["memory_mib"] == 1024
    assert shown["network"] == "none"
    assert shown["timeout_cap_s"] == 60
    listed = [json.loads(line) for line in ok(cli("sandboxes", "list")).stdout.splitlines()]
    assert [s["name"] for s in listed] == ["default"]
    assert listed[0] == shown


def test_sandboxes_round_trip(cli: Cli) -> None:
    created = json.loads(
        ok(cli("sandboxes", "create", "big", "--cpus", "2", "--memory", "2048", "--timeout-cap", "300")).stdout
    )
    assert created["name"] == "big" and created["cpus"] == 2 and created["memory_mib"] == 2048
    assert created["timeout_cap_s"] == 300 and created["network"] == "none"
    assert json.loads(ok(cli("sandboxes", "show", "big")).stdout) == created
    names = {json.loads(line)["name"] for line in ok(cli("sandboxes", "list")).stdout.splitlines()}
    assert names == {"default", "big"}

    # a key bound to it blocks deletion until revoked
    _, key_id = create_key(cli, "--sandbox", "big")
    refused(cli("sandboxes", "delete", "big"), "big")
    assert json.loads(ok(cli("sandboxes", "show", "big")).stdout) == created
    ok(cli("keys", "revoke", key_id))
    deleted = ok(cli("sandboxes", "delete", "big"))
    assert "big" in deleted.stdout
    refused(cli("sandboxes", "show", "big"), "big")
    names = {json.loads(line)["name"] for line in ok(cli("sandboxes", "list")).stdout.splitlines()}
    assert names == {"default"}


def test_sandboxes_update_changes_what_is_given(cli: Cli) -> None:
    ok(cli("sandboxes", "create", "tune", "--cpus", "2", "--timeout-cap", "120"))
    changed = json.loads(ok(cli(
        "sandboxes", "update", "tune", "--memory", "512", "--network", "allowlist", "--allow", "pypi.org",
    )).stdout)
    assert changed["memory_mib"] == 512 and changed["network"] == "allowlist" and changed["allow"] == ["pypi.org"]
    assert changed["cpus"] == 2 and changed["timeout_cap_s"] == 120 and changed["image"] == "host"
    assert json.loads(ok(cli("sandboxes", "show", "tune")).stdout) == changed
    refused(cli("sandboxes", "update", "tune", "--cpus", "500"), "cpus")
    refused(cli("sandboxes", "update", "ghost", "--cpus", "1"), "ghost")


def test_sandbox_delete_refusal_message(cli: Cli) -> None:
    ok(cli("sandboxes", "create", "bound"))
    create_key(cli, "--sandbox", "bound")
    stderr = refused(cli("sandboxes", "delete", "bound"), "bound")
    assert "key" in stderr.lower()


def test_run_uses_the_named_sandbox(cli: Cli) -> None:
    ok(cli("sandboxes", "create", "tiny", "--memory", "64"))
    result = cli("run", "--sandbox", "tiny", "b = b'x' * (512 * 1024 * 1024)\nprint('allocated')\n")
    assert result.returncode != 0
    assert "allocated" not in result.stdout
    assert "memory_limit_exceeded" in result.stderr


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (("Bad Name",), "name"),
        (("x", "--memory", "8"), "memory"),
        (("x", "--cpus", "0"), "cpus"),
        (("x", "--network", "host"), "network"),
        (("x", "--timeout-cap", "0"), "timeout"),
        (("x", "--timeout-cap", "3601"), "timeout"),
        (("default",), "default"),  # exists already
    ],
)
def test_sandboxes_create_refused(cli: Cli, args: tuple[str, ...], word: str) -> None:
    result = cli("sandboxes", "create", *args)
    assert result.stdout == ""
    refused(result, word)


def test_sandboxes_delete_unknown(cli: Cli) -> None:
    refused(cli("sandboxes", "delete", "ghost"), "ghost")


# --- orgs -------------------------------------------------------------------------------------


def test_orgs_create(cli: Cli) -> None:
    created = ok(cli("orgs", "create", "acme")).stdout
    org_id, name = created.strip().split("\t")
    assert name == "acme" and org_id.startswith("org_")
    listed = ok(cli("orgs", "list")).stdout
    assert f"{org_id}\tacme" in listed
    assert "\tdefault" in listed
    # a new organization comes with its own default sandbox, and keys can be made for it
    shown = json.loads(ok(cli("sandboxes", "show", "default", "--org", "acme")).stdout)
    assert shown["memory_mib"] == 1024 and shown["timeout_cap_s"] == 60
    default_id = json.loads(ok(cli("sandboxes", "show", "default")).stdout)["id"]
    assert shown["id"] != default_id
    secret, _ = create_key(cli, "--org", "acme")
    assert KEY.match(secret)
    # and runs code there
    assert ok(cli("run", "--org", "acme", "print('acme')")).stdout == "acme\n"


def test_orgs_create_is_idempotent(cli: Cli) -> None:
    first = ok(cli("orgs", "create", "acme")).stdout
    second = ok(cli("orgs", "create", "acme")).stdout
    assert first == second
    assert ok(cli("orgs", "list")).stdout.count("\tacme") == 1


def test_orgs_create_bad_name(cli: Cli) -> None:
    result = cli("orgs", "create", "Not Valid!")
    assert result.stdout == ""
    refused(result, "name")


@pytest.mark.parametrize("command", [("serve", "--port", "1"), ("run", "print(1)")])
def test_refuses_to_run_code_without_bubblewrap(tmp_path: Path, command: tuple[str, ...]) -> None:
    """Fail closed: with bwrap unreachable there is no sandbox, so nothing runs at all."""
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_cli(*command, "--data-dir", str(tmp_path / "d"), env={"PATH": str(empty)})
    assert result.returncode != 0
    assert "bwrap not found" in result.stderr
    assert result.stdout == ""  # in particular, `run` printed no program output
