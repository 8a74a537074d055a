"""/openapi.json holds against the live server: schemathesis over every operation it describes.

A real server (its own data dir, the failed-auth lockout off so that generated bad keys do not
lock the test out) and a key bound to a sandbox capped at 3 s, so generated code is short.
`st run` (the schemathesis CLI, as a developer would run it) exercises every operation with
generated input, valid and invalid: the examples, coverage (boundary values, methods the path
does not have) and fuzzing phases, then the stateful phase (chains through the document's
links: execute, then status/output/cancel of the trace id it answered). Every response is
checked: no 5xx, a documented status code and content type, a body that matches its schema,
required response headers, valid input accepted, invalid input refused, no key refused, 405
with a correct Allow header.

`sub_paths` entries are valid only inside a mount of the key: the key is bound read-only to
the volume `c`, and the document schemathesis reads says so (the pattern of its entries).

One deliberate gap: `webhook_url` is taken out of the document given to schemathesis, and the
hooks in _contract_hooks.py drop it from any generated body. A generated URL would make the
server resolve (and POST to) whatever host it names, and tests send traffic only to loopback;
test_webhooks.py covers it against a receiver on loopback.

The seed is fixed so that CI runs are reproducible; SANDBOXD_CONTRACT_SEED picks another. Rules
JSON Schema cannot state are written as the nearest schema (see docs/architecture.md, "The HTTP
contract"), so a rare generated value can still be refused although schema-valid: a file name of
255 characters but over 255 bytes of UTF-8, or code of 1 M characters over 1 MB.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandboxd.app import open_admin
from sandboxd.service import SandboxConfig

HOOKS = Path(__file__).with_name("_contract_hooks.py")
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "missing_required_header",
    "ignored_auth",
    "unsupported_method",
    "allow_header_conformance",
]


@pytest.fixture(scope="module")
def contract_server(server_factory: Any) -> Any:
    return server_factory(auth_failures_allowed=1_000_000)


@pytest.fixture(scope="module")
async def contract_key(contract_server: Any) -> str:
    """Bound read-only to the volume `c`: a `sub_paths` entry there is run (or, missing, refused
    with volume_mount_error, a 200), an entry of no mount of the key is a 400."""
    admin = await open_admin(contract_server.settings)
    try:
        org = await admin.tenancy.ensure_org("default")
        config = SandboxConfig(name="contract", timeout_cap_s=3, memory_mib=256)
        sandbox = await admin.tenancy.create_sandbox(org, config)
        volume = await admin.volumes.create(org, "c", 10)
        created = await admin.keys.create(org=org, sandbox=sandbox, name="contract", volumes=[(volume, True)])
        return created.secret
    finally:
        await admin.close()


def _config(server: Any, key: str) -> str:
    checks = "\n".join(f"{name}.enabled = true" for name in CHECKS)
    return f"""
base-url = "{server.url}"
request-timeout = 30
# One worker: schemathesis's workers are threads, and hypothesis parses lambda sources with
# ast.parse, whose recursion-depth bookkeeping on CPython 3.11 is shared between threads
# (python/cpython#106905): two workers fail at random with "AST constructor recursion depth
# mismatch".
workers = 1
seed = {int(os.environ.get("SANDBOXD_CONTRACT_SEED", "20240801"))}
hooks = "{HOOKS}"
color = false

[cache]
enabled = false

[headers]
Authorization = "Bearer {key}"

[generation]
mode = "all"
max-examples = 30
database = "none"

[checks]
enabled = false
{checks}

[phases.stateful]
max-steps = 10

# A signed upload takes exactly the byte count signed into its URL (and its Content-Type): a
# schema cannot say so, and in the stateful phase schemathesis PUTs arbitrary bytes to URLs
# that upload_url returned, which the server rightly refuses (400). test_files.py covers uploads.
[[operations]]
include-path = "/v1/files/blob/{{token}}"
include-method = "PUT"
checks.positive_data_acceptance.enabled = false
"""


def test_openapi_contract(contract_server: Any, contract_key: str, tmp_path: Path) -> None:
    document = httpx.get(f"{contract_server.url}/openapi.json", timeout=30).json()
    del document["components"]["schemas"]["ExecuteRequest"]["properties"]["webhook_url"]
    # What the document cannot state: a `sub_paths` entry must lie in a mount of the key (here
    # /data/c), each name at most 255 bytes and without control characters (service/scoping.py).
    items = document["components"]["schemas"]["ExecuteRequest"]["properties"]["sub_paths"]["anyOf"][0]["items"]
    items["pattern"] = r"^/data/c(/[^/\u0000-\u001f\u007f]{0,255})*$"
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    (tmp_path / "schemathesis.toml").write_text(_config(contract_server, contract_key))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            "schemathesis.toml",
            "run",
            "openapi.json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = run.stdout + run.stderr
    print(report)  # shown by pytest -rP, and with the failure
    assert run.returncode == 0, report
    operations = sum(
        method in {"get", "put", "post", "delete", "patch"}
        for item in document["paths"].values()
        for method in item
    )
    tested = re.search(r"Tested: (\d+)", report)
    assert tested is not None and int(tested[1]) == operations, report
