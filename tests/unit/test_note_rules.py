"""Result notes (service/notes.py): each rule alone, then through the execution service over
the fake runner (the note reaches the outcome, the stored row and the result event)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.runtime import Limits
from sandboxd.runtime.fake import FakeRunner, Script
from sandboxd.service import notes
from sandboxd.service.admission import ConcurrencyLimiter
from sandboxd.service.events import EventSettings
from sandboxd.service.executions import ExecutionService
from sandboxd.service.keys import Principal
from sandboxd.service.requests import ExecuteRequest
from sandboxd.service.tenancy import SandboxConfig, TenancyService
from sandboxd.service.threads import ThreadLocks, ThreadPolicy, ThreadService
from sandboxd.service.url_guard import UrlGuard
from sandboxd.service.volumes import VolumeService
from sandboxd.service.webhooks import WebhookService
from sandboxd.store import Store

# --- the rules ----------------------------------------------------------------------------------


def test_timeout_lowered_only_above_the_cap() -> None:
    assert notes.timeout_lowered(120, 60.0) == "timeout lowered from 120 s to this key's cap of 60 s"
    assert notes.timeout_lowered(60, 60.0) is None
    assert notes.timeout_lowered(5, 60.0) is None
    assert notes.timeout_lowered(None, 60.0) is None


@pytest.mark.parametrize(
    "stderr",
    [
        # python: requests / urllib / socket
        "socket.gaierror: [Errno -3] Temporary failure in name resolution",
        "urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>",
        "OSError: [Errno 101] Network is unreachable",
        "ConnectionRefusedError: [Errno 111] Connection refused",
        # pip
        "WARNING: Retrying ... NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection "
        "object>: Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')",
        "ERROR: Could not find a version that satisfies the requirement requests (from versions: none)",
        # node
        "Error: getaddrinfo EAI_AGAIN example.com",
        "Error: getaddrinfo ENOTFOUND registry.npmjs.org",
        "TypeError: fetch failed\n  [cause]: Error: connect ENETUNREACH 203.0.113.34:443",
        "Error: connect ECONNREFUSED 127.0.0.1:80",
        # npm
        "npm ERR! code EAI_AGAIN\nnpm ERR! errno EAI_AGAIN",
        "npm error code ENOTFOUND",
        # curl, wget, git
        "curl: (6) Could not resolve host: example.com",
        "curl: (7) Failed to connect to 10.0.0.1 port 80",
        "wget: unable to resolve host address 'example.com'",
        "ssh: Could not resolve hostname github.com: Temporary failure in name resolution",
    ],
)
def test_no_network_recognizes_each_tool(stderr: str) -> None:
    assert notes.no_network("none", True, stderr) == notes.NO_NETWORK


def test_no_network_needs_policy_none_a_failure_and_a_sign() -> None:
    sign = "socket.gaierror: [Errno -3] Temporary failure in name resolution"
    assert notes.no_network("allowlist", True, sign) is None
    assert notes.no_network("full", True, sign) is None
    assert notes.no_network("none", False, sign) is None
    assert notes.no_network("none", True, "ZeroDivisionError: division by zero") is None
    assert notes.no_network("none", True, "") is None


def test_output_truncated_names_the_streams_and_the_cap() -> None:
    assert notes.output_truncated((), 100) is None
    assert notes.output_truncated(("stdout",), 1024) == (
        "output truncated: stdout was cut at the cap of 1024 bytes; write large output to a file instead"
    )
    assert notes.output_truncated(("stdout", "stderr"), 1024) == (
        "output truncated: stdout and stderr were each cut at the cap of 1024 bytes; "
        "write large output to a file instead"
    )


def test_no_thread_only_for_a_persistent_config_without_thread_id() -> None:
    assert notes.no_thread("persistent", None) == notes.NO_THREAD
    assert notes.no_thread("persistent", "t1") is None
    assert notes.no_thread("stateless", None) is None


def test_session_reset_says_why_and_what_is_gone() -> None:
    assert notes.session_reset(None) is None
    assert notes.session_reset({"state": "kept", "reason": None}) is None
    assert notes.session_reset({"state": "new", "reason": None}) is None
    idle = notes.session_reset({"state": "reset", "reason": "idle"})
    assert idle == (
        "the thread's interpreter was restarted (it was unused for too long): variables, imports and "
        "definitions from earlier calls are gone; files under /home/baponi are kept"
    )
    assert "(a call timed out)" in (notes.session_reset({"state": "reset", "reason": "timeout"}) or "")
    assert "(someday)" in (notes.session_reset({"state": "reset", "reason": "someday"}) or "")


# --- through the service (fake runner) -----------------------------------------------------------

SCRIPTS = {
    "offline": Script(output=(("stderr", b"curl: (6) Could not resolve host: pypi.org\n"),), exit_code=6),
    "loud": Script(output=(("stdout", b"x" * 300), ("stderr", b"e" * 10))),
    "both": Script(output=(("stdout", b"x" * 300), ("stderr", b"e" * 300))),
}


async def service(store: Store, tmp_path: Path, config: SandboxConfig | None = None) -> tuple[ExecutionService, Principal]:
    tenancy = TenancyService(store)
    org = await tenancy.ensure_defaults()
    sandbox = await tenancy.sandbox(org, "default")
    if config is not None:
        sandbox = await tenancy.create_sandbox(org, config)
    threads = ThreadService(store, None, ThreadPolicy(), ThreadLocks(tmp_path / "locks"))
    runner = FakeRunner(lambda spec: SCRIPTS.get(spec.code.decode(), Script()))
    executions = ExecutionService(
        store, runner, ConcurrencyLimiter(4, 4), Limits(output_limit_bytes=256),
        WebhookService(store, bytes(32), UrlGuard()), threads, VolumeService(store, None),
        keepalive_s=60, events=EventSettings(flush_interval_s=0.02),
    )
    return executions, Principal(key=None, org=org, sandbox=sandbox)


async def test_timeout_note_in_the_outcome_the_row_and_the_result_event(store: Store, tmp_path: Path) -> None:
    executions, principal = await service(store, tmp_path, SandboxConfig(name="capped", timeout_cap_s=30))
    try:
        outcome = await executions.execute(principal, ExecuteRequest(code="print(1)", timeout=120))
        assert outcome.notes == ("timeout lowered from 120 s to this key's cap of 30 s",)
        row = await executions.get(principal, outcome.trace_id)
        assert row.extras is not None and row.extras["notes"] == list(outcome.notes)
        events = [e async for e in await executions.events(principal, outcome.trace_id)]
        assert events[-1].type == "result" and events[-1].body["result"]["notes"] == list(outcome.notes)
        assert (await executions.execute(principal, ExecuteRequest(code="print(1)", timeout=30))).notes == ()
    finally:
        await executions.shutdown(0)


async def test_network_truncation_and_session_notes(store: Store, tmp_path: Path) -> None:
    executions, principal = await service(store, tmp_path, SandboxConfig(name="kept", session="persistent"))
    try:
        offline = await executions.execute(principal, ExecuteRequest(code="offline"))
        assert offline.notes == (notes.NO_NETWORK, notes.NO_THREAD)
        loud = await executions.execute(principal, ExecuteRequest(code="loud"))
        assert loud.output_truncated and loud.streams_truncated == ("stdout",)
        assert loud.notes[0].startswith("output truncated: stdout was cut at the cap of 256 bytes")
        both = await executions.execute(principal, ExecuteRequest(code="both"))
        assert both.notes[0].startswith("output truncated: stdout and stderr were each cut")
    finally:
        await executions.shutdown(0)


async def test_a_plain_run_has_no_notes(store: Store, tmp_path: Path) -> None:
    executions, principal = await service(store, tmp_path)
    try:
        outcome = await executions.execute(principal, ExecuteRequest(code="offline"))
        assert outcome.notes == (notes.NO_NETWORK,)  # the default config's policy is none
        assert (await executions.execute(principal, ExecuteRequest(code="print(1)"))).notes == ()
    finally:
        await executions.shutdown(0)
