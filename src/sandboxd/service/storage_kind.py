"""The kinds of storage a file lives in: what a files request, an MCP files tool and a signed file
URL call `source`. One enum for all of them; its values are the wire values.

A new kind (an S3 bucket, a connector) is a member here; every surface's schema lists it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import GetPydanticSchema, WithJsonSchema
from pydantic_core import PydanticCustomError, core_schema


class StorageKind(StrEnum):
    #: A thread's /home/baponi; its id is the thread_id.
    THREAD = "thread"
    #: A volume, /data/<slug> in a sandbox; its id is the slug.
    VOLUME = "volume"


def _from_wire(value: Any) -> StorageKind:
    """A JSON string naming a kind; refused as a Literal of the values would refuse it (same
    error type and message), so the surfaces' error texts stay as they were."""
    if isinstance(value, str):
        try:
            return StorageKind(value)
        except ValueError:
            pass
    expected = " or ".join(repr(kind.value) for kind in StorageKind)
    raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})


_SCHEMA = core_schema.no_info_plain_validator_function(
    _from_wire, serialization=core_schema.plain_serializer_function_ser_schema(str, return_schema=core_schema.str_schema())
)

#: `source` in a request model: the wire value in, the enum out; its JSON Schema is the plain
#: `{"type": "string", "enum": [...]}` a Literal has (no component of its own in the OpenAPI
#: document).
StorageKindParam = Annotated[
    StorageKind,
    GetPydanticSchema(lambda _type, _handler: _SCHEMA),
    WithJsonSchema({"type": "string", "enum": [kind.value for kind in StorageKind]}),
]
