"""Schemathesis over the router's own OpenAPI spec: generated inputs, valid and not, on
every operation of a real router (fake routes, SQLite), and never a server error.

Bounded (``MAX_EXAMPLES`` per operation, no shrinking past a failure's first example) so
it runs in CI in well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from router.app import create_app
from router.config import Settings
from tests.conftest import fake_routes
from tests.servers import ServerThread

ADMIN = "fuzz-token"
MAX_EXAMPLES = 50


def _settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        routes=fake_routes(),
        admin_token=ADMIN,
        allow_arm_override=True,
        ui_enabled=False,
        log_format="text",
    )


# The spec comes from the app object (building it starts nothing); the calls go to a
# real router. (``schemathesis.pytest.from_fixture`` breaks on pytest 9: it sets
# ``node._nodeid``.)
schema = schemathesis.openapi.from_dict(create_app(_settings(Path("unused"))).openapi())


@pytest.fixture(scope="module")
def router_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ServerThread(create_app(_settings(tmp_path_factory.mktemp("fuzz")))).start()
    try:
        yield server.url
    finally:
        server.stop()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the first 5xx is reported as is
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any, router_url: str) -> None:
    """Any input, with or without the admin token: a 2xx or a 4xx, never a 5xx."""
    response = case.call(
        base_url=router_url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30
    )
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
        f"\nreproduce: {case.as_curl_command()}"
    )
