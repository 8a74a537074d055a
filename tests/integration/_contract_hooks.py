"""schemathesis hooks for test_openapi_contract.py: no generated request names a webhook target.

`webhook_url` is already out of the document schemathesis reads; these also catch it as a
random extra property of a generated invalid body, so the server never resolves or calls a host.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def _names_a_webhook(body: Any) -> bool:
    return isinstance(body, dict) and "webhook_url" in body


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    return not _names_a_webhook(case.body)


@schemathesis.hook
def before_call(
    context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]
) -> None:
    if _names_a_webhook(case.body):  # a case made outside the filtered strategies (coverage phase)
        del case.body["webhook_url"]
