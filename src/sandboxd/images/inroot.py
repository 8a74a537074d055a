"""Paths inside an image's root tree, resolved as the sandbox would see them, by host root.

An image tree is untrusted: its symbolic links were chosen by whoever built the image, and
real images are full of absolute ones (`/etc/resolv.conf -> ../run/...`, conda's
`bin/python -> /opt/conda/bin/python3.12`). Followed by the host kernel, such a link points
into the *host's* tree. So nothing here hands a path string to the kernel: every component is
opened relative to its parent's descriptor with `O_NOFOLLOW`, and a link met on the way is
read and resolved by us with chroot semantics — an absolute target restarts at the image
root, `..` never climbs above it — like Go's securejoin or openat2's RESOLVE_IN_ROOT (which
Python does not expose).

The trees and the paths are built by whoever built the image, so every walk here is bounded
whatever they hold: one resolution passes at most MAX_COMPONENTS components and
MAX_SYMLINK_HOPS links, and no walk holds more than two descriptors however deep it goes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import ImageError

__all__ = [
    "MAX_COMPONENTS",
    "MAX_SYMLINK_HOPS",
    "dir_identity",
    "ensure_mount_points",
    "find_command",
    "open_in_root",
    "open_parent",
    "remove_entry",
    "shown",
]

MAX_SYMLINK_HOPS = 40  # Linux's own limit (MAXSYMLINKS)
# Path components one resolution may walk, links' targets included. Without it a path of 512
# components through 40 links of ~2,000 components each walks (and with `make_dirs` creates)
# some 80,000 directories for one tar entry. Real resolutions walk a few dozen.
MAX_COMPONENTS = 4096
_SHOWN_CHARS = 100  # of an untrusted path in an operator message

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def shown(path: str) -> str:
    """`path` quoted for an operator message, cut short: an image's paths may be kilobytes long."""
    if len(path) <= _SHOWN_CHARS:
        return repr(path)
    return f"{path[:_SHOWN_CHARS]!r}... ({len(path)} characters)"


def _components(rel: str) -> list[str]:
    return [part for part in rel.split("/") if part not in ("", ".")]


def dir_identity(fd: int) -> tuple[int, int]:
    """What `open_parent` checks a climb against: (st_dev, st_ino)."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def open_parent(fd: int, expected: tuple[int, int]) -> int:
    """The directory above `fd`, which must be the one we came down from (`expected`).

    Walking back up by `..` lets a walk of a deep tree hold two descriptors instead of one a
    level (an image tree can be thousands deep: one descriptor each would exhaust the
    daemon's); the identity check refuses a tree renamed under us rather than leave it.
    """
    parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
    if dir_identity(parent) != expected:
        os.close(parent)
        raise OSError(errno.ESTALE, "a directory moved while the image tree was walked")
    return parent


def open_in_root(
    root_fd: int,
    rel: str,
    *,
    follow_final: bool,
    make_dirs: bool = False,
    on_mkdir: Callable[[], None] | None = None,
) -> int:
    """A descriptor of `rel` inside the tree `root_fd`, resolved as if `root_fd` were `/`.

    Symbolic links in parent components are always resolved inside the root; the final one
    only with `follow_final` (otherwise the link itself is opened). With `make_dirs`, missing
    components are created as root-owned 0755 directories, so the result is a directory;
    `on_mkdir` is called before each one is made, so a caller can count them against its
    limits (and raise to stop).

    A directory comes back opened `O_RDONLY | O_DIRECTORY` (usable with `scandir`, `fchmod`
    and as a `dir_fd`); anything else `O_PATH` (for `fstat`). The caller closes it. Raises
    `OSError` (ENOENT, ENOTDIR) when the path does not resolve; `ImageError` for a NUL byte in
    `rel`, after more than MAX_SYMLINK_HOPS links, or when the walk, links' targets included,
    would pass more than MAX_COMPONENTS components (so one call does bounded work and makes
    at most that many directories). At most two descriptors are open at a time besides the
    result: `..` is walked back up, checked against where we came from, not kept open.
    """
    if "\0" in rel:
        raise ImageError(f"the path {shown(rel)} contains a NUL byte")
    pending = deque(_components(rel))
    if len(pending) > MAX_COMPONENTS:
        raise ImageError(f"the path {shown(rel)} has more than {MAX_COMPONENTS} components")
    walked = 0
    # the directories walked through, as (st_dev, st_ino): `..` pops, never past the root
    trail = [dir_identity(root_fd)]
    fd = os.dup(root_fd)
    hops = 0
    try:
        while pending:
            part = pending.popleft()
            walked += 1
            if part == "..":
                if len(trail) > 1:
                    trail.pop()
                    parent = open_parent(fd, trail[-1])
                    os.close(fd)
                    fd = parent
                continue
            last = not pending
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not make_dirs:
                    raise
                if on_mkdir is not None:
                    on_mkdir()
                _make_dir(fd, part)
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) and (follow_final or not last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ImageError(f"too many levels of symbolic links resolving {shown(rel)} in the image")
                target = os.readlink(part, dir_fd=fd)
                if not target:
                    raise OSError(errno.ENOENT, f"{shown(part)} in {shown(rel)} is an empty symbolic link")
                expansion = _components(target)
                if walked + len(pending) + len(expansion) > MAX_COMPONENTS:
                    raise ImageError(
                        f"resolving {shown(rel)} in the image walks more than {MAX_COMPONENTS} "
                        "path components (symbolic links included)"
                    )
                if target.startswith("/"):
                    del trail[1:]
                    os.close(fd)
                    fd = os.dup(root_fd)
                pending.extendleft(reversed(expansion))
                continue
            if stat.S_ISDIR(st.st_mode):
                # O_NOFOLLOW|O_DIRECTORY: were it swapped for a link since the stat, this fails
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                trail.append(dir_identity(child))
            elif last:
                child = os.open(part, _PATH_FLAGS, dir_fd=fd)
            else:
                raise OSError(errno.ENOTDIR, f"{shown(part)} in {shown(rel)} is not a directory")
            os.close(fd)
            fd = child
        if make_dirs and not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.ENOTDIR, f"{shown(rel)} is not a directory")
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def _make_dir(parent_fd: int, name: str, mode: int = 0o755) -> None:
    """A new root-owned directory `name` (mode set explicitly: mkdir's is masked by the umask)."""
    os.mkdir(name, mode, dir_fd=parent_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        os.fchown(fd, 0, 0)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def remove_entry(parent_fd: int, name: str) -> None:
    """Remove `name` in `parent_fd` whatever it is, a directory with all it holds; no-op if absent.

    Iterative (an image may nest deeper than Python's recursion limit) and link-safe: a
    symbolic link is unlinked, never entered, and directories are opened `O_NOFOLLOW`. Holds
    two descriptors at most, however deep the tree: it climbs back by `..`, checked against
    the directory it came from, so a deep tree cannot exhaust the daemon's descriptors.
    """
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    # each frame: (the directory's (st_dev, st_ino), its name in the frame below, the names left)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        stack = [(dir_identity(fd), name, os.listdir(fd))]
        while stack:
            _, dname, names = stack[-1]
            if not names:
                stack.pop()
                if stack:
                    up = open_parent(fd, stack[-1][0])
                    os.close(fd)
                    fd = up
                    os.rmdir(dname, dir_fd=fd)
                else:
                    os.close(fd)
                    fd = -1
                    os.rmdir(dname, dir_fd=parent_fd)
                continue
            child = names.pop()
            if stat.S_ISDIR(os.stat(child, dir_fd=fd, follow_symlinks=False).st_mode):
                down = os.open(child, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = down
                stack.append((dir_identity(fd), child, os.listdir(fd)))
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        if fd >= 0:
            os.close(fd)


def find_command(root: Path, path_env: str, name: str) -> str | None:
    """The in-image path `<dir>/<name>` of the first PATH directory holding an executable `name`.

    `path_env` is the image config's PATH. The candidate is resolved inside the image (links
    followed there, as the sandbox will) and must be a regular file with an execute bit. The
    returned path is the one on PATH, not the link's target: the sandbox resolves it itself.

    `path_env` is untrusted: an entry that cannot resolve — relative, holding a NUL byte (no
    such path can exist, and no environment can carry it), a link loop, a walk over
    MAX_COMPONENTS — is skipped like a directory that lacks `name`, never an exception.
    """
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        return None
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        for directory in path_env.split(":"):
            if not directory.startswith("/") or "\0" in directory:
                continue  # a relative PATH entry depends on the working directory: never ours
            candidate = f"{directory.rstrip('/')}/{name}"
            try:
                fd = open_in_root(root_fd, candidate, follow_final=True)
            except (OSError, ImageError):
                continue
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                return candidate
        return None
    finally:
        os.close(root_fd)


def ensure_mount_points(root: Path, dirs: Iterable[str], files: Iterable[str]) -> None:
    """Make each absolute in-image path a real directory (`dirs`) or regular file (`files`).

    The sandbox mounts onto these inside a read-only root, where they cannot be created at
    launch. Whatever stands in the way — a symbolic link (Debian's `/etc/resolv.conf`, a
    `/home` link), or an entry of the other type — is removed and replaced by a root-owned
    0755 directory or empty 0644 file, parents included, so the mount never lands on a link's
    target. An entry already of the right type is kept as it is. Links are never followed
    here, not even inside the root.
    """
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        for path in dirs:
            _ensure(root_fd, path, want_dir=True)
        for path in files:
            _ensure(root_fd, path, want_dir=False)
    finally:
        os.close(root_fd)


def _ensure(root_fd: int, path: str, *, want_dir: bool) -> None:
    parts = _components(path)
    if not path.startswith("/") or not parts or ".." in parts:
        raise ValueError(f"a mount point must be an absolute path without '..': {path!r}")
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                st: os.stat_result | None = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if last and not want_dir:
                if st is None or not stat.S_ISREG(st.st_mode):
                    remove_entry(fd, part)
                    new = os.open(part, _NEW_FILE_FLAGS, 0o644, dir_fd=fd)
                    try:
                        os.fchown(new, 0, 0)
                        os.fchmod(new, 0o644)
                    finally:
                        os.close(new)
                return
            if st is None or not stat.S_ISDIR(st.st_mode):
                remove_entry(fd, part)
                _make_dir(fd, part)
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
