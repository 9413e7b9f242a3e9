"""The router's public HTTP schemas (OpenAI's shapes where OpenAI has one).

The UI and other programs may import these; nothing here imports the rest of the router.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "developer", "user", "assistant"]


class ChatMessage(BaseModel):
    # Unknown fields (name, tool_calls, ...) are ignored, so SDKs can send them unchanged.
    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str = Field(description="Plain text; content-part arrays are not supported.")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's body; ``model`` is the route."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=1, description="Only one choice is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(default=None, max_length=200, description="Unit id for assignment.")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if isinstance(v, str):
            return [v]
        if v is not None and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v


class FeedbackIn(BaseModel):
    """``POST /v1/feedback``: a thumb on one logged request."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    value: Literal["up", "down"]
    comment: str | None = Field(default=None, max_length=4000)
    user: str | None = Field(
        default=None, max_length=200, description="Who rates; default: the request's unit."
    )


class FeedbackPublic(BaseModel):
    request_id: str
    unit_id: str
    value: str
    comment: str | None
    created_at: datetime
    updated_at: datetime


class VoteIn(BaseModel):
    """``POST /v1/votes``: which of two answers of one route, from different arms, was better."""

    model_config = ConfigDict(extra="forbid")

    request_id_a: str = Field(min_length=1, max_length=64)
    request_id_b: str = Field(min_length=1, max_length=64)
    winner: Literal["a", "b", "tie", "both_bad"] = Field(
        description="'a' or 'b': that answer was better; 'tie'; 'both_bad': neither was good."
    )
    user: str | None = Field(
        default=None,
        max_length=200,
        description="Who votes; default: the requests' unit when both share one.",
    )


class VotePublic(BaseModel):
    """A stored vote, with the arms of both answers resolved."""

    id: int
    created_at: datetime
    route: str
    request_id_a: str
    request_id_b: str
    winner: Literal["a", "b", "tie", "both_bad"]
    arm_a: Literal["champion", "challenger"]
    arm_b: Literal["champion", "challenger"]
    winner_arm: Literal["champion", "challenger", "tie", "both_bad"]
    unit_id: str | None
    battle_id: str | None


class RequestPublic(BaseModel):
    """One inference-log row, as ``GET /v1/requests/{id}`` returns it."""

    model_config = ConfigDict(from_attributes=True)

    request_id: str
    created_at: datetime
    route: str
    experiment_id: str | None
    arm: str | None
    model_name: str | None
    model_version: str | None
    served_arm: str | None
    served_model_version: str | None
    shadow_of: str | None
    unit_id: str | None
    assignment_reason: str | None
    bucket: int | None
    stream: bool
    prompt_messages: list[dict[str, Any]] | None
    prompt_chars: int
    prompt_sha256: str | None
    response_text: str | None
    response_chars: int
    response_sha256: str | None
    finish_reason: str | None
    status: str
    http_status: int
    error_type: str | None
    error_message: str | None
    latency_ms: float
    ttft_ms: float | None
    queue_wait_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    feedback: list[FeedbackPublic] = []


class ArmPublic(BaseModel):
    model: str
    version: str
    backend: str
    weight: float


class RoutePublic(BaseModel):
    """A route, its arms and the live split."""

    name: str
    salt: str
    experiment_id: str | None
    shadow: bool
    champion: ArmPublic
    challenger: ArmPublic | None


class WeightsIn(BaseModel):
    """``PUT /v1/routes/{route}/weights``: the challenger's share of units, in percent."""

    model_config = ConfigDict(extra="forbid")

    challenger: float = Field(ge=0, le=100)


class ExperimentIn(BaseModel):
    """``POST /v1/experiments``."""

    model_config = ConfigDict(extra="forbid")

    route: str = Field(min_length=1, max_length=200)
    stages: list[float] | None = Field(
        default=None, min_length=1, description="Challenger percent per stage, e.g. [5, 25, 50]."
    )
    policy: dict[str, Any] | None = Field(default=None, description="Decision policy overrides.")

    @field_validator("stages")
    @classmethod
    def _percentages(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(not 0 < s <= 100 for s in v):
            raise ValueError("every stage is a challenger percentage in (0, 100]")
        return v
