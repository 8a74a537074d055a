"""/proc, /sys and /dev from inside a real sandbox: what describes the host is hidden, nothing
of the kernel's tunables or of other processes is writable.

Layers named per test: the covers of runtime/procfs.py (EACCES on a host file that any host uid
can read), the user namespace (files of the host's root belong to an unmapped uid: EACCES on
write), capabilities (none), the mount namespace (no /sys, a minimal /dev), seccomp (no mount).
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from sandboxd.runtime import ExecStatus

from .hostprobe import run_as_nobody
from .probes import read_probe

READ_PROBE = read_probe(4000)

WRITE_PROBE = """
import errno, json, os
def attempt(p, data):
    try:
        fd = os.open(p, os.O_WRONLY)
    except OSError as e:
        return "open:" + errno.errorcode[e.errno]
    try:
        os.write(fd, data.encode())
        return "WROTE"
    except OSError as e:
        return "write:" + errno.errorcode[e.errno]
    finally:
        os.close(fd)
print(json.dumps({p: attempt(p, d) for p, d in json.loads(os.environ["PROBE"]).items()}))
"""


async def probe(run, code: str, paths: object) -> dict[str, str]:  # type: ignore[no-untyped-def]
    result = await run(code, env={"PROBE": json.dumps(paths)})
    assert result.status is ExecStatus.SUCCESS, result
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def host_readable(path: str) -> str:
    """What an unprivileged host uid reads there (no sandbox): the precondition of a cover."""
    out = run_as_nobody(["/usr/bin/head", "-c", "4000", path])
    return out.stdout if out.returncode == 0 else ""


# name -> a substring that proves the host's content was read
HOST_DESCRIBING = ["/proc/cmdline", "/proc/kallsyms", "/proc/config.gz", "/proc/keys", "/proc/key-users"]


@pytest.mark.parametrize("path", HOST_DESCRIBING)
async def test_host_describing_proc_files_are_covered(run, path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist on this kernel")
    mode = os.stat(path).st_mode
    assert mode & stat.S_IROTH, f"precondition: any host uid can read {path}"
    seen = (await probe(run, READ_PROBE, [path]))[path]
    assert seen == "EACCES", f"{path}: {seen[:200]}"  # the /dev/null cover on a nodev mount


async def test_host_kernel_command_line_not_in_view(run) -> None:
    host = host_readable("/proc/cmdline").strip()
    assert host, "precondition: the host command line is readable by any host uid"
    result = await run("cat /proc/cmdline /proc/1/cmdline 2>&1; cat /proc/self/mountinfo", "bash")
    assert host not in result.stdout.decode()
    assert host.split()[0] not in result.stdout.decode()


async def test_host_devices_directory_is_covered(run) -> None:
    if not os.listdir("/proc/bus"):
        pytest.skip("no /proc/bus entries on this kernel")
    seen = await probe(run, READ_PROBE, ["/proc/bus", "/proc/bus/pci/devices"])
    assert seen == {"/proc/bus": "DIR:", "/proc/bus/pci/devices": "ENOENT"}


async def test_what_runtimes_read_is_still_there(run) -> None:
    """The covers are targeted: CPU, memory and load stay readable (node os.cpus(), ps, free)."""
    paths = ["/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/uptime", "/proc/loadavg",
             "/proc/self/status", "/proc/sys/kernel/pid_max"]
    seen = await probe(run, READ_PROBE, paths)
    assert all(v.startswith("READ:") and len(v) > 6 for v in seen.values()), seen
    node = await run("console.log(require('os').cpus().length > 0, require('os').loadavg().length)", "node")
    assert node.stdout == b"true 3\n", node


# path -> what is written; every one must be refused
PROC_WRITES = {
    "/proc/sys/kernel/core_pattern": "|/tmp/evil",
    "/proc/sys/kernel/hostname": "evil",
    "/proc/sys/vm/drop_caches": "3",
    "/proc/sys/kernel/sysrq": "1",
    "/proc/sys/net/ipv4/ip_forward": "1",  # the sandbox's own netns, but owned by unmapped root
    "/proc/sys/user/max_user_namespaces": "100",
    "/proc/1/oom_score_adj": "-1000",  # lowering it needs CAP_SYS_RESOURCE
    "/proc/self/oom_score_adj": "-1000",
    "/proc/self/uid_map": "0 0 1",  # one-shot, and already written by bwrap
    "/proc/1/gid_map": "0 0 1",
    "/proc/self/setgroups": "allow",
    "/proc/1/attr/current": "unconfined",
    "/proc/1/loginuid": "0",
}


@pytest.mark.parametrize("path", list(PROC_WRITES))
async def test_proc_writes_refused(run, path: str) -> None:
    seen = (await probe(run, WRITE_PROBE, {path: PROC_WRITES[path]}))[path]
    assert seen != "WROTE", path
    assert seen.split(":")[1] in {"EACCES", "EPERM", "EROFS", "EINVAL", "ENOENT"}, seen


async def test_host_wide_sysctls_belong_to_an_unmapped_uid(run) -> None:
    """Why /proc/sys needs no cover: the host's sysctls belong to a uid the sandbox cannot be.

    (The network sysctls of the sandbox's own netns show as its uid, and the kernel still
    refuses writes without CAP_NET_ADMIN: test_proc_writes_refused.)
    """
    result = await run(
        "stat -c '%u %a' /proc/sys/kernel/core_pattern /proc/sys/vm/drop_caches; id -u", "bash"
    )
    assert result.stdout.split(b"\n")[:3] == [b"65534 644", b"65534 200", b"1000"], result


async def test_no_sysfs_and_none_can_be_mounted(run) -> None:
    assert os.path.isdir("/sys/class/net"), "precondition: the host has sysfs"
    result = await run(
        """
        import ctypes, errno, json, os
        libc = ctypes.CDLL(None, use_errno=True)
        out = {"exists": os.path.exists("/sys")}
        for name, fn in [("mkdir", lambda: os.mkdir("/sys")),
                         ("write", lambda: open("/sys/kernel/uevent_helper", "w")),
                         ("mkdir_tmp", lambda: os.mkdir("/tmp/sys"))]:
            try:
                fn(); out[name] = "OK"
            except OSError as e:
                out[name] = errno.errorcode[e.errno]
        r = libc.mount(b"sysfs", b"/tmp/sys", b"sysfs", 0, None)
        out["mount"] = "OK" if r == 0 else errno.errorcode[ctypes.get_errno()]
        print(json.dumps(out))
        """
    )
    out = json.loads(result.stdout)
    assert out == {"exists": False, "mkdir": "EROFS", "write": "ENOENT", "mkdir_tmp": "OK", "mount": "EPERM"}


DEVICES = ["/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/dev/vda", "/dev/sda", "/dev/loop0",
           "/dev/loop-control", "/dev/kvm", "/dev/fuse", "/dev/net/tun", "/dev/vsock", "/dev/console",
           "/dev/ttyS0", "/dev/cpu/0/msr", "/dev/btrfs-control"]


async def test_host_device_nodes_not_in_view(run) -> None:
    present = [d for d in DEVICES if os.path.exists(d)]
    assert "/dev/kmsg" in present and "/dev/vda" in present, "precondition: host devices exist"
    seen = await probe(run, READ_PROBE, DEVICES + ["/dev/null", "/dev/urandom"])
    assert {d: seen[d] for d in DEVICES} == {d: "ENOENT" for d in DEVICES}
    assert seen["/dev/null"] == "READ:" and len(seen["/dev/urandom"]) > 100


async def test_device_nodes_cannot_be_made_anywhere_writable(run) -> None:
    result = await run(
        """
        import errno, json, os, stat
        out = {}
        for where in ("/tmp", "/data", "/dev/shm", "/home/baponi"):
            for kind, dev in (("blk", stat.S_IFBLK | 0o666), ("chr", stat.S_IFCHR | 0o666)):
                try:
                    os.mknod(f"{where}/{kind}", dev, os.makedev(1, 1))  # /dev/mem
                    out[where + kind] = "MADE"
                except OSError as e:
                    out[where + kind] = errno.errorcode[e.errno]
        print(json.dumps(out))
        """
    )
    assert set(json.loads(result.stdout).values()) == {"EPERM"}  # no CAP_MKNOD
