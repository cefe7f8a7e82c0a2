"""The HTTP API and the web page: FastAPI routes over a :class:`~tailor.serve.service.ServedRun`.

Every answer is JSON (the page and images aside), errors included: ``{"error": "..."}`` with a status that
says what to do — 400/415 fix the upload, 413 send less, 422 fix a parameter, 401/403 authenticate, 404 not
here, 409 pick another name, 503 retry after ``Retry-After`` seconds. Write routes (``POST /enroll``,
``DELETE /classes/{name}``) need the bearer token when one is configured, and are refused outright on a server
that listens beyond loopback without one.

The OpenAPI document (``/openapi.json``) is the contract: every route declares each status it can answer, with
the body's schema, and a 500 is never declared (it is a bug). The success bodies are response models, so a
route that drifts from its declared shape fails loudly (a 500 the tests see) instead of silently.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Path as PathParam, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tailor.enrolment import CategoryConflict, EnrollError
from tailor.serve.batching import DynamicBatcher, Overloaded
from tailor.serve.contract import (AttributeClasses, ClassifierClasses, Enrolled, Health, Predictions, Removed,
                                   SearchClasses, Similar, refusals)
from tailor.serve.metrics import ServerMetrics
from tailor.serve.service import MAX_NEIGHBOURS, NotServed, ServedRun
from tailor.serve.settings import ServeSettings, is_loopback
from tailor.serve.uploads import Upload, UploadError, decode_uploads

log = logging.getLogger(__name__)

STATIC = resources.files("tailor.serve") / "static"


def _file_items(schema: dict) -> None:
    """Also mark each image as ``format: binary``: OpenAPI 3.1's ``contentMediaType`` alone is not read as a
    file by every client generator and fuzzer (schemathesis then sends text, never an image)."""
    schema["items"]["format"] = "binary"


# module level, not inside create_app: FastAPI resolves the routes' annotations by name from here
Images = Annotated[list[UploadFile], File(min_length=1, description="product photos (JPEG, PNG, WebP…), one part "
                                          "each", json_schema_extra=_file_items)]
TopK = Annotated[int, Query(ge=1, le=MAX_NEIGHBOURS, description="how many results per image")]
Name = Annotated[str, Form(min_length=1, max_length=200, description="the new category's name")]
Replace = Annotated[bool, Form(description="enroll anew a category already enrolled")]
ProductId = Annotated[str, PathParam(max_length=200, description="a product id of the run's catalog index")]
ClassName = Annotated[str, PathParam(max_length=200, description="an enrolled category's name")]
#: the bearer token of write routes, read without refusing (the route's rule answers 401 in our words)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(
    auto_error=False, scheme_name="token", description="the token in the server's --token-file"))]


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status`` (and extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimit:
    """Refuse a request body larger than ``limit`` bytes with 413 — from its Content-Length before reading
    anything, or as soon as a body without one grows past the limit."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body is larger than {self.limit:,} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _error(413, message)(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, message)
            return msg

        try:
            await self.app(scope, limited, send)
        except ApiError as err:  # raised while the route was still reading: nothing was sent yet
            await _error(err.status, str(err))(scope, receive, send)


#: the routes that queue images for a model, and the model's batcher they use
GATED = {"/predict": "classifier", "/similar": "search"}


class AdmissionGate:
    """Answer 503 to a model route whose queue is full before its body is read: under overload, refusing a
    request must cost next to nothing, or the refusals themselves slow the requests being served."""

    def __init__(self, app: ASGIApp, routes: dict[str, DynamicBatcher], on_reject):
        self.app, self.routes, self.on_reject = app, routes, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        batcher = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if batcher is not None and scope["method"] == "POST":
            try:
                batcher.admit(1)
            except Overloaded as err:
                self.on_reject(batcher)
                return await _error(503, str(err), {"Retry-After": str(err.retry_after)})(scope, receive, send)
        await self.app(scope, receive, send)


class RequestMetrics:
    """Count every answered request by route template and status, and time it."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = scope.get("route")  # set by the router; a request refused before it keeps its raw path
            name = getattr(route, "path", None) or (scope["path"] if scope["path"] in GATED else "unmatched")
            self.metrics.observe(name, scope["method"], status, time.perf_counter() - started)


async def _uploads(files: list[UploadFile]) -> list[Upload]:
    return [Upload(f.filename or f"image {i + 1}", await f.read()) for i, f in enumerate(files)]


def create_app(served: ServedRun, settings: ServeSettings | None = None, token: str | None = None,
               host: str = "127.0.0.1") -> FastAPI:
    """The API for ``served``. ``token``: the bearer token write routes require (None: none configured);
    ``host``: the address the server listens on (decides whether writes without a token are allowed)."""
    settings = settings or ServeSettings()
    metrics = ServerMetrics()
    batchers: dict[str, DynamicBatcher] = {}

    def make_batcher(model: str, compute) -> DynamicBatcher:
        gauge = metrics.queue.labels(model)
        batcher = DynamicBatcher(compute, served.model_thread, settings.max_batch, settings.max_wait,
                                 settings.queue_limit, on_batch=lambda size, s: metrics.batch(model, size, s))
        gauge.set_function(lambda: batcher.waiting)
        return batcher

    if served.predictor is not None:
        batchers["classifier"] = make_batcher("classifier", served.classify)
    if served.search is not None:
        batchers["search"] = make_batcher("search", served.neighbours)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for batcher in batchers.values():
            batcher.start()
        log.info("serving %s (%s)", served.name, ", ".join(batchers) or "nothing")
        try:
            yield
        finally:  # uvicorn has finished the requests in flight by now
            for batcher in batchers.values():
                await batcher.stop()
            served.close()

    app = FastAPI(title="tailor", version="1", lifespan=lifespan,
                  description=f"Categories and look-alikes for product photos, from the run {served.name!r}.")
    app.state.served, app.state.batchers, app.state.metrics = served, batchers, metrics

    def batcher_for(model: str) -> DynamicBatcher:
        if model not in batchers:
            raise NotServed(f"{served.name} does not serve " + (
                "similar products: it has no catalog index (serve a metric-learning run, or add --search RUN)"
                if model == "search" else "categories: it is a metric-learning run (POST /similar)"))
        return batchers[model]

    def admitted(model: str, count: int) -> DynamicBatcher:
        """The model's batcher, if ``count`` images fit in its queue now (else 503 before any decoding)."""
        batcher = batcher_for(model)
        try:
            batcher.admit(count)
        except Overloaded:
            metrics.rejected.labels(model).inc()
            raise
        return batcher

    async def run_batch(model: str, images: list) -> list:
        batcher = batcher_for(model)
        try:
            return await batcher.submit(images)
        except Overloaded:
            metrics.rejected.labels(model).inc()
            raise

    # the rule for routes that change the run: the token when one is set; none, only on loopback. The document
    # declares what this server does: the bearer scheme and its 401, or the 403, or neither
    if token is not None:
        def writer(credentials: Credentials) -> None:
            if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
                raise ApiError(401, "this route needs the server's token: Authorization: Bearer <token>",
                               {"WWW-Authenticate": "Bearer"})
        write_refusals: tuple[int, ...] = (401,)
    elif is_loopback(host):
        def writer() -> None:  # only this machine can reach the server
            return
        write_refusals = ()
    else:
        def writer() -> None:
            raise ApiError(403, f"writes are refused: this server listens on {host} without a token "
                                f"(restart it with --token-file)")
        write_refusals = (403,)

    # --- errors: always JSON, never a traceback ------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return _error(err.status, str(err), err.headers)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, err: UploadError):
        return _error(err.status, str(err))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, err: Overloaded):
        return _error(503, str(err), {"Retry-After": str(err.retry_after)})

    @app.exception_handler(NotServed)
    async def _not_served(request: Request, err: NotServed):
        return _error(404, str(err))

    @app.exception_handler(EnrollError)
    async def _enroll_error(request: Request, err: EnrollError):
        return _error(409 if isinstance(err, CategoryConflict) else 400, str(err))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException):
        return _error(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
                             for e in err.errors())
        return _error(422, problems)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"the server failed on this request ({type(err).__name__}); it is logged")

    # --- routes ------------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.get("/health", summary="The run served and what it can do", response_model=Health,
             response_model_exclude_unset=True)
    async def health() -> dict:
        return {"status": "ok", **served.describe(),
                "queue": {name: b.waiting for name, b in batchers.items()},
                "limits": {"max_images": settings.max_images, "max_request_bytes": settings.max_request_bytes,
                           "max_pixels": settings.max_pixels, "queue_limit": settings.queue_limit},
                "writes": "token" if token else ("open on loopback" if is_loopback(host) else "refused")}

    @app.get("/classes", summary="Trained and enrolled categories",
             response_model=ClassifierClasses | AttributeClasses | SearchClasses)
    async def classes() -> dict:
        return await run_in_threadpool(served.classes)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics_page() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    # what the routes that decode uploads refuse (a form FastAPI cannot parse is a 400 too)
    upload_refusals = (400, 413, 415, 422)
    model_refusals = refusals(*upload_refusals, 404, 503, said={
        404: "this run does not serve this route (GET /health says what it serves)"})

    @app.post("/predict", summary="Top-k categories of each uploaded image", response_model=Predictions,
              responses=model_refusals)
    async def predict(images: Images, k: TopK = settings.k) -> dict:
        admitted("classifier", len(images))
        uploads = await _uploads(images)
        inputs = await run_in_threadpool(decode_uploads, uploads, settings, 1, served.for_classifier)
        results = await run_batch("classifier", inputs)
        out = []
        for upload, result in zip(uploads, results):
            if isinstance(result, dict):
                out.append({"file": upload.name, "attributes": {a: s.top(k) for a, s in result.items()}})
            else:
                out.append({"file": upload.name, "top": result.top(k)})
        return {"run": served.name, "predictions": out}

    @app.post("/similar", summary="The k catalog products that look most like each uploaded image",
              response_model=Similar, responses={**model_refusals, 200: {"links": {"thumbnail": {
                  "operationId": "product_image", "description": "the first look-alike's thumbnail (image_url)",
                  "parameters": {"product_id": "$response.body#/results/0/neighbours/0/id"}}}}})
    async def similar(images: Images, k: TopK = 10) -> dict:
        admitted("search", len(images))
        uploads = await _uploads(images)
        inputs = await run_in_threadpool(decode_uploads, uploads, settings, 1, served.for_search)
        results = [neighbours[:k] for neighbours in await run_batch("search", inputs)]
        colours = served.colours_of([n.id for neighbours in results for n in neighbours])
        return {"run": served.name, "results": [
            {"file": upload.name, "neighbours": [
                {"id": n.id, "label": n.label, "colour": colours[n.id], "score": round(n.score, 6),
                 "distance": round(n.distance, 6), "image_url": f"/products/{n.id}/image"} for n in neighbours]}
            for upload, neighbours in zip(uploads, results)]}

    @app.get("/products/{product_id}/image", summary="A catalog product's thumbnail (products of the index only)",
             # a response class without a media type: the refusals stay JSON, only the 200 is a JPEG
             operation_id="product_image", response_class=Response, responses={
                 200: {"description": "a JPEG thumbnail", "content": {"image/jpeg": {"schema": {
                     "type": "string", "format": "binary"}}}, "headers": {"Cache-Control": {
                         "description": "a product's thumbnail does not change", "required": True,
                         "schema": {"type": "string"}}}},
                 **refusals(404, 422, said={404: "no such product in this run's catalog index (or no index)"})})
    async def product_image(product_id: ProductId) -> Response:
        if served.search is None or not served.has_product(product_id):
            raise ApiError(404, f"no product {product_id!r} in this run's catalog index")
        body = await run_in_threadpool(served.thumbnail, product_id)
        return Response(body, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    @app.post("/enroll", status_code=201, dependencies=[Depends(writer)], response_model=Enrolled,
              summary="Add a category from a few example images (kept in the run folder)",
              responses={201: {"links": {"remove": {
                  "operationId": "remove_class", "description": "remove the category just enrolled",
                  "parameters": {"name": "$response.body#/enrolled"}}}},
                  **refusals(*upload_refusals, *write_refusals, 404, 409, said={
                      400: "the upload or the name cannot be used (an empty file, a blank name)",
                      404: "this run cannot enroll (only a classifier run trained with the linear probe can)",
                      409: "the name is a trained category, or already enrolled (send replace=true)"})})
    async def enroll(name: Name, images: Images, replace: Replace = False) -> dict:
        served.enrollable()  # a run that cannot enroll says why before the upload is decoded
        uploads = await _uploads(images)
        decoded = await run_in_threadpool(decode_uploads, uploads, settings)
        classes_now = await _on_model_thread(served, served.enroll, name.strip(), decoded, replace)
        return {"enrolled": name.strip(), "images": len(decoded), "classes": classes_now}

    @app.delete("/classes/{name}", dependencies=[Depends(writer)], response_model=Removed,
                operation_id="remove_class", summary="Remove an enrolled category",
                responses=refusals(*write_refusals, 404, 409, 422, said={
                    404: "no enrolled category by this name, or a run that enrolls none",
                    409: "a trained category: only enrolled ones can be removed"}))
    async def remove(name: ClassName) -> dict:
        try:
            return {"removed": name, "classes": await _on_model_thread(served, served.remove, name)}
        except KeyError:
            raise ApiError(404, f"no enrolled category {name!r}") from None

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    # the last added runs first: metrics see every answer, the body limit's 413s included
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    routes = {path: batchers[model] for path, model in GATED.items() if model in batchers}
    names = {id(b): model for model, b in batchers.items()}
    app.add_middleware(AdmissionGate, routes=routes,
                       on_reject=lambda batcher: metrics.rejected.labels(names[id(batcher)]).inc())
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


async def _on_model_thread(served: ServedRun, fn, *args):
    """Run ``fn`` on the model thread, between two batches (the heads never change under a forward pass)."""
    return await asyncio.get_running_loop().run_in_executor(served.model_thread, fn, *args)
