"""The gateway's HTTP API: OpenAI's /v1/audio endpoints over the jobs queue, and async jobs.

Its parts, one role each:
- edge.py: the request edge (key, body size, idle bodies, last-resort errors) in front of everything;
- routes.py: the audio routes, models, page, uploads, health; jobs_api.py: the async jobs;
  parts.py: what the routes share;
- uploads.py: uploads on disk under unguessable, expiring tokens (workers fetch them over HTTP);
- store.py: the async jobs' records (a SQL database); usage.py: each tenant's usage and quota (the same
  database); limits.py: requests per minute;
- bridge.py: results and progress from the broker's thread to the waiting requests and SSE streams;
- broker.py: the broker client (one thread owns the AMQP connection).
`create_app` puts them together; the wiring (worker/wiring.py) builds it from Settings.
"""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from loguru import logger
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from worker.gateway.bridge import Bridge
from worker.gateway.broker import BrokerClient
from worker.gateway.edge import EdgeOptions, RequestEdge, error_body
from worker.gateway.jobs_api import job_routes
from worker.gateway.limits import RateLimit
from worker.gateway.openai_api import ApiError
from worker.gateway.parts import GatewayOptions, Parts
from worker.gateway.routes import audio_routes, misc_routes, usage_routes
from worker.gateway.store import JobStore
from worker.gateway.uploads import UploadStore
from worker.gateway.usage import UsageBook
from worker.messages import problems
from worker.service.session import DEFAULT_OPTIONS, SessionOptions

__all__ = ["GatewayOptions", "create_app"]


def create_app(
    options: GatewayOptions,
    *,
    broker_url: str,
    topology,
    uploads: UploadStore,
    store: JobStore,
    async_results_queue: str,
    broker_options: SessionOptions = DEFAULT_OPTIONS,
) -> RequestEdge:
    """The ASGI app: the request edge in front of FastAPI's routes; the broker client starts with it."""
    usage = UsageBook(store.engine)
    bridge = Bridge(store, uploads, usage)
    broker = BrokerClient(
        broker_url,
        topology,
        async_results_queue=async_results_queue,
        on_result=bridge.on_result,
        on_async_result=bridge.on_async_result,
        on_progress=bridge.on_progress,
        on_disconnect=lambda: bridge.waiters.fail_unless_back(broker.connected, options.publish_timeout_seconds),
        options=broker_options,
    )
    if not options.keys:
        logger.warning("No GATEWAY_API_KEYS set: the gateway accepts requests from anyone who can reach it")
    app = FastAPI(title="transcription gateway", on_startup=[broker.start], on_shutdown=[broker.stop])
    parts = Parts(options=options, broker=broker, bridge=bridge, store=store, uploads=uploads, usage=usage)
    for router in (misc_routes(parts), audio_routes(parts), job_routes(parts), usage_routes(parts)):
        app.include_router(router)
    _answer_errors_in_openai_shape(app)
    edge = EdgeOptions(
        keys=options.keys, max_upload_bytes=options.max_upload_bytes, idle_seconds=options.body_idle_seconds
    )
    limits = lambda: options.keys.table.requests_per_minute  # noqa: E731 (read per request: keys reload)
    return RequestEdge(RateLimit(app, limits, usage.count_request), edge)


def _answer_errors_in_openai_shape(app: FastAPI) -> None:
    def answer(status: int, message: str, kind: str, code: str | None) -> Response:
        return Response(error_body(message, kind, code), status_code=status, media_type="application/json")

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        return answer(exc.status, str(exc), exc.type, exc.code)

    @app.exception_handler(RequestValidationError)
    async def bad_field(_request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's paths start with where the field was: "body"
        return answer(400, problems(exc.errors(), skip=1), "invalid_request_error", "invalid_field")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        # FastAPI's own: unknown routes (404), wrong methods (405), bodies it could not parse (400).
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        return answer(exc.status_code, str(exc.detail), "invalid_request_error", code)

    @app.exception_handler(SQLAlchemyError)
    async def database_down(request: Request, exc: SQLAlchemyError) -> Response:
        logger.error("The job database failed on {} {}: {}", request.method, request.url.path, exc)
        return answer(503, "the job database is unavailable; try again later", "server_error", "database_unavailable")
