"""service/admin.py's pure parts: times, audit filters, the CLI's binding specs, key status."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sandboxd.errors import InvalidRequest
from sandboxd.service.admin import (
    StorageRef,
    VolumeRef,
    audit_filters,
    key_status,
    parse_storage_ref,
    parse_time,
    parse_volume_ref,
)
from sandboxd.store import ApiKey

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-31T00:00:00Z", datetime(2030, 1, 31, tzinfo=timezone.utc)),
        ("2030-01-31t00:00:00z", datetime(2030, 1, 31, tzinfo=timezone.utc)),
        ("2030-01-31T02:00:00+02:00", datetime(2030, 1, 31, tzinfo=timezone.utc)),
        (None, None),
    ],
)
def test_times_are_rfc_3339_with_a_zone(text: str | None, expected: datetime | None) -> None:
    assert parse_time(text, "t") == expected


@pytest.mark.parametrize(("text", "word"), [("2030-01-31T00:00:00", "zone"), ("5.3e-60", "RFC 3339"), ("", "RFC")])
def test_other_times_are_refused_naming_the_field(text: str, word: str) -> None:
    with pytest.raises(InvalidRequest, match=word) as info:
        parse_time(text, "until")
    assert "until" in info.value.message


def test_audit_filters_read_metadata_pairs_and_times() -> None:
    filters = audit_filters(metadata=["team=a", "run=x=y"], since="2030-01-01T00:00:00Z", kind="admin")
    assert filters.metadata == {"team": "a", "run": "x=y"} and filters.since == NOW and filters.kind == "admin"
    with pytest.raises(InvalidRequest, match="KEY=VALUE"):
        audit_filters(metadata=["novalue"])
    with pytest.raises(InvalidRequest, match="KEY=VALUE"):
        audit_filters(metadata=["=v"])


def test_the_clis_binding_specs() -> None:
    assert parse_volume_ref("data") == VolumeRef("data", False)
    assert parse_volume_ref("data:ro") == VolumeRef("data", True)
    with pytest.raises(InvalidRequest, match="ro or rw"):
        parse_volume_ref("data:rx")
    assert parse_storage_ref("b:ro:prefix=/team/a/") == StorageRef("b", True, "team/a")


def test_a_keys_status() -> None:
    key = ApiKey(id="key_1", org_id="org_1", sandbox_id="sbx_1", name="k", region="local", digest="d",
                 display_prefix="sk-local-ab", created_at=NOW, revoked_at=None)
    assert key_status(key, NOW) == "active"
    expiring = ApiKey(**{**key.__dict__, "expires_at": NOW + timedelta(seconds=1)})
    assert key_status(expiring, NOW) == "active" and key_status(expiring, NOW + timedelta(seconds=1)) == "expired"
    revoked = ApiKey(**{**expiring.__dict__, "revoked_at": NOW})
    assert key_status(revoked, NOW + timedelta(days=1)) == "revoked"
