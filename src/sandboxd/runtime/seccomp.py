"""Seccomp-BPF: the syscall allowlist every sandboxed process runs under.

The filter is data, in one place:

- `_ALLOW`: every syscall the sandbox may make, with why. The list was gathered by running real
  workloads under `strace -f -c` (Python with asyncio, multiprocessing, subprocess, ssl, sqlite3,
  threads; Node with fs, child_process, worker_threads, an http server on loopback, crypto;
  Bash with pipes, subshells, coreutils, find, tar, sed, awk, grep; pip, venv, npm) plus the
  calls their standard libraries expose for the same jobs. Names only x86_64 has (the legacy
  `open`, `stat`, `fork`, ... that aarch64 never had) are in `_X86_64_ONLY`; the aarch64 filter
  is generated from the same table without them.
- `_arg_rules()`: the syscalls allowed only for some arguments: `clone` without namespace
  flags, `socket` for AF_UNIX/AF_INET/AF_INET6 stream and datagram sockets, `socketpair` for
  AF_UNIX, `ioctl` except terminal injection and line disciplines, `personality` queries.
- `_REFUSE`: known-dangerous calls answered with an errno that runtimes handle (EPERM, or
  ENOSYS for `clone3` so glibc falls back to `clone`), with why.
- `_KILL`: calls no interpreter or package manager makes and only an attack would; the whole
  process is killed (SECCOMP_RET_KILL_PROCESS, i.e. SIGSYS), which the runner reports as status
  `seccomp` / error `security_policy_violation`.

Everything else, including syscalls newer than libseccomp's table, answers ENOSYS: the answer
of an older kernel, which glibc, CPython, libuv and V8 all handle by falling back (an EPERM
there broke `faccessat2` users under Docker's old profile). Syscalls from a foreign
architecture (i386 `int 0x80`, x32 on x86_64) kill the process. Measured against real escape
attempts in reference/isolation-measurements.md §10 and tests/security/test_seccomp.py.
"""

from __future__ import annotations

import errno
import platform
import tempfile
from dataclasses import dataclass

import pyseccomp as sc

#: Architectures the table is written for (`uname -m` names) and their libseccomp tokens.
ARCHITECTURES: dict[str, int] = {"x86_64": sc.Arch.X86_64, "aarch64": sc.Arch.AARCH64}

_DEFAULT_ERRNO = errno.ENOSYS

# syscall -> why it is allowed. Grouped by purpose; names in _X86_64_ONLY exist on x86_64 only.
_ALLOW: dict[str, str] = {
    # --- files and directories (the mount namespace decides what exists, mounts what is writable)
    "access": "path checks",
    "chdir": "working directory",
    "chmod": "own files",
    "chown": "own files (no CAP_CHOWN: only to the one mapped uid)",
    "close": "files",
    "close_range": "subprocess closes inherited fds",
    "copy_file_range": "shutil.copyfile, cp",
    "creat": "files",
    "dup": "files",
    "dup2": "files",
    "dup3": "files",
    "faccessat": "path checks",
    "faccessat2": "path checks (glibc tries it first)",
    "fadvise64": "read-ahead hints",
    "fallocate": "preallocation (bounded by the mount's size)",
    "fchdir": "working directory",
    "fchmod": "own files",
    "fchmodat": "own files",
    "fchmodat2": "own files (newer glibc)",
    "fchown": "own files",
    "fchownat": "own files",
    "fcntl": "file descriptor flags and locks",
    "fdatasync": "sqlite3, pip",
    "fgetxattr": "extended attributes (cp -a, pip)",
    "flistxattr": "extended attributes",
    "flock": "pip and npm lock files",
    "fremovexattr": "extended attributes",
    "fsetxattr": "extended attributes (security.* needs capabilities)",
    "fstat": "files",
    "fstatfs": "free space, filesystem type",
    "fsync": "sqlite3, pip",
    "futimesat": "timestamps",
    "ftruncate": "files",
    "getcwd": "working directory",
    "getdents": "directory listing",
    "getdents64": "directory listing",
    "getxattr": "extended attributes",
    "inotify_add_watch": "file watchers (node fs.watch)",
    "inotify_init": "file watchers",
    "inotify_init1": "file watchers",
    "inotify_rm_watch": "file watchers",
    "lchown": "own files",
    "lgetxattr": "extended attributes (ls, cp)",
    "link": "hard links",
    "linkat": "hard links",
    "listxattr": "extended attributes",
    "llistxattr": "extended attributes",
    "lremovexattr": "extended attributes",
    "lseek": "files",
    "lsetxattr": "extended attributes",
    "lstat": "files",
    "memfd_create": "anonymous files (V8, multiprocessing)",
    "mkdir": "directories",
    "mkdirat": "directories",
    "mknod": "FIFOs and sockets (device nodes need CAP_MKNOD)",
    "mknodat": "FIFOs (mkfifo)",
    "newfstatat": "files",
    "open": "files",
    "openat": "files",
    "openat2": "files (stricter openat)",
    "pipe": "pipes",
    "pipe2": "pipes",
    "pread64": "files",
    "preadv": "files",
    "preadv2": "files",
    "pwrite64": "files",
    "pwritev": "files",
    "pwritev2": "files",
    "read": "files",
    "readahead": "read-ahead hints",
    "readlink": "symlinks",
    "readlinkat": "symlinks",
    "readv": "files",
    "removexattr": "extended attributes",
    "rename": "files",
    "renameat": "files",
    "renameat2": "files (mv, pip)",
    "rmdir": "directories",
    "sendfile": "file copies (shutil, node)",
    "setxattr": "extended attributes",
    "splice": "pipe copies",
    "stat": "files",
    "statfs": "free space (df)",
    "statx": "files (ls, coreutils)",
    "symlink": "symlinks",
    "symlinkat": "symlinks (venv, npm)",
    "sync_file_range": "writeback hints",
    "syncfs": "flush one filesystem",
    "tee": "pipe copies",
    "truncate": "files",
    "umask": "file modes",
    "unlink": "files",
    "unlinkat": "files",
    "utime": "timestamps",
    "utimensat": "timestamps (touch, tar)",
    "utimes": "timestamps",
    "vmsplice": "pipe copies",
    "write": "files",
    "writev": "files",
    # --- memory
    "brk": "heap",
    "madvise": "allocators, V8",
    "map_shadow_stack": "glibc shadow stacks (CET)",
    "membarrier": "V8 and JIT code patching",
    "mincore": "allocators (own mappings only)",
    "mlock": "bounded by RLIMIT_MEMLOCK",
    "mlock2": "bounded by RLIMIT_MEMLOCK",
    "mlockall": "bounded by RLIMIT_MEMLOCK",
    "mmap": "memory",
    "mprotect": "memory, JIT",
    "mremap": "memory",
    "msync": "mmap-ed files",
    "munlock": "memory",
    "munlockall": "memory",
    "munmap": "memory",
    "pkey_alloc": "V8 memory protection keys",
    "pkey_free": "V8 memory protection keys",
    "pkey_mprotect": "V8 memory protection keys",
    # --- processes and threads (the pid namespace holds only the sandbox's own processes)
    "arch_prctl": "thread-local storage at startup",
    "capget": "capabilities are all zero",
    "capset": "capabilities can only be dropped (no_new_privs, empty bounding set)",
    "execve": "programs",
    "execveat": "programs",
    "exit": "threads",
    "exit_group": "processes",
    "fork": "processes",
    "futex": "threads, locks",
    "futex_requeue": "threads, locks (futex2)",
    "futex_wait": "threads, locks (futex2)",
    "futex_waitv": "threads, locks",
    "futex_wake": "threads, locks (futex2)",
    "getcpu": "sched_getcpu",
    "getegid": "identity",
    "geteuid": "identity",
    "getgid": "identity",
    "getgroups": "identity",
    "getpgid": "job control",
    "getpgrp": "job control",
    "getpid": "identity",
    "getppid": "identity",
    "getpriority": "nice",
    "getrandom": "random numbers (os.urandom, node's CSPRNG, OpenSSL)",
    "getresgid": "identity",
    "getresuid": "identity",
    "getrlimit": "limits",
    "getrusage": "resource usage",
    "getsid": "job control",
    "gettid": "threads",
    "getuid": "identity",
    "ioprio_get": "I/O priority",
    "ioprio_set": "I/O priority (raising it needs CAP_SYS_ADMIN)",
    "kill": "signals (own pid namespace only)",
    "landlock_add_rule": "unprivileged self-restriction",
    "landlock_create_ruleset": "unprivileged self-restriction",
    "landlock_restrict_self": "unprivileged self-restriction",
    "pidfd_open": "process handles (own pid namespace)",
    "pidfd_send_signal": "signals (own pid namespace)",
    "prctl": "thread names, death signals, no_new_privs",
    "prlimit64": "limits (can only be lowered)",
    "restart_syscall": "signals",
    "rseq": "glibc restartable sequences",
    "sched_get_priority_max": "scheduling",
    "sched_get_priority_min": "scheduling",
    "sched_getaffinity": "os.cpu_count, node os.cpus",
    "sched_getattr": "scheduling",
    "sched_getparam": "scheduling",
    "sched_getscheduler": "scheduling",
    "sched_rr_get_interval": "scheduling",
    "sched_setaffinity": "scheduling (within the cgroup's cpus)",
    "sched_setattr": "scheduling (real-time needs CAP_SYS_NICE)",
    "sched_setparam": "scheduling",
    "sched_setscheduler": "scheduling (real-time needs CAP_SYS_NICE)",
    "sched_yield": "threads",
    "seccomp": "a program may stack its own filter (it can only restrict)",
    "set_robust_list": "threads",
    "set_tid_address": "threads",
    "setfsgid": "identity (only the mapped gid exists)",
    "setfsuid": "identity (only the mapped uid exists)",
    "setgid": "identity (only the mapped gid exists)",
    "setgroups": "identity (refused by the user namespace)",
    "setpgid": "job control",
    "setpriority": "nice (raising priority needs CAP_SYS_NICE)",
    "setregid": "identity",
    "setresgid": "identity",
    "setresuid": "identity",
    "setreuid": "identity",
    "setrlimit": "limits (can only be lowered)",
    "setsid": "sessions",
    "setuid": "identity (only the mapped uid exists)",
    "sysinfo": "memory and uptime (os.sysinfo, node os.totalmem)",
    "tgkill": "signals to threads",
    "times": "process times",
    "tkill": "signals to threads",
    "uname": "platform",
    "vfork": "posix_spawn, bash",
    "wait4": "children",
    "waitid": "children",
    # --- signals
    "alarm": "signals",
    "pause": "signals",
    "rt_sigaction": "signals",
    "rt_sigpending": "signals",
    "rt_sigprocmask": "signals",
    "rt_sigqueueinfo": "signals",
    "rt_sigreturn": "signals",
    "rt_sigsuspend": "signals",
    "rt_sigtimedwait": "signals",
    "rt_tgsigqueueinfo": "signals",
    "sigaltstack": "signals (stack overflow handlers)",
    "signalfd": "signals",
    "signalfd4": "signals",
    # --- time (reading only: setting clocks is refused)
    "clock_getres": "time",
    "clock_gettime": "time",
    "clock_nanosleep": "sleep",
    "getitimer": "timers",
    "gettimeofday": "time",
    "nanosleep": "sleep",
    "setitimer": "timers",
    "time": "time",
    "timer_create": "timers",
    "timer_delete": "timers",
    "timer_getoverrun": "timers",
    "timer_gettime": "timers",
    "timer_settime": "timers",
    "timerfd_create": "timers (libuv)",
    "timerfd_gettime": "timers",
    "timerfd_settime": "timers",
    # --- event loops
    "epoll_create": "event loops",
    "epoll_create1": "event loops (asyncio, libuv)",
    "epoll_ctl": "event loops",
    "epoll_pwait": "event loops (libuv)",
    "epoll_pwait2": "event loops",
    "epoll_wait": "event loops",
    "eventfd": "event loops",
    "eventfd2": "event loops (libuv)",
    "poll": "event loops",
    "ppoll": "event loops",
    "pselect6": "event loops (bash read -t)",
    "select": "event loops",
    # --- System V and POSIX IPC (the IPC namespace is the sandbox's own)
    "mq_getsetattr": "message queues",
    "mq_notify": "message queues",
    "mq_open": "message queues",
    "mq_timedreceive": "message queues",
    "mq_timedsend": "message queues",
    "mq_unlink": "message queues",
    "msgctl": "message queues",
    "msgget": "message queues",
    "msgrcv": "message queues",
    "msgsnd": "message queues",
    "semctl": "semaphores",
    "semget": "semaphores",
    "semop": "semaphores",
    "semtimedop": "semaphores",
    "shmat": "shared memory",
    "shmctl": "shared memory",
    "shmdt": "shared memory",
    "shmget": "shared memory",
    # --- sockets (which ones may be created: _arg_rules(); what they reach: the netns)
    "accept": "servers",
    "accept4": "servers",
    "bind": "servers",
    "connect": "clients",
    "getpeername": "sockets",
    "getsockname": "sockets",
    "getsockopt": "sockets",
    "listen": "servers",
    "recvfrom": "sockets",
    "recvmmsg": "sockets",
    "recvmsg": "sockets, fd passing",
    "sendmmsg": "sockets (glibc resolver)",
    "sendmsg": "sockets, fd passing",
    "sendto": "sockets",
    "setsockopt": "sockets",
    "shutdown": "sockets",
}

#: Legacy syscalls of x86_64 that aarch64 never had (it has only the *at and generic forms).
_X86_64_ONLY = frozenset({
    "access", "alarm", "arch_prctl", "chmod", "chown", "creat", "dup2", "epoll_create",
    "epoll_wait", "eventfd", "fork", "futimesat", "getdents", "getpgrp", "inotify_init", "ioperm",
    "iopl", "lchown", "link", "lstat", "mkdir", "mknod", "open", "pause", "pipe", "poll",
    "readlink", "rename", "rmdir", "select", "signalfd", "stat", "symlink", "time", "unlink",
    "utime", "utimes", "vfork",
})

_EPERM = errno.EPERM

# syscall -> (errno, why): refused, but the process lives on (runtimes probe some of these).
_REFUSE: dict[str, tuple[int, str]] = {
    "acct": (_EPERM, "host accounting"),
    "add_key": (_EPERM, "kernel keyrings are not namespaced"),
    "adjtimex": (_EPERM, "host clock"),
    "chroot": (_EPERM, "root changes"),
    "clock_adjtime": (_EPERM, "host clock"),
    "clock_settime": (_EPERM, "host clock"),
    "clone3": (errno.ENOSYS, "flags live in a struct BPF cannot read; glibc falls back to clone"),
    "fanotify_init": (_EPERM, "filesystem-wide monitoring"),
    "fsconfig": (_EPERM, "new mount API"),
    "fsmount": (_EPERM, "new mount API"),
    "fsopen": (_EPERM, "new mount API"),
    "fspick": (_EPERM, "new mount API"),
    "get_mempolicy": (_EPERM, "NUMA; node probes it and carries on"),
    "io_uring_enter": (_EPERM, "io_uring bypasses seccomp for its operations; libuv falls back"),
    "io_uring_register": (_EPERM, "io_uring bypasses seccomp for its operations"),
    "io_uring_setup": (_EPERM, "io_uring bypasses seccomp for its operations; libuv falls back"),
    "kcmp": (_EPERM, "cross-process inspection"),
    "keyctl": (_EPERM, "kernel keyrings are not namespaced"),
    "mbind": (_EPERM, "NUMA"),
    "migrate_pages": (_EPERM, "NUMA, other processes' pages"),
    "mount": (_EPERM, "mounts"),
    "mount_setattr": (_EPERM, "new mount API"),
    "move_mount": (_EPERM, "new mount API"),
    "move_pages": (_EPERM, "NUMA, other processes' pages"),
    "name_to_handle_at": (_EPERM, "file handles bypass path checks"),
    "open_tree": (_EPERM, "new mount API"),
    "perf_event_open": (_EPERM, "large kernel attack surface, side channels; profilers probe it"),
    "pidfd_getfd": (_EPERM, "steals another process's file descriptors"),
    "pivot_root": (_EPERM, "root changes"),
    "process_madvise": (_EPERM, "cross-process memory advice"),
    "process_vm_readv": (_EPERM, "cross-process memory access"),
    "process_vm_writev": (_EPERM, "cross-process memory access"),
    "ptrace": (_EPERM, "without it the sandbox could attach to bwrap's init; debuggers probe it"),
    "quotactl": (_EPERM, "host quotas"),
    "quotactl_fd": (_EPERM, "host quotas"),
    "request_key": (_EPERM, "kernel keyrings are not namespaced"),
    "set_mempolicy": (_EPERM, "NUMA; node probes it and carries on"),
    "set_mempolicy_home_node": (_EPERM, "NUMA"),
    "setdomainname": (_EPERM, "host identity"),
    "sethostname": (_EPERM, "host identity"),
    "setns": (_EPERM, "namespace changes"),
    "settimeofday": (_EPERM, "host clock"),
    "sync": (_EPERM, "flushes every filesystem of the host"),
    "syslog": (_EPERM, "kernel log"),
    "umount2": (_EPERM, "mounts"),
    "unshare": (_EPERM, "namespace changes"),
    "vhangup": (_EPERM, "terminal control"),
}

# syscall -> why: the process is killed (SIGSYS), reported as status `seccomp`.
_KILL: dict[str, str] = {
    "bpf": "eBPF: large kernel attack surface (verifier bugs); no runtime uses it",
    "delete_module": "kernel modules",
    "finit_module": "kernel modules",
    "init_module": "kernel modules",
    "ioperm": "raw port I/O",
    "iopl": "raw port I/O",
    "kexec_file_load": "kernel replacement",
    "kexec_load": "kernel replacement",
    "open_by_handle_at": "file handles escape mount namespaces (CVE-2014 'shocker')",
    "reboot": "host power",
    "swapoff": "host swap",
    "swapon": "host swap",
    "userfaultfd": "widens kernel race windows for exploits; no runtime uses it",
}

# --- argument rules ---------------------------------------------------------------------

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
_AF_UNIX, _AF_INET, _AF_INET6 = 1, 2, 10
_SOCK_TYPE_MASK = 0xF
_SOCK_STREAM, _SOCK_DGRAM = 1, 2
#: ioctl requests refused: TIOCSTI and TIOCLINUX inject input into a terminal; TIOCSETD loads
#: a line discipline (n_gsm and friends have been a steady source of kernel bugs).
_REFUSED_IOCTLS = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C, "TIOCSETD": 0x5423}
#: personality(): the values Docker's profile allows: PER_LINUX, PER_LINUX32, UNAME26 and
#: combinations, and the 0xffffffff query. Others (e.g. READ_IMPLIES_EXEC) answer ENOSYS.
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


@dataclass(frozen=True)
class _ArgRule:
    syscall: str
    action: int
    args: tuple[sc.Arg, ...]
    why: str


def _masked_complement(refused: set[int], width: int = 32) -> list[tuple[int, int]]:
    """(mask, value) pairs whose matches are exactly the `width`-bit numbers not in `refused`.

    libseccomp drops conditional rules when an unconditional one exists for the same syscall,
    so "allow ioctl except these requests" is spelled as the complement, bit prefix by bit
    prefix (about `width` pairs per refused value).
    """
    pairs: list[tuple[int, int]] = []

    def split(mask: int, value: int, bit: int, inside: set[int]) -> None:
        if not inside:
            pairs.append((mask, value))
            return
        if bit < 0:
            return  # exactly a refused value
        for b in (0, 1):
            m, v = mask | (1 << bit), value | (b << bit)
            split(m, v, bit - 1, {x for x in inside if x & (1 << bit) == b << bit})

    split(0, 0, width - 1, set(refused))
    return pairs


def _arg_rules() -> list[_ArgRule]:
    eperm, eafnosupport = sc.ERRNO(_EPERM), sc.ERRNO(errno.EAFNOSUPPORT)
    all_new = sum(_CLONE_NEW_FLAGS.values())
    rules = [_ArgRule("clone", sc.ALLOW, (sc.Arg(0, sc.MASKED_EQ, all_new, 0),), "fork, threads")]
    rules += [
        _ArgRule("clone", eperm, (sc.Arg(0, sc.MASKED_EQ, flag, flag),), f"{name}: new namespaces")
        for name, flag in _CLONE_NEW_FLAGS.items()
    ]
    # socket(): the family decides first. Netlink, packet, vsock, alg ... answer EAFNOSUPPORT
    # (the kernel's own answer for a family it lacks); raw and other types of IP sockets EPERM.
    rules.append(_ArgRule("socket", sc.ALLOW, (sc.Arg(0, sc.EQ, _AF_UNIX),), "AF_UNIX, any type"))
    for family in (_AF_INET, _AF_INET6):
        for kind in range(_SOCK_TYPE_MASK + 1):
            ok = kind in (_SOCK_STREAM, _SOCK_DGRAM)
            rules.append(
                _ArgRule(
                    "socket",
                    sc.ALLOW if ok else eperm,
                    (sc.Arg(0, sc.EQ, family), sc.Arg(1, sc.MASKED_EQ, _SOCK_TYPE_MASK, kind)),
                    "TCP and UDP" if ok else "raw and other IP socket types",
                )
            )
    rules.append(_ArgRule("socketpair", sc.ALLOW, (sc.Arg(0, sc.EQ, _AF_UNIX),), "AF_UNIX"))
    for syscall, allowed in (("socket", (1, 2, 10)), ("socketpair", (1,))):
        rules += [
            _ArgRule(syscall, eafnosupport, (sc.Arg(0, sc.EQ, f),), "socket family")
            for f in range(_AF_INET6 + 1)
            if f not in allowed
        ]
        rules.append(
            _ArgRule(syscall, eafnosupport, (sc.Arg(0, sc.GT, _AF_INET6),), "socket family")
        )
    rules += [
        _ArgRule("ioctl", eperm, (sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, op),), name)
        for name, op in _REFUSED_IOCTLS.items()
    ]
    rules += [
        _ArgRule("ioctl", sc.ALLOW, (sc.Arg(1, sc.MASKED_EQ, mask, value),), "terminals, files")
        for mask, value in _masked_complement(set(_REFUSED_IOCTLS.values()))
    ]
    rules += [
        _ArgRule("personality", sc.ALLOW, (sc.Arg(0, sc.EQ, p),), "execution domain queries")
        for p in _PERSONALITIES
    ]
    return rules


# --- building the filter --------------------------------------------------------------------


def native_arch() -> str:
    return _arch(platform.machine())


def _arch(name: str | None) -> str:
    name = name or platform.machine()
    if name not in ARCHITECTURES:
        raise ValueError(f"no seccomp table for {name!r} (have {sorted(ARCHITECTURES)})")
    return name


def _on(arch: str, name: str) -> bool:
    return arch == "x86_64" or name not in _X86_64_ONLY


def allowed_syscalls(arch: str | None = None) -> dict[str, str]:
    """name -> why, for `arch` (default: this machine's); argument-checked calls excluded."""
    arch = _arch(arch)
    return {name: why for name, why in _ALLOW.items() if _on(arch, name)}


def argument_checked_syscalls() -> frozenset[str]:
    return frozenset(rule.syscall for rule in _arg_rules())


def refused_syscalls(arch: str | None = None) -> dict[str, tuple[int, str]]:
    """name -> (errno, why)."""
    arch = _arch(arch)
    return {name: row for name, row in _REFUSE.items() if _on(arch, name)}


def killed_syscalls(arch: str | None = None) -> dict[str, str]:
    """name -> why."""
    arch = _arch(arch)
    return {name: why for name, why in _KILL.items() if _on(arch, name)}


def _build_filter(arch: str) -> sc.SyscallFilter:
    f = sc.SyscallFilter(defaction=sc.ERRNO(_DEFAULT_ERRNO))
    if arch != native_arch():
        # Rules name syscalls; libseccomp translates each name to the target's number.
        f.add_arch(ARCHITECTURES[arch])
        f.remove_arch(sc.Arch.NATIVE)
    # i386/x32 entry points on x86_64 (and anything else foreign) end the whole process, not
    # one thread of it (libseccomp's default, which could leave a runtime hanging).
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # binary search over syscall numbers, not a chain
    for name in allowed_syscalls(arch):
        f.add_rule(sc.ALLOW, name)
    for name, (err, _why) in refused_syscalls(arch).items():
        if err != _DEFAULT_ERRNO:  # libseccomp refuses a rule that repeats the default action
            f.add_rule(sc.ERRNO(err), name)
    for name in killed_syscalls(arch):
        f.add_rule(sc.KILL_PROCESS, name)
    for rule in _arg_rules():
        f.add_rule(rule.action, rule.syscall, *rule.args)
    return f


def compile_bpf(arch: str | None = None) -> bytes:
    """The filter as raw BPF, ready for `bwrap --seccomp FD`."""
    f = _build_filter(_arch(arch))
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def export_pfc(arch: str | None = None) -> str:
    """The filter in libseccomp's readable pseudo-filter form (for review and tests)."""
    f = _build_filter(_arch(arch))
    with tempfile.TemporaryFile("w+") as out:
        f.export_pfc(out)
        out.seek(0)
        return out.read()
