"""Network namespaces made by the server (as root) for sandboxes that get some network.

A namespace made here is owned by the host's initial user namespace, so the sandbox, which
lives in a user namespace of its own, holds no capability over it: it cannot change the
addresses, routes or nftables rules we put there. bubblewrap then joins it instead of making
an empty one (the launcher `setns()`s into it before exec).

`unshare(CLONE_NEWNET)` moves only the calling thread, so each namespace is made on a
short-lived thread of its own, which opens the sockets that must live inside it and then
ends; the event loop's thread never changes namespace.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class NetNamespace:
    """An open handle on a namespace, and the listening sockets made inside it."""

    fd: int
    listeners: list[socket.socket] = field(default_factory=list)

    def close(self) -> None:
        for sock in self.listeners:
            sock.close()
        self.listeners.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def create(*, listen: tuple[tuple[str, int], ...] = ()) -> NetNamespace:
    """A new namespace with `lo` up and a listening TCP socket on each (host, port) in it."""
    result: list[NetNamespace | BaseException] = []
    worker = threading.Thread(target=_make, args=(listen, result), name="sandboxd-netns")
    worker.start()
    worker.join()
    made = result[0]
    if isinstance(made, BaseException):
        raise made
    return made


def setns(fd: int) -> None:
    """Join the namespace `fd` (the launcher calls this in the child, as root)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _make(listen: tuple[tuple[str, int], ...], result: list[NetNamespace | BaseException]) -> None:
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    made: NetNamespace | None = None
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        try:
            made = NetNamespace(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            _loopback_up()
            for host, port in listen:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                # IPPROTO_TCP named: asyncio then sets TCP_NODELAY on what it accepts (no
                # Nagle stall between a small response head and its body).
                sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
                made.listeners.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(128)
                sock.setblocking(False)
        finally:
            # Back home; if that failed this thread is in the wrong namespace, and it ends now.
            setns(home)
        result.append(made)
    except BaseException as exc:  # handed to the caller's thread
        if made is not None:
            made.close()
        result.append(exc)
    finally:
        os.close(home)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
