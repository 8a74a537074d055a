"""The seccomp allowlist as data, for x86_64 and aarch64. No kernel needed.

A small classic-BPF interpreter runs the compiled program on a `struct seccomp_data`, so the
tests check what the kernel would decide for every row of the table, on both architectures
(the aarch64 filter cannot run on this machine, but its BPF can be executed here).
"""

from __future__ import annotations

import errno
import platform
import random
import re
import struct

import pyseccomp as sc
import pytest

from sandboxd.runtime import seccomp

ARCHES = list(seccomp.ARCHITECTURES)
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
BPF_LD_W_ABS = 0x20
BPF_JMP_JGE_K = 0x35
BPF_RET_K = 0x06
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
ENOSYS_RET = SECCOMP_RET_ERRNO | errno.ENOSYS

#: The calls the issue names as dangerous: none may be allowed, on any architecture.
DANGEROUS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root",
    "chroot", "unshare", "setns", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "open_by_handle_at",
    "fsopen", "fsmount", "open_tree", "move_mount", "clone3", "reboot", "swapon", "syslog",
)


@pytest.fixture(scope="module", params=ARCHES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def bpf(arch: str) -> bytes:
    return seccomp.compile_bpf(arch)


def nr(arch: str, name: str) -> int:
    number = sc.resolve_syscall(seccomp.ARCHITECTURES[arch], name)
    assert number >= 0, (arch, name)
    return number


def instructions(program: bytes) -> list[tuple[int, int, int, int]]:
    """struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; } in native byte order."""
    return list(struct.iter_unpack("=HBBI", program))


def run_filter(program: bytes, arch: str, nr: int, args: tuple[int, ...] = (), audit: int | None = None) -> int:
    full_args = (tuple(args) + (0,) * 6)[:6]
    audit = AUDIT_ARCH[arch] if audit is None else audit
    data = struct.pack("=iIQ6Q", nr, audit, 0, *(a & 0xFFFFFFFFFFFFFFFF for a in full_args))
    insns = instructions(program)
    acc = x = 0
    mem = [0] * 16
    pc = 0
    for _ in range(100_000):
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if code == 0x20:  # LD W ABS
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x60:  # LD MEM
            acc = mem[k]
        elif code == 0x61:  # LDX MEM
            x = mem[k]
        elif code == 0x00:  # LD IMM
            acc = k
        elif code == 0x01:  # LDX IMM
            x = k
        elif code == 0x02:  # ST
            mem[k] = acc
        elif code == 0x03:  # STX
            mem[k] = x
        elif code == 0x54:  # ALU AND K
            acc &= k
        elif code == 0x44:  # ALU OR K
            acc |= k
        elif code == 0x07:  # TAX
            x = acc
        elif code == 0x87:  # TXA
            acc = x
        elif code == 0x05:  # JA
            pc += k
        elif cls == 0x05:  # conditional jumps, K or X operand
            operand = x if code & 0x08 else k
            op = code & 0xF0
            if op == 0x10:
                taken = acc == operand
            elif op == 0x20:
                taken = acc > operand
            elif op == 0x30:
                taken = acc >= operand
            elif op == 0x40:
                taken = bool(acc & operand)
            else:
                raise AssertionError(f"unknown jump 0x{code:02x}")
            pc += jt if taken else jf
        elif code == 0x06:  # RET K
            return k
        elif code == 0x16:  # RET A
            return acc
        else:
            raise AssertionError(f"opcode 0x{code:02x} not emulated")
    raise AssertionError("filter did not return")


def errno_ret(e: int) -> int:
    return SECCOMP_RET_ERRNO | e


# --------------------------------------------------------------------------- the table


def test_tables_are_disjoint() -> None:
    allowed = set(seccomp.allowed_syscalls("x86_64"))
    refused = set(seccomp.refused_syscalls("x86_64"))
    killed = set(seccomp.killed_syscalls("x86_64"))
    checked = seccomp.argument_checked_syscalls()
    for a, b in [(allowed, refused), (allowed, killed), (refused, killed), (allowed, checked),
                 (refused, checked), (killed, checked)]:
        assert a & b == set()


def test_every_name_is_a_syscall_of_its_architecture(arch: str) -> None:
    names = (
        set(seccomp.allowed_syscalls(arch))
        | set(seccomp.refused_syscalls(arch))
        | set(seccomp.killed_syscalls(arch))
        | seccomp.argument_checked_syscalls()
    )
    missing = sorted(n for n in names if sc.resolve_syscall(seccomp.ARCHITECTURES[arch], n) < 0)
    assert missing == []


def test_x86_64_only_names_are_exactly_the_ones_aarch64_lacks() -> None:
    x86 = seccomp.allowed_syscalls("x86_64") | seccomp.killed_syscalls("x86_64")
    arm = seccomp.allowed_syscalls("aarch64") | seccomp.killed_syscalls("aarch64")
    dropped = set(x86) - set(arm)
    assert dropped == {n for n in x86 if sc.resolve_syscall(sc.Arch.AARCH64, n) < 0}
    assert "open" in dropped and "openat" in arm and "fork" in dropped and "clone" not in arm


@pytest.mark.parametrize("name", DANGEROUS)
def test_dangerous_calls_are_never_allowed(name: str) -> None:
    for arch in ARCHES:
        assert name not in seccomp.allowed_syscalls(arch)
        assert name not in seccomp.argument_checked_syscalls()
        assert name in seccomp.refused_syscalls(arch) or name in seccomp.killed_syscalls(arch)


def test_allowlist_size_is_deliberate(arch: str) -> None:
    """A large jump means someone allowed a family of calls; look at the diff, then adjust."""
    size = len(seccomp.allowed_syscalls(arch)) + len(seccomp.argument_checked_syscalls())
    assert {"x86_64": range(260, 300), "aarch64": range(220, 260)}[arch].count(size), size


def test_every_row_says_why() -> None:
    rows = [*seccomp.allowed_syscalls("x86_64").values(), *seccomp.killed_syscalls("x86_64").values()]
    rows += [why for _errno, why in seccomp.refused_syscalls("x86_64").values()]
    assert all(isinstance(why, str) and len(why) >= 4 for why in rows)


# --------------------------------------------------------------------------- the BPF program


def test_bpf_is_whole_instructions_and_fits(bpf: bytes) -> None:
    assert len(bpf) > 0 and len(bpf) % 8 == 0
    assert len(bpf) // 8 <= 4096  # BPF_MAXINSNS


def test_bpf_and_pfc_are_deterministic(arch: str, bpf: bytes) -> None:
    assert seccomp.compile_bpf(arch) == bpf
    assert seccomp.export_pfc(arch) == seccomp.export_pfc(arch)


def test_native_is_the_default() -> None:
    assert seccomp.compile_bpf() == seccomp.compile_bpf(platform.machine())


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="riscv64"):
        seccomp.compile_bpf("riscv64")


def test_bpf_checks_the_architecture_first(bpf: bytes) -> None:
    code, _, _, k = instructions(bpf)[0]
    assert (code, k) == (BPF_LD_W_ABS, 4)  # offsetof(struct seccomp_data, arch)


def test_bpf_returns_only_expected_actions(bpf: bytes) -> None:
    returns = {k for code, _, _, k in instructions(bpf) if code == BPF_RET_K}
    expected = {SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS, ENOSYS_RET}
    expected |= {errno_ret(errno.EPERM), errno_ret(errno.EAFNOSUPPORT)}
    assert returns == expected


def test_pfc_default_enosys_and_bad_arch_kills_the_process(arch: str) -> None:
    pfc = seccomp.export_pfc(arch)
    assert re.search(r"# default action\n\s*action ERRNO\(38\);", pfc)
    assert re.search(r"# invalid architecture action\n\s*action KILL_PROCESS;", pfc)


def test_bpf_every_allowed_syscall_is_allowed(arch: str, bpf: bytes) -> None:
    wrong = {
        name: hex(ret)
        for name in seccomp.allowed_syscalls(arch)
        if (ret := run_filter(bpf, arch, nr(arch, name))) != SECCOMP_RET_ALLOW
    }
    assert wrong == {}


def test_bpf_every_refused_syscall_gets_its_errno(arch: str, bpf: bytes) -> None:
    wrong = {
        name: hex(ret)
        for name, (err, _why) in seccomp.refused_syscalls(arch).items()
        if (ret := run_filter(bpf, arch, nr(arch, name))) != errno_ret(err)
    }
    assert wrong == {}


def test_bpf_every_killed_syscall_kills_the_process(arch: str, bpf: bytes) -> None:
    wrong = {
        name: hex(ret)
        for name in seccomp.killed_syscalls(arch)
        if (ret := run_filter(bpf, arch, nr(arch, name))) != SECCOMP_RET_KILL_PROCESS
    }
    assert wrong == {}


def test_bpf_everything_else_is_enosys(arch: str, bpf: bytes) -> None:
    """Known syscalls outside the table, and numbers newer than libseccomp knows (e.g.
    open_tree_attr, 467, Linux 6.15): ENOSYS, what an older kernel would say."""
    listed = (
        set(seccomp.allowed_syscalls(arch))
        | set(seccomp.refused_syscalls(arch))
        | set(seccomp.killed_syscalls(arch))
        | seccomp.argument_checked_syscalls()
    )
    token = seccomp.ARCHITECTURES[arch]
    others = []
    for number in range(0, 1024):
        try:
            name = sc.resolve_syscall(token, number)
        except (OSError, ValueError, RuntimeError):
            name = None
        name = name.decode() if isinstance(name, bytes) else name
        if name not in listed:
            others.append(number)
    assert len(others) > 600  # the unlisted known ones plus the unknown numbers
    wrong = {n: hex(r) for n in others if (r := run_filter(bpf, arch, n)) != ENOSYS_RET}
    assert wrong == {}
    for name in ("lookup_dcookie", "memfd_secret", "cachestat", "io_setup"):
        if sc.resolve_syscall(token, name) >= 0:
            assert nr(arch, name) in others


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 only")
def test_x86_64_foreign_entry_points_kill_the_process() -> None:
    bpf = seccomp.compile_bpf("x86_64")
    assert (BPF_JMP_JGE_K, X32_SYSCALL_BIT) in {(c, k) for c, _, _, k in instructions(bpf)}
    for number, audit in [(26, AUDIT_ARCH_I386), (3, AUDIT_ARCH_I386), (X32_SYSCALL_BIT | 101, None),
                          (X32_SYSCALL_BIT | 0, None)]:
        assert run_filter(bpf, "x86_64", number, audit=audit) == SECCOMP_RET_KILL_PROCESS


def test_aarch64_filter_kills_x86_64_callers() -> None:
    bpf = seccomp.compile_bpf("aarch64")
    assert run_filter(bpf, "aarch64", 0, audit=AUDIT_ARCH["x86_64"]) == SECCOMP_RET_KILL_PROCESS


# --------------------------------------------------------------------------- argument rules

SIGCHLD = 17
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND, CLONE_THREAD = 0x100, 0x200, 0x400, 0x800, 0x10000
PTHREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | 0x3D0F00
CLONE_NEW = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(SIGCHLD, SECCOMP_RET_ALLOW, id="fork"),
        pytest.param(PTHREAD_FLAGS, SECCOMP_RET_ALLOW, id="pthread"),
        pytest.param(CLONE_VM | 0x4000 | SIGCHLD, SECCOMP_RET_ALLOW, id="vfork-style"),
        *[pytest.param(SIGCHLD | flag, errno_ret(errno.EPERM), id=name) for name, flag in CLONE_NEW.items()],
        pytest.param(SIGCHLD | CLONE_NEW["CLONE_NEWUSER"] | CLONE_NEW["CLONE_NEWNS"],
                     errno_ret(errno.EPERM), id="NEWUSER|NEWNS"),
        pytest.param((1 << 40) | CLONE_NEW["CLONE_NEWUSER"], errno_ret(errno.EPERM),
                     id="NEWUSER-with-high-bits"),
    ],
)
def test_bpf_clone(arch: str, bpf: bytes, flags: int, expected: int) -> None:
    assert run_filter(bpf, arch, nr(arch, "clone"), (flags,)) == expected


SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET, SOCK_PACKET = 1, 2, 3, 5, 10
SOCK_NONBLOCK, SOCK_CLOEXEC = 0o4000, 0o2000000


@pytest.mark.parametrize(
    ("family", "sock_type", "expected"),
    [
        pytest.param(1, SOCK_STREAM, SECCOMP_RET_ALLOW, id="unix-stream"),
        pytest.param(1, SOCK_SEQPACKET | SOCK_CLOEXEC, SECCOMP_RET_ALLOW, id="unix-seqpacket"),
        pytest.param(2, SOCK_STREAM | SOCK_CLOEXEC, SECCOMP_RET_ALLOW, id="inet-stream"),
        pytest.param(10, SOCK_DGRAM | SOCK_NONBLOCK, SECCOMP_RET_ALLOW, id="inet6-dgram"),
        pytest.param(16, SOCK_DGRAM, errno_ret(errno.EAFNOSUPPORT), id="netlink"),
        pytest.param(16, SOCK_RAW, errno_ret(errno.EAFNOSUPPORT), id="netlink-raw"),
        pytest.param(17, SOCK_RAW, errno_ret(errno.EAFNOSUPPORT), id="packet-raw"),
        pytest.param(40, SOCK_STREAM, errno_ret(errno.EAFNOSUPPORT), id="vsock"),
        pytest.param(38, SOCK_SEQPACKET, errno_ret(errno.EAFNOSUPPORT), id="alg"),
        pytest.param(0, SOCK_STREAM, errno_ret(errno.EAFNOSUPPORT), id="unspec"),
        pytest.param(4, SOCK_DGRAM, errno_ret(errno.EAFNOSUPPORT), id="ipx"),
        pytest.param((1 << 32) | 2, SOCK_STREAM, errno_ret(errno.EAFNOSUPPORT), id="inet-high-bits"),
        pytest.param((1 << 32) | 16, SOCK_DGRAM, errno_ret(errno.EAFNOSUPPORT), id="netlink-high-bits"),
        pytest.param(2, SOCK_RAW, errno_ret(errno.EPERM), id="inet-raw"),
        pytest.param(10, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, errno_ret(errno.EPERM), id="inet6-raw-flags"),
        pytest.param(2, SOCK_PACKET, errno_ret(errno.EPERM), id="inet-sock-packet"),
        pytest.param(2, SOCK_SEQPACKET, errno_ret(errno.EPERM), id="inet-seqpacket"),
        pytest.param(2, (1 << 40) | SOCK_RAW, errno_ret(errno.EPERM), id="inet-raw-high-bits"),
    ],
)
def test_bpf_socket(arch: str, bpf: bytes, family: int, sock_type: int, expected: int) -> None:
    assert run_filter(bpf, arch, nr(arch, "socket"), (family, sock_type, 0)) == expected


@pytest.mark.parametrize(
    ("family", "expected"),
    [(1, SECCOMP_RET_ALLOW), (2, errno_ret(errno.EAFNOSUPPORT)), (16, errno_ret(errno.EAFNOSUPPORT)),
     (40, errno_ret(errno.EAFNOSUPPORT))],
)
def test_bpf_socketpair(arch: str, bpf: bytes, family: int, expected: int) -> None:
    assert run_filter(bpf, arch, nr(arch, "socketpair"), (family, SOCK_STREAM, 0)) == expected


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        pytest.param(0x5401, SECCOMP_RET_ALLOW, id="TCGETS"),
        pytest.param(0x5413, SECCOMP_RET_ALLOW, id="TIOCGWINSZ"),
        pytest.param(0x541B, SECCOMP_RET_ALLOW, id="FIONREAD"),
        pytest.param(0x5421, SECCOMP_RET_ALLOW, id="FIONBIO"),
        pytest.param(0x80045430, SECCOMP_RET_ALLOW, id="TIOCGPTN"),
        pytest.param(0xC0185879, SECCOMP_RET_ALLOW, id="high-request-number"),
        pytest.param(0x5412, errno_ret(errno.EPERM), id="TIOCSTI"),
        pytest.param(0x541C, errno_ret(errno.EPERM), id="TIOCLINUX"),
        pytest.param(0x5423, errno_ret(errno.EPERM), id="TIOCSETD"),
        pytest.param((0xFFFFFFFF << 32) | 0x5412, errno_ret(errno.EPERM), id="TIOCSTI-high-bits"),
    ],
)
def test_bpf_ioctl(arch: str, bpf: bytes, cmd: int, expected: int) -> None:
    assert run_filter(bpf, arch, nr(arch, "ioctl"), (0, cmd)) == expected


def test_bpf_ioctl_allows_everything_else(bpf: bytes, arch: str) -> None:
    rng = random.Random(5)
    refused = {0x5412, 0x541C, 0x5423}
    samples = [rng.getrandbits(32) for _ in range(300)] + [v ^ (1 << b) for v in refused for b in range(32)]
    wrong = [hex(c) for c in samples if c not in refused
             and run_filter(bpf, arch, nr(arch, "ioctl"), (3, c)) != SECCOMP_RET_ALLOW]
    assert wrong == []


@pytest.mark.parametrize("refused", [{0x5412}, {0x5412, 0x541C, 0x5423}, {0, 0xFFFFFFFF}, set()])
def test_masked_complement_is_exact(refused: set[int]) -> None:
    pairs = seccomp._masked_complement(refused)
    rng = random.Random(7)
    samples = set(refused) | {rng.getrandbits(32) for _ in range(2000)}
    samples |= {v ^ (1 << b) for v in refused for b in range(32)}
    for value in samples:
        hits = sum(1 for mask, want in pairs if value & mask == want)
        assert hits == (0 if value in refused else 1), hex(value)


@pytest.mark.parametrize(
    ("persona", "expected"),
    [(0, SECCOMP_RET_ALLOW), (0xFFFFFFFF, SECCOMP_RET_ALLOW), (0x0400000, ENOSYS_RET), (0x0040000, ENOSYS_RET)],
    ids=["PER_LINUX", "query", "READ_IMPLIES_EXEC", "ADDR_NO_RANDOMIZE"],
)
def test_bpf_personality(arch: str, bpf: bytes, persona: int, expected: int) -> None:
    assert run_filter(bpf, arch, nr(arch, "personality"), (persona,)) == expected
