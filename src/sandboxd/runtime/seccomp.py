"""Seccomp-BPF: the syscall filter every sandboxed process runs under.

The filter is data: `_DENY` is a sorted table of syscall -> errno with the reason for each row,
and `_ARG_RULES` holds the rows that look at arguments. Everything not listed is allowed
(issue #5 turns this into an allowlist). Syscalls from a foreign architecture (the i386 and
x32 entry points on x86_64) are killed by libseccomp's bad-arch action, so the table cannot be
bypassed through `int 0x80`. Measured against real escape attempts in
reference/isolation-measurements.md §10: ptrace, keyctl, io_uring and netlink are stopped by
this layer alone.
"""

from __future__ import annotations

import errno
import tempfile
from dataclasses import dataclass

import pyseccomp as sc

_EPERM = errno.EPERM

# syscall -> (errno, why)
_DENY: dict[str, tuple[int, str]] = {
    "acct": (_EPERM, "host accounting"),
    "add_key": (_EPERM, "kernel keyrings are not namespaced"),
    "bpf": (_EPERM, "large kernel attack surface"),
    "chroot": (_EPERM, "root changes"),
    "clock_adjtime": (_EPERM, "host clock"),
    "clock_settime": (_EPERM, "host clock"),
    "clone3": (errno.ENOSYS, "flags live in a struct BPF cannot read; libc falls back to clone"),
    "delete_module": (_EPERM, "kernel modules"),
    "fanotify_init": (_EPERM, "filesystem-wide monitoring"),
    "finit_module": (_EPERM, "kernel modules"),
    "fsconfig": (_EPERM, "new mount API"),
    "fsmount": (_EPERM, "new mount API"),
    "fsopen": (_EPERM, "new mount API"),
    "fspick": (_EPERM, "new mount API"),
    "get_mempolicy": (_EPERM, "NUMA"),
    "init_module": (_EPERM, "kernel modules"),
    "io_uring_enter": (_EPERM, "io_uring bypasses seccomp for its operations"),
    "io_uring_register": (_EPERM, "io_uring bypasses seccomp for its operations"),
    "io_uring_setup": (_EPERM, "io_uring bypasses seccomp for its operations"),
    "ioperm": (_EPERM, "raw port I/O"),
    "iopl": (_EPERM, "raw port I/O"),
    "kcmp": (_EPERM, "cross-process inspection"),
    "kexec_file_load": (_EPERM, "kernel replacement"),
    "kexec_load": (_EPERM, "kernel replacement"),
    "keyctl": (_EPERM, "kernel keyrings are not namespaced"),
    "lookup_dcookie": (_EPERM, "profiling interface"),
    "mbind": (_EPERM, "NUMA"),
    "migrate_pages": (_EPERM, "NUMA"),
    "mount": (_EPERM, "mounts"),
    "mount_setattr": (_EPERM, "new mount API"),
    "move_mount": (_EPERM, "new mount API"),
    "move_pages": (_EPERM, "NUMA"),
    "name_to_handle_at": (_EPERM, "file handles bypass path checks"),
    "nfsservctl": (_EPERM, "host services"),
    "open_by_handle_at": (_EPERM, "file handles bypass path checks (shocker)"),
    "open_tree": (_EPERM, "new mount API"),
    "perf_event_open": (_EPERM, "large kernel attack surface, side channels"),
    "pidfd_getfd": (_EPERM, "steals another process's file descriptors"),
    "pivot_root": (_EPERM, "root changes"),
    "process_vm_readv": (_EPERM, "cross-process memory access"),
    "process_vm_writev": (_EPERM, "cross-process memory access"),
    "ptrace": (_EPERM, "without it the sandbox could attach to bwrap's init"),
    "quotactl": (_EPERM, "host quotas"),
    "reboot": (_EPERM, "host power"),
    "request_key": (_EPERM, "kernel keyrings are not namespaced"),
    "set_mempolicy": (_EPERM, "NUMA"),
    "setns": (_EPERM, "namespace changes"),
    "settimeofday": (_EPERM, "host clock"),
    "swapoff": (_EPERM, "host swap"),
    "swapon": (_EPERM, "host swap"),
    "syslog": (_EPERM, "kernel log"),
    "umount2": (_EPERM, "mounts"),
    "unshare": (_EPERM, "namespace changes"),
    "uselib": (_EPERM, "obsolete loader path"),
    "userfaultfd": (_EPERM, "widens kernel race windows"),
    "vhangup": (_EPERM, "terminal control"),
}

_CLONE_NEW_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
_ALLOWED_SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6
_SOCK_TYPE_MASK = 0xF
_SOCK_RAW, _SOCK_PACKET = 3, 10
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C


@dataclass(frozen=True)
class _ArgRule:
    syscall: str
    errno: int
    args: tuple[sc.Arg, ...]
    why: str


def _arg_rules() -> list[_ArgRule]:
    rules = [
        _ArgRule("clone", _EPERM, (sc.Arg(0, sc.MASKED_EQ, flag, flag),), f"{name}: new namespaces")
        for name, flag in _CLONE_NEW_FLAGS.items()
    ]
    # Socket families outside AF_UNIX/INET/INET6 (netlink, packet, ...): the kernel's own answer.
    families = [f for f in range(0, 11) if f not in _ALLOWED_SOCKET_FAMILIES]
    rules += [
        _ArgRule("socket", errno.EAFNOSUPPORT, (sc.Arg(0, sc.EQ, f),), "socket family")
        for f in families
    ]
    rules.append(
        _ArgRule("socket", errno.EAFNOSUPPORT, (sc.Arg(0, sc.GT, 10),), "socket family")
    )
    rules += [
        _ArgRule("socket", _EPERM, (sc.Arg(1, sc.MASKED_EQ, _SOCK_TYPE_MASK, t),), "raw sockets")
        for t in (_SOCK_RAW, _SOCK_PACKET)
    ]
    rules += [
        _ArgRule("socketpair", errno.EAFNOSUPPORT, (sc.Arg(0, sc.EQ, f),), "socket family")
        for f in families
    ]
    rules.append(
        _ArgRule("socketpair", errno.EAFNOSUPPORT, (sc.Arg(0, sc.GT, 10),), "socket family")
    )
    rules += [
        _ArgRule("ioctl", _EPERM, (sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, op),), "terminal injection")
        for op in (_TIOCSTI, _TIOCLINUX)
    ]
    return rules


def _build_filter() -> sc.SyscallFilter:
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    for name, (err, _why) in sorted(_DENY.items()):
        try:
            f.add_rule(sc.ERRNO(err), name)
        except (OSError, ValueError, RuntimeError):
            # Not a syscall on this architecture (e.g. ioperm on aarch64): nothing to deny.
            if sc.resolve_syscall(sc.system_arch(), name) >= 0:
                raise
    for rule in _arg_rules():
        f.add_rule(sc.ERRNO(rule.errno), rule.syscall, *rule.args)
    for number in _unknown_syscall_numbers():
        f.add_rule(sc.ERRNO(errno.ENOSYS), number)
    return f


_NEWER_SYSCALLS_WINDOW = 128


def _unknown_syscall_numbers() -> list[int]:
    """Syscall numbers newer than this libseccomp knows get ENOSYS (fail closed).

    A deny-list names syscalls, so one added to the kernel after libseccomp was built (e.g.
    open_tree_attr, Linux 6.15, part of the new mount API) would otherwise be allowed.
    """
    arch = sc.system_arch()
    highest = max(n for n in range(0, 1024) if _known(arch, n))
    return list(range(highest + 1, highest + 1 + _NEWER_SYSCALLS_WINDOW))


def _known(arch: int, number: int) -> bool:
    try:
        return bool(sc.resolve_syscall(arch, number))
    except (ValueError, OSError, RuntimeError):
        return False


def compile_bpf() -> bytes:
    """The filter as raw BPF, ready for `bwrap --seccomp FD`."""
    f = _build_filter()
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def export_pfc() -> str:
    """The filter in libseccomp's readable pseudo-filter form (for review and golden tests)."""
    f = _build_filter()
    with tempfile.TemporaryFile("w+") as out:
        f.export_pfc(out)
        out.seek(0)
        return out.read()


def denied_syscalls() -> dict[str, tuple[int, str]]:
    return dict(_DENY)
