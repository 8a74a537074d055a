"""What every command module shares: the data dir and database options, settings, errors.

A command group of its own (e.g. `audit`, `plans`, `members`) is a module of this package with a
`typer.Typer` named `app`; `sandboxd.cli` adds it. Keep imports light (tests/unit/test_lazy_imports.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..app import Admin, open_admin
from ..config import Settings
from ..errors import SandboxdError

T = TypeVar("T")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory [env: SANDBOXD_DATA_DIR; default /var/lib/sandboxd]"),
]
DatabaseUrl = Annotated[
    str | None, typer.Option("--database-url", help="SQLAlchemy URL [env: SANDBOXD_DATABASE_URL]")
]
OrgName = Annotated[str, typer.Option("--org", help="Organization name.")]


def settings_of(data_dir: Path | None, database_url: str | None = None, **extra: Any) -> Settings:
    overrides: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    return Settings(**overrides)


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"sandboxd: {message}", err=True)
    raise typer.Exit(code)


def admin_call(settings: Settings, fn: Callable[[Admin], Awaitable[T]]) -> T:
    async def go() -> T:
        admin = await open_admin(settings)
        try:
            return await fn(admin)
        finally:
            await admin.close()

    try:
        return asyncio.run(go())
    except SandboxdError as exc:
        fail(exc.message)
        raise  # unreachable
