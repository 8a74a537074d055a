"""Section 7 of the suite: runtime images, on the "pools on" server.

- a Debian image (python3-minimal, bash) is built once with mmdebstrap into an OCI layout
  (not timed as the import: that is Debian's download and dpkg);
- cold import: `sandboxd images import` of that layout into a data dir that has no layer yet;
- disk: the storage filesystem's used bytes (data and metadata) before and after importing it, and after importing
  a second image on the same base plus a 1 MiB layer of its own (layers are btrfs snapshots
  by chain id): two images sharing a base vs twice one image;
- pooled python inline `print(1+1)` on the imported image and on `host`, interleaved on one
  server: the ratio of medians (the target: at most 1.1).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import BenchServer, Series
from _runs import server_runner

from sandboxd.images import debian

PACKAGES = ("python3-minimal", "bash")


@dataclass
class ImageFigures:
    build_s: float
    import_s: float
    second_import_s: float
    one_image_bytes: int
    two_images_bytes: int
    on_image: Series
    on_host: Series

    @property
    def sharing_ratio(self) -> float:
        """Disk of two images on one base / twice the disk of one image."""
        return self.two_images_bytes / (2 * self.one_image_bytes)


def _cli(server: BenchServer, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "sandboxd", *args, "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL, check=False,
        env={**os.environ, **server.env},
    )
    if r.returncode != 0:
        raise RuntimeError(f"sandboxd {' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


def _used_bytes(server: BenchServer) -> int:
    """Data and metadata bytes in use on the storage filesystem (`btrfs filesystem df`: what
    is written, not the chunks allocated for it, which grow by up to 1 GiB at a time)."""
    mount = str(server.run_dir / "storage")
    subprocess.run(["btrfs", "filesystem", "sync", mount], check=True, capture_output=True)
    out = subprocess.run(["btrfs", "filesystem", "df", "-b", mount], check=True, capture_output=True, text=True).stdout
    used = 0
    for line in out.splitlines():
        kind = line.split(",", 1)[0]
        if kind in ("Data", "Metadata") and "used=" in line:
            used += int(line.rsplit("used=", 1)[1].split()[0])
    return used


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _extended(base: Path, dest: Path) -> Path:
    """`base` (a one-image layout) plus a layer holding 1 MiB of random bytes."""
    shutil.copytree(base, dest)
    index = json.loads((dest / "index.json").read_text())
    manifest = json.loads((dest / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    config = json.loads((dest / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("opt/bench-extra")
        data = os.urandom(1 << 20)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tar_bytes = buf.getvalue()
    packed = gzip.compress(tar_bytes, mtime=0)
    config["rootfs"]["diff_ids"].append(f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}")
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(dest, packed)})
    manifest["config"] = {**manifest["config"], **_blob(dest, json.dumps(config).encode())}
    body = json.dumps(manifest).encode()
    index["manifests"] = [{**index["manifests"][0], **_blob(dest, body)}]
    (dest / "index.json").write_text(json.dumps(index))
    return dest


def measure(server: BenchServer, host_client: httpx.Client, sample: Callable[[dict[str, Callable[[], float]]], dict[str, Series]]) -> ImageFigures:
    """`sample` runs the runners it is given interleaved (the suite's rounds) into series."""
    work = Path(tempfile.mkdtemp(prefix="sandboxd-bench-image-"))
    try:
        layout = work / "layout"
        t0 = time.perf_counter()
        debian.build_layout(PACKAGES, layout, "bench", suite="bookworm", mirror=None, progress=lambda _: None)
        build_s = time.perf_counter() - t0
        used0 = _used_bytes(server)  # mounted: section 3 ran threads on this server
        t0 = time.perf_counter()
        _cli(server, "images", "import", f"{layout}", "--name", "bench-a")
        import_s = time.perf_counter() - t0
        used1 = _used_bytes(server)
        second = _extended(layout, work / "layout-b")
        t0 = time.perf_counter()
        _cli(server, "images", "import", f"{second}", "--name", "bench-b")
        second_import_s = time.perf_counter() - t0
        used2 = _used_bytes(server)
        _cli(server, "sandboxes", "create", "bench-image", "--image", "bench-a")
        key = _cli(server, "keys", "create", "--sandbox", "bench-image", "--name", "bench-image").strip()
        with server.client(key, timeout_s=120) as image_client:
            got = sample({
                "pools on, image": server_runner(image_client, "python", "print(1+1)", "2\n"),
                "pools on, host": server_runner(host_client, "python", "print(1+1)", "2\n"),
            })
        return ImageFigures(
            build_s, import_s, second_import_s, used1 - used0, used2 - used0,
            got["pools on, image"], got["pools on, host"],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

