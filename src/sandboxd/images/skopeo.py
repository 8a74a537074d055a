"""Copy an image into the store's OCI layout with skopeo: from a registry, an OCI layout or an archive.

skopeo (containers/image) is the maintained client for the registry protocol and the archive
formats; it streams blobs to disk, verifies every blob against its digest (and the manifest
against the digest of a `REF@sha256:...` pull) and skips blobs already in the layout.

It runs with nothing of the host's container configuration: a cleared environment (PATH, and
the proxy variables when set) with a private HOME and XDG_RUNTIME_DIR, our own registries.conf
(no mirrors, no short-name search), an empty registries.d (no signature lookaside) and a policy
that accepts any image (`insecureAcceptAnything`): we pin images by digest and verify digests
ourselves (`oci.read_image`); signature policy is not sandboxd's trust model.

Credentials reach skopeo only through `--src-authfile` naming a memfd (`/proc/self/fd/N`): never
a file on a disk, gone with the processes however the copy ends. They are never in argv
(visible in `ps`), the environment or a message.
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import json
import os
import re
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import ImageError
from .oci import REF_NAME, TEMP_PREFIX, check_tag, ensure_layout

SourceKind = Literal["registry", "oci-dir", "oci-archive", "docker-archive"]
ACCEPTED_FORMATS = (
    "an OCI image layout directory, an OCI archive (a tar of one) or a `docker save` tarball"
)

DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")
"""Prefix of a tool's argv: the tool is killed when the thread that started it dies, so a killed
`sandboxd images ...` leaves no copy writing on into the layout (util-linux's setpriv, not a
preexec_fn: nothing runs in Python between fork and exec in our threaded server)."""
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
_POLICY = '{"default": [{"type": "insecureAcceptAnything"}]}\n'
_REGISTRIES_CONF = 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n'
# host[:port] (a name, an IPv4 literal or a bracketed IPv6 literal), then the repository path,
# an optional :tag and an optional @sha256 digest: the docker reference grammar, loosely.
_REFERENCE = re.compile(
    r"(?:(?P<host>(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]{1,5})?)/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Credentials:
    """A registry user and password; the password never shows in a repr."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Source:
    """Where an image comes from.

    `ref` is an image reference for `registry` (`host[:port]/name[:tag][@sha256:...]`) and a
    path otherwise. `tag` picks an image inside an OCI layout or archive (its ref.name) or a
    `docker save` tarball (its `name:tag`); None takes the only image there is.
    """

    kind: SourceKind
    ref: str
    tag: str | None = None


def parse_credentials(text: str) -> Credentials:
    """Credentials from a file or stdin: `user:password` on one line, or the user and the password on two."""
    if text.endswith("\n"):
        text = text[:-1].removesuffix("\r")
    if "\n" in text:
        username, password = text.split("\n", 1)
        username = username.removesuffix("\r")
    else:
        username, _, password = text.partition(":")
    if not username or not password or "\n" in password or ":" in username:
        raise ImageError(
            "credentials must be `user:password` on one line, or the user and the password on two lines"
        )
    return Credentials(username, password)


def detect_source(path: Path) -> Source:
    """What kind of image `path` holds, for `images import`: its contents decide, not its name."""
    if path.is_dir():
        if (path / "oci-layout").is_file():
            return Source("oci-dir", str(path))
        raise ImageError(f"{path} is a directory but not an OCI image layout (no oci-layout file)")
    if not path.is_file():
        raise ImageError(f"{path} does not exist or is not a file or directory")
    has_manifest = False
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if name == "oci-layout":
                    # A tar may be both (some exporters write manifest.json too): the OCI layout wins.
                    return Source("oci-archive", str(path))
                has_manifest = has_manifest or name == "manifest.json"
    except (tarfile.TarError, EOFError, OSError):
        raise ImageError(f"{path} is not a tar archive; an image to import is {ACCEPTED_FORMATS}") from None
    if has_manifest:
        return Source("docker-archive", str(path))
    raise ImageError(f"{path} is a tar archive but not an image; an image to import is {ACCEPTED_FORMATS}")


def registry_host(ref: str) -> str:
    """The registry a reference names, as skopeo resolves it (`docker.io` for a name without a host)."""
    match = _REFERENCE.fullmatch(ref)
    if match is None:
        raise ImageError(f"not an image reference: {ref[:200]!r} (expected host[:port]/name[:tag][@sha256:...])")
    host = match.group("host")
    first = ref.split("/", 1)[0]
    # Docker's rule: the first component is a registry only if it has a dot or a port, or is localhost.
    if host is None or not ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        return "docker.io"
    return host


def is_loopback_host(host: str) -> bool:
    """Whether `host[:port]` is a loopback literal (127.0.0.0/8, [::1]) or `localhost`; nothing is resolved."""
    name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def copy(
    source: Source,
    layout: Path,
    tag: str,
    *,
    credentials: Credentials | None = None,
    plain_http: bool = False,
    progress: Callable[[str], None] = lambda line: None,
    max_bytes: int | None = None,
) -> None:
    """Copy the image `source` names into the OCI layout `layout`, tagged `tag`.

    Blobs the layout already has are not fetched again. Call under the store's lock (skopeo
    rewrites index.json). Plain HTTP (`plain_http`) is allowed only to a loopback registry.
    With `max_bytes`, the copy is stopped once what it wrote passes that (a registry's sizes
    are not trusted; checked five times a second and at the end). Raises ImageError with skopeo's own reason when
    the copy fails.
    """
    check_tag(tag)
    if ":" in str(layout):
        raise ImageError(f"the image store path {layout} contains ':', which skopeo cannot take")
    if source.kind != "registry" and (credentials is not None or plain_http):
        raise ImageError("credentials and plain HTTP apply only to a registry pull")
    if source.kind == "registry" and source.tag is not None:
        raise ImageError("a registry image is named by its reference alone (host/name:tag or @sha256:...)")
    host = registry_host(source.ref) if source.kind == "registry" else None
    if plain_http and (host is None or not is_loopback_host(host)):
        raise ImageError("plain HTTP is allowed only to a loopback registry (127.0.0.1, [::1], localhost)")
    if source.kind == "oci-dir" and source.tag is None:
        _check_single_image(Path(source.ref))
    ensure_layout(layout)
    # Both 0700 and deleted however the copy ends: `private` holds skopeo's configuration;
    # archives are unpacked in `scratch`, beside the blobs (same filesystem; `oci.prune` takes a
    # leftover). The credentials are in neither: a memfd (`_auth_fd`), gone with the processes.
    with (
        tempfile.TemporaryDirectory(prefix="sandboxd-skopeo-", ignore_cleanup_errors=True) as private,
        tempfile.TemporaryDirectory(prefix=TEMP_PREFIX, dir=layout, ignore_cleanup_errors=True) as scratch,
    ):
        auth_fd = _auth_fd(host, credentials)
        try:
            argv = _prepare(source, layout, tag, Path(private), Path(scratch), auth_fd, plain_http)
            guard = _SizeGuard(layout, Path(scratch), max_bytes)
            _run(argv, _env(Path(private), Path(scratch)), progress, source, host, credentials, auth_fd, guard)
        finally:
            os.close(auth_fd)


def _auth_fd(host: str | None, credentials: Credentials | None) -> int:
    """skopeo's auth file as a memfd: the credentials never touch a disk, and a killed command
    (kill -9) leaves none behind. Always given, empty without credentials: skopeo then never
    looks for the host's auth files."""
    auths: dict[str, dict[str, str]] = {}
    if credentials is not None and host is not None:
        token = f"{credentials.username}:{credentials.password}".encode()
        auths[host] = {"auth": base64.b64encode(token).decode()}
    fd = os.memfd_create("sandboxd-registry-auth", os.MFD_CLOEXEC)
    os.write(fd, json.dumps({"auths": auths}).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _prepare(
    source: Source,
    layout: Path,
    tag: str,
    private: Path,
    scratch: Path,
    auth_fd: int,
    plain_http: bool,
) -> list[str]:
    """Write skopeo's configuration into `private`; the argv that uses it and the auth memfd
    (read by skopeo at /proc/self/fd/N: the fd is passed down with its number)."""
    (private / "policy.json").write_text(_POLICY)
    (private / "registries.conf").write_text(_REGISTRIES_CONF)
    (private / "registries.d").mkdir()
    argv = [
        *DIE_WITH_PARENT,
        "skopeo",
        "--policy", str(private / "policy.json"),
        "--registries.d", str(private / "registries.d"),
        "--registries-conf", str(private / "registries.conf"),
        "--tmpdir", str(scratch),
        "copy", "--remove-signatures",
        "--src-authfile", f"/proc/self/fd/{auth_fd}",
    ]
    if plain_http:
        argv.append("--src-tls-verify=false")
    argv += [_source_name(source, private), f"oci:{layout}:{tag}"]
    return argv


def _source_name(source: Source, private: Path) -> str:
    """skopeo's transport:name. A path holding ':' is reached through a symlink (skopeo splits at ':')."""
    if source.kind == "registry":
        return f"docker://{source.ref}"
    path = Path(source.ref).absolute()
    if ":" in str(path):
        link = private / "source"
        link.symlink_to(path)
        path = link
    transport = {"oci-dir": "oci", "oci-archive": "oci-archive", "docker-archive": "docker-archive"}[source.kind]
    return f"{transport}:{path}:{source.tag}" if source.tag else f"{transport}:{path}"


def _check_single_image(path: Path) -> None:
    """An OCI layout given without a tag must hold exactly one image; say which tags it has otherwise."""
    try:
        index = json.loads((path / "index.json").read_bytes())
        entries = [d for d in index["manifests"] if isinstance(d, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        raise ImageError(f"{path} is not a readable OCI image layout (index.json)") from None
    if len(entries) == 1:
        return
    names = sorted(str(n) for d in entries if (n := (d.get("annotations") or {}).get(REF_NAME)))
    raise ImageError(
        f"{path} holds {len(entries)} images; name one as PATH:TAG (tags: {', '.join(names) or 'none'})"
    )


def _env(private: Path, scratch: Path) -> dict[str, str]:
    home = private / "home"
    runtime = private / "run"
    home.mkdir(mode=0o700)
    runtime.mkdir(mode=0o700)
    env = {"PATH": _PATH, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime), "TMPDIR": str(scratch)}
    env.update({k: v for k in _PROXY_VARS if (v := os.environ.get(k))})
    return env


def _run(
    argv: list[str],
    env: dict[str, str],
    progress: Callable[[str], None],
    source: Source,
    host: str | None,
    credentials: Credentials | None,
    auth_fd: int,
    guard: _SizeGuard,
) -> None:
    """Run skopeo, its stdout lines to `progress`; a failure becomes an ImageError from its stderr."""
    stderr: collections.deque[str] = collections.deque(maxlen=40)
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, text=True, errors="replace", pass_fds=(auth_fd,),
        )
    except FileNotFoundError:
        raise ImageError("skopeo is not installed (Debian: apt-get install skopeo)") from None
    assert proc.stdout is not None and proc.stderr is not None
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or ()), daemon=True)
    reader.start()
    guard.watch(proc)
    try:
        for line in proc.stdout:
            if line.strip():
                progress(line.rstrip())
        proc.wait()
    finally:
        guard.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join()
        proc.stdout.close()
        proc.stderr.close()
    if guard.tripped:
        raise ImageError(f"the image is larger than the limit of {guard.limit_mib} MiB (SANDBOXD_MAX_IMAGE_SIZE_MIB); "
                         "its download was stopped")
    if proc.returncode != 0:
        raise ImageError(_explain(list(stderr), source, host, credentials))


class _SizeGuard:
    """Kills a copy once the bytes it wrote into the layout (new blobs, skopeo's temporary
    blob files, the scratch dir) pass `max_bytes`: a pull cannot fill the data dir's disk."""

    def __init__(self, layout: Path, scratch: Path, max_bytes: int | None) -> None:
        self._layout = layout
        self._scratch = scratch
        self._max = max_bytes
        self._before = self._blobs()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.tripped = False

    @property
    def limit_mib(self) -> int:
        return (self._max or 0) // (1024 * 1024)

    def watch(self, proc: subprocess.Popen[str]) -> None:
        if self._max is not None:
            self._thread = threading.Thread(target=self._loop, args=(proc,), daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop watching; a copy that ended past the limit (faster than a check) trips it too."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            if not self.tripped and self._written() > (self._max or 0):
                self.tripped = True

    def _loop(self, proc: subprocess.Popen[str]) -> None:
        while not self._done.wait(0.2):
            if self._written() > (self._max or 0):
                self.tripped = True
                proc.kill()
                return

    def _blobs(self) -> set[str]:
        blobs = self._layout / "blobs" / "sha256"
        return {e.name for e in os.scandir(blobs)} if blobs.is_dir() else set()

    def _written(self) -> int:
        total = 0
        places = [(self._layout / "blobs" / "sha256", True), (self._layout, False), (self._scratch, False)]
        for directory, blobs in places:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                new = entry.name not in self._before if blobs else entry.name.startswith("oci-put-blob")
                if directory == self._scratch or new:
                    total += _size_of(entry)
        return total


def _size_of(entry: os.DirEntry[str]) -> int:
    try:
        if entry.is_file(follow_symlinks=False):
            return entry.stat(follow_symlinks=False).st_size
        if entry.is_dir(follow_symlinks=False):
            return sum(_size_of(e) for e in os.scandir(entry.path))
    except OSError:
        pass
    return 0


def _explain(stderr: list[str], source: Source, host: str | None, credentials: Credentials | None) -> str:
    lines = [ln.strip() for ln in stderr if ln.strip()]
    last = lines[-1] if lines else "no message"
    match = _MSG.search(last)
    reason = match.group(1).replace('\\"', '"') if match else last
    if host is not None and re.search(r"unauthorized|authentication required|\b401\b", reason, re.I):
        if credentials is None:
            return f"the registry {host} needs credentials: give them with --credentials-file"
        return f"the registry {host} refused the credentials"
    if host is not None and "manifest unknown" in reason:
        return f"the registry {host} has no image {source.ref}"
    what = source.ref if source.kind == "registry" else f"{source.kind} {source.ref}"
    return _redact(f"could not copy the image from {what}: {reason}", credentials)


def _redact(text: str, credentials: Credentials | None) -> str:
    """skopeo does not print credentials; this holds even if some version did."""
    if credentials is None:
        return text
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    for secret in (token, f"{credentials.username}:{credentials.password}", credentials.password):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
