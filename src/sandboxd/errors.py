"""The exceptions the service layer raises; every surface maps them once.

    SandboxdError                 base; carries the spec's error code
    ├── InvalidRequest            400 validation_error
    │   └── ImageError            an image that cannot be imported, pulled, built or unpacked
    ├── PayloadTooLarge           413 payload_too_large
    ├── Unauthorized              401 unauthorized
    ├── Forbidden                 403 forbidden
    ├── NotFound                  404 not_found
    ├── Conflict                  409 conflict
    ├── RateLimited               429 rate_limited (retry_after seconds)
    ├── Unavailable               503 unavailable
    └── SandboxSetupError         500 sandbox_error: a sandbox layer failed to set up (fail closed)

A failure in the user's own code is never an exception: it is an execution result.
"""

from __future__ import annotations


class SandboxdError(Exception):
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(SandboxdError):
    code = "validation_error"


class ImageError(InvalidRequest):
    """An image is untrusted input: a bad one is the caller's to fix (what and why is said)."""


class PayloadTooLarge(SandboxdError):
    code = "payload_too_large"


class Unauthorized(SandboxdError):
    code = "unauthorized"


class Forbidden(SandboxdError):
    code = "forbidden"


class NotFound(SandboxdError):
    code = "not_found"


class Conflict(SandboxdError):
    code = "conflict"


class RateLimited(SandboxdError):
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class Unavailable(SandboxdError):
    code = "unavailable"


class SandboxSetupError(SandboxdError):
    """A sandbox layer could not be set up; the execution is refused, never run weaker."""

    code = "sandbox_error"

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"sandbox setup failed at {step}: {detail}")
        self.step = step
