"""What the admin routes share: the error responses each can answer."""

from __future__ import annotations

from typing import Any

from ..schemas import error_responses

#: Every admin route: no/bad token (401), a role without the permission or another
#: organization (403), lockout (429), an unexpected failure (500).
_AUTH = (401, 403, 429, 500)


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The route's error responses: the common ones, and `statuses`."""
    return error_responses(
        *sorted({*_AUTH, *statuses}),
        s401="Missing, invalid, revoked or expired admin token (`unauthorized`)",
        s403="The caller's role may not do this, or it names another organization (`forbidden`)",
        s404="No such resource in the organization (`not_found`)",
        s409="Conflict (`conflict`): the name is taken, or it is still in use",
    )


def links(status: int, **targets: tuple[str, dict[str, str]]) -> dict[str, Any]:
    """`openapi_extra` naming the operations a `status` answer leads to (OpenAPI links):
    `links(201, GetKey=("show_key", {"key_id": "$response.body#/key/id"}))`."""
    return {"responses": {str(status): {"links": {
        name: {"operationId": operation, "parameters": parameters} for name, (operation, parameters) in targets.items()
    }}}}
