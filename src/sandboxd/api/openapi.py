"""The OpenAPI document at /openapi.json: FastAPI's, corrected to say what the app answers.

- No 422. Request validation errors are answered `400 validation_error` (api/errors.py), so
  the 422 that FastAPI adds to every operation with parameters, and its HTTPValidationError
  and ValidationError schemas, are taken out.
- Enums the request models inline (StorageKind: service/storage_kind.py) get a component from
  FastAPI that nothing refers to; taken out.
- The NDJSON event models, which the `itemSchema` of the streaming responses refers to, are
  added to the components (no route returns them as a model, so FastAPI would not).

The checks that hold the document to the live server are in
tests/integration/test_openapi_contract.py (schemathesis).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from pydantic import TypeAdapter

from .schemas import EXTRA_MODELS

_REF_TEMPLATE = "#/components/schemas/{model}"


def install(app: FastAPI, extra_models: Mapping[str, Any] = EXTRA_MODELS) -> None:
    """`extra_models`: schemas to add to the components (the admin API has none)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _correct(generate(), extra_models)  # FastAPI caches the document in app.openapi_schema
        return app.openapi_schema  # type: ignore[return-value]  # set by the call above

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _correct(document: dict[str, Any], extra_models: Mapping[str, Any]) -> None:
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError", "StorageKind"):
        schemas.pop(unused, None)
    for name, model in extra_models.items():
        schema = TypeAdapter(model).json_schema(ref_template=_REF_TEMPLATE, mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
