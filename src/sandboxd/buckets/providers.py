"""PLACEHOLDER until helper A's module lands (replaced at merge)."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("s3", "gcs", "azure")


def check_endpoint(url: str) -> None:
    return None


def parse_credentials(kind: str, raw: bytes) -> dict[str, str]:
    import json

    data = json.loads(raw)
    return {str(k): str(v) for k, v in data.items()}


@dataclass(frozen=True)
class Remote:
    kind: str
    bucket: str
    endpoint: str | None
    region: str | None
    credentials: dict[str, str]
