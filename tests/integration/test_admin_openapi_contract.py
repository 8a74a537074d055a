"""/admin/v1/openapi.json holds against the live server: schemathesis over every operation.

As tests/integration/test_openapi_contract.py does for /v1: a real server (lockout off, so that
generated bad tokens do not lock the test out), `st run` with an owner's admin token (an
operator: the `org` parameter names other organizations), every check on every response: no
5xx, documented status codes and content types, bodies matching their schemas, valid input
accepted, invalid input refused, no token refused, 405 with a correct Allow header.

Where a request is refused by a rule the document cannot state, "valid input accepted" is off
for that operation (and only that check):
- POST /keys, POST /members/{email}/tokens: `expires_at` must lie in the future;
- POST /sandboxes, PATCH /sandboxes/{name}: network `allowlist` needs entries, and each entry
  must be a domain (service/tenancy.py, runtime/network/policy.py);
- POST /storage: the credentials' fields depend on the type, the bucket name on the provider;
- POST /connectors, PATCH /connectors/{name}: the secret's form depends on the type;
- POST /webhook-secret: a second secret without `rotate` is refused (400);
- GET /images/{name}: `host` (the host's /usr) has nothing stored to show (400).
test_admin_api.py covers each of these rules with real requests.

No generated request reaches outside loopback: creating a storage connection checks its
endpoint's form but connects nowhere, and nothing here pulls an image.
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
from test_admin_api import token_for
from test_openapi_contract import CHECKS  # the same checks as /v1's contract

UNSTATED_RULES = [
    ("/keys", "POST"),
    ("/members/{email}/tokens", "POST"),
    ("/sandboxes", "POST"),
    ("/sandboxes/{name}", "PATCH"),
    ("/storage", "POST"),
    ("/connectors", "POST"),
    ("/connectors/{name}", "PATCH"),
    ("/webhook-secret", "POST"),
    ("/images/{name}", "GET"),
]


@pytest.fixture(scope="module")
def admin_contract_server(server_factory: Any) -> Any:
    return server_factory(auth_failures_allowed=1_000_000)


def _config(server: Any, token: str) -> str:
    checks = "\n".join(f"{name}.enabled = true" for name in CHECKS)
    relaxed = "\n".join(
        f'[[operations]]\ninclude-path = "{path}"\ninclude-method = "{method}"\n'
        "checks.positive_data_acceptance.enabled = false\n"
        for path, method in UNSTATED_RULES
    )
    return f"""
base-url = "{server.url}/admin/v1"
request-timeout = 30
# One worker: see test_openapi_contract.py (hypothesis and CPython 3.11 threads).
workers = 1
seed = {int(os.environ.get("SANDBOXD_CONTRACT_SEED", "20240801"))}
color = false

[cache]
enabled = false

[headers]
Authorization = "Bearer {token}"

[generation]
mode = "all"
max-examples = 30
database = "none"

[checks]
enabled = false
{checks}

{relaxed}
"""


def test_admin_openapi_contract(admin_contract_server: Any, tmp_path: Path) -> None:
    token = token_for(admin_contract_server, "owner")
    document = httpx.get(f"{admin_contract_server.url}/admin/v1/openapi.json", timeout=30).json()
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    (tmp_path / "schemathesis.toml").write_text(_config(admin_contract_server, token))
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", "schemathesis.toml", "run", "openapi.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    report = run.stdout + run.stderr
    print(report)  # shown by pytest -rP, and with the failure
    assert run.returncode == 0, report
    operations = sum(
        method in {"get", "put", "post", "delete", "patch"} for item in document["paths"].values() for method in item
    )
    tested = re.search(r"Tested: (\d+)", report)
    assert tested is not None and int(tested[1]) == operations, report
