"""What the sandbox sees of /proc (and why it sees no /sys).

bwrap mounts a fresh procfs for the sandbox's pid namespace, so /proc/<pid> holds only the
sandbox's own processes, and /proc/net, /proc/sysvipc are its own namespaces'. The rest of
procfs is the one kernel's: files there that describe the host rather than the sandbox are
covered here, read-only, as runc and Docker do (their list, plus /proc/cmdline, which on these
VMs carries the host agent's command line).

A cover costs one mount per execution (about 0.3-0.6 ms each, measured), so only entries the
sandbox could actually read are covered: files that are not world-readable (kmsg, timer_list,
slabinfo, kpage*, ... mode 0400) are already closed by the kernel, since the sandbox's uid is
not root, and entries this kernel lacks need nothing. /proc/sys is left readable: its files
belong to the host's root, unmapped in the sandbox's user namespace, so nothing there is
writable (checked by tests/security).

Host-wide counters stay visible on purpose: cpuinfo, meminfo, stat, loadavg, uptime, vmstat.
Runtimes read them (node's os.cpus(), ps, free), and sysinfo(2) tells the same anyway.

/sys is not mounted at all: nothing in the runtimes needs it (glibc falls back to /proc/stat
for the CPU count, libuv to /proc for memory limits), and it is the host's device tree.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable

PROC = "/proc"

#: Files covered by an empty read-only file (a bind of /dev/null: reading it fails with EACCES).
COVERED_FILES = (
    "cmdline",  # the host kernel's and its init's command line
    "config.gz",  # the host kernel's build configuration: a map for exploits
    "kallsyms",  # kernel symbols (addresses are zeroed for non-root; names still help exploits)
    "kcore",
    "keys",  # kernel keyrings are not namespaced
    "key-users",  # every host uid holding keys
    "latency_stats",
    "sched_debug",  # every task on the host
    "sysrq-trigger",
    "timer_list",  # every timer on the host, with its task's pid and name
    "timer_stats",
)

#: Directories covered by an empty read-only tmpfs.
COVERED_DIRS = (
    "acpi",
    "asound",
    "bus",  # the host's PCI and input devices, PCI config space
    "scsi",
)


def mount_args(proc_root: str = PROC) -> list[str]:
    """bwrap arguments covering what the sandbox could read of `proc_root`'s host entries.

    To follow `--proc /proc` in the argv. Decided from the host's /proc, which is the same
    kernel; cached, since a running kernel does not grow or lose these entries.
    """
    return list(_mount_args(proc_root))


@functools.cache
def _mount_args(proc_root: str) -> tuple[str, ...]:
    args: list[str] = []
    for name in COVERED_FILES:
        if _readable(os.path.join(proc_root, name), stat.S_ISREG):
            args += ["--ro-bind", "/dev/null", f"{PROC}/{name}"]
    for name in COVERED_DIRS:
        path = os.path.join(proc_root, name)
        if _readable(path, stat.S_ISDIR) and os.listdir(path):
            dest = f"{PROC}/{name}"
            args += ["--size", "4096", "--tmpfs", dest, "--remount-ro", dest]
    return tuple(args)


def _readable(path: str, kind: Callable[[int], bool]) -> bool:
    """Exists as `kind`, and an unprivileged uid could read or write it."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return kind(st.st_mode) and bool(st.st_mode & (stat.S_IROTH | stat.S_IWOTH))
