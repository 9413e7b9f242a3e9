"""Scoped MLflow tracking/registry URIs for the few MLflow APIs that only read the globals.

``MlflowClient`` takes its URIs as arguments, and the registry uses it for everything it
can. Two things still read MLflow's process-wide settings: the fluent ``log_model`` (and
the model registration it performs) and ``models:/`` URI resolution inside
``mlflow.pyfunc.load_model``. ``mlflow_uris`` sets both URIs for the duration of such a
call and puts back exactly what was there, environment variables included
(``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI``). A lock serialises the
scopes, so two ``Registry`` objects in one process never see each other's URIs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

_LOCK = threading.RLock()
_ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def mlflow_uris(tracking_uri: str, registry_uri: str | None = None) -> Iterator[None]:
    """Run a block with MLflow's global tracking and registry URIs set, then restore them."""
    with _LOCK:
        # Module globals, read directly: get_tracking_uri() would return the resolved
        # default, and setting that back would pin it where nothing was set before.
        old_tracking = tracking_utils._tracking_uri
        old_registry = registry_utils._registry_uri
        old_env = {name: os.environ.get(name) for name in _ENV_VARS}
        try:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(registry_uri or tracking_uri)
            yield
        finally:
            mlflow.set_tracking_uri(old_tracking)  # type: ignore[arg-type]  # None unsets
            registry_utils._registry_uri = old_registry
            for name, value in old_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
