"""The domain: executions, keys, tenancy, admission. Every surface calls into here."""

from ..runtime import Runner
from .admission import ConcurrencyLimiter
from .executions import ExecutionService
from .job import ExecutionJobs, JobDescription, Outcome, Submission
from .keys import CreatedKey, KeyService, Principal, load_or_create_secret
from .lockout import AuthFailureLimiter
from .ports import Admission, EventLogs, ThreadLock
from .requests import ExecuteRequest, parse_execute_request, validation_message
from .tenancy import SandboxConfig, TenancyService
from .threads import ThreadLocks, ThreadPolicy, ThreadService
from .url_guard import UrlGuard
from .volumes import VolumeAccess, VolumeService
from .webhooks import WebhookService

__all__ = [
    "Admission",
    "AuthFailureLimiter",
    "ConcurrencyLimiter",
    "CreatedKey",
    "EventLogs",
    "ExecuteRequest",
    "ExecutionJobs",
    "ExecutionService",
    "JobDescription",
    "KeyService",
    "Outcome",
    "Principal",
    "Runner",
    "SandboxConfig",
    "Submission",
    "TenancyService",
    "ThreadLock",
    "ThreadLocks",
    "ThreadPolicy",
    "ThreadService",
    "UrlGuard",
    "VolumeAccess",
    "VolumeService",
    "WebhookService",
    "load_or_create_secret",
    "parse_execute_request",
    "validation_message",
]
