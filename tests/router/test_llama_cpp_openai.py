"""OpenAI's chat options on the real bundled SmolLM2 (llama.cpp): passed on, or a 400.

The model tests go through the router with the OpenAI SDK; the helpers that split tool
calls out of the model's text are tested on their own, without a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from router.app import create_app
from router.backends import LlamaCppSpec
from router.backends.llama_cpp.messages import template_messages
from router.backends.llama_cpp.tools import ToolCallScanner, parse_tool_calls
from router.config import RouteConfig, Settings
from router.errors import InvalidRequest
from tests.servers import ServerThread
from tests.tools import WEATHER_TOOL as WEATHER

model = pytest.mark.model

PERSON: Any = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
FORCE_WEATHER: Any = {"type": "function", "function": {"name": "get_weather"}}
ASK_WEATHER: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """Route "smol": SmolLM2 at temperature 0; "smol-logprobs": the same with logits_all;
    "smol-fc": with llama-cpp-python's chatml-function-calling handler (not a template)."""

    def spec(name: str, **more: Any) -> LlamaCppSpec:
        return LlamaCppSpec(
            name=name, version="bundled", gguf="bundled:smollm2", n_ctx=512, temperature=0, **more
        )

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("smol-openai"),
        routes={
            "smol": RouteConfig(champion=spec("smollm2")),
            "smol-logprobs": RouteConfig(champion=spec("smollm2-logprobs", logits_all=True)),
            "smol-fc": RouteConfig(
                champion=spec("smollm2-fc", chat_format="chatml-function-calling")
            ),
        },
        log_format="text",
    )
    server = ServerThread(create_app(settings)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(smol: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{smol.url}/v1", api_key="unused", max_retries=0)


def _refused(client: openai.OpenAI, param: str, **kwargs: Any) -> str:
    """The 400's message; it names ``param``."""
    kwargs.setdefault("model", "smol")
    kwargs.setdefault("messages", ASK_WEATHER)
    kwargs.setdefault("max_tokens", 4)
    with pytest.raises(openai.BadRequestError) as caught:
        response = client.chat.completions.create(**kwargs)
        if kwargs.get("stream"):
            list(response)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param, error
    return str(error["message"])


# -- response_format -------------------------------------------------------------------
@model
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answer_parses(client: openai.OpenAI, stream: bool) -> None:
    kwargs: Any = {
        "model": "smol",
        "messages": [{"role": "user", "content": "Describe Ann, who is 30 years old."}],
        "max_tokens": 60,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
    }
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client.chat.completions.create(**kwargs).choices[0].message.content or ""
    person = json.loads(text)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


@model
def test_json_schema_llama_cpp_cannot_use_is_a_400(client: openai.OpenAI) -> None:
    bad = {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}
    message = _refused(
        client,
        "response_format.json_schema.schema",
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}},
    )
    assert "grammar" in message


# -- tools -----------------------------------------------------------------------------
@model
def test_forced_tool_call_then_its_result_gets_a_text_answer(client: openai.OpenAI) -> None:
    called = client.chat.completions.create(
        model="smol",
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice=FORCE_WEATHER,
        max_tokens=40,
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)

    conversation: Any = [
        *ASK_WEATHER,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "22 C and sunny"},
    ]
    answered = client.chat.completions.create(
        model="smol",
        messages=conversation,
        tools=[WEATHER],
        max_tokens=30,
    )
    assert answered.choices[0].message.tool_calls is None
    assert (answered.choices[0].message.content or "").strip()
    assert answered.usage is not None and called.usage is not None
    # The call and its result are in the prompt the model read.
    assert answered.usage.prompt_tokens > called.usage.prompt_tokens + 10


@model
def test_forced_tool_call_streams_name_then_arguments(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="smol",
            messages=ASK_WEATHER,
            tools=[WEATHER],
            tool_choice=FORCE_WEATHER,
            max_tokens=40,
            stream=True,
        )
    )
    pieces = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    head, rest = pieces[0], pieces[1:]
    assert head.id and head.function and head.function.name == "get_weather"
    assert rest and all(p.index == 0 and not p.id for p in rest)
    arguments = "".join((p.function.arguments or "") for p in pieces if p.function)
    assert isinstance(json.loads(arguments)["city"], str)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


@model
def test_tool_options_llama_cpp_cannot_honour_are_400s(client: openai.OpenAI) -> None:
    message = _refused(
        client,
        "response_format",
        tools=[WEATHER],
        response_format={"type": "json_object"},
    )
    assert "smollm2" in message and "tool_choice" in message
    _refused(
        client,
        "tool_choice",
        tools=[WEATHER],
        tool_choice=FORCE_WEATHER | {"function": {"name": "nowhere"}},
    )
    _refused(client, "functions", extra_body={"functions": [WEATHER["function"]]})
    # A whole chat handler that does not name a field would drop it: refused instead.
    message = _refused(client, "logit_bias", model="smol-fc", logit_bias={"1": 1.0})
    assert "chatml-function-calling" in message


@model
@pytest.mark.parametrize("stream", [False, True])
def test_a_whole_chat_handlers_tool_calls_are_relayed(client: openai.OpenAI, stream: bool) -> None:
    """chat_format chatml-function-calling makes the calls itself; they come out as
    OpenAI's (id, type and name once, in a call's first piece)."""
    kwargs: Any = {
        "model": "smol-fc",
        "messages": [{"role": "system", "content": "You help."}, *ASK_WEATHER],
        "tools": [WEATHER],
        "tool_choice": FORCE_WEATHER,
        "max_tokens": 40,
    }
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        pieces = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
        assert pieces[0].id and pieces[0].function and pieces[0].function.name == "get_weather"
        assert all(not p.id and not (p.function and p.function.name) for p in pieces[1:])
        arguments = "".join((p.function.arguments or "") for p in pieces if p.function)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        [call] = choice.message.tool_calls or []
        assert isinstance(call, ChatCompletionMessageFunctionToolCall)
        assert call.function.name == "get_weather"
        arguments, finish = call.function.arguments, choice.finish_reason
    assert isinstance(json.loads(arguments)["city"], str)
    assert finish == "tool_calls"


# -- logprobs --------------------------------------------------------------------------
@model
def test_logprobs_with_logits_all(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="smol-logprobs",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    entries = logprobs.content
    assert entries and completion.usage is not None
    assert len(entries) == completion.usage.completion_tokens
    assert "".join(e.token for e in entries) == completion.choices[0].message.content
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob

    streamed = list(
        client.chat.completions.create(
            model="smol-logprobs",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            logprobs=True,
            stream=True,
        )
    )
    tokens = [
        e.token
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content or []
    ]
    assert "".join(tokens) == "".join(
        c.choices[0].delta.content or "" for c in streamed if c.choices
    )


@model
def test_logprobs_without_logits_all_is_a_400_saying_how(client: openai.OpenAI) -> None:
    message = _refused(client, "logprobs", logprobs=True)
    assert "smollm2" in message and "logits_all" in message


# -- sampling, n, refusals -------------------------------------------------------------
@model
def test_penalties_logit_bias_and_seed(client: openai.OpenAI) -> None:
    hi: Any = [{"role": "user", "content": "Hi"}]

    def ask(**kwargs: Any) -> str:
        kwargs.setdefault("max_tokens", 6)
        answer = client.chat.completions.create(model="smol", messages=hi, **kwargs)
        return answer.choices[0].message.content or ""

    greedy = ask()
    assert ask(presence_penalty=1.5, frequency_penalty=1.0)
    # Banning the greedy answer's first token changes the answer.
    from llama_cpp import Llama

    from registry.bundled import smollm2_path

    vocab = Llama(model_path=str(smollm2_path()), vocab_only=True, verbose=False)
    first = vocab.tokenize(greedy.encode(), add_bos=False)[0]
    vocab.close()
    assert ask(logit_bias={str(first): -100}) != greedy

    # The same seed samples the same answer at temperature 1. (The first of the row may
    # differ: a prompt llama.cpp has cached is re-evaluated in a smaller batch, whose
    # logits round differently.)
    seeded = [ask(temperature=1.0, seed=1234, max_tokens=10) for _ in range(3)]
    assert seeded[1] == seeded[2]


@model
def test_n_choices_whole_and_refused_streamed(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=6,
        temperature=1.0,
        n=2,
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.content for c in completion.choices)
    assert completion.usage is not None and 2 <= completion.usage.completion_tokens <= 12
    message = _refused(client, "n", n=2, stream=True)
    assert "smollm2" in message


@model
def test_unknown_option_and_image_are_400s(client: openai.OpenAI) -> None:
    message = _refused(client, "foo", extra_body={"foo": 1})
    assert "'foo'" in message and "smollm2" in message
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    _refused(
        client,
        "messages.0.content.1",
        messages=[{"role": "user", "content": [{"type": "text", "text": "What?"}, image]}],
    )
    # Fields that do not change the answer are accepted.
    assert client.chat.completions.create(
        model="smol", messages=ASK_WEATHER, max_tokens=2, metadata={"team": "a"}, store=False
    ).choices


# -- without a model: tool calls in the model's text -----------------------------------
def test_scanner_holds_back_what_may_open_a_tool_call() -> None:
    scanner = ToolCallScanner()
    shown = [
        scanner.feed(p) for p in ["Sure", " <tool", "_ca", "ll>\n{", '"name": "get_weather", ']
    ]
    shown.append(scanner.feed('"arguments": {"city": "Oslo"}}\n</tool_call>\nDone.'))
    assert shown == ["Sure", " ", "", "", "", ""]
    calls, rest = scanner.finish([WEATHER["function"]])
    assert calls == [("get_weather", '{"city": "Oslo"}')]
    assert rest == "Done."


def test_scanner_gives_back_text_that_is_not_a_call() -> None:
    scanner = ToolCallScanner()
    assert scanner.feed("a <b") == "a <b"
    assert scanner.feed(" <") == " "
    assert scanner.feed("tool_call>{not json") == ""
    assert scanner.finish([WEATHER["function"]]) == ([], "<tool_call>{not json")
    assert scanner.feed("") == ""
    # An unknown function is text too; an unclosed last call (a stop string) is a call.
    assert parse_tool_calls('<tool_call>{"name": "other", "arguments": {}}', {"f"}) is None
    assert parse_tool_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}', {"f"}) == (
        [("f", '{"x": 1}')],
        "",
    )


def test_tool_turns_become_text_any_template_renders() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    messages = template_messages(
        [
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": "Weather in Oslo and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [call, call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "5 C"},
            {"role": "tool", "tool_call_id": "call_1", "content": "20 C"},
        ],
        model="m",
        tools=[WEATHER["function"]],
        parallel=False,
    )
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Be brief.\n\n# Tools")
    assert "Call at most one function." in messages[0]["content"]
    assert (
        messages[2]["content"].count('{"name": "get_weather", "arguments": {"city": "Oslo"}}') == 2
    )
    assert messages[3]["content"] == (
        "<tool_response>\n5 C\n</tool_response>\n<tool_response>\n20 C\n</tool_response>"
    )
    with pytest.raises(InvalidRequest) as caught:
        template_messages(
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
            model="m",
            tools=[],
        )
    assert caught.value.param == "messages.0.content.0"


@model
def test_required_tool_choice_with_one_call_at_most(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="smol",
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=48,
    )
    choice = response.choices[0]
    calls = choice.message.tool_calls or []
    assert choice.finish_reason == "tool_calls" and len(calls) == 1
    call = calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)


@model
def test_llama_cpp_sampler_fields_from_extra_body_are_used(client: openai.OpenAI) -> None:
    ask: Any = [{"role": "user", "content": "Say the word cat five times: cat cat"}]

    def answer(**extra: Any) -> str:
        response = client.chat.completions.create(
            model="smol", messages=ask, max_tokens=12, extra_body=extra
        )
        return response.choices[0].message.content or ""

    plain = answer()
    assert answer(top_k=1, min_p=0.05) == plain  # greedy already: the same answer
    assert answer(repeat_penalty=2.0) != plain  # used: repeating "cat" now costs
