"""Bounded MLflow REST calls for callers that must answer quickly, such as the router's
alias polling.

MLflow's REST client retries a failed request with exponential backoff
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``: 7, ``MLFLOW_HTTP_REQUEST_TIMEOUT``: 120 s), so one
registry read against a dead server takes minutes. Those variables are process-wide,
and other MLflow use in the process (registration, artifact downloads) wants the
patient defaults, so the bound is scoped instead: inside ``bounded_http(timeout_s)``,
REST calls made *by this thread or task* try once with that timeout; everywhere else
MLflow behaves as configured.

How: ``mlflow.utils.rest_utils.call_endpoint`` (every tracking and registry REST call)
looks ``http_request`` up in its module at call time; it is wrapped once to take
``max_retries`` and ``timeout`` from a context variable when one is set. Artifact
downloads import ``http_request`` by name, so they are not affected.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from mlflow.utils import rest_utils

__all__ = ["bounded_http"]

#: (max_retries, timeout_s) for REST calls in this context; None: MLflow's defaults.
_BOUND: ContextVar[tuple[int, float] | None] = ContextVar("mlflow_http_bound", default=None)
_install_lock = threading.Lock()


def _install() -> None:
    """Wrap ``rest_utils.http_request`` once per process."""
    with _install_lock:
        original = rest_utils.http_request
        if getattr(original, "_canary_bounded", False):
            return

        @functools.wraps(original)
        def http_request(*args: Any, **kwargs: Any) -> Any:
            bound = _BOUND.get()
            if bound is not None:
                max_retries, timeout_s = bound
                # Explicit arguments from MLflow itself win; only its defaults are bounded.
                if kwargs.get("max_retries") is None:
                    kwargs["max_retries"] = max_retries
                if kwargs.get("timeout") is None:
                    kwargs["timeout"] = timeout_s
            return original(*args, **kwargs)

        http_request._canary_bounded = True  # type: ignore[attr-defined]
        rest_utils.http_request = http_request


@contextmanager
def bounded_http(timeout_s: float, *, max_retries: int = 0) -> Iterator[None]:
    """MLflow REST calls in this block: ``max_retries`` retries, ``timeout_s`` each."""
    _install()
    token = _BOUND.set((max_retries, timeout_s))
    try:
        yield
    finally:
        _BOUND.reset(token)
