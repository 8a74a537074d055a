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
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ..errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from ..ids import new_id, random_token
from ..store import AdminToken, ConsoleSession, DuplicateError, Member, Org, Store, utcnow
from .roles import OPERATOR_ORG, ROLE_NAMES, Actor, AdminPrincipal

TOKEN_PATTERN = re.compile(r"^sda-[A-Za-z0-9]{40}$")
_SESSION_PATTERN = re.compile(r"^[A-Za-z0-9]{43}$")
#: An address (or an operator's label such as `owner`): safe in a URL path segment and a page.
_EMAIL = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}(@[A-Za-z0-9-][A-Za-z0-9.-]{0,124})?$")
BOOTSTRAP_EMAIL = "owner"
_USE_RECORDED_EVERY = timedelta(minutes=1)
_LAST_OWNER = "{!r} would have no owner left; make another member owner first"


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
        if not await self._store.members.change_keeping_an_owner(member, role=role):
            raise Conflict(_LAST_OWNER.format(org.name))
        return member, await self.get(org, email)

    async def remove(self, org: Org, email: str) -> Member:
        member = await self.get(org, email)
        if not await self._store.members.remove_keeping_an_owner(member):
            raise Conflict(_LAST_OWNER.format(org.name))
        return member

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

    async def unclaimed(self, member: Member) -> bool:
        """Never signed in: no identity provider subject and no admin token that still works."""
        if member.subject is not None:
            return False
        now = utcnow()
        return not any(
            t.revoked_at is None and (t.expires_at is None or t.expires_at > now)
            for t in await self._store.admin_tokens.list(member.id)
        )

    async def tokens(self, member: Member) -> builtins.list[AdminToken]:
        return await self._store.admin_tokens.list(member.id)

    async def revoke_token(self, member: Member, token_id: str) -> AdminToken:
        token = await self._store.admin_tokens.get(token_id)
        if token is None or token.member_id != member.id:
            raise NotFound(f"no admin token {token_id!r} of {member.email!r}")
        await self._store.admin_tokens.revoke(token_id)  # its console sessions end with it
        return token

    async def authenticate(self, presented: str, ip: str | None = None) -> AdminPrincipal:
        """The member an admin token belongs to; 401 for anything else (an API key included)."""
        if not TOKEN_PATTERN.fullmatch(presented):
            raise Unauthorized("invalid admin token")
        token = await self._store.admin_tokens.by_digest(self._digest(presented))
        now = utcnow()
        if token is None or token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
            raise Unauthorized("invalid admin token")
        principal = replace(await self._principal(token.member_id, ip, via="token"), credential_id=token.id)
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

    async def oidc_sign_in(
        self, subject: str, email: str, org_name: str | None, role: str | None, *, email_verified: bool = False
    ) -> Member:
        """The member an identity provider vouches for (`subject`: "<issuer> <sub>").

        Its claims are authoritative: the organization must exist; a role claim sets the role.
        Without a role claim only a known member may sign in, keeping its role: the one this
        subject signed in as before, or a member an owner invited by email who never signed in
        (no subject yet) — and only when the provider says it verified that email. A member
        already linked to a subject is never taken over by another subject with its email.
        """
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
        if known is not None and known.org_id != org.id:
            raise Forbidden(f"you are a member of another organization, not {org.name!r}")
        if known is None and email and email_verified:
            invited = await self._store.members.by_email(org.id, email)
            known = invited if invited is not None and invited.subject is None else None
        if known is None:
            if role is None:
                raise Forbidden(f"you are not a member of {org.name!r} and the identity provider gave no role")
            try:
                member = await self.add(org, _label(email, subject), role)
            except Conflict:
                raise Forbidden(f"{email!r} is already a member of {org.name!r} under another sign-in") from None
            await self._store.members.change(member.id, subject=subject, last_seen_at=utcnow())
        else:
            await self._store.members.change(known.id, subject=subject, role=role or known.role, last_seen_at=utcnow())
            member = known
        fresh = await self._store.members.get(member.id)
        assert fresh is not None
        return fresh

    # --- console sessions -------------------------------------------------------------------

    async def open_session(self, member: Member, ip: str | None = None, *, admin_token_id: str | None = None) -> str:
        """A new console session; returns the cookie's value (shown to the browser only).

        `admin_token_id`: the admin token it was opened with; the session ends with it (revoked,
        expired), so a console sign-in never outlives its credential."""
        token = random_token(43)
        now = utcnow()
        expires = now + self._session_ttl
        if admin_token_id is not None:
            credential = await self._store.admin_tokens.get(admin_token_id)
            if credential is None or credential.member_id != member.id:
                raise Unauthorized("invalid admin token")
            if credential.expires_at is not None:
                expires = min(expires, credential.expires_at)
        await self._store.console_sessions.add(ConsoleSession(
            digest=self._digest(token), member_id=member.id, created_at=now, expires_at=expires,
            ip=ip[:64] if ip else None, admin_token_id=admin_token_id,
        ))
        await self._store.console_sessions.sweep(now)
        return token

    async def session(self, token: str, ip: str | None = None) -> AdminPrincipal:
        if not _SESSION_PATTERN.fullmatch(token):
            raise Unauthorized("not signed in")
        row = await self._store.console_sessions.get(self._digest(token))
        if row is None or row.expires_at <= utcnow():
            raise Unauthorized("your session has ended; sign in again")
        if row.admin_token_id is not None:
            credential = await self._store.admin_tokens.get(row.admin_token_id)
            if credential is None or credential.revoked_at is not None:
                raise Unauthorized("the admin token you signed in with was revoked; sign in again")
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


def _label(email: str, subject: str) -> str:
    """What a member signing in for the first time is called: its email, else a safe label."""
    if _EMAIL.fullmatch(email):
        return email
    return "oidc-" + hashlib.sha256(subject.encode()).hexdigest()[:16]


def _check(email: str, role: str) -> None:
    if not _EMAIL.fullmatch(email):
        raise InvalidRequest("email must be an address like ana@example.com (or a name without spaces)")
    if role not in ROLE_NAMES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLE_NAMES)}")
