"""Notes: what a result tells the agent about how its code ran, in plain words.

Every rule is here, each a small function of plain values, so a surface never words one
itself: the job (job.py `ExecutionJobs.run`) adds `notes_for(job, outcome)` to the outcome
once, and the result carries them on every surface (inline, the stream's result event,
webhooks, GET /v1/executions/{id}, the MCP text).

- the requested timeout was above the sandbox config's cap (or the plan's) and was lowered to it;
- the program failed under network policy `none` after what looks like a network attempt
  (`NETWORK_ATTEMPT`: the resolver and connection errors of the usual tools);
- stdout or stderr went past the output cap and was cut;
- a persistent-session config was used without a thread_id, so nothing was kept;
- the thread's interpreter was restarted (`session.state` "reset"): why, and that what the
  earlier calls defined is gone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

from ..runtime import Limits


class Job(Protocol):
    """What the rules read of a job (job.py `JobDescription`)."""

    @property
    def requested_timeout_s(self) -> int | None: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def network(self) -> str: ...
    @property
    def session(self) -> str: ...
    @property
    def thread_id(self) -> str | None: ...
    @property
    def timeout_cap_by(self) -> str | None: ...


class Result(Protocol):
    """What the rules read of a result (job.py `Outcome`)."""

    @property
    def success(self) -> bool: ...
    @property
    def stderr(self) -> str: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def output_truncated(self) -> bool: ...
    @property
    def streams_truncated(self) -> tuple[str, ...]: ...
    @property
    def notes(self) -> tuple[str, ...]: ...
    @property
    def session(self) -> dict[str, str | None] | None: ...


#: Messages a failed network attempt leaves on stderr, by tool. Under policy `none` the
#: sandbox has only loopback: names do not resolve and connections are unreachable/refused.
_NETWORK_ERRORS: tuple[tuple[str, str], ...] = (
    ("glibc, python socket", r"temporary failure in name resolution"),
    ("glibc, python socket", r"name or service not known"),
    ("glibc", r"no address associated with hostname"),
    ("python socket", r"\[errno -?(2|3|5)\] (name|temporary)"),
    ("python", r"socket\.gaierror"),
    ("kernel errno", r"network is unreachable"),
    ("kernel errno", r"connection refused"),
    ("node", r"getaddrinfo (eai_again|enotfound|eai_fail|eai_nodata)"),
    ("node", r"\b(enetunreach|econnrefused|ehostunreach)\b"),
    ("node fetch", r"typeerror: fetch failed"),
    ("curl", r"could not resolve (host|proxy)"),
    ("curl", r"curl: \((6|7)\)"),
    ("pip, urllib3", r"failed to establish a new connection"),
    ("pip, urllib3", r"newconnectionerror"),
    ("pip", r"could not find a version that satisfies the requirement"),
    ("npm", r"npm err! code (eai_again|enotfound|econnrefused|enetunreach)"),
    ("npm", r"npm error code (eai_again|enotfound|econnrefused|enetunreach)"),
    ("wget", r"unable to resolve host address"),
    ("git, ssh", r"could not resolve hostname"),
    ("python urllib", r"urlopen error"),
)
NETWORK_ATTEMPT = re.compile("|".join(f"(?:{pattern})" for _, pattern in _NETWORK_ERRORS), re.IGNORECASE)

NO_NETWORK = (
    "this sandbox has no network access; an administrator can allow domains "
    "(sandbox config --network allowlist --allow DOMAIN)"
)
NO_THREAD = (
    "this sandbox keeps interpreter state only per thread: pass a thread_id to keep "
    "variables between calls"
)


def timeout_lowered(requested_s: int | None, cap_s: float, by: str | None = None) -> str | None:
    """`by`: who set the cap when it is not the key's config ("the Free plan's limit")."""
    if requested_s is None or requested_s <= cap_s:
        return None
    cap = by or "this key's cap"
    return f"timeout lowered from {requested_s} s to {cap} of {cap_s:g} s"


def no_network(network: str, failed: bool, stderr: str) -> str | None:
    """A program that failed under policy `none` after trying the network."""
    if network != "none" or not failed or not NETWORK_ATTEMPT.search(stderr):
        return None
    return NO_NETWORK


def output_truncated(streams: Iterable[str], cap_bytes: int) -> str | None:
    cut = list(streams)
    if not cut:
        return None
    which = " and ".join(cut) + (" were each" if len(cut) > 1 else " was")
    return f"output truncated: {which} cut at the cap of {cap_bytes} bytes; write large output to a file instead"


def no_thread(session: str, thread_id: str | None) -> str | None:
    return NO_THREAD if session == "persistent" and thread_id is None else None


#: Why a session ended (service/sessions.py REASONS), in words for the agent.
_RESET_BECAUSE = {
    "idle": "it was unused for too long",
    "timeout": "a call timed out",
    "oom": "a call ran out of memory",
    "crash": "the interpreter exited or crashed",
    "cancelled": "a call was cancelled",
    "evicted": "the server needed its memory",
    "changed": "the sandbox config, the image or the thread's files changed",
    "restart": "the server restarted",
}


def session_reset(session: dict[str, str | None] | None) -> str | None:
    if session is None or session.get("state") != "reset":
        return None
    reason = session.get("reason")
    why = _RESET_BECAUSE.get(reason or "", reason or "it ended")
    return (
        f"the thread's interpreter was restarted ({why}): variables, imports and definitions from "
        "earlier calls are gone; files under /home/baponi are kept"
    )


def notes_for(job: Job, outcome: Result) -> tuple[str, ...]:
    """The notes an execution's result gets (after any it has already)."""
    ran = outcome.error_message is None  # a platform failure: the program never ran
    streams = outcome.streams_truncated or (("stdout or stderr",) if outcome.output_truncated else ())
    found = (
        timeout_lowered(job.requested_timeout_s, job.limits.timeout_s, job.timeout_cap_by),
        no_network(job.network, ran and not outcome.success, outcome.stderr),
        output_truncated(streams, job.limits.output_limit_bytes),
        no_thread(job.session, job.thread_id),
        session_reset(outcome.session),
    )
    return tuple(note for note in found if note is not None and note not in outcome.notes)
