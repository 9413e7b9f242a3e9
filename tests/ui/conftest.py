"""UI fixtures: a real router with fake arms on loopback, and a ``RouterClient`` on it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
import pytest_asyncio
from fastapi import FastAPI

from router.backends import ChatParams, Completion, Delta
from router.backends.fake import FakeBackend
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


@pytest.fixture
def fakes_answer_with(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``fakes_answer_with(tools=[...])`` or ``(response_format={...})``: from then on the
    fake models (only the one named ``only``, if given) answer every request as if the
    client had sent those options (a tool call, JSON), although the UI sends none."""

    def answer_with(only: str | None = None, **options: Any) -> None:
        complete, stream = FakeBackend.complete, FakeBackend.stream

        def asked(backend: FakeBackend, params: ChatParams) -> ChatParams:
            if only is not None and backend.spec.name != only:
                return params
            return dataclasses.replace(params, options={**params.options, **options})

        async def complete_with(self: FakeBackend, params: ChatParams) -> Completion:
            return await complete(self, asked(self, params))

        def stream_with(self: FakeBackend, params: ChatParams) -> AsyncIterator[Delta]:
            return stream(self, asked(self, params))

        monkeypatch.setattr(FakeBackend, "complete", complete_with)
        monkeypatch.setattr(FakeBackend, "stream", stream_with)

    return answer_with
