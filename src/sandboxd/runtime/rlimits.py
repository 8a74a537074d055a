"""Per-process resource limits, set in the launcher and inherited by everything in the sandbox."""

from __future__ import annotations

import resource

from .spec import Limits

RlimitPlan = tuple[tuple[int, int], ...]


def plan(limits: Limits) -> RlimitPlan:
    fsize = limits.file_size_mib * 1024 * 1024
    return (
        (resource.RLIMIT_CORE, 0),  # no core dumps of user code on the host
        (resource.RLIMIT_FSIZE, fsize),
        (resource.RLIMIT_NOFILE, limits.open_files_max),
        # NPROC counts per host uid; each concurrent sandbox has its own uid, and pids.max
        # in the cgroup is the real bound. This is a second fence against fork bombs.
        (resource.RLIMIT_NPROC, limits.pids_max + 16),
    )


def apply(rlimits: RlimitPlan) -> None:
    for res, value in rlimits:
        resource.setrlimit(res, (value, value))
