"""The seccomp filter as data: compiled BPF and libseccomp's readable PFC form. No kernel needed."""

from __future__ import annotations

import errno
import platform
import re
import struct

import pyseccomp as sc
import pytest

from sandboxd.runtime import seccomp

ARCH = sc.system_arch()
DENIED = seccomp.denied_syscalls()
ON_THIS_ARCH = sorted(n for n in DENIED if sc.resolve_syscall(ARCH, n) >= 0)

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
BPF_LD_W_ABS = 0x20
BPF_JMP_JEQ_K = 0x15
BPF_JMP_JGE_K = 0x35
BPF_RET_K = 0x06
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000


@pytest.fixture(scope="module")
def bpf() -> bytes:
    return seccomp.compile_bpf()


@pytest.fixture(scope="module")
def pfc() -> str:
    return seccomp.export_pfc()


def instructions(program: bytes) -> list[tuple[int, int, int, int]]:
    """struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; } in native byte order."""
    return list(struct.iter_unpack("=HBBI", program))


def section(pfc: str, syscall: str) -> str:
    """The PFC block of one syscall, up to the next syscall's block or the default action."""
    match = re.search(
        rf'# filter for syscall "{syscall}" \(\d+\).*?(?=# filter for syscall|# default action)',
        pfc,
        re.S,
    )
    assert match, f"no block for {syscall} in the PFC"
    return match.group(0)


def test_bpf_is_whole_instructions(bpf: bytes) -> None:
    assert isinstance(bpf, bytes)
    assert len(bpf) > 0
    assert len(bpf) % 8 == 0
    # The kernel refuses programs longer than BPF_MAXINSNS.
    assert len(bpf) // 8 <= 4096


def test_bpf_is_deterministic(bpf: bytes) -> None:
    assert seccomp.compile_bpf() == bpf
    assert seccomp.compile_bpf() == seccomp.compile_bpf()


def test_pfc_is_deterministic(pfc: str) -> None:
    assert seccomp.export_pfc() == pfc


def test_bpf_checks_the_architecture_first(bpf: bytes) -> None:
    code, _, _, k = instructions(bpf)[0]
    assert (code, k) == (BPF_LD_W_ABS, 4)  # offsetof(struct seccomp_data, arch)


def test_bpf_returns_only_expected_actions(bpf: bytes) -> None:
    returns = {k for code, _, _, k in instructions(bpf) if code == BPF_RET_K}
    allowed_errnos = {SECCOMP_RET_ERRNO | e for e, _ in DENIED.values()}
    allowed_errnos |= {SECCOMP_RET_ERRNO | errno.EPERM, SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT}
    assert SECCOMP_RET_ALLOW in returns
    assert returns & {SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_KILL_THREAD}  # bad architecture
    kills = {SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_KILL_THREAD}
    assert returns <= allowed_errnos | kills | {SECCOMP_RET_ALLOW}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 only")
def test_x86_64_rejects_x32_and_i386_entry_points(bpf: bytes) -> None:
    program = instructions(bpf)
    assert (BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64) in {(c, k) for c, _, _, k in program}
    # libseccomp filters x32 numbers (which share AUDIT_ARCH_X86_64) with a `nr >= X32 bit` jump.
    assert (BPF_JMP_JGE_K, X32_SYSCALL_BIT) in {(c, k) for c, _, _, k in program}


def test_pfc_default_allow_and_bad_arch_kill(pfc: str) -> None:
    assert re.search(r"# default action\n\s*action ALLOW;", pfc)
    assert re.search(r"# invalid architecture action\n\s*action KILL", pfc)


def test_deny_table_is_not_trivially_small() -> None:
    for name in ("ptrace", "mount", "unshare", "setns", "bpf", "keyctl", "io_uring_setup",
                 "perf_event_open", "open_by_handle_at", "userfaultfd", "clone3", "kexec_load"):
        assert name in DENIED


def test_denied_syscalls_is_a_copy() -> None:
    copy = seccomp.denied_syscalls()
    copy.pop("ptrace")
    assert "ptrace" in seccomp.denied_syscalls()


@pytest.mark.parametrize("name", ON_THIS_ARCH)
def test_pfc_denies_syscall_with_its_errno(pfc: str, name: str) -> None:
    number = sc.resolve_syscall(ARCH, name)
    expected = DENIED[name][0]
    block = section(pfc, name)
    assert f'"{name}" ({number})' in block
    # An unconditional rule: straight to the action, no argument comparison in between.
    assert re.search(rf"if \(\$syscall == {number}\)\n\s*action ERRNO\({expected}\);", block), block


def test_clone3_gets_enosys_for_libc_fallback(pfc: str) -> None:
    if "clone3" not in ON_THIS_ARCH:
        pytest.skip("no clone3 on this architecture")
    assert "action ERRNO(38)" in section(pfc, "clone3")
    assert DENIED["clone3"][0] == errno.ENOSYS


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


@pytest.mark.parametrize("flag", list(CLONE_NEW.values()), ids=list(CLONE_NEW))
def test_clone_with_namespace_flag_denied(pfc: str, flag: int) -> None:
    block = section(pfc, "clone")
    assert re.search(rf"if \(\$a0\.lo32 & 0x{flag:08x} == {flag}\)\n\s*action ERRNO\(1\);", block)


def test_clone_is_not_denied_outright(pfc: str) -> None:
    """Plain fork/thread creation must still work: no unconditional clone rule."""
    number = sc.resolve_syscall(ARCH, "clone")
    assert not re.search(rf"if \(\$syscall == {number}\)\n\s*action", section(pfc, "clone"))


DENIED_FAMILIES = [f for f in range(11) if f not in (1, 2, 10)]


@pytest.mark.parametrize("family", DENIED_FAMILIES)
def test_socket_family_denied(pfc: str, family: int) -> None:
    block = section(pfc, "socket")
    assert re.search(rf"if \(\$a0\.lo32 == {family}\)\n\s*action ERRNO\({errno.EAFNOSUPPORT}\);", block)


@pytest.mark.parametrize("family", [1, 2, 10], ids=["AF_UNIX", "AF_INET", "AF_INET6"])
def test_socket_family_allowed(pfc: str, family: int) -> None:
    assert f"$a0.lo32 == {family})" not in section(pfc, "socket")


def test_socket_families_above_inet6_denied(pfc: str) -> None:
    """netlink (16), packet (17), vsock (40) ... are all above AF_INET6."""
    block = section(pfc, "socket")
    assert re.search(rf"if \(\$a0\.lo32 > 10\)\n\s*action ERRNO\({errno.EAFNOSUPPORT}\);", block)
    assert re.search(rf"if \(\$a0\.hi32 > 0\)\n\s*action ERRNO\({errno.EAFNOSUPPORT}\);", block)


@pytest.mark.parametrize("sock_type", [3, 10], ids=["SOCK_RAW", "SOCK_PACKET"])
def test_raw_socket_types_denied(pfc: str, sock_type: int) -> None:
    block = section(pfc, "socket")
    assert re.search(rf"if \(\$a1\.lo32 & 0x0000000f == {sock_type}\)\n\s*action ERRNO\(1\);", block)


@pytest.mark.parametrize("op", [0x5412, 0x541C], ids=["TIOCSTI", "TIOCLINUX"])
def test_terminal_injection_ioctls_denied(pfc: str, op: int) -> None:
    block = section(pfc, "ioctl")
    assert re.search(rf"if \(\$a1\.lo32 & 0xffffffff == {op}\)\n\s*action ERRNO\(1\);", block)


def test_ioctl_is_not_denied_outright(pfc: str) -> None:
    number = sc.resolve_syscall(ARCH, "ioctl")
    assert not re.search(rf"if \(\$syscall == {number}\)\n\s*action", section(pfc, "ioctl"))


@pytest.mark.parametrize("name", ["read", "write", "openat", "execve", "mmap", "exit_group", "connect"])
def test_everyday_syscalls_not_filtered(pfc: str, name: str) -> None:
    assert f'"{name}"' not in pfc


# --------------------------------------------------------------------------- the BPF, executed
#
# A small classic-BPF interpreter runs the compiled program on a `struct seccomp_data`, so the
# tests below check what the kernel would decide, not only what the PFC text says.

SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF


def run_filter(program: bytes, nr: int, args: tuple[int, ...] = (), arch: int | None = None) -> int:
    if arch is None:
        arch = AUDIT_ARCH_X86_64 if platform.machine() == "x86_64" else ARCH
    full_args = (tuple(args) + (0,) * 6)[:6]
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(a & 0xFFFFFFFFFFFFFFFF for a in full_args))
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


def nr(name: str) -> int:
    number = sc.resolve_syscall(ARCH, name)
    assert number >= 0, name
    return number


def errno_ret(e: int) -> int:
    return SECCOMP_RET_ERRNO | e


def is_kill(ret: int) -> bool:
    return ret & SECCOMP_RET_ACTION_FULL in (SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_KILL_THREAD)


@pytest.mark.parametrize("name", ON_THIS_ARCH)
def test_bpf_denied_syscall_returns_its_errno(bpf: bytes, name: str) -> None:
    assert run_filter(bpf, nr(name)) == errno_ret(DENIED[name][0])


@pytest.mark.parametrize(
    "name", ["read", "write", "openat", "execve", "mmap", "exit_group", "wait4", "getpid", "futex"]
)
def test_bpf_everyday_syscall_allowed(bpf: bytes, name: str) -> None:
    assert run_filter(bpf, nr(name)) == SECCOMP_RET_ALLOW


SIGCHLD = 17
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND, CLONE_THREAD = 0x100, 0x200, 0x400, 0x800, 0x10000
PTHREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(SIGCHLD, SECCOMP_RET_ALLOW, id="fork"),
        pytest.param(PTHREAD_FLAGS, SECCOMP_RET_ALLOW, id="pthread"),
        *[
            pytest.param(SIGCHLD | flag, errno_ret(errno.EPERM), id=name)
            for name, flag in CLONE_NEW.items()
        ],
        pytest.param(SIGCHLD | CLONE_NEW["CLONE_NEWUSER"] | CLONE_NEW["CLONE_NEWNS"],
                     errno_ret(errno.EPERM), id="NEWUSER|NEWNS"),
        pytest.param((1 << 40) | CLONE_NEW["CLONE_NEWUSER"], errno_ret(errno.EPERM),
                     id="NEWUSER-with-high-bits"),
    ],
)
def test_bpf_clone(bpf: bytes, flags: int, expected: int) -> None:
    assert run_filter(bpf, nr("clone"), (flags,)) == expected


SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET, SOCK_PACKET = 1, 2, 3, 5, 10
SOCK_NONBLOCK, SOCK_CLOEXEC = 0o4000, 0o2000000


@pytest.mark.parametrize(
    ("family", "sock_type", "expected"),
    [
        pytest.param(1, SOCK_STREAM, SECCOMP_RET_ALLOW, id="unix-stream"),
        pytest.param(2, SOCK_STREAM | SOCK_CLOEXEC, SECCOMP_RET_ALLOW, id="inet-stream"),
        pytest.param(10, SOCK_DGRAM | SOCK_NONBLOCK, SECCOMP_RET_ALLOW, id="inet6-dgram"),
        pytest.param(16, SOCK_DGRAM, errno_ret(errno.EAFNOSUPPORT), id="netlink"),
        pytest.param(17, SOCK_DGRAM, errno_ret(errno.EAFNOSUPPORT), id="packet-dgram"),
        pytest.param(40, SOCK_STREAM, errno_ret(errno.EAFNOSUPPORT), id="vsock"),
        pytest.param(38, SOCK_SEQPACKET, errno_ret(errno.EAFNOSUPPORT), id="alg"),
        pytest.param(4, SOCK_DGRAM, errno_ret(errno.EAFNOSUPPORT), id="ipx"),
        pytest.param((1 << 32) | 2, SOCK_STREAM, errno_ret(errno.EAFNOSUPPORT), id="inet-high-bits"),
        pytest.param(2, SOCK_RAW, errno_ret(errno.EPERM), id="inet-raw"),
        pytest.param(
            10, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, errno_ret(errno.EPERM), id="inet6-raw-flags"
        ),
        pytest.param(2, SOCK_PACKET, errno_ret(errno.EPERM), id="inet-sock-packet"),
    ],
)
def test_bpf_socket(bpf: bytes, family: int, sock_type: int, expected: int) -> None:
    assert run_filter(bpf, nr("socket"), (family, sock_type, 0)) == expected


def test_bpf_packet_raw_socket_denied(bpf: bytes) -> None:
    """AF_PACKET + SOCK_RAW matches two rules; either errno refuses it."""
    ret = run_filter(bpf, nr("socket"), (17, SOCK_RAW, 0))
    assert ret in (errno_ret(errno.EPERM), errno_ret(errno.EAFNOSUPPORT))


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        pytest.param(0x5401, SECCOMP_RET_ALLOW, id="TCGETS"),
        pytest.param(0x541B, SECCOMP_RET_ALLOW, id="FIONREAD"),
        pytest.param(0x5412, errno_ret(errno.EPERM), id="TIOCSTI"),
        pytest.param(0x541C, errno_ret(errno.EPERM), id="TIOCLINUX"),
        pytest.param((0xFFFFFFFF << 32) | 0x5412, errno_ret(errno.EPERM), id="TIOCSTI-high-bits"),
    ],
)
def test_bpf_ioctl(bpf: bytes, cmd: int, expected: int) -> None:
    assert run_filter(bpf, nr("ioctl"), (0, cmd)) == expected


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 only")
def test_bpf_foreign_entry_points_killed(bpf: bytes) -> None:
    AUDIT_ARCH_I386 = 0x40000003
    assert is_kill(run_filter(bpf, 26, arch=AUDIT_ARCH_I386))  # i386 ptrace via int 0x80
    assert is_kill(run_filter(bpf, 11, arch=AUDIT_ARCH_I386))  # even an i386 read-ish number
    assert is_kill(run_filter(bpf, X32_SYSCALL_BIT | 101))  # x32 ptrace
    assert is_kill(run_filter(bpf, X32_SYSCALL_BIT | 0))  # x32 read
