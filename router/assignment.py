"""Sticky, deterministic traffic assignment: the same unit gets the same arm in every process.

``bucket = sha256(route \\x1f salt \\x1f unit)[:8] mod 10000``; the unit goes to the challenger
when its bucket is below the challenger's weight in basis points. Raising the weight only
moves units from champion to challenger, never back, so a stage change keeps stickiness
for everyone already on the challenger.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Literal

BUCKETS = 10_000

ArmName = Literal["champion", "challenger"]
Reason = Literal["hash", "unassigned", "override", "champion_only"]
#: Where a request's unit came from, in order of precedence.
UnitSource = Literal["user", "safety_identifier", "header", "key"]


@dataclass(frozen=True, slots=True)
class Unit:
    """The unit a request is assigned by, and where it came from; ``id`` None: none given."""

    id: str | None = None
    source: UnitSource | None = None


NO_UNIT = Unit()


def unit_of(
    *,
    user: str | None = None,
    safety_identifier: str | None = None,
    header: str | None = None,
    key_id: str | None = None,
) -> Unit:
    """The body's ``user``, else its ``safety_identifier`` (OpenAI's successor to
    ``user``), else header ``X-Canary-Unit``, else the API key's id, else none."""
    for value, source in (
        (user, "user"),
        (safety_identifier, "safety_identifier"),
        (header, "header"),
        (key_id, "key"),
    ):
        if value:
            return Unit(value, source)  # type: ignore[arg-type]
    return NO_UNIT


@dataclass(frozen=True, slots=True)
class Assignment:
    arm: ArmName
    unit_id: str
    bucket: int | None
    reason: Reason


def bucket_of(route: str, salt: str, unit_id: str) -> int:
    """The unit's bucket in 0..9999 for this route and salt."""
    digest = hashlib.sha256(f"{route}\x1f{salt}\x1f{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign(
    *,
    route: str,
    salt: str,
    challenger_bps: int,
    has_challenger: bool,
    unit_id: str | None,
    override: ArmName | None = None,
) -> Assignment:
    """Pick the arm for one request. ``unit_id`` None means a fresh, unsticky unit."""
    reason: Reason = "hash"
    if unit_id is None:
        unit_id, reason = f"anon-{uuid.uuid4().hex}", "unassigned"
    if not has_challenger:
        return Assignment("champion", unit_id, None, "champion_only")
    if override is not None:
        return Assignment(override, unit_id, None, "override")
    bucket = bucket_of(route, salt, unit_id)
    arm: ArmName = "challenger" if bucket < challenger_bps else "champion"
    return Assignment(arm, unit_id, bucket, reason)
