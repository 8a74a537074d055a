"""Section 8 of the suite: storage connections, on the "pools on" server, against SeaweedFS's S3
on loopback (the test rig: tests/integration/_buckets.py, started once here).

- warm mount: `print(1+1)` inline on a key with one S3 connection (its mount already up) vs
  the same on a key without, interleaved: the ratio of medians (the target: at most 1.3);
- first execution on a mount that is not up (a new connection each time, as after an idle
  release): its wall time, which includes rclone's start and first listing;
- 100 MB through the mount vs directly with the S3 API (boto3, from the host): a write (the
  execution ends once the object is uploaded) and a read of the whole file.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import BenchServer, Series
from _runs import server_runner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from _buckets import S3Rig, start_s3  # noqa: E402  (the tests' rig: one S3 server, one way)

MB = 1000 * 1000
FILE_MB = 100
FIRST_SAMPLES = 5


@dataclass
class BucketFigures:
    warm: Series
    plain: Series
    first_ms: list[float]
    write_mount_s: float
    write_api_s: float
    read_mount_s: float
    read_api_s: float

    @property
    def warm_ratio(self) -> float:
        return self.warm.median() / self.plain.median()


def _cli(server: BenchServer, *args: str, stdin: str | None = None) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "sandboxd", *args, "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=300, input=stdin, check=False, env={**os.environ, **server.env},
    )
    if r.returncode != 0:
        raise RuntimeError(f"sandboxd {' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


def _connect(server: BenchServer, rig: S3Rig, bucket: str, name: str) -> str:
    """A connection to `bucket` and a key bound to it; the key."""
    creds = json.dumps({"access_key_id": rig.access_key, "secret_access_key": rig.secret_key})
    _cli(server, "storage", "create", name, "--type", "s3", "--bucket", bucket, "--endpoint", rig.endpoint,
         "--credentials-file", "-", stdin=creds)
    return _cli(server, "keys", "create", "--storage", name, "--name", f"bench-{name}").strip()


def _run(client: httpx.Client, code: str, timeout: int = 60) -> dict[str, object]:
    r = client.post("/v1/sandbox/execute", json={"code": code, "language": "python", "timeout": timeout})
    if r.status_code != 200 or not r.json()["success"]:
        raise RuntimeError(f"bucket bench: {r.status_code} {r.text[:500]}")
    return dict(r.json())


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(
    server: BenchServer, plain_client: httpx.Client,
    sample: Callable[[dict[str, Callable[[], float]]], dict[str, Series]],
) -> BucketFigures:
    rig = start_s3()
    try:
        bucket = rig.new_bucket()
        key = _connect(server, rig, bucket, "bench-s3")
        with server.client(key, timeout_s=300) as client:
            got = sample({
                "pools on, one S3 connection": server_runner(client, "python", "print(1+1)", "2\n"),
                "pools on, no connection": server_runner(plain_client, "python", "print(1+1)", "2\n"),
            })
            first = []
            for i in range(FIRST_SAMPLES):
                other = _connect(server, rig, bucket, f"bench-first-{i}")
                with server.client(other, timeout_s=120) as c:
                    first.append(_timed(lambda: _run(c, "print(1+1)")) * 1000)
            chunk = os.urandom(MB)
            blob = chunk * FILE_MB
            write_code = (
                "import os\nchunk = os.urandom(1000 * 1000)\n"
                f"with open('/data/bench-s3/big.bin', 'wb') as f:\n"
                f"    for _ in range({FILE_MB}): f.write(chunk)\n"
            )
            write_mount_s = _timed(lambda: _run(client, write_code, 120))
            size = rig.client.head_object(Bucket=bucket, Key="big.bin")["ContentLength"]
            if size != FILE_MB * MB:
                raise RuntimeError(f"bucket bench: the written object has {size} bytes")
            write_api_s = _timed(lambda: rig.put(bucket, "api.bin", blob))
            read_code = (
                "n = 0\nwith open('/data/bench-s3/api.bin', 'rb') as f:\n"
                "    while b := f.read(1 << 20): n += len(b)\nprint(n)\n"
            )
            read_mount_s = _timed(lambda: _run(client, read_code, 120))
            read_api_s = _timed(lambda: rig.get(bucket, "api.bin"))
        return BucketFigures(
            got["pools on, one S3 connection"], got["pools on, no connection"], first,
            write_mount_s, write_api_s, read_mount_s, read_api_s,
        )
    finally:
        rig.stop()


def first_median(got: BucketFigures) -> float:
    return statistics.median(got.first_ms)
