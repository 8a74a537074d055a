"""Golden tests of the bubblewrap command line: the argv *is* the sandbox policy.

`build_argv` is pure, so these run without a kernel, bwrap or root.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sandboxd.runtime import bwrap, procfs
from sandboxd.runtime.bwrap import SandboxFds, base_env, build_argv
from sandboxd.runtime.languages import INTERPRETERS
from sandboxd.runtime.spec import Limits, Mount, RootImage, SandboxSpec

MIB = 1024 * 1024
LANGUAGES = sorted(INTERPRETERS)

#: Distinct numbers, so a wrong fd in a wrong place shows.
FDS = SandboxFds(program=11, seccomp=12, passwd=13, group=14, hosts=15, nsswitch=16)
#: Distinct sizes, so a tmpfs given another mount's size shows.
LIMITS = Limits(tmp_size_mib=7, workdir_size_mib=19, home_size_mib=23)
REQUEST_ENV = {"API_TOKEN": "s3cr3t value", "MULTI": "a\nb\tc", "EQ": "x=y", "EMPTY": ""}

NAMESPACE_FLAGS = [
    "--unshare-user",
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-uts",
    "--unshare-cgroup",
    "--disable-userns",
]
#: Options that would give the sandbox a writable view of the host, a host device, or the network.
FORBIDDEN_OPTIONS = [
    "--bind",
    "--bind-try",
    "--dev-bind",
    "--dev-bind-try",
    "--bind-fd",
    "--share-net",
    "--cap-add",
    "--unshare-all",  # would hide the explicit list; and with --share-net undoes it
    "--userns",
    "--userns2",
    "--pidns",
    "--as-pid-1",
]
#: Options that take this many following arguments (for walking the argv as a list of ops).
ARITY = {
    "--die-with-parent": 0, "--new-session": 0, "--clearenv": 0,
    "--unshare-user": 0, "--unshare-ipc": 0, "--unshare-pid": 0, "--unshare-net": 0,
    "--unshare-uts": 0, "--unshare-cgroup": 0, "--disable-userns": 0,
    "--uid": 1, "--gid": 1, "--hostname": 1, "--tmpfs": 1, "--remount-ro": 1, "--proc": 1,
    "--dev": 1, "--size": 1, "--perms": 1, "--chdir": 1, "--cap-drop": 1, "--seccomp": 1,
    "--ro-bind": 2, "--symlink": 2, "--ro-bind-data": 2, "--setenv": 2,
}
MOUNT_OPS = {"--ro-bind", "--tmpfs", "--symlink", "--ro-bind-data", "--proc", "--dev"}


def make(
    language: str = "python", env: dict[str, str] | None = None, limits: Limits = LIMITS
) -> list[str]:
    spec = SandboxSpec(
        language=language,  # type: ignore[arg-type]
        code=b"print('CODE-MARKER')",
        limits=limits,
        env=dict(REQUEST_ENV if env is None else env),
    )
    return build_argv(spec, FDS, bwrap="/usr/bin/bwrap")


def ops(argv: list[str]) -> tuple[list[tuple[str, tuple[str, ...]]], list[str]]:
    """Split into (option, args) before '--', and the command after it. Fails on unknown options."""
    out: list[tuple[str, tuple[str, ...]]] = []
    i = 1
    while argv[i] != "--":
        opt = argv[i]
        assert opt in ARITY, f"unexpected bwrap option {opt!r} (add it to the golden table)"
        n = ARITY[opt]
        out.append((opt, tuple(argv[i + 1 : i + 1 + n])))
        i += 1 + n
    return out, argv[i + 1 :]


def args_of(argv: list[str], option: str) -> list[tuple[str, ...]]:
    return [a for o, a in ops(argv)[0] if o == option]


def index_of(argv: list[str], option: str, args: tuple[str, ...] | None = None) -> int:
    for i, (o, a) in enumerate(ops(argv)[0]):
        if o == option and (args is None or a == args):
            return i
    raise AssertionError(f"{option} {args or ''} not in argv")


@pytest.fixture
def argv() -> list[str]:
    return make()


def test_program_is_the_given_bwrap(argv: list[str]) -> None:
    assert argv[0] == "/usr/bin/bwrap"
    assert build_argv(SandboxSpec("python", b"x"), FDS)[0] == "bwrap"


def test_every_option_is_known_and_well_formed(argv: list[str]) -> None:
    options, command = ops(argv)  # asserts every option is in the golden table
    assert options and command
    assert argv.count("--") == 1


@pytest.mark.parametrize("flag", NAMESPACE_FLAGS)
def test_namespace_flag_present(argv: list[str], flag: str) -> None:
    assert args_of(argv, flag) == [()]


@pytest.mark.parametrize("flag", ["--die-with-parent", "--new-session", "--clearenv"])
def test_lifetime_and_env_flags_present_once(argv: list[str], flag: str) -> None:
    assert args_of(argv, flag) == [()]


@pytest.mark.parametrize("option", FORBIDDEN_OPTIONS)
@pytest.mark.parametrize("language", LANGUAGES)
def test_forbidden_option_absent(option: str, language: str) -> None:
    options, _ = ops(make(language))
    assert all(o != option for o, _ in options)
    assert option not in make(language)


def test_only_allowlisted_host_paths_are_bound(argv: list[str]) -> None:
    allowed = {"/usr"} | {p for p in bwrap._RO_HOST_FILES if Path(p).exists()}
    covers = [b for b in args_of(argv, "--ro-bind") if b[1].startswith("/proc/")]
    assert covers and all(src == "/dev/null" for src, _ in covers)  # see test_proc_covers
    bound = [b for b in args_of(argv, "--ro-bind") if b not in covers]
    assert {src for src, _ in bound} == allowed
    for src, dest in bound:
        assert src == dest  # host paths keep their names; nothing is bound over something else
    assert ("/usr", "/usr") in bound
    # Never the host's root, home or data directories, not even read-only.
    for src, _ in bound:
        assert src not in ("/", "/home", "/root", "/etc", "/var", "/proc", "/sys", "/dev", "/run")


def test_usr_local_is_masked_read_only(argv: list[str]) -> None:
    tmpfs = index_of(argv, "--tmpfs", ("/usr/local",))
    remount = index_of(argv, "--remount-ro", ("/usr/local",))
    assert index_of(argv, "--ro-bind", ("/usr", "/usr")) < tmpfs < remount


def test_root_remounted_read_only_after_every_mount(argv: list[str]) -> None:
    options, _ = ops(argv)
    remount_root = index_of(argv, "--remount-ro", ("/",))
    last_mount = max(i for i, (o, _) in enumerate(options) if o in MOUNT_OPS)
    assert remount_root > last_mount


def test_caps_dropped(argv: list[str]) -> None:
    assert args_of(argv, "--cap-drop") == [("ALL",)]


def test_seccomp_fd(argv: list[str]) -> None:
    assert args_of(argv, "--seccomp") == [(str(FDS.seccomp),)]


def test_identity(argv: list[str]) -> None:
    assert args_of(argv, "--uid") == [("1000",)]
    assert args_of(argv, "--gid") == [("1000",)]
    assert args_of(argv, "--hostname") == [("sandbox",)]


def test_synthetic_identity_files_from_their_fds(argv: list[str]) -> None:
    data = dict((dest, fd) for fd, dest in args_of(argv, "--ro-bind-data"))
    assert data["/etc/passwd"] == str(FDS.passwd)
    assert data["/etc/group"] == str(FDS.group)
    assert data["/etc/hosts"] == str(FDS.hosts)
    assert data["/etc/nsswitch.conf"] == str(FDS.nsswitch)


def test_proc_covers_follow_the_proc_mount(argv: list[str]) -> None:
    """Host-describing /proc files are covered right after /proc is mounted, read-only."""
    at = argv.index("--proc") + 2
    covers = procfs.mount_args()
    assert argv[at : at + len(covers)] == covers
    if Path("/proc/cmdline").exists():
        assert ("/dev/null", "/proc/cmdline") in args_of(argv, "--ro-bind")


def test_proc_covers_only_what_an_unprivileged_uid_could_read(tmp_path: Path) -> None:
    for name, mode in [("cmdline", 0o444), ("keys", 0o444), ("timer_list", 0o400), ("kcore", 0o400)]:
        (tmp_path / name).write_text("x")
        (tmp_path / name).chmod(mode)
    (tmp_path / "bus" / "pci").mkdir(parents=True)
    (tmp_path / "bus").chmod(0o555)
    (tmp_path / "acpi").mkdir(mode=0o555)  # empty: nothing to hide
    (tmp_path / "acpi").chmod(0o555)
    (tmp_path / "scsi").mkdir(mode=0o700)
    (tmp_path / "scsi" / "x").write_text("x")
    (tmp_path / "scsi").chmod(0o700)
    assert procfs.mount_args(str(tmp_path)) == [
        "--ro-bind", "/dev/null", "/proc/cmdline",
        "--ro-bind", "/dev/null", "/proc/keys",
        "--size", "4096", "--tmpfs", "/proc/bus", "--remount-ro", "/proc/bus",
    ]


def test_proc_dev_and_workdir(argv: list[str]) -> None:
    assert args_of(argv, "--proc") == [("/proc",)]
    assert args_of(argv, "--dev") == [("/dev",)]
    assert args_of(argv, "--chdir") == [("/data",)]


def tmpfs_sizes(argv: list[str]) -> dict[str, tuple[int | None, str | None]]:
    """mount point -> (the --size and --perms given just before its --tmpfs)."""
    sizes: dict[str, tuple[int | None, str | None]] = {}
    size: int | None = None
    perms: str | None = None
    for opt, a in ops(argv)[0]:
        if opt == "--size":
            size = int(a[0])
        elif opt == "--perms":
            perms = a[0]
        elif opt == "--tmpfs":
            assert a[0] not in sizes, f"{a[0]} mounted twice"
            sizes[a[0]] = (size, perms)
            size = perms = None
        else:
            assert size is None and perms is None, f"--size/--perms not followed by --tmpfs: {opt}"
    return sizes


@pytest.mark.parametrize(
    "limits",
    [LIMITS, Limits(), Limits(tmp_size_mib=1, workdir_size_mib=1024, home_size_mib=4096)],
    ids=["distinct", "defaults", "large"],
)
def test_tmpfs_sizes_match_limits(limits: Limits) -> None:
    sizes = tmpfs_sizes(make(limits=limits))
    assert sizes["/tmp"] == (limits.tmp_size_mib * MIB, None)
    assert sizes["/dev/shm"] == (limits.tmp_size_mib * MIB, None)
    assert sizes["/data"] == (limits.workdir_size_mib * MIB, None)
    assert sizes["/home/baponi"] == (limits.home_size_mib * MIB, "0700")
    assert {p for p in sizes if not p.startswith("/proc/")} == {
        "/usr/local", "/tmp", "/dev/shm", "/data", "/home/baponi"
    }
    assert all(sizes[p] == (4096, None) for p in sizes if p.startswith("/proc/"))


def setenvs(argv: list[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in args_of(argv, "--setenv")]


def test_clearenv_before_any_setenv(argv: list[str]) -> None:
    options, _ = ops(argv)
    clear = index_of(argv, "--clearenv")
    positions = [i for i, (o, _) in enumerate(options) if o == "--setenv"]
    assert positions and min(positions) > clear


def test_base_env_then_request_env(argv: list[str]) -> None:
    pairs = setenvs(argv)
    base = list(base_env().items())
    assert pairs[: len(base)] == base
    assert pairs[len(base) :] == list(REQUEST_ENV.items())  # values verbatim, one argv item each


def test_base_env_values() -> None:
    env = dict(setenvs(make(env={})))
    assert env == base_env()
    assert env["HOME"] == "/home/baponi"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["TMPDIR"] == "/tmp"
    assert env["PWD"] == "/data"
    assert env["USER"] == env["LOGNAME"] == "baponi"


def test_each_env_name_set_once() -> None:
    names = [k for k, _ in setenvs(make(env={**REQUEST_ENV, "PATH": "/evil"}))]
    assert len(names) == len(set(names))


def test_server_environment_not_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOXD_TEST_LEAK", "leak-marker-0xdead")
    argv = make()
    assert not any("leak-marker-0xdead" in a or "SANDBOXD_TEST_LEAK" in a for a in argv)


def test_code_not_on_the_command_line(argv: list[str]) -> None:
    assert not any("CODE-MARKER" in a for a in argv)


@pytest.mark.parametrize(
    ("language", "binary", "program"),
    [
        ("python", "/usr/bin/python3", "/run/sandboxd/main.py"),
        ("node", "/usr/bin/node", "/run/sandboxd/main.js"),
        ("bash", "/usr/bin/bash", "/run/sandboxd/main.sh"),
    ],
)
def test_program_and_interpreter(language: str, binary: str, program: str) -> None:
    argv = make(language)
    assert (str(FDS.program), program) in args_of(argv, "--ro-bind-data")
    assert INTERPRETERS[language].program_path == program  # type: ignore[index]
    assert argv[-3:] == ["--", binary, program]
    _, command = ops(argv)
    assert command == [binary, program]


def test_languages_covered() -> None:
    assert set(LANGUAGES) == {"python", "node", "bash"}


def test_argv_is_all_strings() -> None:
    assert all(isinstance(a, str) for a in make())


def test_golden_prefix(argv: list[str]) -> None:
    """The fixed head of the argv, exactly: a change here is a policy change to review."""
    assert argv[:24] == [
        "/usr/bin/bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-user",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup",
        "--disable-userns",
        "--uid", "1000",
        "--gid", "1000",
        "--hostname", "sandbox",
        "--ro-bind", "/usr", "/usr",
        "--tmpfs", "/usr/local",
        "--remount-ro", "/usr/local",
        "--symlink",
    ]


def test_golden_tail() -> None:
    """Privileges dropped, root read-only and the filter installed last, right before the command."""
    argv = make("python", env={})
    assert argv[-12:] == [
        "--setenv", "PWD", "/data",
        "--cap-drop", "ALL",
        "--remount-ro", "/",
        "--seccomp", "12",
        "--",
        "/usr/bin/python3", "/run/sandboxd/main.py",
    ]


def _stateful(**fields: object) -> list[str]:
    spec = SandboxSpec(language="python", code=b"x", limits=LIMITS, **fields)  # type: ignore[arg-type]
    return build_argv(spec, FDS, bwrap="/usr/bin/bwrap")


def test_thread_home_is_bound_instead_of_an_empty_tmpfs() -> None:
    argv = _stateful(home="/run/sandboxd/i/storage/threads/o/t/work-trc_1")
    i = argv.index("--bind")
    assert argv[i : i + 3] == ["--bind", "/run/sandboxd/i/storage/threads/o/t/work-trc_1", "/home/baponi"]
    assert not [j for j, a in enumerate(argv) if a == "--tmpfs" and argv[j + 1] == "/home/baponi"]
    # the bind comes after /data's tmpfs and before the read-only remount of /
    assert argv.index("/data") < i < argv.index("--remount-ro", argv.index("--cap-drop"))


def test_mounts_are_bound_by_descriptor_under_data_read_only_or_not() -> None:
    """A mount is bound from the descriptor the runtime opened (runtime/beneath.py), never by a
    path bwrap would resolve again: a link swapped in between cannot redirect it."""
    spec = SandboxSpec(
        language="python", code=b"x", limits=LIMITS,
        mounts=(Mount("/v/ro", "/data/refs", True), Mount("/v/rw", "/data/shared/sub", False, sub="sub")),
    )
    argv = build_argv(spec, replace(FDS, mounts=(21, 22)), bwrap="/usr/bin/bwrap")
    assert argv[argv.index("21") - 1 : argv.index("21") + 2] == ["--ro-bind-fd", "21", "/data/refs"]
    assert argv[argv.index("22") - 1 : argv.index("22") + 2] == ["--bind-fd", "22", "/data/shared/sub"]
    assert "/v/ro" not in argv and "/v/rw" not in argv
    data_tmpfs = argv.index("/data")
    assert data_tmpfs < argv.index("21") and data_tmpfs < argv.index("22")  # inside /data
    with pytest.raises(ValueError):
        build_argv(spec, FDS, bwrap="/usr/bin/bwrap")  # a mount without its descriptor


# --- an imported image as the root -----------------------------------------------------------

IMAGE = RootImage(
    name="ds",
    digest="sha256:" + "a" * 64,
    root="/run/sandboxd/x/storage/images/roots/img_1",
    binaries=(("python", "/opt/conda/envs/ds/bin/python3"), ("bash", "/usr/bin/bash")),
    env=(("PATH", "/opt/conda/envs/ds/bin:/usr/bin:/bin"), ("HOME", "/root"), ("CONDA_PREFIX", "/opt/conda")),
)


def make_on_image(language: str = "python") -> list[str]:
    spec = SandboxSpec(language=language, code=b"x", limits=LIMITS, env=dict(REQUEST_ENV), image=IMAGE)  # type: ignore[arg-type]
    return build_argv(spec, FDS, bwrap="/usr/bin/bwrap")


def test_image_root_is_the_only_host_path_and_read_only() -> None:
    options, _ = ops(make_on_image())
    binds = [args for opt, args in options if opt == "--ro-bind" and not args[1].startswith("/proc/")]
    assert binds == [(IMAGE.root, "/")]  # nothing of the host's /usr or /etc (/proc covers aside)
    assert ("--remount-ro", ("/",)) in options
    assert not any(opt == "--symlink" for opt, _ in options)


def test_image_interpreter_is_the_one_found_on_its_path() -> None:
    _, command = ops(make_on_image())
    assert command == ["/opt/conda/envs/ds/bin/python3", INTERPRETERS["python"].program_path]


def test_image_env_under_request_env_and_sandbox_names_fixed() -> None:
    env = dict(setenvs(make_on_image()))
    assert env["PATH"] == "/opt/conda/envs/ds/bin:/usr/bin:/bin"
    assert env["CONDA_PREFIX"] == "/opt/conda"
    assert env["HOME"] == "/home/baponi"  # the image's HOME=/root does not move the thread home
    assert env["PWD"] == "/data"
    assert {k: env[k] for k in REQUEST_ENV} == REQUEST_ENV


def test_image_mount_points_cover_every_mount_on_the_root() -> None:
    """Whatever bwrap mounts in an image's read-only root must exist there (the store makes
    IMAGE_MOUNT_DIRS and IMAGE_MOUNT_FILES): a new mount point missing from them fails here."""
    options, _ = ops(make_on_image())
    points = {args[-1] for opt, args in options if opt in MOUNT_OPS | {"--bind"} and args[-1] != "/"}
    resolv = set(ops(build_argv(
        SandboxSpec("python", b"x", image=IMAGE), SandboxFds(11, 12, 13, 14, 15, 16, resolv=17)
    ))[0])
    points |= {args[-1] for opt, args in resolv if opt == "--ro-bind-data"}
    covered = set(bwrap.IMAGE_MOUNT_DIRS) | set(bwrap.IMAGE_MOUNT_FILES)
    under_covered_dir = {p for p in points if any(p.startswith(d + "/") for d in ("/dev", "/data", "/tmp", "/proc"))}
    assert points - under_covered_dir <= covered


def test_language_missing_from_image_has_no_interpreter() -> None:
    with pytest.raises(KeyError):
        IMAGE.binary("node")
    assert IMAGE.languages == {"python", "bash"}
