"""Members: the people who administer an organization, how they prove it, and their sessions.

Three credentials, none stored in the clear (HMAC-SHA256 with the server's pepper, as API keys):
- admin tokens `sda-<40 base62>` for the admin API, shown once; an API key (`sk-...`) is never
  one, and an admin token is never an API key (their patterns differ);
- console sessions: a random cookie token whose digest is the row; logout deletes the row;
- the bootstrap owner's token, made at the first start of an installation with no member, for
  installations without an OpenID provider.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from ..ids import new_id, random_token
from ..store import AdminToken, ConsoleSession, DuplicateError, Member, Org, Store, utcnow
from .roles import OPERATOR_ORG, ROLE_NAMES, Actor, AdminPrincipal

TOKEN_PATTERN = re.compile(r"^sda-[A-Za-z0-9]{40}$")
_SESSION_PATTERN = re.compile(r"^[A-Za-z0-9]{43}$")
#: Loose on purpose: an address the identity provider vouches for, or an operator's label.
_EMAIL = re.compile(r"^[^\s@]{1,128}(@[^\s@]{1,125})?$")
BOOTSTRAP_EMAIL = "owner"
_USE_RECORDED_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedToken:
    record: AdminToken
    secret: str  # shown once, never stored


class MemberService:
    def __init__(self, store: Store, pepper: bytes, *, session_ttl_s: float = 8 * 3600) -> None:
        self._store = store
        self._pepper = pepper
        self._session_ttl = timedelta(seconds=session_ttl_s)

    def _digest(self, secret: str) -> str:
        return hmac.new(self._pepper, b"admin:" + secret.encode(), hashlib.sha256).hexdigest()

    # --- members ----------------------------------------------------------------------------

    async def add(self, org: Org, email: str, role: str) -> Member:
        _check(email, role)
        member = Member(id=new_id("mbr"), org_id=org.id, email=email, role=role, subject=None, created_at=utcnow())
        try:
            return await self._store.members.add(member)
        except DuplicateError:
            raise Conflict(f"{email!r} is already a member of {org.name!r}") from None

    async def list(self, org: Org) -> list[Member]:
        return await self._store.members.list(org.id)

    async def get(self, org: Org, email: str) -> Member:
        member = await self._store.members.by_email(org.id, email)
        if member is None:
            raise NotFound(f"no member {email!r} in organization {org.name!r}")
        return member

    async def set_role(self, org: Org, email: str, role: str) -> tuple[Member, Member]:
        """(before, after); the last owner keeps being one."""
        _check(email, role)
        member = await self.get(org, email)
        if member.role == "owner" and role != "owner":
            await self._keep_an_owner(org)
        await self._store.members.change(member.id, role=role)
        return member, await self.get(org, email)

    async def remove(self, org: Org, email: str) -> Member:
        member = await self.get(org, email)
        if member.role == "owner":
            await self._keep_an_owner(org)
        await self._store.members.remove(member.id)
        return member

    async def _keep_an_owner(self, org: Org) -> None:
        if await self._store.members.owners(org.id) <= 1:
            raise Conflict(f"{org.name!r} would have no owner left; make another member owner first")

    # --- admin tokens -----------------------------------------------------------------------

    async def issue_token(self, member: Member, name: str = "", expires_at: datetime | None = None) -> IssuedToken:
        if len(name) > 128:
            raise InvalidRequest("token name must be at most 128 characters")
        if expires_at is not None and expires_at <= utcnow():
            raise InvalidRequest("expires_at must be in the future")
        secret = "sda-" + random_token(40)
        record = AdminToken(
            id=new_id("atk"), member_id=member.id, name=name or "unnamed", digest=self._digest(secret),
            display_prefix=secret[:12], created_at=utcnow(), expires_at=expires_at,
        )
        await self._store.admin_tokens.add(record)
        return IssuedToken(record, secret)

    async def tokens(self, member: Member) -> builtins.list[AdminToken]:
        return await self._store.admin_tokens.list(member.id)

    async def revoke_token(self, member: Member, token_id: str) -> AdminToken:
        token = await self._store.admin_tokens.get(token_id)
        if token is None or token.member_id != member.id:
            raise NotFound(f"no admin token {token_id!r} of {member.email!r}")
        await self._store.admin_tokens.revoke(token_id)
        return token

    async def authenticate(self, presented: str, ip: str | None = None) -> AdminPrincipal:
        """The member an admin token belongs to; 401 for anything else (an API key included)."""
        if not TOKEN_PATTERN.fullmatch(presented):
            raise Unauthorized("invalid admin token")
        token = await self._store.admin_tokens.by_digest(self._digest(presented))
        now = utcnow()
        if token is None or token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
            raise Unauthorized("invalid admin token")
        principal = await self._principal(token.member_id, ip, via="token")
        await self._store.admin_tokens.used(token.id, now, now - _USE_RECORDED_EVERY)
        return principal

    # --- the bootstrap owner ----------------------------------------------------------------

    async def bootstrap(self) -> str | None:
        """First start of an installation with no member: an owner of the operator organization
        and a token for it, to print once. None when any member exists (every later start)."""
        if await self._store.members.count():
            return None
        org = await self._store.orgs.by_name(OPERATOR_ORG)
        if org is None:
            return None
        try:
            owner = await self.add(org, BOOTSTRAP_EMAIL, "owner")
        except Conflict:  # another process got there first
            return None
        return (await self.issue_token(owner, "bootstrap")).secret

    # --- OpenID Connect ---------------------------------------------------------------------

    async def oidc_sign_in(self, subject: str, email: str, org_name: str | None, role: str | None) -> Member:
        """The member an identity provider vouches for. Its claims are authoritative: the
        organization must exist; a role claim sets the role; without one, only an existing
        member (by subject, or by email in that organization) may sign in, keeping its role."""
        if not subject or len(subject) > 512:
            raise Forbidden("the identity provider sent no usable subject")
        if role is not None and role not in ROLE_NAMES:
            raise Forbidden(f"the identity provider's role {role!r} is not one of {', '.join(ROLE_NAMES)}")
        known = await self._store.members.by_subject(subject)
        org = await self._store.orgs.by_name(org_name) if org_name else None
        if org_name and org is None:
            raise Forbidden(f"organization {org_name!r} (from the identity provider) does not exist")
        if org is None:
            if known is None:
                raise Forbidden("the identity provider named no organization and you are not a member yet")
            org = await self._store.orgs.get(known.org_id)
            assert org is not None
        if known is None or known.org_id != org.id:
            known = await self._store.members.by_email(org.id, email) if email else None
        if known is None:
            if role is None:
                raise Forbidden(f"you are not a member of {org.name!r} and the identity provider gave no role")
            member = await self.add(org, email or subject[-128:], role)
            await self._store.members.change(member.id, subject=subject, last_seen_at=utcnow())
        else:
            await self._store.members.change(
                known.id, subject=subject, role=role or known.role, last_seen_at=utcnow(), org_id=org.id
            )
            member = known
        fresh = await self._store.members.get(member.id)
        assert fresh is not None
        return fresh

    # --- console sessions -------------------------------------------------------------------

    async def open_session(self, member: Member, ip: str | None = None) -> str:
        """A new console session; returns the cookie's value (shown to the browser only)."""
        token = random_token(43)
        now = utcnow()
        await self._store.console_sessions.add(ConsoleSession(
            digest=self._digest(token), member_id=member.id, created_at=now, expires_at=now + self._session_ttl,
            ip=ip[:64] if ip else None,
        ))
        await self._store.console_sessions.sweep(now)
        return token

    async def session(self, token: str, ip: str | None = None) -> AdminPrincipal:
        if not _SESSION_PATTERN.fullmatch(token):
            raise Unauthorized("not signed in")
        row = await self._store.console_sessions.get(self._digest(token))
        if row is None or row.expires_at <= utcnow():
            raise Unauthorized("your session has ended; sign in again")
        return await self._principal(row.member_id, ip, via="session")

    async def session_expires(self, token: str) -> datetime | None:
        row = await self._store.console_sessions.get(self._digest(token)) if _SESSION_PATTERN.fullmatch(token) else None
        return row.expires_at if row is not None else None

    async def close_session(self, token: str) -> None:
        if _SESSION_PATTERN.fullmatch(token):
            await self._store.console_sessions.remove(self._digest(token))

    async def _principal(self, member_id: str, ip: str | None, *, via: str) -> AdminPrincipal:
        member = await self._store.members.get(member_id)
        org = await self._store.orgs.get(member.org_id) if member is not None else None
        if member is None or org is None:
            raise Unauthorized("this member no longer exists")
        return AdminPrincipal(
            org=org, role=member.role, actor=Actor(kind="member", id=member.id, name=member.email, ip=ip), via=via
        )


def _check(email: str, role: str) -> None:
    if not _EMAIL.fullmatch(email):
        raise InvalidRequest("email must be an address like ana@example.com (or a name without spaces)")
    if role not in ROLE_NAMES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLE_NAMES)}")
