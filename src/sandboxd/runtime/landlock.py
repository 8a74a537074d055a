"""Landlock: detected, and deliberately not applied to sandboxes (yet).

Landlock would be a fourth filesystem layer (after the mount namespace, the read-only binds and
the unprivileged uid): a ruleset allowing writes only beneath /tmp, /dev/shm, /data and
/home/baponi. It cannot be applied cleanly with what the runtime has today:

- It must come after bwrap has built the sandbox's mounts: a Landlock-restricted task may not
  mount, umount or pivot_root (the kernel refuses, so a domain cannot be escaped by
  remounting). Applying it in the launcher (runtime/launch.py, before exec of bwrap) therefore
  makes bwrap's setup fail.
- bwrap 0.8 has no hook between its setup and the exec of the command (only `--seccomp`), so
  the ruleset would have to be installed by a launcher run inside the sandbox before the
  interpreter. The only interpreter that can make the syscalls is Python: `python3 -I -S
  landlock.py` (ctypes), then exec of the real interpreter. That costs at least a Python
  start per execution, bash included: 7.7 ms unloaded (reference/isolation-measurements.md
  §1), 27 ms measured with ctypes on the loaded 2-vCPU VM (bash `true` went from 3 ms to
  30 ms), against about 6 ms for bwrap itself. A static helper would cost about 1 ms, but
  the project ships no compiled binaries, and Node and Bash cannot make the syscalls.

The sandbox may still use Landlock on itself (`landlock_*` are in the seccomp allowlist: a
domain can only restrict). `abi_version()` reports what the kernel offers, logged at startup,
so a deployment can tell whether the layer would be available.
"""

from __future__ import annotations

import ctypes

#: landlock_create_ruleset: the same number on x86_64 and aarch64 (asm-generic table).
_SYS_LANDLOCK_CREATE_RULESET = 444
_LANDLOCK_CREATE_RULESET_VERSION = 1 << 0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    version = _libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    return max(int(version), 0)
