"""Prometheus metrics, in a registry of their own per app (no process-wide globals).

Label values are bounded: routes this router serves (else ``unknown``), the fixed arm
names, versions from the registry, and fixed enums. Never a client-chosen string: every
distinct value is a series kept forever.
"""

from __future__ import annotations

from collections.abc import Container

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds; a local 135M model takes ~0.01-0.1 s to the first token and seconds to finish.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ARM = ("route", "arm", "version")
UNKNOWN = "unknown"
_ARMS = frozenset({"champion", "challenger", "shadow"})


def route_label(route: str, known: Container[str]) -> str:
    """``route`` if this router serves it, else ``unknown`` (clients choose ``model``)."""
    return route if route in known else UNKNOWN


def arm_label(arm: str | None) -> str:
    """An arm name, ``none`` for a request refused before it had one."""
    if arm is None:
        return "none"
    return arm if arm in _ARMS else UNKNOWN


class Metrics:
    """Every metric the router exports, named by Prometheus conventions (base units)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "canary_requests", "Chat requests by outcome.", (*_ARM, "status"), registry=r
        )
        self.latency = Histogram(
            "canary_request_duration_seconds",
            "Request latency, end to end.",
            _ARM,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "canary_time_to_first_token_seconds",
            "Time to the first streamed token.",
            _ARM,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "canary_queue_wait_seconds",
            "Wait for a model's worker (llama.cpp).",
            _ARM,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "canary_prompt_tokens", "Prompt tokens processed.", _ARM, registry=r
        )
        self.completion_tokens = Counter(
            "canary_completion_tokens", "Completion tokens generated.", _ARM, registry=r
        )
        self.in_flight = Gauge(
            "canary_requests_in_flight", "Requests being answered now.", ("route",), registry=r
        )
        self.feedback = Counter(
            "canary_feedback", "Thumbs by arm and value.", ("route", "arm", "value"), registry=r
        )
        self.votes = Counter(
            "canary_votes", "Pairwise votes by outcome.", ("route", "outcome"), registry=r
        )
        self.arena_battles = Counter(
            "canary_arena_battles", "Arena battles started.", ("route",), registry=r
        )
        self.arena_votes = Counter(
            "canary_arena_votes",
            "Votes on arena battles by outcome (also in canary_votes_total).",
            ("route", "outcome"),
            registry=r,
        )
        self.traffic_weight = Gauge(
            "canary_traffic_weight_ratio",
            "Share of units assigned to each arm.",
            ("route", "arm"),
            registry=r,
        )
        self.shadow_skipped = Counter(
            "canary_shadow_skipped",
            "Shadow calls skipped because the shadow pool was full.",
            ("route",),
            registry=r,
        )
        self.connections_closed = Counter(
            "canary_connections_closed",
            "Connections the router closed itself, by reason (header_timeout: the request's "
            "headers did not arrive within header_timeout_s).",
            ("reason",),
            registry=r,
        )
        self.log_queue_depth = Gauge(
            "canary_log_queue_depth", "Inference rows waiting to be written.", registry=r
        )
        self.log_rows_written = Counter(
            "canary_log_rows_written", "Inference rows committed.", registry=r
        )
        self.log_rows_spilled = Counter(
            "canary_log_rows_spilled",
            "Rows the database did not take in order (down, or memory full), kept in the "
            "local journal and replayed.",
            registry=r,
        )
        self.log_write_failures = Counter(
            "canary_log_write_failures",
            "Failed batch writes (the batch is split, or replayed after an outage).",
            registry=r,
        )
        self.log_rows_replayed = Counter(
            "canary_log_rows_replayed",
            "Rows written from the local journal after an outage, an overflow or a crash.",
            registry=r,
        )
        self.log_rows_dead_lettered = Counter(
            "canary_log_rows_dead_lettered",
            "Rows the database refused, kept in the journal's dead-letter file.",
            registry=r,
        )
        self.log_rows_dropped = Counter(
            "canary_log_rows_dropped",
            "Rows that could not be recorded at all (journal full, database down).",
            registry=r,
        )
        self.log_writer_errors = Counter(
            "canary_log_writer_errors", "Unexpected errors the writer survived.", registry=r
        )
        self.log_journal_bytes = Gauge(
            "canary_log_journal_bytes",
            "Bytes in the local journal: rows not yet known to be in the database.",
            registry=r,
        )
        self.engine_up = Gauge(
            "canary_engine_up",
            "1 when the arm's engine passed its last health check, 0 when it failed.",
            ("route", "arm"),
            registry=r,
        )
        self.registry_up = Gauge(
            "canary_registry_up",
            "1 when the last read of the model registry succeeded, 0 when it failed.",
            registry=r,
        )
        self.evaluation_duration = Histogram(
            "canary_evaluation_duration_seconds",
            "One evaluation of an experiment: SQL aggregates, statistics, the decision stored.",
            ("route",),
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.decisions = Counter(
            "canary_decisions",
            "Evaluator and operator decisions by action; acted: whether it was carried out "
            "(manual policies only recommend).",
            ("route", "action", "acted"),
            registry=r,
        )
        # Keys and rate limits. ``key`` is a key id: keys are made by an admin, so the
        # label's values are bounded like routes and versions.
        self.rate_limited = Counter(
            "canary_rate_limited",
            "Requests refused with 429, by key and by the limit they hit (rpm, tpm).",
            ("key", "limit"),
            registry=r,
        )
        self.key_limit = Gauge(
            "canary_key_limit",
            "Each key's limit per minute (rpm: requests, tpm: tokens) as last applied.",
            ("key", "limit"),
            registry=r,
        )
        self.auth_refused = Counter(
            "canary_auth_refused",
            "Calls refused for their credentials, by HTTP status (401, 403).",
            ("status",),
            registry=r,
        )
        self.report_log_failures = Counter(
            "canary_report_log_failures",
            "Failed attempts to log an ended experiment's report to MLflow (each is retried).",
            registry=r,
        )
