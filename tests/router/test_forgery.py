"""Feedback that cannot be forged, votes that count once: against real routers.

A thumb or a vote is only taken from whoever the answers were for: the key that made the
request (or none, for a keyless one) and, when the request carried a unit, that unit. A
voter has one vote per pair and a capped number per experiment, so stuffing the ballot
with made-up users moves nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, select

from router.config import Settings
from router.errors import Forbidden
from router.inference_log import crud
from router.inference_log.crud import FEEDBACK, VOTES
from tests.servers import ServerThread

TOKEN = "forgery-admin-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
HI = [{"role": "user", "content": "hi"}]
Run = Callable[..., AbstractContextManager[tuple[ServerThread, FastAPI]]]
Router = tuple[httpx.Client, Settings]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("fresh_postgres_url") if request.param == "postgres" else None


@pytest.fixture
def start(make_settings: Callable[..., Settings], run_router: Run) -> Callable[..., Any]:
    """``with start(**settings) as (http, settings):`` a router (admin token set, arms
    pickable per request with ``X-Canary-Arm``) and a client of it."""

    @contextmanager
    def run(**overrides: Any) -> Iterator[Router]:
        settings = make_settings(admin_token=TOKEN, allow_arm_override=True, **overrides)
        with (
            run_router(settings) as (server, _),
            httpx.Client(base_url=server.url, timeout=30) as http,
        ):
            yield http, settings

    return run


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def make_key(http: httpx.Client, name: str) -> dict[str, Any]:
    r = http.post("/v1/keys", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return dict(r.json())


def chat(
    http: httpx.Client,
    *,
    arm: str | None = None,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> str:
    """One answer (from ``arm`` if given); its request id."""
    headers = {**(headers or {}), **({"x-canary-arm": arm} if arm else {})}
    r = http.post(
        "/v1/chat/completions", json={"model": "chat", "messages": HI, **body}, headers=headers
    )
    assert r.status_code == 200, r.text
    if arm:
        assert r.headers["x-canary-arm"] == arm
    return r.headers["x-request-id"]


def pair(http: httpx.Client, user: str | None, **kwargs: Any) -> tuple[str, str]:
    """(champion answer, challenger answer), both for ``user`` (None: no user)."""
    if user is not None:
        kwargs["user"] = user
    return chat(http, arm="champion", **kwargs), chat(http, arm="challenger", **kwargs)


def rate(
    http: httpx.Client,
    request_id: str,
    value: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    body = {"request_id": request_id, "value": value, **extra}
    return http.post("/v1/feedback", json=body, headers=headers or {})


def vote(
    http: httpx.Client,
    a: str,
    b: str,
    winner: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    body = {"request_id_a": a, "request_id_b": b, "winner": winner, **extra}
    return http.post("/v1/votes", json=body, headers=headers or {})


def refused(r: httpx.Response, code: str, status: int = 403) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == code, error
    return error


def stored(settings: Settings, table: Any) -> list[dict[str, Any]]:
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(table).order_by(table.c.id)).mappings()]
    finally:
        engine.dispose()


# -- thumbs -----------------------------------------------------------------------------


def test_keys_mode_a_thumb_is_the_requesting_keys_only(
    start: Callable[..., Any], database_url: str | None
) -> None:
    with start(auth="keys", database_url=database_url) as (http, settings):
        owner, other = make_key(http, "owner"), make_key(http, "other")
        sdk = openai.OpenAI(
            base_url=str(http.base_url).rstrip("/") + "/v1",
            api_key=owner["key"],
            max_retries=0,
        )
        raw = sdk.chat.completions.with_raw_response.create(model="chat", messages=HI)  # type: ignore[arg-type]
        assert raw.parse().choices[0].message.content
        request_id = raw.headers["x-request-id"]

        # Another key may neither rate nor read it, whoever it claims to rate as.
        for extra in ({}, {"user": owner["id"]}, {"user": "mallory"}):
            r = rate(http, request_id, "down", bearer(other["key"]), **extra)
            assert owner["id"] not in refused(r, "not_your_request")["message"]
        refused(
            http.get(f"/v1/requests/{request_id}", headers=bearer(other["key"])), "not_your_request"
        )
        refused(rate(http, request_id, "down"), "missing_api_key", 401)

        # The owner: its key was the unit, which the key proves; another user is refused.
        r = rate(http, request_id, "up", bearer(owner["key"]))
        assert r.status_code == 200, r.text
        assert (r.json()["unit_id"], r.json()["key_id"]) == (owner["id"], owner["id"])
        refused(rate(http, request_id, "down", bearer(owner["key"]), user="bob"), "unit_mismatch")
        again = rate(http, request_id, "down", bearer(owner["key"]), comment="on reflection")
        assert again.status_code == 200, again.text

        for headers in (bearer(owner["key"]), ADMIN):
            r = http.get(f"/v1/requests/{request_id}", headers=headers)
            assert r.status_code == 200, r.text
            assert (r.json()["key_id"], r.json()["unit_source"]) == (owner["id"], "key")
            assert [(f["unit_id"], f["value"]) for f in r.json()["feedback"]] == [
                (owner["id"], "down")
            ]

        # A request the key made for one of its users is rated as that user only.
        raw = sdk.chat.completions.with_raw_response.create(model="chat", messages=HI, user="alice")  # type: ignore[arg-type]
        for_alice = raw.headers["x-request-id"]
        refused(rate(http, for_alice, "up", bearer(owner["key"])), "unit_mismatch")
        refused(rate(http, for_alice, "up", bearer(owner["key"]), user="bob"), "unit_mismatch")
        assert rate(http, for_alice, "up", bearer(owner["key"]), user="alice").status_code == 200
    rows = stored(settings, FEEDBACK)
    assert [(f["request_id"], f["unit_id"], f["value"], f["key_id"]) for f in rows] == [
        (request_id, owner["id"], "down", owner["id"]),
        (for_alice, "alice", "up", owner["id"]),
    ]


def test_open_mode_a_thumb_needs_the_requests_user(start: Callable[..., Any]) -> None:
    with start() as (http, settings):
        alice = chat(http, user="alice")
        for forged in ({"user": "mallory"}, {"user": "Alice"}, {}):
            error = refused(rate(http, alice, "down", **forged), "unit_mismatch")
            assert "alice" not in error["message"]
        assert rate(http, alice, "up", user="alice").status_code == 200
        assert rate(http, alice, "down", user="alice").status_code == 200  # re-rating
        assert [(f["unit_id"], f["value"]) for f in stored(settings, FEEDBACK)] == [
            ("alice", "down")
        ]

        # Every way a request names its unit binds the thumb to it.
        sid = chat(http, safety_identifier="sid-7")
        header = chat(http, headers={"x-canary-unit": "unit-9"})
        for request_id, unit in ((sid, "sid-7"), (header, "unit-9")):
            refused(rate(http, request_id, "up"), "unit_mismatch")
            r = rate(http, request_id, "up", user=unit)
            assert r.status_code == 200, r.text
            assert r.json()["unit_id"] == unit

        # A request made with a key belongs to that key, in open mode too.
        key = make_key(http, "app")
        keyed = chat(http, headers=bearer(key["key"]))
        refused(rate(http, keyed, "up"), "not_your_request")
        refused(http.get(f"/v1/requests/{keyed}"), "not_your_request")
        assert http.get(f"/v1/requests/{keyed}", headers=ADMIN).status_code == 200
        assert rate(http, keyed, "up", bearer(key["key"])).status_code == 200
        # ... and a keyless request is no key's.
        refused(rate(http, alice, "up", bearer(key["key"]), user="alice"), "not_your_request")


# -- votes ------------------------------------------------------------------------------


def test_vote_stuffing_with_made_up_users_stores_one_vote(
    start: Callable[..., Any], database_url: str | None
) -> None:
    with start(database_url=database_url) as (http, settings):
        champion, challenger = pair(http, "alice")
        users: list[str | None] = [f"sock-{i}" for i in range(300)]
        users[150] = "alice"
        codes: Counter[str | int] = Counter()
        for user in users:
            r = vote(http, champion, challenger, "b", user=user)
            codes[r.status_code if r.status_code == 200 else r.json()["error"]["code"]] += 1
        assert codes == {"voter_mismatch": 299, 200: 1}
    [row] = stored(settings, VOTES)
    assert (row["unit_id"], row["key_id"], row["battle_id"]) == ("alice", None, None)


def test_votes_on_another_keys_answers_are_403(start: Callable[..., Any]) -> None:
    with start(auth="keys") as (http, settings):
        owner, other = make_key(http, "owner"), make_key(http, "other")
        champion, challenger = pair(http, "alice", headers=bearer(owner["key"]))
        for extra in ({}, {"user": "alice"}, {"user": "mallory"}):
            r = vote(http, champion, challenger, "b", bearer(other["key"]), **extra)
            error = refused(r, "not_your_request")
            assert "champion" not in error["message"]  # nothing about the answers leaks
        r = vote(http, champion, challenger, "b", bearer(owner["key"]))
        assert r.status_code == 200, r.text
        assert (r.json()["unit_id"], r.json()["key_id"]) == ("alice", owner["id"])
        # The key's own unit: requests without a user are the key's, and so is the vote.
        mine = pair(http, None, headers=bearer(owner["key"]))
        r = vote(http, *mine, "a", bearer(owner["key"]))
        assert r.status_code == 200, r.text
        assert r.json()["unit_id"] == owner["id"]
        # One answer for alice, one for the key itself: not one voter's.
        refused(vote(http, champion, mine[1], "a", bearer(owner["key"])), "not_your_answers")
    assert [(v["unit_id"], v["key_id"]) for v in stored(settings, VOTES)] == [
        ("alice", owner["id"]),
        (owner["id"], owner["id"]),
    ]


def test_answers_without_a_unit_cannot_be_voted_on(start: Callable[..., Any]) -> None:
    with start() as (http, settings):
        a, b = chat(http, arm="champion"), chat(http, arm="challenger")
        for extra in ({}, {"user": "alice"}):
            refused(vote(http, a, b, "a", **extra), "not_your_answers")
    assert stored(settings, VOTES) == []


def test_identical_votes_from_the_owner_are_one_row_with_the_latest_winner(
    start: Callable[..., Any],
) -> None:
    with start() as (http, settings):
        a, b = sorted(pair(http, "alice"))  # ascending: stored in the order sent
        ids = set()
        for winner in ["b"] * 24 + ["a"]:
            r = vote(http, a, b, winner, user="alice")
            assert r.status_code == 200, r.text
            ids.add(r.json()["id"])
    [row] = stored(settings, VOTES)
    assert ids == {row["id"]}
    assert (row["request_id_a"], row["request_id_b"], row["winner"]) == (a, b, "a")


def test_a_revote_in_swapped_order_updates_the_same_row(
    start: Callable[..., Any], database_url: str | None
) -> None:
    with start(database_url=database_url) as (http, settings):
        champion, challenger = pair(http, "alice")
        first = vote(http, champion, challenger, "a")  # the champion's answer
        assert first.status_code == 200, first.text
        assert first.json()["winner_arm"] == "champion"
        second = vote(http, challenger, champion, "a")  # now the challenger's
        assert second.status_code == 200, second.text
        body = second.json()
        assert body["id"] == first.json()["id"]
        # Answered in the order sent.
        assert (body["request_id_a"], body["request_id_b"], body["winner"]) == (
            challenger,
            champion,
            "a",
        )
        assert (body["arm_a"], body["arm_b"], body["winner_arm"]) == (
            "challenger",
            "champion",
            "challenger",
        )
    [row] = stored(settings, VOTES)
    low, high = sorted((champion, challenger))
    assert (row["request_id_a"], row["request_id_b"]) == (low, high)
    assert row["winner"] == ("a" if low == challenger else "b")  # the challenger's answer


def test_a_voter_is_capped_per_experiment(
    start: Callable[..., Any], database_url: str | None
) -> None:
    with start(max_votes_per_voter=3, database_url=database_url) as (http, settings):
        pairs = [pair(http, "alice") for _ in range(4)]
        for p in pairs[:3]:
            assert vote(http, *p, "b").status_code == 200
        error = refused(vote(http, *pairs[3], "b"), "vote_cap_reached")
        assert "3" in error["message"]
        # A re-vote on a pair already voted on is not a new vote: still allowed.
        assert vote(http, pairs[0][1], pairs[0][0], "b").status_code == 200
        # Other voters have caps of their own.
        assert vote(http, *pair(http, "bob"), "a").status_code == 200
    assert Counter(v["unit_id"] for v in stored(settings, VOTES)) == {"alice": 3, "bob": 1}


def test_arena_votes_count_toward_the_cap(start: Callable[..., Any]) -> None:
    with start(max_votes_per_voter=3) as (http, settings):
        battles = []
        for _ in range(3):
            r = http.post(
                "/v1/arena/battles", json={"route": "chat", "messages": HI, "user": "alice"}
            )
            assert r.status_code == 201, r.text
            battles.append(r.json()["battle_id"])
        for battle_id in battles[:2]:
            r = http.post(f"/v1/arena/battles/{battle_id}/vote", json={"winner": "a"})
            assert r.status_code == 200, r.text
        pairs = [pair(http, "alice") for _ in range(2)]
        assert vote(http, *pairs[0], "b").status_code == 200  # the third
        refused(vote(http, *pairs[1], "b"), "vote_cap_reached")
        assert http.get(f"/v1/arena/battles/{battles[2]}").status_code == 200  # rows logged

        # An arena vote over the cap is refused too (the arena passes its setting).
        engine = create_engine(settings.db_url)
        try:
            battle = crud.get_battle(engine, battle_id=battles[2])
            assert battle is not None
            with pytest.raises(Forbidden) as refusal:
                crud.insert_vote(
                    engine,
                    route="chat",
                    request_id_a=battle["request_id_a"],
                    request_id_b=battle["request_id_b"],
                    winner="a",
                    unit_id="alice",
                    battle_id=battles[2],
                    cap=3,
                )
        finally:
            engine.dispose()
        assert refusal.value.code == "vote_cap_reached"
        # The arena's answers are voted on in their battle, not with /v1/votes.
        ids = (battle["request_id_a"], battle["request_id_b"])
        refused(vote(http, *ids, "a"), "arena_answers", 400)
    assert len(stored(settings, VOTES)) == 3


# -- the arena --------------------------------------------------------------------------


def test_another_keys_battle_cannot_be_seen_followed_or_voted(start: Callable[..., Any]) -> None:
    with start(auth="keys") as (http, settings):
        owner, other = make_key(http, "owner"), make_key(http, "other")
        r = http.post(
            "/v1/arena/battles",
            json={"route": "chat", "messages": HI},
            headers=bearer(owner["key"]),
        )
        assert r.status_code == 201, r.text
        battle_id = r.json()["battle_id"]
        path = f"/v1/arena/battles/{battle_id}"
        turn = {"content": "and then?"}
        for headers, status, code in (
            (bearer(other["key"]), 403, "not_your_battle"),
            ({}, 401, "missing_api_key"),
        ):
            refused(http.get(path, headers=headers), code, status)
            refused(http.post(f"{path}/vote", json={"winner": "a"}, headers=headers), code, status)
            refused(http.post(f"{path}/turns", json=turn, headers=headers), code, status)
        # The owner's battle: its voter is the key (the battle's unit); no one else.
        own = bearer(owner["key"])
        vote_path = f"{path}/vote"
        refused(
            http.post(vote_path, json={"winner": "a", "user": "mallory"}, headers=own),
            "voter_mismatch",
        )
        assert http.post(f"{path}/turns", json=turn, headers=own).status_code == 200
        r = http.post(vote_path, json={"winner": "a", "user": owner["id"]}, headers=own)
        assert r.status_code == 200, r.text
        refused(http.post(vote_path, json={"winner": "b"}, headers=own), "vote_exists", 409)
        assert http.get(path, headers=ADMIN).json()["revealed"] is True
    [row] = stored(settings, VOTES)
    assert (row["battle_id"], row["unit_id"], row["key_id"]) == (
        battle_id,
        owner["id"],
        owner["id"],
    )


def test_open_mode_battle_vote_is_the_battles_user(start: Callable[..., Any]) -> None:
    with start() as (http, settings):
        r = http.post("/v1/arena/battles", json={"route": "chat", "messages": HI, "user": "carol"})
        assert r.status_code == 201, r.text
        path = f"/v1/arena/battles/{r.json()['battle_id']}/vote"
        error = refused(http.post(path, json={"winner": "b", "user": "mallory"}), "voter_mismatch")
        assert "carol" not in error["message"]
        assert http.post(path, json={"winner": "b"}).status_code == 200
    [row] = stored(settings, VOTES)
    assert row["unit_id"] == "carol"


# -- end to end: a votes experiment ------------------------------------------------------

VOTES_POLICY = {
    "auto": False,
    "primary_metric": "votes",
    "min_votes": 30,
    "min_units": 2,
    # Thumbs and the guardrails stay in burn-in: the votes alone decide.
    "min_rated_units": 1000,
    "min_guardrail_units": 1000,
    "max_latency_p95_ratio": 100.0,
    "max_ttft_p95_ratio": 100.0,
}


def _evaluate(http: httpx.Client, experiment_id: str) -> dict[str, Any]:
    r = http.post(f"/v1/experiments/{experiment_id}/evaluate", headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_stuffing_does_not_promote_but_real_voters_do(start: Callable[..., Any]) -> None:
    with start() as (http, _):
        r = http.post(
            "/v1/experiments",
            json={"route": "chat", "stages": [50], "policy": VOTES_POLICY},
            headers=ADMIN,
        )
        assert r.status_code == 201, r.text
        experiment_id = r.json()["id"]
        for i in range(20):  # units of the split
            chat(http, user=f"u-{i}")

        # Mallory stuffs 300 challenger votes on her own pair, and on alice's.
        theirs = {"mallory": pair(http, "mallory"), "alice": pair(http, "alice")}
        accepted = 0
        for i in range(300):
            for owner, (champion, challenger) in theirs.items():
                user = "mallory" if owner == "mallory" and i % 2 else f"sock-{i}"
                accepted += vote(http, champion, challenger, "b", user=user).status_code == 200
        assert accepted == 150  # mallory's own votes, all on one pair: one row
        decision = _evaluate(http, experiment_id)
        votes = decision["analysis"]["metrics"]["votes"]
        assert (votes["challenger_wins"], votes["voters"], votes["role"]) == (1, 1, "primary")
        assert decision["action"] == "continue", decision["reasons"]

        # 40 real voters, 36 of them for the challenger: that is enough to promote.
        for i in range(40):
            champion, challenger = pair(http, f"voter-{i}")
            assert vote(http, champion, challenger, "b" if i % 10 else "a").status_code == 200
        decision = _evaluate(http, experiment_id)
        votes = decision["analysis"]["metrics"]["votes"]
        assert (votes["challenger_wins"], votes["voters"]) == (37, 41)
        assert decision["action"] == "promote", decision["reasons"]

        board = http.get("/v1/routes/chat/dashboard").json()
        assert board["experiment_id"] == experiment_id
        assert (board["votes"]["challenger_wins"], board["votes"]["voters"]) == (37, 41)
