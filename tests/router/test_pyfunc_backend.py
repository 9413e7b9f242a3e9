"""A generic MLflow chat pyfunc takes text messages only: the rest is refused, not dropped."""

from __future__ import annotations

from typing import Any

import pytest

from router.backends import ChatParams, PyfuncBackend, PyfuncSpec
from router.errors import InvalidRequest


def _backend(calls: list[tuple[list[dict[str, Any]], dict[str, Any]]]) -> PyfuncBackend:
    backend = PyfuncBackend(
        PyfuncSpec(name="chain", model_uri="models:/chain/1", system_prompt="Be kind.")
    )

    def predict(messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
        calls.append((messages, params))
        return "a fine answer"

    backend._predict = predict  # as start() would, without MLflow
    return backend


async def test_text_parts_are_joined_and_sampling_passed() -> None:
    calls: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
    backend = _backend(calls)
    try:
        parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]
        params = ChatParams(
            messages=[{"role": "user", "content": parts, "name": "ann"}], top_p=0.5, seed=3
        )
        done = await backend.complete(params)
        assert done.text == "a fine answer"
        messages, sampling = calls[-1]
        assert messages == [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "hello\nthere", "name": "ann"},
        ]
        assert (sampling["top_p"], sampling["seed"]) == (0.5, 3)
        assert done.usage.prompt_tokens == 4
    finally:
        await backend.aclose()


@pytest.mark.parametrize(
    ("messages", "options", "param"),
    [
        ([{"role": "user", "content": "hi"}], {"tools": []}, "tools"),
        (
            [{"role": "user", "content": "hi"}],
            {"response_format": {"type": "json_object"}},
            "response_format",
        ),
        ([{"role": "user", "content": "hi"}], {"n": 2}, "n"),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
            ],
            {},
            "messages.1.tool_calls",
        ),
        ([{"role": "tool", "content": "42", "tool_call_id": "c"}], {}, "messages.0.tool_call_id"),
        ([{"role": "tool", "content": "42"}], {}, "messages.0.role"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            {},
            "messages.0.content.0",
        ),
    ],
)
async def test_what_a_pyfunc_cannot_take_is_refused(
    messages: list[dict[str, Any]], options: dict[str, Any], param: str
) -> None:
    calls: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
    backend = _backend(calls)
    try:
        for streamed in (False, True):
            with pytest.raises(InvalidRequest) as caught:
                params = ChatParams(messages=messages, options=options)
                if streamed:
                    _ = [d async for d in backend.stream(params)]
                else:
                    await backend.complete(params)
            assert caught.value.param == param and caught.value.status_code == 400
        assert calls == []
    finally:
        await backend.aclose()
