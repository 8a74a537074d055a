"""Connectors: an organization's credentials, given to the executions of the keys bound to them.

An admin gives the secret once (a file or stdin); it is sealed with the connectors key file
(connectors/keyring.py), bound to the connector's id, and no command or API shows it again.
`update` replaces it, `rotate_key` re-seals every connector under a new key. A job carries
only the ids of its key's connectors (`ConnectorBinding`): the secrets are opened on the node
that runs it, just before the sandbox starts, into the sandbox's variables, the runtime's
forwards and brokered hosts, and the values its output is redacted of (`RunConnectors`).
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..connectors import kinds
from ..connectors.keyring import Keyring
from ..connectors.redact import Redactor
from ..errors import Conflict, InvalidRequest, NotFound, SandboxdError
from ..ids import NAME_PATTERN, NAME_RULE, new_id
from ..runtime.network import BROKER_ENV_NAMES, Egress
from ..runtime.network.proxy import LISTEN
from ..store import Connector, DuplicateError, Org, Store, utcnow
from .keys import Principal

_NAME = NAME_PATTERN.strip("^$")


class ConnectorError(SandboxdError):
    """A connector could not be given to a run, or re-sealed; the message is safe to show."""


@dataclass(frozen=True)
class ConnectorBinding:
    """A connector bound to the calling key, as an execution job carries it (no secret)."""

    connector_id: str
    name: str
    kind: str
    variables: tuple[str, ...]
    #: When the connector last changed (its secret, hosts, ...): a persistent session started
    #: with an older version is not used again (service/sessions.py).
    version: str = ""

    @classmethod
    def of(cls, principal: Principal) -> tuple[ConnectorBinding, ...]:
        return tuple(
            cls(c.id, c.name, c.kind, tuple(kinds.variables(c.config)), c.updated_at.isoformat())
            for c in principal.connectors
        )

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind}


@dataclass
class RunConnectors:
    """What one execution gets from its connectors (service → runtime)."""

    env: dict[str, str]
    egress: Egress
    redactor: Redactor


def describe(connector: Connector) -> dict[str, Any]:
    """A connector as every surface shows it: never its secret."""
    config = dict(connector.config)
    return {
        "name": connector.name,
        "type": connector.kind,
        **{k: v for k, v in config.items() if k != "template"},
        **({"header_template": config["template"]} if "template" in config else {}),
        "created_at": connector.created_at.isoformat(),
        "updated_at": connector.updated_at.isoformat(),
    }


def usage(binding: ConnectorBinding) -> str:
    """How code uses a connector (for the MCP tool's description): names, never values."""
    names = ", ".join(binding.variables)
    if binding.kind == "http":
        return (f"{binding.name} (HTTP API): send ${names} as the credential; the platform puts the real "
                "secret in for its hosts only")
    if binding.kind in kinds.DATABASE_KINDS:
        return f"{binding.name} ({binding.kind} database): connect with {names}"
    return f"{binding.name} (environment): {names}"


class ConnectorService:
    def __init__(self, store: Store, keyring: Keyring, changed: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._keyring = keyring
        #: Keys' principals carry their connectors' names and variables: drop cached ones.
        self._changed = changed

    async def create(self, org: Org, name: str, kind: str, secret: bytes, options: kinds.Options) -> Connector:
        if not re.fullmatch(_NAME, name):
            raise InvalidRequest(f"connector name must be {NAME_RULE}")
        parsed = kinds.parse(kind, secret, options)
        now = utcnow()
        connector_id = new_id("con")
        with self._keyring.writing():
            connector = Connector(
                id=connector_id, org_id=org.id, name=name, kind=kind, config=parsed.config,
                sealed=self._seal(connector_id, parsed.secret), created_at=now, updated_at=now,
            )
            try:
                await self._store.connectors.add(connector)
            except DuplicateError:
                raise Conflict(f"connector {name!r} already exists") from None
        return connector

    async def update(self, org: Org, name: str, secret: bytes) -> Connector:
        """Replace the secret; the type and its options stay (a variable list follows the secret)."""
        connector = await self.get(org, name)
        config = connector.config
        options = kinds.Options(
            hosts=tuple(config["hosts"]), header=f"{config['header']}: {config['template']}",
            env_var=config["variables"][0],
        ) if connector.kind == "http" else kinds.Options()
        parsed = kinds.parse(connector.kind, secret, options)
        now = utcnow()
        with self._keyring.writing():
            await self._store.connectors.update(
                connector.id, config=parsed.config, sealed=self._seal(connector.id, parsed.secret), updated_at=now,
            )
        self._changed()
        return Connector(**{**connector.__dict__, "config": parsed.config, "updated_at": now})

    async def get(self, org: Org, name: str) -> Connector:
        connector = await self._store.connectors.by_name(org.id, name)
        if connector is None:
            raise NotFound(f"no connector {name!r}")
        return connector

    async def list(self, org: Org) -> builtins.list[Connector]:
        return await self._store.connectors.list(org.id)

    async def delete(self, org: Org, name: str) -> None:
        connector = await self.get(org, name)
        if not await self._store.connectors.delete_unbound(connector.id):
            keys = await self._store.connectors.bound_keys(connector.id)
            raise Conflict(f"connector {name!r} is bound to active API keys ({', '.join(keys)}); revoke them first")

    async def rotate_key(self) -> int:
        """A new key; every connector re-sealed under it in one transaction; the old key dropped.
        Returns how many connectors were re-sealed."""
        with self._keyring.rotation():
            rows = await self._store.connectors.all()
            self._keyring.begin_rotation()
            resealed: dict[str, bytes] = {}
            for row in rows:
                if self._open(row) is None:
                    raise ConnectorError(
                        f"connector {row.name!r} cannot be opened with the key file; nothing was changed "
                        "(restore the key file, or delete the connector)"
                    )
                resealed[row.id] = self._keyring.reseal(row.sealed)
            await self._store.connectors.reseal(resealed)
            self._keyring.end_rotation()
        return len(resealed)

    async def resolve(self, org: Org, names: Sequence[str]) -> builtins.list[Connector]:
        """`keys create --connector NAME` entries -> connectors; variables set twice are refused."""
        found: builtins.list[Connector] = []
        setters: dict[str, str] = {}
        for name in names:
            connector = await self._store.connectors.by_name(org.id, name)
            if connector is None:
                raise NotFound(f"no connector {name!r} in organization {org.name!r}")
            if any(c.id == connector.id for c in found):
                raise InvalidRequest(f"connector {name!r} is bound twice")
            for variable in kinds.variables(connector.config):
                if variable in setters:
                    raise Conflict(f"connectors {setters[variable]!r} and {name!r} both set {variable}; "
                                   "bind them to different keys")
                setters[variable] = name
            found.append(connector)
        if any(c.kind == "http" for c in found) and (taken := sorted(BROKER_ENV_NAMES & setters.keys())):
            raise Conflict(f"connector {setters[taken[0]]!r} sets {taken[0]}, which a brokered (http) connector's "
                           "network sets; bind them to different keys")
        return found

    async def open(self, bindings: Sequence[ConnectorBinding]) -> RunConnectors:
        """The run's part of its connectors, secrets opened; ConnectorError when one is gone or
        cannot be opened (the run does not start without it)."""
        env: dict[str, str] = {}
        forwards, brokered, secrets = [], [], []
        ports = {LISTEN[1]}
        for binding in bindings:
            row = await self._store.connectors.get(binding.connector_id)
            if row is None:
                raise ConnectorError(f"connector {binding.name!r} was deleted")
            secret = self._open(row)
            if secret is None:  # a rotation beside us may have re-sealed it since it was read
                again = await self._store.connectors.get(binding.connector_id)
                secret = self._open(again) if again is not None else None
            if secret is None:
                raise ConnectorError(
                    f"the secret of connector {row.name!r} cannot be opened (the connectors key file "
                    "is missing or was replaced?); update the connector with its secret"
                )
            parts = kinds.run_parts(row.name, row.kind, row.config, secret, ports)
            env |= parts.env
            forwards += parts.forwards
            brokered += parts.brokered
            secrets += parts.redact
        return RunConnectors(env, Egress(brokered=tuple(brokered), forwards=tuple(forwards)), Redactor(secrets))

    def _seal(self, connector_id: str, secret: dict[str, Any]) -> bytes:
        # Sealed with the connector's id: a row's secret copied onto another row does not open.
        return self._keyring.seal(json.dumps({"id": connector_id, "secret": secret}).encode())

    def _open(self, row: Connector) -> dict[str, Any] | None:
        opened = self._keyring.open(row.sealed)
        data = json.loads(opened) if opened is not None else None
        if not isinstance(data, dict) or data.get("id") != row.id:
            return None
        secret = data.get("secret")
        return secret if isinstance(secret, dict) else None
