"""Memory of a server process and of the sandboxes under it, read from /proc.

A sandbox's processes (bwrap and the interpreter in its pid namespace) are ordinary host
processes running as the sandbox's host uid, descendants of the server (which also adopts
orphans as a child subreaper). So the sandboxes of one server are its descendants whose real
uid is in that server's sandbox uid range, one uid per sandbox (runtime/users.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
MB = 1_000_000  # the targets are in MB


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    uid: int  # real uid, as the host sees it
    rss_kib: int


@dataclass(frozen=True)
class ServerMemory:
    """VmRSS (now) and VmHWM (peak since start) of the server process itself, in KiB."""

    rss_kib: int
    hwm_kib: int


@dataclass(frozen=True)
class Sandboxes:
    """The sandboxes under a server: how many (distinct uids), their processes, summed memory."""

    count: int
    processes: int
    rss_kib: int
    pss_kib: int  # proportional: shared pages (interpreter, libraries) split between sharers
    others: int  # descendants of the server outside the sandbox uid range (helpers)
    others_rss_kib: int


def _status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def _kib(value: str) -> int:
    return int(value.split()[0]) if value else 0  # "1234 kB"; kernel threads have none


def server_memory(pid: int) -> ServerMemory:
    fields = _status_fields(pid)
    return ServerMemory(_kib(fields["VmRSS"]), _kib(fields["VmHWM"]))


def _processes() -> list[Proc]:
    procs = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _status_fields(int(entry))
        except (FileNotFoundError, ProcessLookupError):  # exited while we read
            continue
        procs.append(
            Proc(
                pid=int(entry),
                ppid=int(fields["PPid"]),
                uid=int(fields["Uid"].split()[0]),
                rss_kib=_kib(fields.get("VmRSS", "")),
            )
        )
    return procs


def _descendants(root: int, procs: list[Proc]) -> list[Proc]:
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def sandboxes(server_pid: int, uids: range) -> Sandboxes:
    """What runs under `server_pid` right now, split by whether its uid is a sandbox uid."""
    under = _descendants(server_pid, _processes())
    boxed = [p for p in under if p.uid in uids]
    others = [p for p in under if p.uid not in uids]
    return Sandboxes(
        count=len({p.uid for p in boxed}),
        processes=len(boxed),
        rss_kib=sum(p.rss_kib for p in boxed),
        pss_kib=sum(_pss_kib(p.pid) for p in boxed),
        others=len(others),
        others_rss_kib=sum(p.rss_kib for p in others),
    )
