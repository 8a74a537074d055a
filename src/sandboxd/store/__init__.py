"""Persistence: SQLAlchemy Core tables, repositories and Alembic migrations."""

from .db import create_engine, migrate, utcnow
from .records import (
    AdminToken,
    ApiKey,
    AuditHead,
    AuditRow,
    ConsoleSession,
    Connector,
    Execution,
    Image,
    Member,
    Org,
    Plan,
    Sandbox,
    StorageBinding,
    StorageConnection,
    Thread,
    ThreadSession,
    Usage,
    Volume,
    VolumeBinding,
    WebhookDelivery,
)
from .base import DuplicateError
from .plans import PlanExists
from .repos import Store

__all__ = [
    "AdminToken",
    "ApiKey",
    "AuditHead",
    "AuditRow",
    "ConsoleSession",
    "Connector",
    "DuplicateError",
    "Execution",
    "Image",
    "Member",
    "Org",
    "Plan",
    "PlanExists",
    "Sandbox",
    "StorageBinding",
    "StorageConnection",
    "Store",
    "Thread",
    "ThreadSession",
    "Usage",
    "Volume",
    "VolumeBinding",
    "WebhookDelivery",
    "create_engine",
    "migrate",
    "utcnow",
]
