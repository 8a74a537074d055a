"""Build the bubblewrap command line for one execution. Pure: no kernel needed to test it.

bubblewrap is a toolkit, not a policy (its SECURITY.md): this argv *is* sandboxd's filesystem,
namespace and environment policy, so every flag below is deliberate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import procfs
from .languages import INTERPRETERS, PROGRAM_DIR
from .network import CA_BUNDLE_PATH
from .outputs import SANDBOX_PATH as OUTPUTS_PATH
from .spec import RootImage, SandboxSpec

SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_USER = "baponi"
HOME = "/home/baponi"
WORKDIR = "/data"
PATH = "/usr/local/bin:/usr/bin:/bin"

#: Host files shared read-only into every sandbox (the runtime image is the host's /usr).
_RO_HOST_FILES = (
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/mime.types",
)


@dataclass(frozen=True)
class SandboxFds:
    """File descriptors (open in the launching process) whose contents bwrap copies in."""

    program: int
    seccomp: int
    passwd: int
    group: int
    hosts: int
    nsswitch: int
    #: /etc/resolv.conf for `full` mode; None elsewhere (no resolver to reach).
    resolv: int | None = None
    #: One directory descriptor per `spec.mounts` entry, in order (runtime/beneath.py).
    mounts: tuple[int, ...] = ()
    #: The CA bundle for brokered connectors, bound read-only at `CA_BUNDLE_PATH`; None: none.
    ca_bundle: int | None = None
    #: The sandbox's outputs tmpfs, bound read-write at /data/outputs (runtime/outputs.py).
    outputs: int | None = None


#: What bubblewrap mounts on in an image's read-only root: they must exist in the tree, as a
#: directory or a regular file (images/store.py makes them when it prepares an image's root).
IMAGE_MOUNT_DIRS = ("/proc", "/dev", "/tmp", WORKDIR, HOME, PROGRAM_DIR)
IMAGE_MOUNT_FILES = (
    "/etc/passwd", "/etc/group", "/etc/hosts", "/etc/nsswitch.conf", "/etc/resolv.conf",
    *(interp.program_path for interp in INTERPRETERS.values()),
)


def base_env(image: RootImage | None = None) -> dict[str, str]:
    """The sandbox's own variables: ours, the image config's `Env` over them (its PATH, LANG,
    a conda env's variables), then the ones that describe the sandbox, which no image changes."""
    env = {
        "PATH": PATH,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        # `pip install --user` lands in the thread's home; the image's own site stays read-only.
        "PIP_BREAK_SYSTEM_PACKAGES": "1",
    }
    if image is not None:
        env |= dict(image.env)
    return env | {
        "HOME": HOME,
        "USER": SANDBOX_USER,
        "LOGNAME": SANDBOX_USER,
        "TMPDIR": "/tmp",
        "PWD": WORKDIR,
    }


def _root_args(image: RootImage) -> list[str]:
    """The read-only root: an image's tree, or the host's /usr with host-local tools hidden."""
    if image.root is not None:
        return ["--ro-bind", image.root, "/"]
    argv = [
        "--ro-bind", "/usr", "/usr",
        "--tmpfs", "/usr/local",
        "--remount-ro", "/usr/local",
        "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/sbin", "/sbin",
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64",
    ]
    for path in _RO_HOST_FILES:
        if Path(path).exists():
            argv += ["--ro-bind", path, path]
    return argv


def build_argv(
    spec: SandboxSpec,
    fds: SandboxFds,
    *,
    bwrap: str = "bwrap",
    network_env: Mapping[str, str] | None = None,
    program_writable: bool = False,
) -> list[str]:
    """`network_env` is what the network policy sets (the egress proxy's address); it wins
    over the request's variables so the code always learns the way out that exists."""
    limits = spec.limits
    # `none` without connectors: bwrap makes an empty namespace. Otherwise the launcher has
    # already joined the one the network policy prepared (never the host's).
    net = ["--unshare-net"] if spec.network.mode == "none" and not spec.egress else []
    mib = 1024 * 1024
    argv = [
        bwrap,
        # Lifetime: the sandbox dies with the launcher; its own session (no TIOCSTI to ours).
        "--die-with-parent",
        "--new-session",
        # Namespaces: every one, and no nested user namespaces inside.
        "--unshare-user",
        "--unshare-ipc",
        "--unshare-pid",
        *net,
        "--unshare-uts",
        "--unshare-cgroup",
        "--disable-userns",
        "--uid", str(SANDBOX_UID),
        "--gid", str(SANDBOX_GID),
        "--hostname", "sandbox",
        # Filesystem: the image read-only, synthetic identity files.
        *_root_args(spec.image),
    ]
    argv += [
        "--ro-bind-data", str(fds.passwd), "/etc/passwd",
        "--ro-bind-data", str(fds.group), "/etc/group",
        "--ro-bind-data", str(fds.hosts), "/etc/hosts",
        "--ro-bind-data", str(fds.nsswitch), "/etc/nsswitch.conf",
        *(["--ro-bind-data", str(fds.resolv), "/etc/resolv.conf"] if fds.resolv is not None else []),
        "--proc", "/proc",
        *procfs.mount_args(),  # host-describing /proc entries covered; no /sys at all
        "--dev", "/dev",
        # Writable places, each a size-limited tmpfs (also charged to the memory cgroup).
        "--size", str(limits.tmp_size_mib * mib), "--tmpfs", "/tmp",
        "--size", str(limits.tmp_size_mib * mib), "--tmpfs", "/dev/shm",
        "--size", str(limits.workdir_size_mib * mib), "--tmpfs", WORKDIR,
    ]
    if fds.outputs is not None:  # a size-capped tmpfs of the server's, kept after the run
        argv += ["--bind-fd", str(fds.outputs), OUTPUTS_PATH]
    if len(fds.mounts) != len(spec.mounts):
        raise ValueError("one descriptor per mount")
    for mount, fd in zip(spec.mounts, fds.mounts, strict=True):
        argv += ["--ro-bind-fd" if mount.read_only else "--bind-fd", str(fd), mount.dest]
    if spec.home is not None:
        argv += ["--bind", spec.home, HOME]
    else:
        argv += ["--perms", "0700", "--size", str(limits.home_size_mib * mib), "--tmpfs", HOME]
    if fds.ca_bundle is not None:
        # The CA bundle beside the program: their directory a tmpfs of its own (an image's root
        # is read-only), read-only once both are in.
        argv += [
            "--size", str(4 * mib), "--tmpfs", PROGRAM_DIR,
            "--ro-bind-data", str(fds.ca_bundle), CA_BUNDLE_PATH,
        ]
    argv += [
        # A pooled sandbox's stub writes the request's code over its own copy (runtime/warm.py).
        *(["--perms", "0600", "--bind-data"] if program_writable else ["--ro-bind-data"]),
        str(fds.program), INTERPRETERS[spec.language].program_path,
        *(["--remount-ro", PROGRAM_DIR] if fds.ca_bundle is not None else []),
        "--chdir", WORKDIR,
        # Environment: nothing of the server's, only ours and the request's.
        "--clearenv",
    ]
    env = base_env(spec.image) | spec.env | dict(network_env or {})
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += [
        # Privileges: none, and the root filesystem read-only.
        "--cap-drop", "ALL",
        "--remount-ro", "/",
        "--seccomp", str(fds.seccomp),
        "--",
        spec.image.binary(spec.language), INTERPRETERS[spec.language].program_path,
    ]
    return argv


def passwd_file() -> bytes:
    return (
        f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_GID}:{SANDBOX_USER}:{HOME}:/bin/bash\n"
        f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ).encode()


def group_file() -> bytes:
    return (
        f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_GID}:\nnogroup:x:65534:\n"
    ).encode()


def hosts_file() -> bytes:
    return b"127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost ip6-loopback\n"


def nsswitch_file() -> bytes:
    return b"passwd: files\ngroup: files\nhosts: files dns\n"
