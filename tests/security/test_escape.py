"""Escape attempts from a real sandbox: each test tries the attack and asserts it failed.

Where the layer that stopped it can be told from the outside, the test says so: ENOENT for a
file that exists on the host means the mount namespace (not file permissions) hid it; EROFS
means the read-only mounts; ECONNREFUSED to a live host listener means the network namespace.
Syscall-level attacks are in test_seccomp.py, resource limits in test_limits.py.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.runtime import ExecStatus
from sandboxd.runtime.bwrap import SANDBOX_UID, base_env, passwd_file

from .hostprobe import NOBODY, UID_RANGE, Host, read_status, run_as_nobody
from .probes import read_probe

# The whole escape suite runs on the host image (cold and pooled) and on an imported image.
pytestmark = pytest.mark.parametrize("run", ["cold", "pooled", "image"], indirect=True)

# Reads each path in $PROBE and reports what the sandbox saw: its content, a listing, or the errno.
PATH_PROBE = read_probe(300)


def on_image(request: pytest.FixtureRequest) -> Path | None:
    """The image root this variant runs on (`run` "image"), else None (the host's /usr)."""
    if request.node.callspec.params["run"] != "image":
        return None
    return Path(request.getfixturevalue("escape_image").root)


def probe_result(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    assert result.status is ExecStatus.SUCCESS, result
    return json.loads(result.stdout)


async def probe_paths(run, paths: list[str]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    result = await run(PATH_PROBE, env={"PROBE": json.dumps(paths)})
    return probe_result(result)


@pytest.fixture
def host_secret(secret: str) -> Iterator[Path]:
    """A secret in a host temp dir that any host uid may read (0755 dir, 0644 file)."""
    d = Path(tempfile.mkdtemp(prefix="sandboxd-sec-host-"))
    d.chmod(0o755)
    f = d / f"{secret}.txt"  # the token is in the name too, so a filename search can look for it
    f.write_text(secret + "\n")
    f.chmod(0o644)
    yield f
    shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- filesystem: reads


@pytest.mark.parametrize(
    "path",
    [
        "/etc/shadow",
        "/root",
        "/root/.bashrc",
        "/proc/1/root/etc/shadow",
        "/proc/1/root/root",
        "/proc/1/cwd/etc/shadow",
    ],
)
async def test_host_secrets_not_in_view(request: pytest.FixtureRequest, run, path: str) -> None:
    host_path = path.replace("/proc/1/root", "").replace("/proc/1/cwd", "")
    assert os.path.exists(host_path), f"precondition: {host_path} exists on the host"
    seen = await probe_paths(run, [path])
    # On an image, the image's own root-only /root may be there: closed to the sandbox user.
    allowed = ("ENOENT", "EACCES") if on_image(request) else ("ENOENT",)
    assert seen[path] in allowed, f"{path} in the sandbox: {seen[path][:100]}"


@pytest.mark.parametrize(
    ("language", "code"),
    [
        (
            "node",
            "try { console.log(require('fs').readFileSync('/etc/shadow', 'utf8')) } catch (e) { console.log(e.code) }",
        ),
        ("bash", "cat /etc/shadow 2>/dev/null || echo ENOENT-$?; ls /root 2>&1 | head -1"),
    ],
)
async def test_host_shadow_not_readable_from_node_and_bash(run, language: str, code: str) -> None:
    result = await run(code, language)
    assert b"root:" not in result.stdout
    assert result.stdout.startswith(b"ENOENT"), result


async def test_world_readable_host_file_hidden_by_mount_namespace(
    run, host_secret: Path, secret: str
) -> None:
    # Precondition: an ordinary unprivileged host uid CAN read it, so DAC would not protect it.
    as_nobody = run_as_nobody(["/usr/bin/cat", str(host_secret)])
    assert as_nobody.stdout.strip() == secret, as_nobody

    seen = await probe_paths(run, [str(host_secret), str(host_secret.parent), "/tmp"])
    assert seen[str(host_secret)] == "ENOENT"
    assert seen[str(host_secret.parent)] == "ENOENT"
    assert secret not in seen["/tmp"]  # /tmp is the sandbox's own tmpfs, not the host's

    # And it is nowhere else in view either (search by the unique token in its name).
    result = await run(
        f"find / \\( -path /proc -o -path /dev \\) -prune -o -name '*{secret}*' -print 2>/dev/null; echo end",
        "bash",
    )
    assert result.stdout == b"end\n", result


async def test_server_data_dir_hidden(request: pytest.FixtureRequest, run, data_dir: Path, secret: str) -> None:
    key = data_dir / "secret.key"
    assert run_as_nobody(["/usr/bin/cat", str(key)]).stdout.strip() == secret  # DAC would allow it
    paths = [
        str(data_dir),
        str(key),
        str(data_dir / "sandboxd.db"),
        "/var/lib/sandboxd",
        "/var/lib",
        "/work/main",
        "/work/main/.venv",
        "/srv",
    ]
    seen = await probe_paths(run, paths)
    if (image := on_image(request)) is not None:  # the image's own /var/lib and /srv
        for p in ("/var/lib", "/srv"):
            assert seen.pop(p) == "DIR:" + ",".join(sorted(os.listdir(image / p.lstrip("/"))))
        paths = [p for p in paths if p not in ("/var/lib", "/srv")]
    assert seen == {p: "ENOENT" for p in paths}


async def test_only_curated_host_files_visible(request: pytest.FixtureRequest, run) -> None:
    assert os.listdir("/usr/local"), "precondition: the host has tools under /usr/local"
    seen = await probe_paths(
        run, ["/usr/local", "/etc", "/etc/passwd", "/home", "/etc/ssl/private"]
    )
    if (image := on_image(request)) is not None:  # the image's own /usr/local and /etc only
        for p in ("/usr/local", "/etc"):
            assert seen[p] == "DIR:" + ",".join(sorted(os.listdir(image / p.lstrip("/")))), p
        assert seen["/etc/passwd"] == "READ:" + passwd_file().decode()
        assert seen["/home"] == "DIR:baponi"
        return
    assert seen["/usr/local"] == "DIR:"  # host-local tools hidden by an empty tmpfs
    etc = set(seen["/etc"].removeprefix("DIR:").split(","))
    assert etc <= {
        "passwd",
        "group",
        "hosts",
        "nsswitch.conf",
        "ld.so.cache",
        "localtime",
        "alternatives",
        "ssl",
        "ca-certificates",
        "mime.types",
    }, etc
    assert seen["/etc/passwd"] == "READ:" + passwd_file().decode()  # synthetic, no host accounts
    assert seen["/home"] == "DIR:baponi"
    # /etc/ssl is shared for CA certificates; its private dir stays closed (DAC: host root 0710).
    assert seen["/etc/ssl/private"] == "EACCES"


# --------------------------------------------------------------------------- filesystem: writes

WRITE_PROBE = """
import errno, json, os
def attempt(p):
    try:
        if p.endswith("/"):
            os.mkdir(p + "sandboxd-escape")
        else:
            with open(p, "a") as f:
                f.write("escape\\n")
        return "WROTE"
    except OSError as e:
        return errno.errorcode[e.errno]
print(json.dumps({p: attempt(p) for p in json.loads(os.environ["PROBE"])}))
"""


# path -> the answers that count as "stopped". Creating entries in a directory meets the read-only
# mount first (EROFS). Our own data binds (/etc/passwd, the program) are owned by the sandbox uid,
# so only the read-only bind stops them (EROFS). Host-root-owned files are stopped by two layers
# and the kernel checks permissions first (EACCES). /proc/sys is bound read-only by bwrap.
READ_ONLY = {
    "/": ("EROFS",),
    "/usr/": ("EROFS",),
    "/usr/bin/": ("EROFS",),
    "/etc/": ("EROFS",),
    "/bin/": ("EROFS",),
    "/lib/": ("EROFS",),
    "/run/": ("EROFS",),
    "/home/": ("EROFS",),
    "/run/sandboxd/": ("EROFS",),
    "/etc/passwd": ("EROFS",),
    "/etc/hosts": ("EROFS",),
    "/run/sandboxd/main.py": ("EROFS",),
    "/etc/ld.so.cache": ("EACCES", "EROFS"),
    "/usr/bin/python3": ("EACCES", "EROFS", "ETXTBSY"),
    "/bin/sh": ("EACCES", "EROFS"),
    "/proc/sys/kernel/hostname": ("EACCES", "EROFS"),
    "/proc/sys/kernel/core_pattern": ("EACCES", "EROFS"),
}


@pytest.mark.parametrize("path", list(READ_ONLY))
async def test_system_paths_read_only(request: pytest.FixtureRequest, run, path: str) -> None:
    result = await run(WRITE_PROBE, env={"PROBE": json.dumps([path])})
    outcome = probe_result(result)[path]
    if path == "/run/sandboxd/main.py" and request.node.callspec.params["run"] == "pooled":
        # A pooled sandbox's stub wrote the code over its own copy of the program file (a
        # file on the sandbox's private tmpfs; runtime/warm.py), so it stays writable there.
        assert outcome == "WROTE", f"{path}: {outcome}"
        return
    assert outcome in READ_ONLY[path], f"{path}: {outcome}"


async def test_writable_places_are_private_tmpfs(run, secret: str) -> None:
    paths = [f"/tmp/{secret}", f"/data/{secret}", f"/home/baponi/{secret}", f"/dev/shm/{secret}"]
    result = await run(WRITE_PROBE, env={"PROBE": json.dumps(paths)})
    assert probe_result(result) == {p: "WROTE" for p in paths}  # the probe itself works
    for p in paths:  # and nothing of it reached the host
        assert not os.path.exists(p), p


async def test_no_devices_sysfs_or_mknod(run) -> None:
    result = await run("""
        import errno, json, os, stat
        # An image may hold an empty /sys directory: what matters is that no sysfs is there.
        out = {"dev": sorted(os.listdir("/dev")), "sys": os.path.exists("/sys") and os.listdir("/sys") != [],
               "vda": os.path.exists("/dev/vda"), "kmsg": os.path.exists("/dev/kmsg")}
        try:
            os.mknod("/tmp/disk", stat.S_IFBLK | 0o600, os.makedev(254, 0))
            out["mknod"] = "OK"
        except OSError as e:
            out["mknod"] = errno.errorcode[e.errno]
        print(json.dumps(out))
    """)
    out = probe_result(result)
    assert out["sys"] is False and out["vda"] is False and out["kmsg"] is False
    assert set(out["dev"]) <= {
        "null",
        "zero",
        "full",
        "random",
        "urandom",
        "tty",
        "ptmx",
        "pts",
        "shm",
        "core",
        "fd",
        "stdin",
        "stdout",
        "stderr",
    }, out["dev"]
    assert out["mknod"] == "EPERM"


async def test_setuid_binaries_gain_nothing(request: pytest.FixtureRequest, run) -> None:
    assert os.stat("/usr/bin/mount").st_mode & 0o4000, (
        "precondition: mount is setuid root on the host"
    )
    image = on_image(request)
    if image is not None:  # the image's setuid bits were dropped when it was unpacked
        assert os.stat(image / "usr/bin/su").st_mode & 0o6000 == 0
    mounted = "/" if image is not None else "/usr"
    result = await run(
        f"""
        grep -E '^NoNewPrivs' /proc/self/status
        awk '$5 == "{mounted}" {{print $6}}' /proc/self/mountinfo
        /usr/bin/mount -t tmpfs none /tmp; echo "mount=$?"
        /usr/bin/su -c id root </dev/null; echo "su=$?"
        df -k /tmp | tail -1
    """,
        "bash",
        tmp_size_mib=8,
    )
    out = result.stdout.decode()
    assert "NoNewPrivs:\t1" in out
    assert "nosuid" in out  # /usr (an image: /) is mounted nosuid
    assert "mount=0" not in out and "su=0" not in out, out
    assert " 8192 " in out, out  # /tmp is still our 8 MiB tmpfs, not a new mount


# --------------------------------------------------------------------------- processes


async def test_only_own_processes_visible(run) -> None:
    me = os.getpid()
    result = await run(f"""
        import errno, json, os
        out = {{"pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
               "self": os.getpid(), "ppid": os.getppid(),
               "host_proc": os.path.exists("/proc/{me}")}}
        try:
            os.kill({me}, 0)
            out["kill"] = "DELIVERED"
        except OSError as e:
            out["kill"] = errno.errorcode[e.errno]
        with open("/proc/1/comm") as f:
            out["init"] = f.read().strip()
        print(json.dumps(out))
    """)
    out = probe_result(result)
    assert out["pids"] == [1, 2] and out["self"] == 2 and out["ppid"] == 1
    assert out["init"] == "bwrap"  # pid 1 is bwrap's init inside the new pid namespace
    assert out["host_proc"] is False
    assert out["kill"] == "ESRCH"


def spawn_as_each_sandbox_uid() -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(["/bin/sleep", "60"], user=uid, group=uid, extra_groups=[])
        for uid in UID_RANGE
    ]


async def test_kill_everything_spares_host_processes_of_the_same_uid(run, host: Host) -> None:
    """Same host uid, no pid namespace: `kill -9 -1` would kill these. With one: nothing."""
    helpers = spawn_as_each_sandbox_uid()
    try:
        result = await run("kill -9 -1; sleep 0.2; echo still-here", "bash")
        assert result.stdout == b"still-here\n", result  # kill(-1) spares the caller; it did run
        assert [h.poll() for h in helpers] == [None] * len(helpers), "a host process was killed"
    finally:
        for h in helpers:
            h.kill()
            h.wait()
    await host.assert_no_processes()


# --------------------------------------------------------------------------- network

CONNECT_PY = """
import errno, json, os, socket
def connect(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(addr)
        return "CONNECTED"
    except socket.timeout:
        return "TIMEOUT"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
port4, port6 = int(os.environ["PORT4"]), int(os.environ["PORT6"])
print(json.dumps({"v4": connect(socket.AF_INET, ("127.0.0.1", port4)),
                  "v6": connect(socket.AF_INET6, ("::1", port6))}))
"""


@pytest.fixture
def host_listeners() -> Iterator[tuple[socket.socket, socket.socket]]:
    """TCP listeners on host loopback (v4 and v6): what the sandbox must not reach."""
    v4 = socket.create_server(("127.0.0.1", 0))
    v6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    for s in (v4, v6):
        s.setblocking(False)
    yield v4, v6
    v4.close()
    v6.close()


def assert_nothing_accepted(listener: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        conn, _ = listener.accept()
        conn.close()


async def test_host_loopback_tcp_unreachable_python(run, host_listeners) -> None:  # type: ignore[no-untyped-def]
    v4, v6 = host_listeners
    env = {"PORT4": str(v4.getsockname()[1]), "PORT6": str(v6.getsockname()[1])}
    out = probe_result(await run(CONNECT_PY, env=env))
    assert out == {"v4": "ECONNREFUSED", "v6": "ECONNREFUSED"}  # own netns: nothing listens there
    assert_nothing_accepted(v4)
    assert_nothing_accepted(v6)


async def test_host_loopback_tcp_unreachable_node_and_bash(run, host_listeners) -> None:  # type: ignore[no-untyped-def]
    v4, _ = host_listeners
    port = v4.getsockname()[1]
    node = await run(
        f"""
        const s = require('net').connect({{host: '127.0.0.1', port: {port}}});
        s.on('connect', () => {{ console.log('CONNECTED'); process.exit(0); }});
        s.on('error', (e) => {{ console.log(e.code); process.exit(0); }});
        setTimeout(() => {{ console.log('TIMEOUT'); process.exit(0); }}, 5000);
    """,
        "node",
    )
    assert node.stdout.strip() == b"ECONNREFUSED", node
    bash = await run(
        f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo CONNECTED || echo REFUSED", "bash"
    )
    assert bash.stdout.strip() == b"REFUSED", bash
    assert_nothing_accepted(v4)


def host_interfaces() -> list[str]:
    with open("/proc/net/dev") as f:
        return [line.split(":")[0].strip() for line in f.readlines()[2:]]


async def test_only_loopback_interface(run, host_listeners) -> None:  # type: ignore[no-untyped-def]
    v4, _ = host_listeners
    others = [i for i in host_interfaces() if i != "lo"]
    assert others, "precondition: the host has a real interface"
    # (socket.if_nameindex() needs a netlink socket, which seccomp refuses; ask by name instead.)
    result = await run(
        """
        import json, os, socket
        def index(name):
            try:
                return socket.if_nametoindex(name)
            except OSError:
                return 0
        with open("/proc/net/dev") as f:
            devs = [line.split(":")[0].strip() for line in f.readlines()[2:]]
        with open("/proc/net/tcp") as f:
            tcp = f.read()
        print(json.dumps({"dev": devs, "tcp": tcp,
                          "index": {n: index(n) for n in json.loads(os.environ["IFACES"])}}))
    """,
        env={"IFACES": json.dumps(["lo", *others])},
    )
    out = probe_result(result)
    assert out["dev"] == ["lo"]
    assert out["index"] == {
        "lo": 1,
        **{name: 0 for name in others},
    }  # no such interface in this netns
    assert f":{v4.getsockname()[1]:04X}" not in out["tcp"]  # the host's sockets are not listed


async def test_host_abstract_unix_socket_unreachable(run, secret: str) -> None:
    name = "\0" + secret
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(name)
        listener.listen()
        listener.setblocking(False)
        result = await run(f"""
            import errno, socket
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect({name!r})
                print("CONNECTED")
            except OSError as e:
                print(errno.errorcode[e.errno])
        """)
        assert result.stdout.strip() == b"ECONNREFUSED", result  # abstract names are per netns
        assert_nothing_accepted(listener)


async def test_udp_to_host_loopback_not_delivered(run, secret: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        port = rx.getsockname()[1]
        result = await run(f"""
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(5):
                try:
                    s.sendto(b"{secret}", ("127.0.0.1", {port}))
                except OSError:
                    pass
            print("sent")
        """)
        assert result.stdout == b"sent\n", result
        await asyncio.sleep(0.2)
        with pytest.raises(BlockingIOError):
            rx.recv(100)


# --------------------------------------------------------------------------- identity & privileges

STATUS_CODE = {
    "python": "print(open('/proc/self/status').read())",
    "node": "console.log(require('fs').readFileSync('/proc/self/status', 'utf8'))",
    "bash": 'while IFS= read -r line; do echo "$line"; done < /proc/self/status',
}


@pytest.mark.parametrize("language", ["python", "node", "bash"])
async def test_identity_caps_nnp_seccomp(run, language: str) -> None:
    result = await run(STATUS_CODE[language], language)
    status = dict(line.split(":", 1) for line in result.stdout.decode().splitlines() if ":" in line)
    status = {k: v.split() for k, v in status.items()}
    assert status["Uid"] == [str(SANDBOX_UID)] * 4
    assert status["Gid"] == [str(SANDBOX_UID)] * 4
    assert status.get("Groups", []) == []
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert status[cap] == ["0000000000000000"], (cap, status[cap])
    assert status["NoNewPrivs"] == ["1"]
    assert status["Seccomp"] == ["2"]  # filter mode


async def test_sandbox_processes_run_as_unprivileged_host_uid(background, host: Host) -> None:  # type: ignore[no-untyped-def]
    async with background("import time; print('ready', flush=True); time.sleep(60)") as bg:
        groups = host.execution_groups("pids")
        assert len(groups) == 1, groups
        members = host.group_pids(groups[0])
        assert len(members) >= 3, members  # outer bwrap, bwrap's init, python
        statuses = {pid: read_status(pid) for pid in members}
        for pid, st in statuses.items():
            assert st is not None
            uids = {int(x) for x in st["Uid"].split()}
            gids = {int(x) for x in st["Gid"].split()}
            assert len(uids) == 1 and uids <= set(UID_RANGE), (pid, st["Uid"])
            assert len(gids) == 1 and gids <= set(UID_RANGE), (pid, st["Gid"])
            assert st["Groups"] == ""
        # The outer bwrap lives in the host's namespaces: there it must hold no capability at all.
        outer = [st for st in statuses.values() if len(st["NSpid"].split()) == 1]
        assert len(outer) == 1
        assert outer[0]["CapEff"] == outer[0]["CapPrm"] == "0000000000000000"
        # Every live process with that uid is inside the execution's cgroup (nothing escaped it).
        uid = next(iter({int(st["Uid"].split()[0]) for st in statuses.values()}))
        with_uid = {p.pid for p in host.procs() if uid in p.uids and not p.zombie}
        assert with_uid <= members
        for c in ("memory", "freezer", "cpu"):
            assert host.group_pids(host.parents[c] / groups[0].name) == members, c
    assert bg.result is not None and bg.result.status is ExecStatus.CANCELLED


async def test_concurrent_sandboxes_are_isolated_from_each_other(
    background, host: Host, secret: str
) -> None:  # type: ignore[no-untyped-def]
    first = f"""
        import socket, time
        with open("/tmp/first", "w") as f:
            f.write("{secret}")
        a = socket.socket(socket.AF_UNIX); a.bind("\\0first-{secret}"); a.listen()
        t = socket.socket(); t.bind(("127.0.0.1", 47001)); t.listen()
        print("ready", flush=True)
        time.sleep(60)
    """
    second = f"""
        import errno, json, os, socket, time
        def connect(family, addr):
            s = socket.socket(family)
            s.settimeout(3)
            try:
                s.connect(addr)
                return "CONNECTED"
            except OSError as e:
                return errno.errorcode.get(e.errno, "TIMEOUT")
            finally:
                s.close()
        print(json.dumps({{
            "tmp": os.path.exists("/tmp/first"),
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "abstract": connect(socket.AF_UNIX, "\\0first-{secret}"),
            "tcp": connect(socket.AF_INET, ("127.0.0.1", 47001)),
        }}))
        print("ready", flush=True)
        time.sleep(60)
    """
    async with background(first) as a, background(second) as b:
        groups = host.execution_groups("pids")
        assert len(groups) == 2
        uids = [{int(read_status(p)["Uid"].split()[0]) for p in host.group_pids(g)} for g in groups]  # type: ignore[index]
        assert all(len(u) == 1 for u in uids), uids
        assert uids[0] != uids[1], "two concurrent sandboxes share a host uid"
        seen = json.loads(bytes(b.stdout).splitlines()[0])
    assert seen == {"tmp": False, "pids": [1, 2], "abstract": "ECONNREFUSED", "tcp": "ECONNREFUSED"}
    assert a.result is not None and a.result.status is ExecStatus.CANCELLED


async def test_sysv_ipc_and_hostname_are_namespaced(run, secret: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    host_key = 0x5EC0_0001
    shmid = libc.shmget(host_key, 4096, 0o1666)  # IPC_CREAT | 0666: any uid could attach
    assert shmid >= 0
    try:
        result = await run(f"""
            import ctypes, json, os, socket
            libc = ctypes.CDLL(None, use_errno=True)
            mine = libc.shmget(0x5EC00002, 4096, 0o1600)
            with open("/proc/sysvipc/shm") as f:
                table = f.read()
            try:
                socket.sethostname("{secret[:20]}")
                renamed = "RENAMED"
            except OSError as e:
                renamed = e.errno
            print(json.dumps({{"host_seg": libc.shmget({host_key}, 0, 0), "mine": mine,
                               "table": table, "hostname": socket.gethostname(), "renamed": renamed}}))
        """)
        out = probe_result(result)
        assert out["host_seg"] == -1  # the host's segment does not exist in the sandbox's IPC ns
        assert out["mine"] >= 0 and f"{host_key:d}" not in out["table"]
        assert out["hostname"] == "sandbox" and out["renamed"] == 1  # EPERM: no CAP_SYS_ADMIN
        # And the sandbox's segment is not on the host.
        assert str(0x5EC0_0002) not in Path("/proc/sysvipc/shm").read_text()
        assert socket.gethostname() != secret[:20]
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID


# --------------------------------------------------------------------------- environment

ENV_CODE = {
    "python": "import json, os; print(json.dumps(dict(os.environ)))",
    "node": "console.log(JSON.stringify(process.env))",
    "bash": "env -0",
}


@pytest.mark.parametrize("language", ["python", "node", "bash"])
async def test_server_environment_not_inherited(
    run, language: str, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    marker = "SANDBOXD_SEC_MARKER_" + secret[-8:].upper()
    monkeypatch.setenv(marker, secret)
    monkeypatch.setenv("NODE_OPTIONS", "--require=/etc/" + secret)  # would break node if inherited
    result = await run(ENV_CODE[language], language, env={"REQUEST_VAR": "from-the-request"})
    assert result.status is ExecStatus.SUCCESS, result
    if language == "bash":
        env = dict(item.split("=", 1) for item in result.stdout.decode().split("\0") if "=" in item)
    else:
        env = json.loads(result.stdout)
    assert marker not in env and "NODE_OPTIONS" not in env
    assert secret.encode() not in result.stdout
    assert env["REQUEST_VAR"] == "from-the-request"  # the request's own env does arrive
    allowed = set(base_env()) | {"REQUEST_VAR", "SHLVL", "_", "OLDPWD"}
    assert set(env) <= allowed, set(env) - allowed


async def test_bwrap_itself_got_an_empty_environment(
    run, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("SANDBOXD_SEC_MARKER", secret)
    result = await run("print(repr(open('/proc/1/environ', 'rb').read()))")
    assert result.stdout.strip() == b"b''", result


async def test_request_env_not_readable_by_other_host_users(  # type: ignore[no-untyped-def]
    background, host: Host, secret: str
) -> None:
    code = "import time; print('ready', flush=True); time.sleep(60)"
    async with background(code, env={"API_TOKEN": secret}):
        [group] = host.execution_groups("pids")
        leaks = []
        for pid in host.group_pids(group):
            as_nobody = run_as_nobody(["/usr/bin/cat", f"/proc/{pid}/cmdline"])
            if secret in as_nobody.stdout:
                leaks.append(pid)
    assert leaks == [], f"host uid {NOBODY} read the request's API_TOKEN from {leaks}"


# --------------------------------------------------------------------------- detached children


DETACHED = {
    "setsid": ("bash", "setsid sleep 1000 & echo ready; sleep 1000", "sleep"),
    "nohup": ("bash", "nohup sleep 1000 >/dev/null 2>&1 & echo ready; sleep 1000", "sleep"),
    "double_fork": ("bash", "( (sleep 1000 &) & ); echo ready; sleep 1000", "sleep"),
    "disown": ("bash", "sleep 1000 & disown; echo ready; sleep 1000", "sleep"),
    "python_daemon": (
        "python",
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.closerange(0, 3)
                time.sleep(1000)
            os._exit(0)
        os.wait()
        print("ready", flush=True)
        time.sleep(1000)
    """,
        "python3",
    ),
}


@pytest.mark.parametrize("variant", list(DETACHED))
async def test_timeout_kills_detached_children(background, host: Host, variant: str) -> None:  # type: ignore[no-untyped-def]
    language, code, name = DETACHED[variant]
    async with background(code, language, timeout_s=2) as bg:
        # Precondition: the detached child and the main's own sleep both run (they may still be
        # between fork and exec when "ready" arrives).
        for _ in range(100):
            alive = [p for p in host.procs() if p.name == name and not p.zombie]
            if len(alive) >= 2 or bg.task.done():
                break
            await asyncio.sleep(0.02)
        assert len(alive) >= 2, f"precondition: the detached child runs: {host.procs()}"
        result = await bg.finish(cancel=False)
    assert result.status is ExecStatus.TIMEOUT and result.error == "timeout"
    await host.assert_no_processes()
    assert host.groups() == []


async def test_main_exit_takes_detached_children_down(run, host: Host) -> None:
    result = await run(
        "setsid sleep 1000 & nohup sleep 1000 >/dev/null 2>&1 & ( (sleep 1000 &) & ); echo done",
        "bash",
    )
    assert result.status is ExecStatus.SUCCESS and result.stdout == b"done\n"
    assert result.duration_ms < 10_000  # it did not wait for the children (or the timeout)
    await host.assert_no_processes()
