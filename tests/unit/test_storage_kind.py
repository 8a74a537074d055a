"""One enum names the storage kinds on every surface: REST files routes, MCP files tools, and
signed file URLs; the wire values, schemas and error texts are those of the former literals."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from sandboxd.api.routes.files import FileRequest, ListFilesRequest
from sandboxd.mcp.tools import FilesDownloadArgs, FilesListArgs
from sandboxd.service import validation_message
from sandboxd.service.signing import Claims, Signer
from sandboxd.service.storage_kind import StorageKind

MODELS: list[type[BaseModel]] = [ListFilesRequest, FileRequest, FilesListArgs, FilesDownloadArgs]


def test_wire_values() -> None:
    assert [kind.value for kind in StorageKind] == ["thread", "volume"]


@pytest.mark.parametrize("model", MODELS)
def test_models_take_the_wire_values_and_give_the_enum(model: type[BaseModel]) -> None:
    body = {"id": "t1", "path": "a.txt"}
    assert model.model_validate(body).source is StorageKind.THREAD  # type: ignore[attr-defined]
    parsed = model.model_validate({**body, "source": "volume"})
    assert parsed.source is StorageKind.VOLUME  # type: ignore[attr-defined]
    assert parsed.model_dump(mode="json")["source"] == "volume"
    assert model.model_validate_json('{"id": "t1", "path": "a", "source": "volume"}').source is StorageKind.VOLUME  # type: ignore[attr-defined]
    schema = model.model_json_schema()
    assert schema["properties"]["source"] == {
        "default": "thread", "description": schema["properties"]["source"]["description"],
        "enum": ["thread", "volume"], "title": "Source", "type": "string",
    }
    assert "$defs" not in schema
    for bad in ("bucket", "THREAD", 1, None, ["thread"]):
        with pytest.raises(ValidationError) as info:
            model.model_validate({**body, "source": bad})
        assert validation_message(info.value.errors()) == "source: Input should be 'thread' or 'volume'"


def test_signed_claims_carry_the_kind() -> None:
    signer = Signer(b"k" * 32, clock=lambda: 1000.0)
    claims = Claims(method="GET", source=StorageKind.VOLUME, org_id="o", key_id="k", id="v", path="a", expires=2000)
    token = signer.sign(claims)
    got = signer.verify(token, "GET")
    assert got == claims and got.source is StorageKind.VOLUME
