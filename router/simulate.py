"""``canary simulate``: one canary run end to end, with fake models and synthetic users.

Everything is the real product except the models and the people:

* two fake OpenAI-compatible engines (``router.backends.fake_server``) on loopback ports,
  one per arm, each with its own latency and error rate;
* a temporary embedded MLflow registry where route ``chat`` has version 1 (the champion's
  engine, ``@champion``) and version 2 (the challenger's, ``@challenger``), registered as
  remote endpoints, so promotion and rollback really move aliases;
* the router (``create_app``) on a temporary data dir with its SQLite inference log,
  reading its arms from that registry, called in process through ``httpx.ASGITransport``;
* synthetic users (:class:`experiments.simulation.Users`): each new user has a sticky id,
  sends its chat requests with ``user`` set, and rates the answers it got with
  ``POST /v1/feedback`` — thumbs up with the true rate of the arm that answered it
  (``x-canary-arm``);
* after every batch of users, ``POST /v1/experiments/{id}/evaluate`` with the admin token:
  the evaluator aggregates the log in SQL, runs the policy (``auto``), and acts — new stage
  weights, or an alias move in the registry — until the experiment ends (promoted, rolled
  back or inconclusive) or halts (a sample ratio mismatch or broken data: an admin would
  investigate, and there is none here).

Then the report (``GET /v1/experiments/{id}/report``) is saved as HTML.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from pydantic import SecretStr

from experiments.policy import Policy
from experiments.simulation import ArmTruth, Users
from registry.store import Registry
from router.app import create_app
from router.assignment import BUCKETS, bucket_of
from router.backends.fake import FakeSpec
from router.backends.fake_server import create_fake_openai_app
from router.config import Settings
from router.registry_source import RegistryArmSource

__all__ = ["Look", "SimulationConfig", "SimulationResult", "simulate"]

ARMS = ("champion", "challenger")
#: Acted decisions that end the experiment (its status is final after them).
ENDING = ("promote", "rollback", "inconclusive")
#: Acted decisions that end the run: the endings, and a halt (the experiment stays live,
#: halted, until an admin resumes or rolls it back; nobody will here).
STOPPING = (*ENDING, "halt")


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate; ``policy`` overrides the policy's defaults (``auto`` is forced on)."""

    champion: ArmTruth
    challenger: ArmTruth
    out_dir: Path
    users: Users = field(default_factory=Users)
    stages: tuple[float, ...] = (20.0, 50.0)
    policy: dict[str, Any] = field(default_factory=dict)
    #: New users per look (evaluation).
    batch: int = 200
    #: Stop without a decision after this many users.
    max_units: int = 20_000
    seed: int = 0
    #: Users talking to the router at the same time.
    concurrency: int = 8
    route: str = "chat"
    #: Where the router's database and the MLflow registry live; None: a temporary
    #: directory, removed afterwards. Given, it must be empty (or not exist) and is kept.
    data_dir: Path | None = None

    def full_policy(self) -> Policy:
        """The policy the experiment starts with (raises ``ValueError`` when invalid)."""
        return Policy.from_dict({**self.policy, "stages": list(self.stages), "auto": True})

    def check(self) -> None:
        """Raise ``ValueError`` for what would fail later: policy, sizes, a used data dir."""
        self.full_policy()
        if self.batch < 1 or self.max_units < 1 or self.concurrency < 1:
            raise ValueError("batch, max_units and concurrency must be positive")
        if self.data_dir is not None and _in_use(self.data_dir):
            raise ValueError(f"data dir {self.data_dir} is not an empty directory")


def _in_use(path: Path) -> bool:
    """True when ``path`` exists and is not an empty directory."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


@dataclass(frozen=True, slots=True)
class Look:
    """One evaluation: the batch of users before it and the decision it took."""

    look: int
    units: dict[str, int]  # new users per arm in this batch
    stage: int  # 0-based stage the batch ran at
    action: str
    acted: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SimulationResult:
    experiment_id: str
    #: The acted decision that stopped the run (one of :data:`STOPPING`), or "continue"
    #: when ``max_units`` came first.
    action: str
    reasons: tuple[str, ...]
    status: str  # the experiment's status at the end of the run
    looks: tuple[Look, ...]
    units: dict[str, int]  # users per assigned arm
    requests: dict[str, int]  # logged requests per arm (the router's count)
    aliases_before: dict[str, str]
    aliases_after: dict[str, str]
    report_path: Path

    @property
    def decided(self) -> bool:
        """Whether the experiment ended: promoted, rolled back or inconclusive."""
        return self.action in ENDING

    @property
    def halted(self) -> bool:
        """Whether the run stopped on a halt (the experiment waits for an admin)."""
        return self.action == "halt"


@asynccontextmanager
async def _serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in this event loop; its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises why it stopped
                raise RuntimeError("fake engine exited before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextmanager
def _data_dir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="canary-simulate-") as tmp:
        yield Path(tmp)


def _engine(role: str, truth: ArmTruth, seed: int) -> Any:
    """The fake engine for one arm: its median latency, its error rate."""
    spec = FakeSpec(
        name=f"fake-{role}",
        text=f"An answer from the {role}.",
        latency_ms=truth.latency_ms,
        error_rate=truth.error_rate,
        seed=seed,
    )
    return create_fake_openai_app(spec)


def _register(registry: Registry, route: str, urls: dict[str, str]) -> None:
    """Version 1 -> the champion's engine (@champion), version 2 -> the challenger's."""
    for role in ARMS:
        registry.register_endpoint(
            route,
            base_url=f"{urls[role]}/v1",
            remote_model=f"fake-{role}",
            params={"timeout_s": 30.0},
            alias=role,
        )


def _aliases(registry: Registry, route: str) -> dict[str, str]:
    return next((r.aliases for r in registry.describe() if r.route == route), {})


class _Population:
    """The synthetic users: who they are, which arm the hash gives them, how they rate."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.truths = {"champion": config.champion, "challenger": config.challenger}
        self.next_id = 0

    def new_users(self, count: int) -> list[tuple[str, int]]:
        """``count`` new sticky user ids with the number of requests each will send."""
        requests = self.config.users.requests(self.rng, count)
        users = [
            (f"sim-{self.config.seed}-{self.next_id + i}", int(n)) for i, n in enumerate(requests)
        ]
        self.next_id += count
        return users

    def thumb(self, served_arm: str) -> str | None:
        return self.config.users.thumb(self.rng, self.truths[served_arm])


async def _chat(
    client: httpx.AsyncClient, route: str, user: str, turns: int, gate: asyncio.Semaphore
) -> list[tuple[str, str]]:
    """One user's requests; ``(request_id, served arm)`` of each answered one."""
    answered = []
    async with gate:
        for turn in range(turns):
            response = await client.post(
                "/v1/chat/completions",
                json={
                    "model": route,
                    "user": user,
                    "max_tokens": 32,
                    "messages": [{"role": "user", "content": f"Question {turn + 1} from {user}."}],
                },
            )
            if response.status_code == 200:
                answered.append(
                    (response.headers["x-request-id"], response.headers["x-canary-arm"])
                )
            elif response.status_code < 500:
                raise RuntimeError(f"chat request refused: {response.status_code} {response.text}")
    return answered


async def _rate(
    client: httpx.AsyncClient, user: str, request_id: str, value: str, gate: asyncio.Semaphore
) -> None:
    async with gate:
        response = await client.post(
            "/v1/feedback", json={"request_id": request_id, "value": value, "user": user}
        )
    response.raise_for_status()


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: "
            f"HTTP {response.status_code}: {response.text[:300]}"
        )
    body: dict[str, Any] = response.json()
    return body


async def _run_experiment(
    client: httpx.AsyncClient,
    config: SimulationConfig,
    admin: dict[str, str],
    progress: Callable[[Look], None],
) -> tuple[str, list[Look], dict[str, int], dict[str, Any]]:
    """Batches of users and an evaluation after each, until the experiment ends."""
    policy = config.full_policy()
    started = _check(
        await client.post(
            "/v1/experiments",
            json={"route": config.route, "stages": list(policy.stages), "policy": policy.to_dict()},
            headers=admin,
        )
    )
    exp_id: str = started["id"]
    population = _Population(config)
    gate = asyncio.Semaphore(config.concurrency)
    looks: list[Look] = []
    units = dict.fromkeys(ARMS, 0)
    stage = 0
    decision: dict[str, Any] = {"action": "continue", "reasons": []}
    while population.next_id < config.max_units:
        users = population.new_users(min(config.batch, config.max_units - population.next_id))
        # The router's own pure hash (salt = experiment id) says which arm each user is on.
        bps = round(policy.stages[stage] * BUCKETS / 100)
        batch = dict.fromkeys(ARMS, 0)
        for user, _ in users:
            batch["challenger" if bucket_of(config.route, exp_id, user) < bps else "champion"] += 1
        answers = await asyncio.gather(
            *(_chat(client, config.route, user, n, gate) for user, n in users)
        )
        ratings = [
            (user, request_id, value)
            for (user, _), answered in zip(users, answers, strict=True)
            for request_id, arm in answered
            if (value := population.thumb(arm)) is not None
        ]
        await asyncio.gather(*(_rate(client, u, r, v, gate) for u, r, v in ratings))
        decision = _check(await client.post(f"/v1/experiments/{exp_id}/evaluate", headers=admin))
        look = Look(
            look=len(looks) + 1,
            units=batch,
            stage=stage,
            action=decision["action"],
            acted=bool(decision["acted"]),
            reasons=tuple(decision["reasons"]),
        )
        looks.append(look)
        units = {arm: units[arm] + batch[arm] for arm in ARMS}
        progress(look)
        if look.acted and look.action == "advance":
            stage = min(stage + 1, len(policy.stages) - 1)
        if look.acted and look.action in STOPPING:
            break
    return exp_id, looks, units, decision


async def simulate(
    config: SimulationConfig, *, progress: Callable[[Look], None] | None = None
) -> SimulationResult:
    """Run the canary described by ``config`` end to end (see the module docstring)."""
    config.check()  # bad input is the caller's error, before anything starts
    config.out_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(16)
    admin = {"authorization": f"Bearer {token}"}
    with _data_dir(config.data_dir) as root:
        async with (
            _serve(_engine("champion", config.champion, config.seed)) as champion_url,
            _serve(_engine("challenger", config.challenger, config.seed + 1)) as challenger_url,
        ):
            registry = Registry(
                f"sqlite:///{root / 'mlflow.db'}",
                cache_dir=root / "model-cache",
                artifact_root=root / "mlartifacts",
            )
            urls = {"champion": champion_url, "challenger": challenger_url}
            await asyncio.to_thread(_register, registry, config.route, urls)
            before = await asyncio.to_thread(_aliases, registry, config.route)
            settings = Settings(
                data_dir=root / "router",
                database_url=f"sqlite:///{root / 'canary.db'}",
                routes={},
                admin_token=SecretStr(token),
                evaluation_interval_s=86_400,  # only this simulation's evaluations act
                challenger_weight=0,  # no challenger traffic until the experiment starts
                log_format="text",
                ui_enabled=False,  # nobody looks at it here; gradio takes seconds to import
            )
            app = create_app(
                settings, arm_source=RegistryArmSource(registry, challenger_weight=0.0)
            )
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://canary-simulate",
                    timeout=60,
                ) as client,
            ):
                exp_id, looks, units, decision = await _run_experiment(
                    client, config, admin, progress or (lambda _look: None)
                )
                experiment = _check(await client.get(f"/v1/experiments/{exp_id}"))
                report = await client.get(f"/v1/experiments/{exp_id}/report")
                if report.status_code >= 400:
                    _check(report)
                report_path = config.out_dir / f"canary-report-{exp_id}.html"
                report_path.write_text(report.text, encoding="utf-8")
            after = await asyncio.to_thread(_aliases, registry, config.route)
    arms = experiment["analysis"]["arms"]
    last = looks[-1] if looks else None
    return SimulationResult(
        experiment_id=exp_id,
        action=last.action if last and last.acted and last.action in STOPPING else "continue",
        reasons=tuple(decision["reasons"]),
        status=experiment["status"],
        looks=tuple(looks),
        units=units,
        requests={arm: int(arms[arm]["requests"]) for arm in ARMS},
        aliases_before=before,
        aliases_after=after,
        report_path=report_path,
    )
