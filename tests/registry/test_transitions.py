"""Promote, rollback and restore: alias moves with tags, idempotent and race-safe.

Versions are remote-endpoint registrations: cheap to make, and the alias logic does not
depend on the flavour.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from registry.errors import NotRegistered
from registry.store import Registry, Transition

Versions = Callable[[int], list[str]]


@pytest.fixture
def make_versions(registry: Registry) -> Versions:
    """``make_versions(n)``: n new versions of route ``chat``; v1 becomes ``@champion``."""

    def make(n: int) -> list[str]:
        versions = [
            registry.register_endpoint(
                "chat", base_url="http://127.0.0.1:9/v1", remote_model=f"m{i}", params={}
            )
            for i in range(n)
        ]
        if registry.resolve("chat", "champion") is None:
            registry.set_alias("chat", "champion", versions[0])
        return versions

    return make


def aliases(registry: Registry) -> dict[str, str]:
    return next(info.aliases for info in registry.describe() if info.route == "chat")


def tags(registry: Registry, version: str) -> dict[str, str]:
    return registry.client.get_model_version("chat", version).tags


def test_promote_rollback_restore_round_trip(registry: Registry, make_versions: Versions) -> None:
    v1, v2, v3 = make_versions(3)
    registry.set_alias("chat", "challenger", v2)

    promoted = registry.promote("chat", actor="evaluator", reason="won", decision_id="d-1")
    assert promoted.changed and promoted.version == v2
    assert aliases(registry) == {"champion": v2, "previous": v1}
    assert (promoted.champion, promoted.previous, promoted.challenger) == (v2, v1, None)
    new = tags(registry, v2)
    assert new["canary.status"] == "champion"
    assert new["canary.decision_id"] == "d-1"
    assert (new["canary.actor"], new["canary.reason"]) == ("evaluator", "won")
    assert datetime.fromisoformat(new["canary.promoted_at"]).tzinfo is not None  # UTC ISO
    assert tags(registry, v1)["canary.status"] == "previous"

    registry.set_alias("chat", "challenger", v3)
    rolled = registry.rollback("chat", actor="evaluator", reason="worse", decision_id="d-2")
    assert rolled.changed and rolled.version == v3
    assert aliases(registry) == {"champion": v2, "previous": v1}
    rejected = tags(registry, v3)
    assert (rejected["canary.status"], rejected["canary.decision_id"]) == ("rejected", "d-2")
    assert "canary.rejected_at" in rejected

    restored = registry.restore("chat", actor="oncall", reason="regression")
    assert restored.changed and restored.version == v1
    assert aliases(registry) == {"champion": v1}
    assert tags(registry, v1)["canary.status"] == "champion"
    assert tags(registry, v1)["canary.actor"] == "oncall"
    assert tags(registry, v2)["canary.status"] == "demoted"


@pytest.mark.parametrize("action", ["promote", "rollback", "restore"])
def test_a_second_call_is_a_no_op_reporting_what_is_in_force(
    registry: Registry, make_versions: Versions, action: str
) -> None:
    v1, v2 = make_versions(2)
    registry.set_alias("chat", "challenger", v2)
    if action == "restore":
        registry.promote("chat", actor="a", reason="r")
    run = getattr(registry, action)
    first: Transition = run("chat", actor="a", reason="r", decision_id="d")
    state = aliases(registry)
    tags_after_first = tags(registry, v1), tags(registry, v2)

    second: Transition = run("chat", actor="a", reason="r", decision_id="d")
    assert first.changed and not second.changed
    assert aliases(registry) == state
    assert (tags(registry, v1), tags(registry, v2)) == tags_after_first
    assert (second.champion, second.challenger, second.previous) == (
        state.get("champion"),
        state.get("challenger"),
        state.get("previous"),
    )


def test_a_promotion_found_midway_is_finished_not_redone(
    registry: Registry, make_versions: Versions
) -> None:
    # Another process moved @champion and died before removing @challenger.
    v1, v2 = make_versions(2)
    registry.set_alias("chat", "previous", v1)
    registry.set_alias("chat", "champion", v2)
    registry.set_alias("chat", "challenger", v2)
    result = registry.promote("chat", actor="a", reason="r")
    assert aliases(registry) == {"champion": v2, "previous": v1}  # not previous=v2
    assert result.champion == v2


def test_two_routers_promoting_at_once_agree(
    make_registry: Callable[[Path], Registry], registry: Registry, make_versions: Versions
) -> None:
    v1, v2 = make_versions(2)
    registry.set_alias("chat", "challenger", v2)
    # Two Registry objects on one store: two router processes as far as MLflow knows.
    db_dir = Path(registry.tracking_uri.removeprefix("sqlite:///")).parent
    other = Registry(registry.tracking_uri, cache_dir=db_dir / "other-cache")
    barrier = threading.Barrier(2)
    results: list[Transition] = []
    errors: list[BaseException] = []

    def promote(reg: Registry, who: str) -> None:
        barrier.wait()
        try:
            results.append(reg.promote("chat", actor=who, reason="race", decision_id="d-9"))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=promote, args=(registry, "router-1")),
        threading.Thread(target=promote, args=(other, "router-2")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(results) == 2 and any(r.changed for r in results)
    assert aliases(registry) == {"champion": v2, "previous": v1}
    assert tags(registry, v2)["canary.status"] == "champion"
    assert tags(registry, v1)["canary.status"] == "previous"


def test_a_route_is_never_without_a_champion_during_a_promotion(
    registry: Registry, make_versions: Versions
) -> None:
    v1, v2 = make_versions(2)
    registry.set_alias("chat", "challenger", v2)
    seen: list[str | None] = []
    stop = threading.Event()

    def watch() -> None:
        watcher = Registry(registry.tracking_uri, cache_dir=registry.cache_dir)
        while not stop.is_set():
            seen.append(watcher.client.get_registered_model("chat").aliases.get("champion"))

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        registry.promote("chat", actor="a", reason="r")
    finally:
        stop.set()
        thread.join()
    assert seen and None not in seen
    assert {str(v) for v in seen} <= {v1, v2}


def test_promote_without_challenger_changes_nothing(
    registry: Registry, make_versions: Versions
) -> None:
    (v1,) = make_versions(1)
    result = registry.promote("chat", actor="a", reason="r")
    assert not result.changed
    assert "no @challenger" in result.message
    assert result.champion == v1


def test_set_alias_to_an_unknown_version_names_the_versions(
    registry: Registry, make_versions: Versions
) -> None:
    make_versions(2)
    with pytest.raises(NotRegistered, match=r"no version '7' \(versions: 2, 1\)"):
        registry.set_alias("chat", "challenger", "7")


def test_describe_and_routes(registry: Registry, make_versions: Versions) -> None:
    assert registry.is_empty() and registry.routes() == []
    v1, v2 = make_versions(2)
    registry.set_alias("chat", "challenger", v2)
    registry.register_endpoint("other", base_url="http://h:1/v1", remote_model="x", params={})
    assert not registry.is_empty()
    assert registry.routes() == ["chat"]  # "other" has no @champion
    chat = next(info for info in registry.describe() if info.route == "chat")
    assert [v.version for v in chat.versions] == [v2, v1]
    assert chat.versions[0].aliases == ("challenger",)
    assert chat.versions[1].aliases == ("champion",)
    assert {v.flavour for v in chat.versions} == {"openai"}
