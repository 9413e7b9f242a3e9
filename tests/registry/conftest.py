"""Registry fixtures of this folder; the shared ones (``registry``, ``make_registry``,
``mlflow_server``, ``fast_http_failures``) are in ``tests/conftest.py``."""

from __future__ import annotations

import pytest

from registry.bundled import smollm2_path
from registry.store import Registry
from tests.conftest import MakeRegistry


@pytest.fixture(scope="module")
def smollm2_registry(
    make_registry: MakeRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Registry:
    """SmolLM2 registered once per module as route ``r``, version 1 at ``@champion``."""
    registry = make_registry(tmp_path_factory.mktemp("smollm2-registry"))
    registry.register_gguf(
        "r", smollm2_path(), params={"n_ctx": 512, "max_tokens": 12}, alias="champion"
    )
    return registry
