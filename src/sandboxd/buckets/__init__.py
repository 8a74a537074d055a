"""Storage connections on the server side: an organization's buckets (S3, GCS, Azure Blob)
FUSE-mounted by rclone, run by the server with the credentials, never by a sandbox.

`providers` checks what a connection names (kind, bucket, endpoint, credentials) and turns it
into an rclone remote; `rclone` mounts one, checks one (`storage test`), unmounts, and cleans
up what a crashed server left behind.
"""

from __future__ import annotations

from .providers import KINDS, Remote, check_endpoint, check_path_in_bucket, parse_credentials
from .rclone import MountFailed, RcloneMount, check, mount, unmount_stale

__all__ = [
    "KINDS",
    "MountFailed",
    "RcloneMount",
    "Remote",
    "check",
    "check_endpoint",
    "check_path_in_bucket",
    "mount",
    "parse_credentials",
    "unmount_stale",
]
