"""A route's live figures per arm and over time, as JSON or as a CSV download."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from router import dashboard
from router.api.deps import ClientDep, EngineDep, RoutesDep, WriterDep
from router.api.json_body import JSONRoute
from router.schemas import Dashboard

router = APIRouter(tags=["dashboard"], route_class=JSONRoute)

BucketDep = Annotated[
    int, Query(ge=1, le=86_400, description="Width of a timeline bucket, in seconds.")
]
WindowDep = Annotated[
    int, Query(ge=1, le=90 * 86_400, description="How far back the figures reach, in seconds.")
]


#: Builds under way, by (database, route, experiment, bucket_s, window_s). Whoever asks for
#: the same dashboard meanwhile awaits that build instead of starting another: the UI fetches the
#: JSON and the CSV of one refresh together (one build, the same figures in both), and
#: every open dashboard refreshes on its own timer. A build over a million rows takes
#: seconds of a core's time; nothing is kept once it is done.
_building: dict[tuple[int, str, str | None, int, int], asyncio.Future[Dashboard]] = {}


async def _dashboard(
    route: str,
    routes: RoutesDep,
    engine: EngineDep,
    writer: WriterDep,
    principal: ClientDep,
    bucket_s: BucketDep = 60,
    window_s: WindowDep = 3600,
) -> Dashboard:
    """The route's dashboard: the dependency both the JSON and the CSV endpoint answer from."""
    r = routes.get(route)  # 404 for an unknown route
    principal.require_route(r.name)
    await writer.flush()  # count every request this router has answered (at most one batch)
    key = (id(engine), r.name, r.experiment_id, bucket_s, window_s)
    build = _building.get(key)
    if build is None:
        build = asyncio.ensure_future(
            run_in_threadpool(
                dashboard.build, engine, route=r, bucket_s=bucket_s, window_s=window_s
            )
        )
        _building[key] = build
        build.add_done_callback(lambda _: _building.pop(key, None))
    # A caller that goes away must not cancel the build the others await.
    return await asyncio.shield(build)


BoardDep = Annotated[Dashboard, Depends(_dashboard)]


@router.get("/v1/routes/{route}/dashboard")
async def get_dashboard(board: BoardDep) -> Dashboard:
    """Requests, errors, latency, TTFT, tokens/s, thumbs and votes per arm, and a timeline."""
    return board


@router.get(
    "/v1/routes/{route}/dashboard.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "Per-arm summary, timeline."}},
)
async def get_dashboard_csv(board: BoardDep) -> Response:
    """The dashboard as CSV: one row per arm (section 'arm'), then the timeline."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", board.route)
    stamp = board.generated_at.strftime("%Y%m%dT%H%M%SZ")
    return Response(
        dashboard.to_csv(board),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}-dashboard-{stamp}.csv"'},
    )
