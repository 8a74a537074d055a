"""Which runs a warm pool may serve (runtime/pool.py `key_of`): bucket mounts only whole."""

from __future__ import annotations

from sandboxd.runtime import Limits, Mount, SandboxSpec
from sandboxd.runtime.pool import key_of

WHOLE = Mount("/run/sandboxd/i/buckets/tok/mnt", "/data/lake", False, pooled=True)
SUB = Mount("/run/sandboxd/i/buckets/tok/mnt", "/data/lake/x", False, sub="x", pooled=False)
VOLUME = Mount("/run/sandboxd/i/storage/volumes/o/v", "/data/v", False)


def _spec(*mounts: Mount) -> SandboxSpec:
    return SandboxSpec(language="python", code=b"x", limits=Limits(), mounts=mounts)


def test_a_whole_bucket_mount_is_pooled_under_a_key_of_its_own() -> None:
    key = key_of(_spec(WHOLE))
    assert key is not None and key.mounts == (WHOLE,)
    assert key != key_of(_spec())  # never served to a run without it, or with another mount


def test_sub_paths_binds_and_volumes_start_cold() -> None:
    """A client's sub_paths would make a pool per distinct list; a volume's path is reused by
    a volume made again under the same name: neither is pooled."""
    assert key_of(_spec(SUB)) is None
    assert key_of(_spec(WHOLE, SUB)) is None
    assert key_of(_spec(VOLUME)) is None
