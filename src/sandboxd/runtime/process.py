"""Start a child off the event loop and drive it with asyncio streams.

`asyncio.create_subprocess_exec` forks and waits for the child's exec in the event loop's
thread. Our launcher's preexec moves the child into its cgroups first, and on cgroup v1 that
write takes 8-14 ms (reference/isolation-measurements.md), all of it time in which the server
answers nothing. Here `subprocess.Popen` runs on a worker thread; the loop gets the pipes
(`connect_read_pipe` / `connect_write_pipe`) and the exit (a pidfd it watches).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Sequence

_LIMIT = 64 * 1024


class Child:
    """The parts of `asyncio.subprocess.Process` the runner uses."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout = asyncio.StreamReader(limit=_LIMIT)
        self.stderr = asyncio.StreamReader(limit=_LIMIT)
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        popen = self._popen
        assert popen.stdout is not None and popen.stderr is not None
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self.stdout), popen.stdout)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self.stderr), popen.stderr)
        if popen.stdin is not None:
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), popen.stdin
            )
            self.stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        pidfd = os.pidfd_open(self.pid)
        loop.add_reader(pidfd, self._reap, pidfd)

    def _reap(self, pidfd: int) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                return  # spurious wake-up: not exited yet
            self.returncode = os.waitstatus_to_exitcode(status)
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if self.returncode is None:  # reaped elsewhere: we cannot know the status
            self.returncode = -1
        self._popen.returncode = self.returncode  # so Popen does not wait for it again
        if not self._exited.done():
            self._exited.set_result(self.returncode)


async def spawn(
    argv: Sequence[str],
    *,
    stdin_pipe: bool,
    pass_fds: Sequence[int],
    preexec_fn: Callable[[], None],
) -> Child:
    """Fork and exec on a worker thread; stdout and stderr are pipes, stdin a pipe or /dev/null.

    Not cancellable halfway: a cancel waits for the fork to finish, kills and reaps the child,
    then propagates, so no process is left without an owner.
    """
    started = asyncio.ensure_future(_spawn(argv, stdin_pipe, pass_fds, preexec_fn))
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            child = await started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            await child.wait()
        raise


async def _spawn(
    argv: Sequence[str], stdin_pipe: bool, pass_fds: Sequence[int], preexec_fn: Callable[[], None]
) -> Child:
    loop = asyncio.get_running_loop()

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={},
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            preexec_fn=preexec_fn,
        )

    child = Child(await loop.run_in_executor(None, popen))
    await child._connect()
    return child
