"""Fixtures shared by the router's HTTP tests; each module gives its own ``settings``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from router.config import Settings
from tests.servers import ServerThread

Running = tuple[ServerThread, FastAPI]


@pytest.fixture
def running(settings: Settings, run_router: Callable[..., Any]) -> Iterator[Running]:
    with run_router(settings) as running:
        yield running


@pytest.fixture
def http(running: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running[0].url, timeout=30) as client:
        yield client
