"""Resource limits through cgroups: v1 and v2 are sibling modules, picked by `detect()`."""

from __future__ import annotations

from pathlib import Path

from ...errors import SandboxSetupError
from .base import Cgroup, CgroupDriver, CgroupStats, cgroup_mounts
from .v1 import CONTROLLERS as V1_CONTROLLERS
from .v1 import CgroupV1Driver, hierarchies
from .v2 import CgroupV2Driver

__all__ = ["Cgroup", "CgroupDriver", "CgroupStats", "detect"]


def detect(instance: str) -> CgroupDriver:
    """v2 when /sys/fs/cgroup is a unified hierarchy with the controllers; else v1; else fail."""
    root = Path("/sys/fs/cgroup")
    for mount_point, fstype, _ in cgroup_mounts():
        if fstype == "cgroup2" and Path(mount_point) == root:
            return CgroupV2Driver(instance, root)
    if all(c in hierarchies() for c in V1_CONTROLLERS):
        return CgroupV1Driver(instance)
    raise SandboxSetupError(
        "cgroups",
        "no usable cgroup hierarchy: need cgroup v2 at /sys/fs/cgroup with memory, pids and cpu, "
        f"or cgroup v1 with {', '.join(V1_CONTROLLERS)}",
    )
