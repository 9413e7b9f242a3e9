"""UI fixtures: a real router with fake arms on loopback, and a ``RouterClient`` on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
import pytest_asyncio
from fastapi import FastAPI

from router.config import Settings
from tests.servers import ServerThread
from ui.client import RouterClient

TOKEN = "ui-test-admin-token"
Running = tuple[ServerThread, FastAPI]


@pytest.fixture
def ui_router(
    make_settings: Callable[..., Settings],
    run_router: Callable[..., AbstractContextManager[Running]],
) -> Iterator[Running]:
    """Route ``chat`` (fake champion v1 echoing, fake challenger v2), 50/50, an admin
    token; no mounted UI: the handlers under test call the router over HTTP."""
    with run_router(make_settings(admin_token=TOKEN, ui_enabled=False)) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="function")
async def client(ui_router: Running) -> AsyncIterator[RouterClient]:
    """A client of ``ui_router``, opened and closed on the test's own event loop."""
    router = RouterClient(ui_router[0].url)
    yield router
    await router.aclose()


def text_of(*outputs: Any) -> str:
    """Everything a handler returned, as one string (to look for leaks and messages)."""
    return " ".join(repr(o) for o in outputs)
