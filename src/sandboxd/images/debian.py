"""Build an image from Debian packages: mmdebstrap makes the root filesystem, we wrap it as one OCI layer.

`mmdebstrap --variant=essential --include=P,...` installs Debian's essential set plus the named
packages and their dependencies, with apt, from the Debian mirror (deb.debian.org unless a
mirror is given), and writes the tree as one tar. It runs in `--mode=unshare` inside pid and
mount namespaces of its own (`_OWN_NAMESPACES`): a killed build leaves no process and no mount
behind, only files in the layout's temporary directory (`oci.prune`). The tar becomes the
image's single uncompressed layer (its digest is its diff_id: no compression to undo, and it
is unpacked on this same machine).

Trust: apt verifies the archive's signatures (Debian's keyring); package maintainer scripts run
as root inside the chroot, as with debootstrap. As root, unshare mode unshares the mount, pid,
uts and ipc namespaces but not the user namespace (no /etc/subuid entry needed).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from ..errors import ImageError
from .oci import (
    DEFAULT_PATH,
    OCI_CONFIG,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    TEMP_PREFIX,
    blob_path,
    check_tag,
    ensure_layout,
    set_tag,
    write_blob,
)
from .skopeo import DIE_WITH_PARENT

_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1: a package name
_SUITE = re.compile(r"[a-z][a-z0-9-]{0,39}")
_MIRROR = re.compile(r"https?://[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+")
_OWN_NAMESPACES = ("unshare", "--mount", "--propagation", "private", "--pid", "--kill-child=KILL", "--")
"""mmdebstrap forks helpers (and apt, dpkg, maintainer scripts) that would outlive it: as pid 1
of a pid namespace of its own, it takes them all with it when it dies (and unshare kills it
when unshare dies, itself killed with the thread that started it: DIE_WITH_PARENT). The mount
namespace is private, so no chroot mount (/proc, /dev) can propagate to the host's."""
# dpkg's architecture names → OCI's (architecture, variant).
_DPKG_TO_OCI = {
    "amd64": ("amd64", None), "arm64": ("arm64", None), "armhf": ("arm", "v7"),
    "armel": ("arm", "v5"), "i386": ("386", None), "ppc64el": ("ppc64le", None),
    "s390x": ("s390x", None), "riscv64": ("riscv64", None), "mips64el": ("mips64le", None),
}


def build_layout(
    packages: Sequence[str],
    dest_layout: Path,
    tag: str,
    *,
    suite: str = "bookworm",
    mirror: str | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> None:
    """Build a Debian `suite` root filesystem with `packages` and store it in `dest_layout` as `tag`.

    mmdebstrap's log lines go to `progress`. Call under the store's lock (index.json is
    rewritten). Nothing is left behind on failure but blobs `oci.prune` collects.
    """
    check_tag(tag)
    for package in packages:
        if not _PACKAGE.fullmatch(package):
            raise ImageError(f"not a Debian package name: {package[:80]!r}")
    if not _SUITE.fullmatch(suite):
        raise ImageError(f"not a Debian suite name: {suite[:80]!r}")
    if mirror is not None and not _MIRROR.fullmatch(mirror):
        raise ImageError("the mirror must be an http:// or https:// URL")
    wanted = list(dict.fromkeys(packages))
    ensure_layout(dest_layout)
    work = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=dest_layout))  # same filesystem as the blobs
    try:
        rootfs = work / "rootfs.tar"
        argv = ["mmdebstrap", "--mode=unshare", "--variant=essential", "--format=tar"]
        if wanted:
            argv.append("--include=" + ",".join(wanted))
        argv += [suite, str(rootfs)]
        if mirror is not None:
            argv.append(mirror)
        _run([*DIE_WITH_PARENT, *_OWN_NAMESPACES, *argv], work, progress)
        diff_id, size = _sha256_file(rootfs)
        layer = blob_path(dest_layout, diff_id)
        if not layer.exists():  # the same bytes may be there already, from an identical build
            os.chmod(rootfs, 0o644)
            os.replace(rootfs, layer)
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        built_by = " ".join(["mmdebstrap --variant=essential", *argv[4:-2 if mirror else -1]])
        config = _config(diff_id, created, built_by)
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": write_blob(dest_layout, config_bytes),
                       "size": len(config_bytes)},
            "layers": [{"mediaType": OCI_LAYER_TAR, "digest": diff_id, "size": size}],
            "annotations": {"org.opencontainers.image.created": created},
        }
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
        digest = write_blob(dest_layout, manifest_bytes)
        set_tag(dest_layout, tag, OCI_MANIFEST, digest, len(manifest_bytes))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _config(diff_id: str, created: str, built_by: str) -> dict[str, object]:
    architecture, variant = _architecture()
    config: dict[str, object] = {
        "created": created,
        "architecture": architecture,
        "os": "linux",
        "config": {"Env": [f"PATH={DEFAULT_PATH}", "LANG=C.UTF-8"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": built_by}],
    }
    if variant:
        config["variant"] = variant
    return config


def _architecture() -> tuple[str, str | None]:
    """This machine's Debian architecture (what mmdebstrap installs), as OCI names it."""
    try:
        dpkg = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True,
            env={"PATH": DEFAULT_PATH},
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise ImageError("dpkg --print-architecture failed: building an image needs a Debian host") from None
    return _DPKG_TO_OCI.get(dpkg, (dpkg, None))


def _run(argv: list[str], work: Path, progress: Callable[[str], None]) -> None:
    """mmdebstrap with a cleared environment; its stderr log to `progress`, its E: lines into the error.

    Its temporary chroot goes in `work` (TMPDIR), so a killed build leaves it in the layout's
    temporary directory, for `oci.prune`; deleting it is safe because every mount made there
    was in the private mount namespace `_OWN_NAMESPACES` gives it.
    """
    tail: collections.deque[str] = collections.deque(maxlen=60)
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={"PATH": DEFAULT_PATH, "LC_ALL": "C.UTF-8", "TMPDIR": str(work)}, text=True, errors="replace",
        )
    except FileNotFoundError:
        raise ImageError("mmdebstrap is not installed (Debian: apt-get install mmdebstrap)") from None
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            line = line.rstrip()
            if line:
                tail.append(line)
                progress(line)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    if proc.returncode != 0:
        errors = [ln for ln in tail if ln.startswith("E:")]
        reason = errors[0] if errors else (tail[-1] if tail else f"exit status {proc.returncode}")
        raise ImageError(f"mmdebstrap could not build the image: {reason}")


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size
