"""Members, their admin API tokens and their console sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import utcnow
from .records import AdminToken, ConsoleSession, Member
from .base import Repo
from .tables import admin_tokens, console_sessions, members


class MemberRepo(Repo):
    async def add(self, member: Member) -> Member:
        await self._insert(members, member.__dict__)
        return member

    async def get(self, member_id: str) -> Member | None:
        return await self._one(Member, select(members).where(members.c.id == member_id))

    async def by_email(self, org_id: str, email: str) -> Member | None:
        return await self._one(Member, select(members).where(members.c.org_id == org_id, members.c.email == email))

    async def by_subject(self, subject: str) -> Member | None:
        return await self._one(Member, select(members).where(members.c.subject == subject))

    async def list(self, org_id: str) -> list[Member]:
        return await self._all(Member, select(members).where(members.c.org_id == org_id).order_by(members.c.created_at))

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(members))).scalar() or 0)

    async def change_keeping_an_owner(self, member: Member, **values: object) -> bool:
        """Change a member unless that leaves its organization without an owner (False)."""
        async with self._engine.begin() as conn:
            if not await _another_owner(conn, member):
                return False
            await conn.execute(update(members).where(members.c.id == member.id).values(**values))
        return True

    async def remove_keeping_an_owner(self, member: Member) -> bool:
        """Remove a member (its tokens and sessions too) unless it is the last owner (False)."""
        async with self._engine.begin() as conn:
            if not await _another_owner(conn, member):
                return False
            await conn.execute(delete(console_sessions).where(console_sessions.c.member_id == member.id))
            await conn.execute(delete(admin_tokens).where(admin_tokens.c.member_id == member.id))
            await conn.execute(delete(members).where(members.c.id == member.id))
        return True

    async def change(self, member_id: str, **values: object) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(members).where(members.c.id == member_id).values(**values))



async def _another_owner(conn: AsyncConnection, member: Member) -> bool:
    """Whether the organization keeps an owner without `member`'s: its owners' rows locked
    (PostgreSQL) for the transaction, so two demotions cannot both pass; SQLite has one writer."""
    if member.role != "owner":
        return True
    owners = select(members.c.id).where(members.c.org_id == member.org_id, members.c.role == "owner").with_for_update()
    return any(found != member.id for found in (await conn.execute(owners)).scalars())


class AdminTokenRepo(Repo):
    async def add(self, token: AdminToken) -> AdminToken:
        await self._insert(admin_tokens, token.__dict__)
        return token

    async def by_digest(self, digest: str) -> AdminToken | None:
        return await self._one(AdminToken, select(admin_tokens).where(admin_tokens.c.digest == digest))

    async def get(self, token_id: str) -> AdminToken | None:
        return await self._one(AdminToken, select(admin_tokens).where(admin_tokens.c.id == token_id))

    async def list(self, member_id: str) -> list[AdminToken]:
        query = select(admin_tokens).where(admin_tokens.c.member_id == member_id).order_by(admin_tokens.c.created_at)
        return await self._all(AdminToken, query)

    async def revoke(self, token_id: str) -> bool:
        """Revoke a token and end the console sessions opened with it."""
        query = (
            update(admin_tokens)
            .where(admin_tokens.c.id == token_id, admin_tokens.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(query)
            await conn.execute(delete(console_sessions).where(console_sessions.c.admin_token_id == token_id))
        return result.rowcount > 0

    async def used(self, token_id: str, at: datetime, since: datetime) -> None:
        """Record a use, unless one was recorded after `since` (a write a minute at most)."""
        query = (
            update(admin_tokens)
            .where(
                admin_tokens.c.id == token_id,
                or_(admin_tokens.c.last_used_at.is_(None), admin_tokens.c.last_used_at < since),
            )
            .values(last_used_at=at)
        )
        async with self._engine.begin() as conn:
            await conn.execute(query)


class ConsoleSessionRepo(Repo):
    async def add(self, session: ConsoleSession) -> None:
        await self._insert(console_sessions, session.__dict__)

    async def get(self, digest: str) -> ConsoleSession | None:
        return await self._one(ConsoleSession, select(console_sessions).where(console_sessions.c.digest == digest))

    async def remove(self, digest: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(console_sessions).where(console_sessions.c.digest == digest))

    async def sweep(self, now: datetime) -> int:
        """Forget expired sessions; how many."""
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(console_sessions).where(console_sessions.c.expires_at < now))
        return result.rowcount
