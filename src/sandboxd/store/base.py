"""What every repository shares: the engine, row-to-record mapping, inserts that name duplicates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import as_utc

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class DuplicateError(Exception):
    """A unique name is taken."""


class RollBack(Exception):
    """Raised inside a transaction to undo it."""


def to_record(record: type[T], row: RowMapping | Mapping[str, Any]) -> T:
    values: dict[str, Any] = {}
    for f in fields(record):
        value = row[f.name]
        if f.name.endswith("_at"):
            value = as_utc(value)
        values[f.name] = value
    return record(**values)


class Repo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def _one(self, record: type[T], query: Any) -> T | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return to_record(record, row) if row is not None else None

    async def _all(self, record: type[T], query: Any) -> list[T]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [to_record(record, r) for r in rows]

    async def _insert(self, table: Any, values: dict[str, Any]) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(table.insert().values(**values))
        except IntegrityError as exc:
            raise DuplicateError(str(exc.orig)) from exc
