"""Every error the router raises, mapped to HTTP once, at the edge (``router.api.errors``).

::

    CanaryError
    ├── ClientError                 4xx: the caller can fix it
    │   ├── InvalidRequest          400 invalid_request_error
    │   ├── InvalidJSON             400 invalid_json
    │   ├── ContextLengthExceeded   400 context_length_exceeded
    │   ├── Unauthorized            401
    │   ├── Forbidden               403
    │   ├── NotFound                404 (unknown request id, ...)
    │   │   └── RouteNotFound       404 model_not_found
    │   ├── Conflict                409
    │   ├── RateLimited             429 rate_limit_exceeded (with Retry-After)
    │   ├── RequestTimeout          408 request_timeout: the body did not arrive in time
    │   ├── PayloadTooLarge         413
    │   └── ClientDisconnected      499 client_disconnected: the body was abandoned
    ├── DatabaseUnavailable         503 database_unavailable (with Retry-After)
    ├── ServerShuttingDown          503 server_shutting_down: cut at the end of the grace
    └── BackendError                502: the model behind an arm failed
        └── BackendTimeout          504: ... or did not answer in time

The body of every error response has OpenAI's shape
``{"error": {"message": ..., "type": ..., "code": ..., "param": ...}}``; ``param`` names the
field at fault when one is known (``messages.0.content``), else null.
"""

from __future__ import annotations

import math


class CanaryError(Exception):
    """Base of the tree; ``status_code``, ``type`` and ``code`` describe the HTTP answer."""

    status_code = 500
    type = "server_error"
    code: str | None = None
    #: Set once the request is logged, so the error response can name its row.
    request_id: str | None = None

    #: Extra response headers (``Retry-After``, ...).
    headers: dict[str, str] = {}

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, dict[str, str | None]]:
        """OpenAI's error shape."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }


class ClientError(CanaryError):
    """Something in the request is wrong; the message says what."""

    status_code = 400
    type = "invalid_request_error"


class InvalidRequest(ClientError):
    """The body is malformed or a value is out of range."""

    code = "invalid_request"


class ContextLengthExceeded(ClientError):
    """The prompt (plus the requested completion) does not fit the model's context."""

    code = "context_length_exceeded"


class Unauthorized(ClientError):
    """No API key or admin token where one is needed, or one nobody issued."""

    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ClientError):
    """The call is not allowed here (e.g. admin API disabled)."""

    status_code = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(ClientError):
    """A referenced object does not exist."""

    status_code = 404
    type = "not_found_error"
    code = "not_found"


class RouteNotFound(NotFound):
    """The ``model`` the client asked for is not a route of this router."""

    code = "model_not_found"


class Conflict(ClientError):
    """The request conflicts with the current state."""

    status_code = 409
    code = "conflict"


class RateLimited(ClientError):
    """The client's key is over its requests or tokens per minute; retry after a while."""

    status_code = 429
    type = "requests"  # OpenAI's type for rate limits
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        self.headers = {"retry-after": str(self.retry_after_s)}


class InvalidJSON(ClientError):
    """The body is not JSON the router can parse: bad syntax, bad UTF-8, nested too deep."""

    code = "invalid_json"


class RequestTimeout(ClientError):
    """The request body did not arrive within ``body_timeout_s``."""

    status_code = 408
    code = "request_timeout"


class PayloadTooLarge(ClientError):
    """The request body is larger than ``max_body_bytes``."""

    status_code = 413
    code = "payload_too_large"


class ClientDisconnected(ClientError):
    """The client went away before sending its whole body; nobody reads the answer."""

    status_code = 499  # nginx's "client closed request"
    code = "client_disconnected"


class DatabaseUnavailable(CanaryError):
    """The database cannot be reached (down, restarting, connection lost); retry later."""

    status_code = 503
    type = "server_error"
    code = "database_unavailable"
    retry_after_s = 5
    headers = {"retry-after": str(retry_after_s)}


class BackendError(CanaryError):
    """The model behind an arm failed to answer."""

    status_code = 502
    type = "backend_error"
    code = "backend_error"


class BackendTimeout(BackendError):
    """The model behind an arm did not answer within ``request_timeout_s``."""

    status_code = 504
    type = "timeout"
    code = "timeout"


class ServerShuttingDown(CanaryError):
    """The router is stopping and the request was still running when its grace ran out."""

    status_code = 503
    type = "server_error"
    code = "server_shutting_down"
