"""The seccomp layer, attacked from inside a real sandbox with raw syscalls (ctypes).

Three kinds of test:
- real attacks (attach to pid 1, read the user keyring, new namespaces, mount, io_uring...)
  must fail with the errno of the filter table in runtime/seccomp.py;
- calls in the kill list (bpf, userfaultfd, kexec, modules, file handles...) end the program
  with status `seccomp` / error `security_policy_violation`;
- a layer check: harmless invalid-argument calls, run both in the sandbox and on the host as an
  unprivileged user without seccomp. Where the kernel alone answers differently (EINVAL, EFAULT,
  ESRCH, success...), the sandbox's answer can only have come from the filter.
"""

from __future__ import annotations

import errno
import json

import pytest

from sandboxd.runtime import ExecStatus
from sandboxd.runtime.seccomp import killed_syscalls, refused_syscalls

from .hostprobe import run_as_nobody

PRELUDE = """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def sc(nr, *args):
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *conv)
    return "OK" if r >= 0 else errno.errorcode[ctypes.get_errno()]

def clone(flags):
    r = libc.syscall(ctypes.c_long(56), ctypes.c_long(flags | 17), *[ctypes.c_long(0)] * 4)
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
        return "OK"
    return errno.errorcode[ctypes.get_errno()]

def buf(n):
    return ctypes.byref(ctypes.create_string_buffer(n))

def bpf_array_attr():
    attr = (ctypes.c_uint32 * 18)()
    attr[0], attr[1], attr[2], attr[3] = 2, 4, 4, 1  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
    return ctypes.byref(attr)

def perf_attr():
    attr = (ctypes.c_uint32 * 32)()
    attr[0], attr[1] = 1, 128  # PERF_TYPE_SOFTWARE, size; config 0 = PERF_COUNT_SW_CPU_CLOCK
    return ctypes.byref(attr)

def iovec():
    data = ctypes.create_string_buffer(64)
    iov = (ctypes.c_uint64 * 2)(ctypes.addressof(data), 64)
    return ctypes.byref(iov)
"""

# attack -> (python expression run in the sandbox, expected answer)
ATTACKS: dict[str, tuple[str, str]] = {
    "ptrace_attach_pid1": ("sc(101, 16, 1, 0, 0)", "EPERM"),
    "ptrace_seize_pid1": ("sc(101, 0x4206, 1, 0, 0)", "EPERM"),
    "process_vm_readv_pid1": ("sc(310, 1, iovec(), 1, iovec(), 1, 0)", "EPERM"),
    "process_vm_writev_pid1": ("sc(311, 1, iovec(), 1, iovec(), 1, 0)", "EPERM"),
    "pidfd_getfd_pid1": (
        "sc(438, libc.syscall(ctypes.c_long(434), ctypes.c_long(1), ctypes.c_long(0)), 1, 0)",
        "EPERM",
    ),
    "kcmp": ("sc(312, 1, 2, 0, 0, 0)", "EPERM"),
    "keyctl_user_keyring": ("sc(250, 0, -4, 1)", "EPERM"),
    "keyctl_session_keyring": ("sc(250, 0, -3, 1)", "EPERM"),
    "add_key": ('sc(248, b"user", b"sandboxd", b"x", 1, -4)', "EPERM"),
    "request_key": ('sc(249, b"user", b"sandboxd", 0, -4)', "EPERM"),
    "unshare_user": ("sc(272, 0x10000000)", "EPERM"),
    "unshare_mount": ("sc(272, 0x00020000)", "EPERM"),
    "unshare_net": ("sc(272, 0x40000000)", "EPERM"),
    "clone_newuser": ("clone(0x10000000)", "EPERM"),
    "clone_newpid": ("clone(0x20000000)", "EPERM"),
    "clone_newns": ("clone(0x00020000)", "EPERM"),
    "clone3": ("sc(435, buf(88), 88)", "ENOSYS"),
    "setns_pid1_mnt": ('sc(308, os.open("/proc/1/ns/mnt", os.O_RDONLY), 0)', "EPERM"),
    "setns_pid1_user": ('sc(308, os.open("/proc/1/ns/user", os.O_RDONLY), 0)', "EPERM"),
    "mount_tmpfs": ('sc(165, b"none", b"/tmp", b"tmpfs", 0, 0)', "EPERM"),
    "mount_bind_root": ('sc(165, b"/", b"/tmp", 0, 0x1000, 0)', "EPERM"),
    "umount_tmp": ('sc(166, b"/tmp", 2)', "EPERM"),
    "chroot": ('sc(161, b"/tmp")', "EPERM"),
    "pivot_root": ('sc(155, b"/tmp", b"/tmp")', "EPERM"),
    "open_tree_clone": ('sc(428, -100, b"/usr", 1)', "EPERM"),
    "fsopen_tmpfs": ('sc(430, b"tmpfs", 0)', "EPERM"),
    "perf_event_open": ("sc(298, perf_attr(), 0, -1, -1, 0)", "EPERM"),
    "io_uring_setup": ("sc(425, 8, buf(120))", "EPERM"),
    "name_to_handle_at": ('sc(303, -100, b"/etc/passwd", buf(128), buf(4), 0)', "EPERM"),
    "syslog_read": ("sc(103, 3, buf(128), 128)", "EPERM"),
    "socket_netlink_route": ("sc(41, 16, 2, 0)", "EAFNOSUPPORT"),
    "socket_netlink_raw": ("sc(41, 16, 3, 0)", "EAFNOSUPPORT"),
    "socket_packet": ("sc(41, 17, 2, 0)", "EAFNOSUPPORT"),
    "socket_vsock": ("sc(41, 40, 1, 0)", "EAFNOSUPPORT"),
    "socket_alg": ("sc(41, 38, 5, 0)", "EAFNOSUPPORT"),
    "socket_inet_raw": ("sc(41, 2, 3, 1)", "EPERM"),
    "socket_inet6_raw": ("sc(41, 10, 3, 58)", "EPERM"),
    "socket_inet_sock_packet": ("sc(41, 2, 10, 0)", "EPERM"),
    "tiocsti": ('sc(16, 1, 0x5412, b"x")', "EPERM"),
    "tiocsti_upper_bits_set": ('sc(16, 1, 0x1_0000_5412, b"x")', "EPERM"),
    "tioclinux": ('sc(16, 1, 0x541C, b"\\x06")', "EPERM"),
    "tiocsetd_n_gsm": ("sc(16, os.openpty()[0], 0x5423, ctypes.byref(ctypes.c_int(21)))", "EPERM"),
    "sethostname": ('sc(170, b"evil", 4)', "EPERM"),
    "sync_all_filesystems": ("sc(162)", "EPERM"),
    "get_mempolicy": ("sc(239, 0, 0, 0, 0, 0)", "EPERM"),
    "modify_ldt": ("sc(154, 1, buf(16), 16)", "ENOSYS"),
    "io_setup_aio": ("sc(206, 8, buf(8))", "ENOSYS"),
    "lookup_dcookie": ("sc(212, 0, buf(64), 64)", "ENOSYS"),
    "memfd_secret": ("sc(447, 0)", "ENOSYS"),
    "cachestat": ("sc(451, 0, buf(16), buf(32), 0)", "ENOSYS"),
    "personality_read_implies_exec": ("sc(135, 0x0400000)", "ENOSYS"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_attack_syscall_denied(run, attack: str) -> None:
    expr, expected = ATTACKS[attack]
    result = await run(PRELUDE + f"print(json.dumps({expr}))")
    assert result.status is ExecStatus.SUCCESS, result
    assert json.loads(result.stdout) == expected, f"{attack}: {result.stdout!r}"


async def test_allowed_socket_families_still_work(run) -> None:
    """The filter's argument rules must not over-reach: plain sockets are the control group."""
    result = await run(
        PRELUDE
        + """
import socket
print(json.dumps({"inet": sc(41, 2, 1, 0), "inet6_dgram": sc(41, 10, 2, 0), "unix": sc(41, 1, 5, 0),
                  "nonblock_cloexec": sc(41, 2, 1 | 0o4000 | 0o2000000, 0)}))
"""
    )
    assert json.loads(result.stdout) == {
        "inet": "OK",
        "inet6_dgram": "OK",
        "unix": "OK",
        "nonblock_cloexec": "OK",
    }


# name -> (syscall number, args): invalid arguments, harmless anywhere, answered early by the kernel.
NOPID = 0x3FFFFFF0
LAYER_PROBES: dict[str, tuple[int, ...]] = {
    "ptrace": (101, 0x7FFF, NOPID, 0, 0),
    "keyctl": (250, 0x7FFF, 0, 0, 0, 0),
    "add_key": (248, 0, 0, 0, 0, 0),
    "request_key": (249, 0, 0, 0, 0),
    "unshare": (272, 0x1),
    "mount": (165, 0, 0, 0, 0, 0),
    "umount2": (166, 0, 0x7FFF0000),
    "chroot": (161, 0),
    "setns": (308, -1, 0),
    "clone3": (435, 0, 0),
    "io_uring_setup": (425, 0, 0),
    "io_uring_enter": (426, -1, 0, 0, 0, 0, 0),
    "io_uring_register": (427, -1, 0, 0, 0),
    "perf_event_open": (298, 0, 0, -1, -1, 0),
    "process_vm_readv": (310, NOPID, 0, 0, 0, 0, 1),
    "process_vm_writev": (311, NOPID, 0, 0, 0, 0, 1),
    "kcmp": (312, NOPID, NOPID, 0, 0, 0),
    "pidfd_getfd": (438, -1, 0, 0),
    "name_to_handle_at": (303, -1, 0, 0, 0, 0x7FFF),
    "open_tree": (428, -1, 0, 0x7FFFFFFF),
    "mount_setattr": (442, -1, 0, 0x7FFFFFFF, 0, 0),
    "fsconfig": (431, -1, 0x7FFF, 0, 0, 0),
    "quotactl": (179, 0, 0, 0, 0),
    "clock_settime": (227, 0x7FFF, 0),
    "mbind": (237, 0, 0, 0x7FFF, 0, 0, 0),
    "migrate_pages": (256, NOPID, 0, 0, 0),
}
#: Calls the kernel would let an unprivileged process make; here only seccomp stands in the way.
ALLOWED_WITHOUT_SECCOMP = {
    "clone_newuser": "clone(0x10000000)",
    "socket_netlink": "sc(41, 16, 2, 0)",
    "tiocsti_on_a_pipe": "sc(16, PIPE, 0x5412, 0)",
    "tiocsetd_n_tty_on_a_pty": "sc(16, os.openpty()[0], 0x5423, ctypes.byref(ctypes.c_int(0)))",
    "aio_io_setup": "sc(206, 1, buf(8))",
}
LAYER_CODE = (
    PRELUDE
    + f"""
PIPE = os.pipe()[0]
out = {{name: sc(*args) for name, args in {LAYER_PROBES!r}.items()}}
out.update({{name: eval(expr) for name, expr in {ALLOWED_WITHOUT_SECCOMP!r}.items()}})
print(json.dumps(out))
"""
)


async def test_seccomp_is_the_layer_that_answers(run) -> None:
    on_host = run_as_nobody(["/usr/bin/python3", "-I", "-c", LAYER_CODE], cwd="/")
    assert on_host.returncode == 0, on_host.stderr
    host = json.loads(on_host.stdout)
    result = await run(LAYER_CODE)
    assert result.status is ExecStatus.SUCCESS, result
    box = json.loads(result.stdout)

    table = {name: errno.errorcode[err] for name, (err, _why) in refused_syscalls().items()}
    expected = {name: table[name] for name in LAYER_PROBES}
    expected |= {
        "clone_newuser": "EPERM",
        "socket_netlink": "EAFNOSUPPORT",
        "tiocsti_on_a_pipe": "EPERM",
        "tiocsetd_n_tty_on_a_pty": "EPERM",
        "aio_io_setup": "ENOSYS",  # not in the allowlist: the default answer
    }
    assert box == expected  # every answer is the filter table's ...
    same = {name for name in box if host[name] == box[name]}
    assert same == set(), f"... and the kernel alone would have answered differently: {same}"
    assert all(host[name] in ("OK", "ENOTTY") for name in ALLOWED_WITHOUT_SECCOMP), host


# name -> python expression: each call is in the kill list; the program must not survive it.
KILLS: dict[str, str] = {
    "bpf_map_create": "sc(321, 0, bpf_array_attr(), 72)",
    "userfaultfd": "sc(323, 0)",
    "userfaultfd_user_mode": "sc(323, 1)",
    "open_by_handle_at": "sc(304, -100, buf(128), 0)",
    "kexec_load": "sc(246, 0, 0, 0, 0)",
    "kexec_file_load": "sc(320, -1, -1, 0, 0, 0)",
    "init_module": "sc(175, buf(64), 64, b'')",
    "finit_module": "sc(313, 0, b'', 0)",
    "delete_module": "sc(176, b'ext4', 0)",
    "reboot": "sc(169, 0xfee1dead, 672274793, 0x4321FEDC, 0)",
    "swapon": "sc(167, b'/tmp/swap', 0)",
    "swapoff": "sc(168, b'/tmp/swap')",
    "iopl": "sc(172, 3)",
    "ioperm": "sc(173, 0x60, 1, 1)",
}
KILL_SYSCALL = {"bpf_map_create": "bpf", "userfaultfd_user_mode": "userfaultfd"}
KILL_CODE = PRELUDE + """
print("before", flush=True)
{expr}
print("survived", flush=True)
"""


def test_kill_list_is_covered() -> None:
    syscalls = {KILL_SYSCALL.get(case, case) for case in KILLS}
    assert syscalls == set(killed_syscalls())


@pytest.mark.parametrize("call", list(KILLS))
async def test_kill_list_call_ends_with_status_seccomp(run, call: str) -> None:
    result = await run(KILL_CODE.format(expr=KILLS[call]))
    assert result.status is ExecStatus.SECCOMP, result
    assert result.error == "security_policy_violation"
    assert result.exit_code == 128 + 31  # SIGSYS
    assert result.stdout == b"before\n"  # killed at the call: it never returned


async def test_seccomp_kill_of_the_last_command_decides_a_bash_script(run) -> None:
    result = await run(
        "echo start; python3 -c 'import ctypes; ctypes.CDLL(None).syscall(323, 0)'", "bash"
    )
    assert result.status is ExecStatus.SECCOMP, result
    assert b"Bad system call" in result.stderr


async def test_seccomp_kill_of_a_child_the_program_survives_is_not_its_status(run) -> None:
    """Only the process that decides the exit matters: a parent that carries on decides."""
    result = await run(
        "python3 -c 'import ctypes; ctypes.CDLL(None).syscall(323, 0)'; echo rc=$?", "bash"
    )
    assert result.status is ExecStatus.SUCCESS, result
    assert result.stdout == b"rc=159\n"


async def test_node_and_bash_survive_the_refused_probes(run) -> None:
    """Runtimes probe refused calls (io_uring, NUMA, namespaces) and must carry on, not die."""
    node = await run(
        """
        const fs = require('fs');
        fs.writeFileSync('/tmp/x', 'y'.repeat(100000));
        fs.readFile('/tmp/x', (err, data) => console.log(err ? err.code : data.length));
        """,
        "node",
        env={"UV_USE_IO_URING": "1"},
    )
    assert (node.status, node.stdout) == (ExecStatus.SUCCESS, b"100000\n"), node
    bash = await run("unshare -U true; echo rc=$?", "bash")
    assert bash.status is ExecStatus.SUCCESS and bash.stdout == b"rc=1\n", bash


FOREIGN_ABI = {
    # i386 entry point: mov eax, 199 (getuid32); int 0x80; ret. libseccomp's bad-arch action kills.
    "int80_i386": """
import ctypes, mmap
code = bytes([0xB8]) + (199).to_bytes(4, "little") + bytes([0xCD, 0x80, 0xC3])
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
print("returned", fn(), flush=True)
""",
    # x32 entry point: keyctl with __X32_SYSCALL_BIT set.
    "x32_keyctl": """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print("returned", libc.syscall(ctypes.c_long(0x40000000 | 250), 0, -4, 1), flush=True)
""",
}


@pytest.mark.parametrize("abi", list(FOREIGN_ABI))
async def test_foreign_syscall_abi_is_killed(run, abi: str) -> None:
    code = FOREIGN_ABI[abi]
    if abi == "int80_i386":  # precondition: the i386 entry point exists on this kernel
        on_host = run_as_nobody(["/usr/bin/python3", "-I", "-c", code], cwd="/")
        assert on_host.stdout.strip() == "returned 65534", on_host
    result = await run(code)
    assert b"returned" not in result.stdout, result
    assert result.exit_code == 128 + 31, result  # SIGSYS
    assert result.status is ExecStatus.SECCOMP and result.error == "security_policy_violation"


async def test_socketpair_gives_nothing_but_af_unix(run) -> None:
    """socketpair() is not in the filter; the kernel itself must refuse every family but AF_UNIX."""
    result = await run(
        PRELUDE
        + """
ok = []
for family in range(0, 46):
    for kind in (1, 2, 3, 5):
        pair = (ctypes.c_int * 2)()
        if libc.syscall(ctypes.c_long(53), ctypes.c_long(family), ctypes.c_long(kind), ctypes.c_long(0), pair) == 0:
            ok.append(family)
            os.close(pair[0]); os.close(pair[1])
print(json.dumps(sorted(set(ok))))
"""
    )
    assert json.loads(result.stdout) == [1]


async def test_pid1_is_no_more_privileged_than_the_code(run) -> None:
    """The code can write bwrap's init memory (/proc/1/mem: same uid, ptrace is not involved).

    That is only harmless while pid 1 runs under the same filter, with no caps and NNP.
    """
    result = await run("""
        import json, os
        status = dict(l.split(":", 1) for l in open("/proc/1/status").read().splitlines())
        try:
            os.close(os.open("/proc/1/mem", os.O_RDWR))
            mem = "OPENED"
        except OSError as e:
            mem = e.strerror
        print(json.dumps({k: status[k].strip() for k in ("Name", "Seccomp", "NoNewPrivs", "CapEff", "CapBnd")} | {"mem": mem}))
    """)
    out = json.loads(result.stdout)
    assert out["Name"] == "bwrap"
    assert (out["Seccomp"], out["NoNewPrivs"], out["CapEff"], out["CapBnd"]) == (
        "2",
        "1",
        "0" * 16,
        "0" * 16,
    ), out


OPEN_TREE_ATTR = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
# open_tree_attr(AT_FDCWD, "/usr", 0, NULL, 0): syscall 467, Linux 6.15, after libseccomp 2.5's table
r = libc.syscall(ctypes.c_long(467), ctypes.c_long(-100), b"/usr", ctypes.c_long(0), None, ctypes.c_long(0))
print("OK" if r >= 0 else errno.errorcode[ctypes.get_errno()])
"""


async def test_new_mount_api_calls_unknown_to_libseccomp_are_denied(run) -> None:
    on_host = run_as_nobody(["/usr/bin/python3", "-I", "-c", OPEN_TREE_ATTR], cwd="/")
    if on_host.stdout.strip() == "ENOSYS":
        pytest.skip("this kernel has no open_tree_attr")
    result = await run(OPEN_TREE_ATTR)
    # The host kernel has the call (checked above), so ENOSYS here is the filter's answer
    # for syscall numbers newer than libseccomp's table.
    assert result.stdout.strip() == b"ENOSYS", result
