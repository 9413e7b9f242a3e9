"""The blind arena against a real router: shuffled sides, nothing revealed before the vote,
rows logged like any request, the vote stored and counted, streaming, every 4xx."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, func, select

from router.backends import ChatParams, Completion, Delta, FakeSpec
from router.backends.fake import FakeBackend
from router.config import RouteConfig, Settings
from router.evaluation.aggregate import aggregate
from router.inference_log.crud import BATTLES, VOTES
from tests.conftest import fake_routes
from tests.servers import ServerThread
from tests.tools import WEATHER_TOOL

Running = tuple[ServerThread, FastAPI]
TOKEN = "arena-admin-token"
CANNED = "This is a canned answer from the fake backend."
PROMPT = "please repeat these words back to me"
#: Strings that would tell a client which arm answered.
GIVEAWAYS = ("champion", "challenger", "fake-", "chatcmpl-", '"arm"', '"model"', '"version"')


def arena_routes() -> dict[str, RouteConfig]:
    """``chat``: champion echoes (v1), challenger canned (v2); ``flaky``: its challenger
    always fails; ``slow``: both stream ~40 words/s; ``solo``: no challenger."""
    slow = {"tokens_per_s": 40}
    return {
        **fake_routes(),
        "flaky": fake_routes(challenger={"error_rate": 1.0})["chat"],
        "slow": fake_routes(
            champion=slow, challenger={**slow, "text": "one two three four five six seven"}
        )["chat"],
        "solo": RouteConfig(champion=FakeSpec(name="solo-model", version="7")),
    }


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("fresh_postgres_url") if request.param == "postgres" else None


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(routes=arena_routes(), admin_token=TOKEN)


def start(http: httpx.Client, route: str = "chat", **body: Any) -> httpx.Response:
    body = {"route": route, "messages": [{"role": "user", "content": PROMPT}], **body}
    return http.post("/v1/arena/battles", json=body)


def battle(http: httpx.Client, route: str = "chat", **body: Any) -> dict[str, Any]:
    r = start(http, route, **body)
    assert r.status_code == 201, r.text
    return r.json()


def champion_side(b: dict[str, Any]) -> str:
    """Which side the echoing champion answered, told from the contents alone."""
    contents = (b["a"]["content"], b["b"]["content"])
    assert sorted(contents, key=str) == sorted([PROMPT, CANNED], key=str), contents
    return "a" if contents[0] == PROMPT else "b"


def vote(http: httpx.Client, battle_id: str, winner: str, **extra: Any) -> httpx.Response:
    return http.post(f"/v1/arena/battles/{battle_id}/vote", json={"winner": winner, **extra})


def stored(settings: Settings, table: Any) -> list[dict[str, Any]]:
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(table)).mappings()]
    finally:
        engine.dispose()


def sse(text: str) -> list[Any]:
    """The ``data:`` payloads of an event stream, ``[DONE]`` kept as a string."""
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def counter(app: FastAPI, name: str, **labels: str) -> float:
    return app.state.metrics.registry.get_sample_value(name, labels) or 0.0


# -- a battle, blind ----------------------------------------------------------------------


def test_battle_answers_blind_then_the_vote_reveals_and_is_counted(
    make_settings: Callable[..., Settings], run_router: Callable[..., Any], database_url: str | None
) -> None:
    settings = make_settings(routes=arena_routes(), database_url=database_url)
    with run_router(settings) as (server, app), httpx.Client(base_url=server.url) as http:
        r = start(http, user="reviewer-1")
        assert r.status_code == 201, r.text
        body = r.json()
        assert set(body) == {"battle_id", "route", "created_at", "turn", "a", "b"}
        assert body["turn"] == 1
        assert (
            set(body["a"])
            == set(body["b"])
            == {
                "content",
                "finish_reason",
                "error",
                "tool_calls",
            }
        )
        assert body["a"]["tool_calls"] is None and body["b"]["tool_calls"] is None
        for giveaway in GIVEAWAYS:
            assert giveaway not in r.text
        assert body["route"] == "chat"
        assert body["a"]["error"] is None and body["b"]["error"] is None
        assert body["a"]["finish_reason"] == body["b"]["finish_reason"] == "stop"
        champion = champion_side(body)
        challenger = "b" if champion == "a" else "a"

        r = vote(http, body["battle_id"], champion)
        assert r.status_code == 200, r.text
        reveal = r.json()
        assert reveal["battle_id"] == body["battle_id"]
        assert (reveal["winner"], reveal["winner_arm"]) == (champion, "champion")
        assert {k: reveal[champion][k] for k in ("arm", "model", "version")} == {
            "arm": "champion",
            "model": "fake-champion",
            "version": "1",
        }
        assert {k: reveal[challenger][k] for k in ("arm", "model", "version")} == {
            "arm": "challenger",
            "model": "fake-challenger",
            "version": "2",
        }

        # Both answers are ordinary inference rows: forced arm, reason arena, the reviewer.
        for side, arm in ((champion, "champion"), (challenger, "challenger")):
            row = http.get(f"/v1/requests/{reveal[side]['request_id']}").json()
            assert (row["arm"], row["served_arm"], row["status"]) == (arm, arm, "ok")
            assert (row["assignment_reason"], row["unit_id"]) == ("arena", "reviewer-1")
            assert row["bucket"] is None and row["experiment_id"] is None
            assert row["prompt_messages"] == [{"role": "user", "content": PROMPT}]
            assert row["response_text"] == body[side]["content"]

        [stored_vote] = stored(settings, VOTES)
        assert stored_vote["battle_id"] == body["battle_id"]
        assert (stored_vote["request_id_a"], stored_vote["request_id_b"]) == (
            reveal["a"]["request_id"],
            reveal["b"]["request_id"],
        )
        assert (stored_vote["winner"], stored_vote["unit_id"]) == (champion, "reviewer-1")
        [stored_battle] = stored(settings, BATTLES)
        assert stored_battle["route"] == "chat"
        assert stored_battle["request_id_a"] == reveal["a"]["request_id"]

        engine = create_engine(settings.db_url)
        try:
            _, votes = aggregate(engine, route="chat", experiment_id=None)
        finally:
            engine.dispose()
        assert (votes.champion_wins, votes.challenger_wins, votes.ties) == (1, 0, 0)
        assert counter(app, "canary_arena_battles_total", route="chat") == 1
        assert counter(app, "canary_arena_votes_total", route="chat", outcome="champion") == 1
        assert counter(app, "canary_votes_total", route="chat", outcome="champion") == 1


def test_sides_are_shuffled(http: httpx.Client) -> None:
    sides = {champion_side(battle(http)) for _ in range(30)}
    assert sides == {"a", "b"}  # one order only would happen with probability 2**-29


@pytest.mark.parametrize(
    ("winner", "expected"),
    [("a", None), ("b", None), ("tie", "tie"), ("both_bad", "both_bad")],
)
def test_winner_arm_follows_the_hidden_order(
    http: httpx.Client, winner: str, expected: str | None
) -> None:
    b = battle(http)
    champion = champion_side(b)
    r = vote(http, b["battle_id"], winner)
    assert r.status_code == 200, r.text
    if expected is None:
        expected = "champion" if winner == champion else "challenger"
    assert r.json()["winner_arm"] == expected


def test_get_reveals_only_after_the_vote(http: httpx.Client) -> None:
    b = battle(http, user="carol")
    r = http.get(f"/v1/arena/battles/{b['battle_id']}")
    assert r.status_code == 200, r.text
    before = r.json()
    for giveaway in GIVEAWAYS:
        assert giveaway not in r.text
    assert (before["revealed"], before["winner"], before["winner_arm"]) == (False, None, None)
    for side in "ab":
        assert before[side] == b[side]

    revealed = vote(http, b["battle_id"], "tie").json()
    after = http.get(f"/v1/arena/battles/{b['battle_id']}").json()
    assert (after["revealed"], after["winner"], after["winner_arm"]) == (True, "tie", "tie")
    for side in "ab":
        assert after[side] == {**b[side], **revealed[side]}


def test_second_vote_is_409_and_the_first_stands(http: httpx.Client, settings: Settings) -> None:
    b = battle(http)
    assert vote(http, b["battle_id"], "a").status_code == 200
    r = vote(http, b["battle_id"], "b")
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "vote_exists"
    assert [v["winner"] for v in stored(settings, VOTES)] == ["a"]


def test_unknown_battle_is_404(http: httpx.Client) -> None:
    for r in (vote(http, "battle-nope", "a"), http.get("/v1/arena/battles/battle-nope")):
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        assert error["code"] == "battle_not_found"
        assert "battle-nope" in error["message"]


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"route": None}, 400, "invalid_request"),
        ({"messages": []}, 400, "invalid_request"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": ["a", "b"]}]}, 400, "invalid_request"),
        ({"temperature": 3}, 400, "invalid_request"),
        ({"max_tokens": 0}, 400, "invalid_request"),
        ({"model": "chat"}, 400, "invalid_request"),  # extra fields are refused
        ({"max_tokens": 100_000}, 400, "max_tokens_too_large"),
        ({"route": "nope"}, 404, "model_not_found"),
        ({"route": "solo"}, 400, "no_challenger"),
    ],
    ids=[
        "no-route",
        "no-messages",
        "bad-role",
        "non-string-content",
        "temperature",
        "max-tokens-0",
        "extra-field",
        "max-tokens-limit",
        "unknown-route",
        "no-challenger",
    ],
)
def test_bad_battle_is_a_4xx_and_stores_nothing(
    http: httpx.Client,
    settings: Settings,
    change: dict[str, Any],
    status: int,
    code: str,
) -> None:
    body = {"route": "chat", "messages": [{"role": "user", "content": "hi"}], **change}
    for stream in (False, True):
        r = http.post("/v1/arena/battles", json={**body, "stream": stream})
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
    assert stored(settings, BATTLES) == []


def test_malformed_json_is_400(http: httpx.Client) -> None:
    r = http.post(
        "/v1/arena/battles", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    "body", [{"winner": "champion"}, {}, {"winner": "a", "stars": 5}], ids=["bad", "none", "extra"]
)
def test_bad_vote_is_400(http: httpx.Client, settings: Settings, body: dict[str, Any]) -> None:
    b = battle(http)
    r = http.post(f"/v1/arena/battles/{b['battle_id']}/vote", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert stored(settings, VOTES) == []


# -- a side that fails ----------------------------------------------------------------------


def test_failing_side_shows_an_error_but_the_battle_stands(http: httpx.Client) -> None:
    r = start(http, "flaky")
    assert r.status_code == 201, r.text
    b = r.json()
    for giveaway in GIVEAWAYS:
        assert giveaway not in r.text
    failed = "a" if b["a"]["error"] else "b"
    answered = "b" if failed == "a" else "a"
    assert b[failed] == {
        "content": None,
        "finish_reason": None,
        "error": "The model failed to answer.",
        "tool_calls": None,
    }
    assert (b[answered]["content"], b[answered]["error"]) == (PROMPT, None)

    reveal = vote(http, b["battle_id"], answered).json()
    assert reveal["winner_arm"] == "champion"
    assert reveal[failed]["arm"] == "challenger"
    row = http.get(f"/v1/requests/{reveal[failed]['request_id']}").json()
    # No fallback: the row is the challenger's own failure.
    assert (row["arm"], row["status"], row["served_arm"]) == ("challenger", "error", None)
    assert row["assignment_reason"] == "arena"
    assert "failed" in row["error_message"]  # the details stay in the log


def test_failing_side_streams_an_error_event(http: httpx.Client) -> None:
    r = start(http, "flaky", stream=True)
    assert r.status_code == 201, r.text
    events = sse(r.text)
    by_type = {e["type"]: e for e in events[1:-1]}
    assert by_type["error"] == {
        "type": "error",
        "side": by_type["error"]["side"],
        "message": "The model failed to answer.",
    }
    assert by_type["done"]["side"] != by_type["error"]["side"]
    assert events[-1] == "[DONE]"
    assert vote(http, events[0]["battle_id"], "both_bad").status_code == 200


# -- streaming ------------------------------------------------------------------------------


def test_stream_events_come_in_order_and_interleave(http: httpx.Client) -> None:
    r = start(http, "slow", stream=True, user="dave")
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    for giveaway in GIVEAWAYS:
        assert giveaway not in r.text
    events = sse(r.text)
    first, middle, last = events[0], events[1:-1], events[-1]
    assert first["type"] == "battle" and first["route"] == "slow"
    assert set(first) == {"type", "battle_id", "route", "turn"}
    assert last == "[DONE]"
    text: dict[str, str] = {"a": "", "b": ""}
    ends: dict[str, int] = {}
    for i, event in enumerate(middle):
        assert event["type"] in ("delta", "done"), event
        assert event["side"] not in ends, "an event after the side's done"
        if event["type"] == "delta":
            assert set(event) == {"type", "side", "content"}
            text[event["side"]] += event["content"]
        else:
            assert event == {"type": "done", "side": event["side"], "finish_reason": "stop"}
            ends[event["side"]] = i
    assert set(ends) == {"a", "b"}
    assert sorted(text.values()) == sorted([PROMPT, "one two three four five six seven"])
    sides = [e["side"] for e in middle if e["type"] == "delta"]
    switches = sum(1 for x, y in itertools.pairwise(sides) if x != y)
    assert switches >= 3, f"the sides did not stream at once: {sides}"

    state = http.get(f"/v1/arena/battles/{first['battle_id']}").json()
    assert {side: state[side]["content"] for side in "ab"} == text
    reveal = vote(http, first["battle_id"], "a").json()
    for side in "ab":
        row = http.get(f"/v1/requests/{reveal[side]['request_id']}").json()
        assert (row["stream"], row["assignment_reason"], row["unit_id"]) == (True, "arena", "dave")
        assert row["ttft_ms"] is not None and row["response_text"] == text[side]


def test_vote_while_streaming_is_409_until_both_answers_are_in(
    running: Running, http: httpx.Client
) -> None:
    body = {"route": "slow", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    with httpx.Client(base_url=running[0].url, timeout=30) as streamer:
        with streamer.stream("POST", "/v1/arena/battles", json=body) as r:
            lines = r.iter_lines()
            first = orjson.loads(next(line for line in lines if line)[len("data: ") :])
            early = vote(http, first["battle_id"], "a")
            assert early.status_code == 409, early.text
            assert early.json()["error"]["code"] == "battle_in_progress"
            assert http.get(f"/v1/arena/battles/{first['battle_id']}").json()["revealed"] is False
            rest = list(lines)
        assert "data: [DONE]" in rest
    assert vote(http, first["battle_id"], "a").status_code == 200


def test_client_leaving_mid_stream_logs_both_sides(
    running: Running, http: httpx.Client, settings: Settings
) -> None:
    body = {"route": "slow", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    with (
        httpx.Client(base_url=running[0].url, timeout=30) as streamer,
        streamer.stream("POST", "/v1/arena/battles", json=body) as r,
    ):
        lines = r.iter_lines()
        first = orjson.loads(next(line for line in lines if line)[len("data: ") :])
        next(line for line in lines if '"delta"' in line)  # one piece, then hang up
    battle_id = first["battle_id"]
    [row] = [b for b in stored(settings, BATTLES) if b["battle_id"] == battle_id]
    statuses = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(statuses) < 2:
        for side in "ab":
            got = http.get(f"/v1/requests/{row[f'request_id_{side}']}")
            if got.status_code == 200:
                statuses[side] = got.json()["status"]
        time.sleep(0.05)
    assert statuses == {"a": "client_disconnected", "b": "client_disconnected"}
    state = http.get(f"/v1/arena/battles/{battle_id}").json()
    assert (
        state["a"]["error"] == state["b"]["error"] == "The answer was cut off before it finished."
    )


# -- the rest of the router ------------------------------------------------------------------


def test_rows_carry_the_live_experiment(http: httpx.Client, settings: Settings) -> None:
    admin = {"authorization": f"Bearer {TOKEN}"}
    r = http.post("/v1/experiments", json={"route": "chat"}, headers=admin)
    assert r.status_code == 201, r.text
    experiment_id = r.json()["id"]
    b = battle(http)
    reveal = vote(http, b["battle_id"], "a" if champion_side(b) == "b" else "b").json()
    assert reveal["winner_arm"] == "challenger"
    for side in "ab":
        row = http.get(f"/v1/requests/{reveal[side]['request_id']}").json()
        assert row["experiment_id"] == experiment_id
    engine = create_engine(settings.db_url)
    try:
        _, in_experiment = aggregate(engine, route="chat", experiment_id=experiment_id)
        _, outside = aggregate(engine, route="chat", experiment_id=None)
    finally:
        engine.dispose()
    assert in_experiment.challenger_wins == 1
    assert outside.challenger_wins == 0


def test_chat_and_the_openai_sdk_are_unaffected(running: Running, http: httpx.Client) -> None:
    battle(http)
    assert start(http, stream=True).status_code == 201
    client = openai.OpenAI(base_url=f"{running[0].url}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hello router"}], user="erin"
    )
    completion = raw.parse()
    assert completion.id == raw.headers["x-request-id"]
    assert raw.headers["x-canary-arm"] in ("champion", "challenger")
    assert completion.choices[0].message.content in ("hello router", CANNED)
    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "stream these words back"}],
            stream=True,
            stream_options={"include_usage": True},
            user="erin",
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text in ("stream these words back", CANNED)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text.split())
    row = http.get(f"/v1/requests/{completion.id}").json()
    assert (row["assignment_reason"], row["unit_id"]) == ("hash", "erin")  # the split's
    assert 'canary_arena_battles_total{route="chat"} 2.0' in http.get("/metrics").text
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_each_battle_is_stored_once_with_its_vote(http: httpx.Client, settings: Settings) -> None:
    ids = [battle(http)["battle_id"] for _ in range(3)]
    for battle_id in ids:
        assert vote(http, battle_id, "tie").status_code == 200
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            battles = conn.execute(select(func.count()).select_from(BATTLES)).scalar_one()
    finally:
        engine.dispose()
    assert battles == 3
    assert {v["battle_id"] for v in stored(settings, VOTES)} == set(ids)


# -- follow-ups: a battle over several turns ------------------------------------------------

FOLLOW_UP = "now say it once more"


def follow_up(http: httpx.Client, battle_id: str, **body: Any) -> httpx.Response:
    return http.post(f"/v1/arena/battles/{battle_id}/turns", json={"content": FOLLOW_UP, **body})


def test_follow_up_continues_each_sides_own_conversation(
    http: httpx.Client, settings: Settings
) -> None:
    first = battle(http, user="erin")
    echo = champion_side(first)
    other = "b" if echo == "a" else "a"
    r = follow_up(http, first["battle_id"])
    assert r.status_code == 200, r.text
    second = r.json()
    for giveaway in GIVEAWAYS:
        assert giveaway not in r.text
    assert (second["battle_id"], second["turn"]) == (first["battle_id"], 2)
    # Each side is the same arm as before: the echoing champion repeats the follow-up.
    assert (second[echo]["content"], second[other]["content"]) == (FOLLOW_UP, CANNED)
    assert http.get(f"/v1/arena/battles/{first['battle_id']}").json()["turn"] == 2

    reveal = vote(http, first["battle_id"], echo).json()
    assert reveal["winner_arm"] == "champion"
    # The vote is on the latest turn, whose rows hold each side's whole conversation.
    for side, earlier in ((echo, PROMPT), (other, CANNED)):
        row = http.get(f"/v1/requests/{reveal[side]['request_id']}").json()
        assert row["prompt_messages"] == [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": earlier},  # its own answer, not the other's
            {"role": "user", "content": FOLLOW_UP},
        ]
        assert (row["assignment_reason"], row["unit_id"]) == ("arena", "erin")
    [stored_vote] = stored(settings, VOTES)
    ids = {stored_vote["request_id_a"], stored_vote["request_id_b"]}
    assert ids == {reveal["a"]["request_id"], reveal["b"]["request_id"]}
    [row] = stored(settings, BATTLES)
    assert row["turns"] == 2

    after = follow_up(http, first["battle_id"])
    assert after.status_code == 409
    assert after.json()["error"]["code"] == "vote_exists"


def test_follow_up_streams_like_a_battle(http: httpx.Client) -> None:
    first = battle(http, "slow")
    r = follow_up(http, first["battle_id"], stream=True)
    assert r.status_code == 200, r.text
    events = sse(r.text)
    assert events[0] == {
        "type": "battle",
        "battle_id": first["battle_id"],
        "route": "slow",
        "turn": 2,
    }
    assert sorted(e["side"] for e in events[1:-1] if e["type"] == "done") == ["a", "b"]
    assert events[-1] == "[DONE]"
    third = follow_up(http, first["battle_id"])
    assert (third.status_code, third.json()["turn"]) == (200, 3)


def test_follow_up_refusals(http: httpx.Client) -> None:
    flaky = battle(http, "flaky")
    r = follow_up(http, flaky["battle_id"])
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "side_failed"
    assert "start a new one" in error["message"]
    ok = battle(http)
    for body, status in (({"content": ""}, 400), ({"messages": []}, 400), ({"stream": 1.5}, 400)):
        got = http.post(f"/v1/arena/battles/{ok['battle_id']}/turns", json=body)
        assert got.status_code == status, (body, got.text)
    missing = follow_up(http, "battle-nope")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "battle_not_found")
    # Nothing was refused on the way: the battle can still go on.
    assert follow_up(http, ok["battle_id"]).status_code == 200


def test_follow_up_needs_the_stored_conversation(
    make_settings: Callable[..., Settings], run_router: Callable[..., Any]
) -> None:
    settings = make_settings(routes=arena_routes(), store_prompts=False)
    with run_router(settings) as (server, _), httpx.Client(base_url=server.url) as http:
        first = battle(http)
        r = follow_up(http, first["battle_id"])
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "history_not_stored"
    assert "store_prompts" in error["message"]


# -- tool calls -----------------------------------------------------------------------------


@pytest.fixture
def challenger_calls_a_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake challenger answers as if it had been given ``WEATHER_TOOL`` (a battle
    sends no tools, but a model may call one all the same)."""
    complete, stream = FakeBackend.complete, FakeBackend.stream

    def asked(backend: FakeBackend, params: ChatParams) -> ChatParams:
        if backend.spec.name != "fake-challenger":
            return params
        return dataclasses.replace(params, options={**params.options, "tools": [WEATHER_TOOL]})

    async def complete_with(self: FakeBackend, params: ChatParams) -> Completion:
        return await complete(self, asked(self, params))

    def stream_with(self: FakeBackend, params: ChatParams) -> AsyncIterator[Delta]:
        return stream(self, asked(self, params))

    monkeypatch.setattr(FakeBackend, "complete", complete_with)
    monkeypatch.setattr(FakeBackend, "stream", stream_with)


def _the_call(calls: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The one tool call of a side, as the arena shows it: no id (it could tell who)."""
    assert calls is not None
    [call] = calls
    assert call["type"] == "function" and "id" not in call
    assert call["function"]["name"] == "get_weather"
    assert set(orjson.loads(call["function"]["arguments"])) == {"city"}
    return call


@pytest.mark.usefixtures("challenger_calls_a_tool")
def test_an_answer_with_tool_calls_shows_them(http: httpx.Client) -> None:
    b = battle(http)
    sides = {side: b[side] for side in "ab"}
    [caller] = [side for side, answer in sides.items() if answer["tool_calls"]]
    other = "b" if caller == "a" else "a"
    call = _the_call(sides[caller]["tool_calls"])
    assert (sides[caller]["content"], sides[caller]["finish_reason"]) == ("", "tool_calls")
    assert sides[other] == {
        "content": PROMPT,
        "finish_reason": "stop",
        "error": None,
        "tool_calls": None,
    }
    # As logged: the same before the vote, and after it with who answered.
    state = http.get(f"/v1/arena/battles/{b['battle_id']}").json()
    assert state[caller]["tool_calls"] == [call] and state[other]["tool_calls"] is None
    revealed = vote(http, b["battle_id"], caller).json()
    after = http.get(f"/v1/arena/battles/{b['battle_id']}").json()
    assert (after[caller]["arm"], after[caller]["tool_calls"]) == ("challenger", [call])
    row = http.get(f"/v1/requests/{revealed[caller]['request_id']}").json()
    [logged] = row["tool_calls"]
    assert logged["id"] and {k: v for k, v in logged.items() if k != "id"} == call


@pytest.mark.usefixtures("challenger_calls_a_tool")
def test_a_streamed_answer_with_tool_calls_ends_with_them(http: httpx.Client) -> None:
    r = start(http, stream=True)
    assert r.status_code == 201, r.text
    assert "call_" not in r.text  # the engine's call ids stay out of the blind answers
    events = sse(r.text)
    done = {e["side"]: e for e in events[1:-1] if e["type"] == "done"}
    [caller] = [side for side, event in done.items() if "tool_calls" in event]
    other = "b" if caller == "a" else "a"
    call = _the_call(done[caller]["tool_calls"])
    assert done[caller]["finish_reason"] == "tool_calls"
    assert done[other] == {"type": "done", "side": other, "finish_reason": "stop"}
    assert not [e for e in events[1:-1] if e["type"] == "delta" and e["side"] == caller]
    state = http.get(f"/v1/arena/battles/{events[0]['battle_id']}").json()
    assert state[caller]["tool_calls"] == [call]
