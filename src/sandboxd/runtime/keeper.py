"""The keeper: ends every sandbox of an instance when the process that started them dies.

bubblewrap's `--die-with-parent` and our parent-death signal both have windows (between fork
and the prctl; and PR_SET_PDEATHSIG fires when the *thread* that forked exits, and sandboxes
are forked on a worker thread), and a SIGKILLed server runs no cleanup at all. Every sandbox
process is in the instance's cgroups from before its exec, so one tiny process per instance
closes every window: it holds the read end of a pipe whose write end only the server holds,
and on EOF (the server is gone, however it went) it freezes, kills and removes everything
under the instance's cgroup parents. It also holds the instance's lease (runtime/lease.py)
until it is done, so a restarted server waits for the sweep instead of racing it.

Run by path with `python -I` and the standard library only, so it starts in ~15 ms; the
cgroup drivers import `sweep` from here for their own start-up sweeps.

    python -I keeper.py <parent dir>...      stdin: the pipe; the lease's fd inherited
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path


class Keeper:
    """The server's side: the pipe's write end, and the keeper's pid to wait for."""

    def __init__(self, parents: Sequence[Path], lease_fd: int) -> None:
        read_end, self._write_end = os.pipe()  # both close-on-exec: no sandbox inherits them
        lease = os.dup(lease_fd)
        try:
            os.set_inheritable(lease, True)  # the keeper's copy of the lease (the flock is shared)
            self._pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", __file__, *map(str, parents)],
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read_end, 0),
                    (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                ],
                setsid=True,  # a terminal's Ctrl-C reaches the server, not the keeper
            )
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)
            os.close(lease)

    def stop(self) -> None:
        """The server stops cleanly: the keeper sweeps what is left (nothing, normally) and exits."""
        if self._write_end >= 0:
            os.close(self._write_end)
            self._write_end = -1
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)


def _groups(parent: Path) -> list[Path]:
    """`parent` and every cgroup below it, deepest first (the order rmdir needs)."""
    found: list[Path] = []
    for root, dirs, _ in os.walk(parent):
        found += [Path(root) / d for d in dirs]
    return sorted(found, key=lambda p: len(p.parts), reverse=True) + [parent]


def _pids(group: Path) -> set[int]:
    try:
        return {int(p) for p in (group / "cgroup.procs").read_text().split()}
    except (OSError, ValueError):
        return set()


def _write(path: Path, value: str) -> None:
    if path.exists():  # cgroupfs: never create a file by writing a missing one
        with contextlib.suppress(OSError):
            path.write_text(value)


def sweep(parents: Iterable[Path], *, keep_parents: bool = False, timeout_s: float = 10.0) -> list[Path]:
    """Kill every process under `parents` (frozen first: forks cannot outrun it) and remove
    their cgroups; with `keep_parents` only the groups below. Returns what could not be removed.

    v1: freezing a parent freezes its whole subtree; v2: `cgroup.kill` kills it.
    """
    parents = [p for p in dict.fromkeys(parents) if p.is_dir()]
    deadline = time.monotonic() + timeout_s
    left: list[Path] = []
    while True:
        left = []
        for parent in parents:
            if not parent.is_dir():
                continue
            groups = _groups(parent)
            freezer = parent / "freezer.state"
            members = {pid for g in groups for pid in _pids(g)}
            if members:
                _write(freezer, "FROZEN")
                _write(parent / "cgroup.kill", "1")
                for pid in members:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                _write(freezer, "THAWED")
            for group in groups:
                if keep_parents and group == parent:
                    continue
                try:
                    os.rmdir(group)
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(group)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.005)


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe's EOF ends the keeper
    parents = [Path(a) for a in argv]
    while os.read(0, 4096):  # the server never writes: this returns b"" when it is gone
        pass
    left = sweep(parents)
    for group in left:
        print(f"sandboxd keeper: cannot remove {group}", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
