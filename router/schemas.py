"""The router's public HTTP schemas (OpenAI's shapes where OpenAI has one).

The UI and other programs may import these; nothing here imports the rest of the router.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ContentPart(BaseModel):
    """One part of a message's ``content`` list: ``{"type": "text", "text": ...}``, or an
    image, audio or file part (passed to engines that take them, refused by the others)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(min_length=1, max_length=64)
    text: str | None = None

    @model_validator(mode="after")
    def _text_has_text(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs 'text'")
        return self


class ChatMessage(BaseModel):
    """One message as OpenAI defines it; fields OpenAI adds later pass through."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _has_what_its_role_needs(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs 'tool_call_id'")
        answered = self.role == "assistant" and (self.tool_calls or self.model_extra)
        if self.content is None and not answered:
            raise ValueError(f"a {self.role} message needs 'content'")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]


#: Fields of a chat request the router acts on itself; every other field the client sent
#: reaches the arm's backend unchanged (``ChatParams.options``).
ROUTER_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
    }
)


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's body; ``model`` is the route.

    Documented ranges are checked here (400 naming the field); every field, known or not
    (``extra_body``), is kept and passed to the arm's backend, which honours it or
    refuses it with a 400, never silently."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1, description="A 64-bit int.")
    user: str | None = Field(default=None, max_length=200, description="Unit id for assignment.")
    safety_identifier: str | None = Field(
        default=None, max_length=200, description="The unit when ``user`` is not given."
    )
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=300
    )
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if isinstance(v, str):
            return [v]
        if v is not None and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @model_validator(mode="after")
    def _logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def options(self) -> dict[str, Any]:
        """Every field the client sent that the router does not act on, as sent."""
        return self.model_dump(exclude_unset=True, exclude=set(ROUTER_FIELDS))

    def message_dicts(self) -> list[dict[str, Any]]:
        """The messages as the client sent them (fields it left out stay out)."""
        return [m.model_dump(exclude_unset=True) for m in self.messages]


class FeedbackIn(BaseModel):
    """``POST /v1/feedback``: a thumb on one logged request."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    value: Literal["up", "down"]
    comment: str | None = Field(default=None, max_length=4000)
    user: str | None = Field(
        default=None,
        max_length=200,
        description="Who rates. A request made for a user (its 'user', 'safety_identifier' "
        "or X-Canary-Unit) is rated by that user only: send the same value. Default: the "
        "request's unit.",
    )


class FeedbackPublic(BaseModel):
    request_id: str
    unit_id: str
    value: str
    comment: str | None
    key_id: str | None = Field(default=None, description="The API key that rated.")
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
        description="Who votes: both answers must have been made for one unit (the same "
        "'user', or the same API key), which is the voter; if given, it must be that unit.",
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
    unit_id: str | None = Field(description="The voter.")
    battle_id: str | None
    key_id: str | None = Field(default=None, description="The API key that voted.")


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
    unit_source: str | None = Field(
        default=None,
        description="Where the unit came from: user, safety_identifier, header or key; "
        "None: the request named none and got a fresh id.",
    )
    key_id: str | None = Field(default=None, description="The API key that made it.")
    assignment_reason: str | None
    bucket: int | None
    stream: bool
    prompt_messages: list[dict[str, Any]] | None
    prompt_chars: int
    prompt_sha256: str | None
    response_text: str | None
    response_chars: int
    response_sha256: str | None
    tool_calls: list[dict[str, Any]] | None = None
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


class KeyIn(BaseModel):
    """``POST /v1/keys``: a client key's name, and optionally its routes and limits."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    routes: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=100, description="Routes the key may use; None: all."
    )
    rpm: int | None = Field(default=None, ge=1, le=2**31 - 1, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=1, le=2**31 - 1, description="Tokens per minute.")


class WeightsIn(BaseModel):
    """``PUT /v1/routes/{route}/weights``: the challenger's share of units, in percent."""

    model_config = ConfigDict(extra="forbid")

    challenger: float = Field(ge=0, le=100)


class ExperimentActionIn(BaseModel):
    """``POST /v1/experiments/{id}/{action}`` (the body is optional)."""

    model_config = ConfigDict(extra="forbid")

    force: bool = Field(
        default=False,
        description="Promote although the data do not show the challenger better (recorded).",
    )
    reason: str | None = Field(
        default=None, max_length=1000, description="Why: recorded with the decision."
    )


class ExperimentIn(BaseModel):
    """``POST /v1/experiments``."""

    model_config = ConfigDict(extra="forbid")

    route: str = Field(min_length=1, max_length=200)
    stages: list[float] | None = Field(
        default=None, min_length=1, description="Challenger percent per stage, e.g. [5, 25, 50]."
    )
    policy: dict[str, Any] | None = Field(default=None, description="Decision policy overrides.")
    force: bool = Field(
        default=False,
        description="Start even though this challenger version was rolled back or ended "
        "inconclusive before (recorded).",
    )
    reason: str | None = Field(
        default=None, max_length=1000, description="Recorded with the start."
    )

    @field_validator("stages")
    @classmethod
    def _percentages(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(not 0 < s <= 100 for s in v):
            raise ValueError("every stage is a challenger percentage in (0, 100]")
        return v


# -- arena ----------------------------------------------------------------------------------

Winner = Literal["a", "b", "tie", "both_bad"]
WinnerArm = Literal["champion", "challenger", "tie", "both_bad"]


class BattleIn(BaseModel):
    """``POST /v1/arena/battles``: one prompt, answered by both arms, shown blind as a and b."""

    model_config = ConfigDict(extra="forbid")

    route: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    user: str | None = Field(
        default=None, max_length=200, description="Who asks; the unit of both answers' rows."
    )
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream: bool = Field(
        default=False, description="Server-sent events: battle, then both sides interleaved."
    )


class BattleTurnIn(BaseModel):
    """``POST /v1/arena/battles/{battle_id}/turns``: a follow-up prompt. Each side answers
    it in its own conversation (its earlier answers, not the other side's)."""

    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1, description="The follow-up, asked of both sides.")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream: bool = Field(
        default=False, description="Server-sent events, as when the battle started."
    )


class BattleAnswer(BaseModel):
    """One side's answer, with nothing that tells who gave it."""

    content: str | None = Field(description="None when the side failed (see error).")
    finish_reason: str | None
    error: str | None = Field(description="A readable message when the side failed.")
    tool_calls: list[dict[str, Any]] | None = Field(
        default=None,
        description="The tool calls the answer made, in OpenAI's shape without their "
        "'id' (an engine's id format could tell who answered); None when it made none.",
    )


class BattlePublic(BaseModel):
    """A battle as it is created: two blind answers."""

    battle_id: str
    route: str
    created_at: datetime
    turn: int = Field(description="1 for the first prompt, then one more per follow-up.")
    a: BattleAnswer
    b: BattleAnswer


class BattleSide(BaseModel):
    """Who answered one side: revealed by the vote."""

    arm: Literal["champion", "challenger"]
    model: str | None
    version: str | None
    request_id: str


class RevealedAnswer(BattleAnswer):
    """One side's answer and who gave it (once the battle is voted on)."""

    arm: Literal["champion", "challenger"]
    model: str | None
    version: str | None
    request_id: str


class BattleVoteIn(BaseModel):
    """``POST /v1/arena/battles/{battle_id}/vote``."""

    model_config = ConfigDict(extra="forbid")

    winner: Winner = Field(
        description="'a' or 'b': that answer was better; 'tie'; 'both_bad': neither was good."
    )
    user: str | None = Field(
        default=None,
        max_length=200,
        description="Who votes: the battle's unit, which is the default; if given, it must "
        "be that unit.",
    )


class BattleVotePublic(BaseModel):
    """The stored vote and who each side was."""

    battle_id: str
    winner: Winner
    winner_arm: WinnerArm
    a: BattleSide
    b: BattleSide


class BattleState(BaseModel):
    """``GET /v1/arena/battles/{battle_id}``: the answers, and who was who once voted on.

    Before the vote ``a``/``b`` hold only content, finish reason and error; a side still
    being answered has all three None.
    """

    battle_id: str
    route: str
    created_at: datetime
    turn: int = Field(description="How many prompts so far; a/b are the latest answers.")
    revealed: bool
    winner: Winner | None
    winner_arm: WinnerArm | None
    a: RevealedAnswer | BattleAnswer
    b: RevealedAnswer | BattleAnswer


# -- dashboard ------------------------------------------------------------------------------


class DashboardArm(BaseModel):
    """One arm over the dashboard's window; None where there is no data yet."""

    model: str
    version: str
    requests: int
    errors: int = Field(description="Failed requests: error, timeout or fallback.")
    error_rate: float | None
    latency_p50_ms: float | None = Field(description="Successful requests, end to end.")
    latency_p95_ms: float | None
    ttft_p50_ms: float | None = Field(description="Successful streamed requests.")
    tokens_per_s: float | None = Field(
        description="Completion tokens per second of request time, successful requests."
    )
    thumbs_up: int
    thumbs_down: int
    thumbs_up_rate: float | None
    thumbs_up_ci: list[float] | None = Field(description="95% Wilson score interval.")


class DashboardVotes(BaseModel):
    """Pairwise votes between the arms, with Bradley-Terry ratings (Chatbot Arena's scale)."""

    challenger_wins: int
    champion_wins: int
    ties: int
    both_bad: int
    voters: int = Field(
        default=0,
        description="Distinct voters of the decisive votes (a vote without a voter is one).",
    )
    win_rate: float | None = Field(description="Challenger wins / decisive votes.")
    bradley_terry: dict[str, float | None]
    bradley_terry_ci: dict[str, list[float] | None] = Field(description="Bootstrap 95%.")


class TimelinePoint(BaseModel):
    """One arm in one time bucket (every bucket of the window, empty ones included)."""

    time: datetime = Field(description="Start of the bucket (UTC).")
    arm: str
    requests: int
    errors: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ups: int
    rated: int
    thumbs_up_rate: float | None
    ci_low: float | None = Field(description="95% Wilson score interval of the bucket's rate.")
    ci_high: float | None


class Dashboard(BaseModel):
    """``GET /v1/routes/{route}/dashboard``: the route's live figures per arm and over time.

    Scope: the route's live experiment when one runs, else its rows outside any
    experiment; requests since ``since`` (``window_s`` before ``generated_at``).
    """

    route: str
    experiment_id: str | None
    generated_at: datetime
    since: datetime
    window_s: int
    bucket_s: int
    weights: dict[str, float] = Field(description="Share of units per arm, 0..1.")
    arms: dict[str, DashboardArm | None]
    votes: DashboardVotes
    timeline: list[TimelinePoint]
