"""Errors the SDK raises, one class per kind of API error."""

from __future__ import annotations

from typing import Any


class GureumError(Exception):
    def __init__(
        self, message: str, *, status: int = 0, code: str = "error", details: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details


class ConnectionFailed(GureumError):
    pass


class BadRequestError(GureumError):
    pass


class UnauthorizedError(GureumError):
    pass


class ForbiddenError(GureumError):
    pass


class NotFoundError(GureumError):
    pass


class ConflictError(GureumError):
    pass


class PayloadTooLargeError(GureumError):
    pass


class RateLimitedError(GureumError):
    pass


class ServerError(GureumError):
    pass


_BY_STATUS: dict[int, type[GureumError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    429: RateLimitedError,
}


def error_for(status: int, body: Any) -> GureumError:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message, code, details = str(err.get("message")), str(err.get("code")), err.get("details")
    else:
        message, code, details = f"HTTP {status}", "error", body
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else GureumError)
    return cls(message, status=status, code=code, details=details)
