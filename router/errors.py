"""Every error the router raises, mapped to HTTP once, at the edge (``router.api.errors``).

::

    CanaryError
    ├── ClientError                 4xx: the caller can fix it
    │   ├── InvalidRequest          400 invalid_request_error
    │   ├── ContextLengthExceeded   400 context_length_exceeded
    │   ├── Unauthorized            401
    │   ├── Forbidden               403
    │   ├── NotFound                404 (unknown request id, ...)
    │   │   └── RouteNotFound       404 model_not_found
    │   ├── Conflict                409
    │   └── PayloadTooLarge         413
    ├── BackendError                502: the model behind an arm failed
    │   └── BackendTimeout          504: ... or did not answer in time
    └── ServerShuttingDown          503: cut at the end of the shutdown grace period

The body of every error response has OpenAI's shape
``{"error": {"message": ..., "type": ..., "code": ...}}``.
"""

from __future__ import annotations


class CanaryError(Exception):
    """Base of the tree; ``status_code``, ``type`` and ``code`` describe the HTTP answer."""

    status_code = 500
    type = "server_error"
    code: str | None = None
    #: Set once the request is logged, so the error response can name its row.
    request_id: str | None = None

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def body(self) -> dict[str, dict[str, str | None]]:
        """OpenAI's error shape."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


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
    """No or wrong admin token."""

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


class PayloadTooLarge(ClientError):
    """The request body is larger than ``max_body_bytes``."""

    status_code = 413
    code = "payload_too_large"


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
