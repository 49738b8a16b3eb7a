"""The explorer's web server: the page and the JSON API it calls.

:func:`create_app` wraps an :class:`~fastconv.analysis.explore.explorer.Explorer`
in a FastAPI application: ``/`` is the page (plain HTML, CSS and JavaScript
from ``static/``), ``/api/...`` the API, described at ``/openapi.json``.
Every error is JSON, ``{"error": "one sentence"}``, with a 4xx status for
what a request got wrong. Requests name inputs (``test/12``,
``upload/<token>``), layers and units, never files, and the only files
served are the page's own. The server answers only requests addressed to
the names in ``allowed_hosts`` (by default the loopback names), so that
another web site cannot reach it through a name of its own that resolves
to this machine.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from fastconv.analysis.explore.explorer import ATTRIBUTIONS, ORDERS, PROJECTIONS, ExploreError
from fastconv.analysis.explore.images import UploadError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fastconv.analysis.explore.explorer import Explorer

__all__ = ["create_app", "STATIC", "LOOPBACK_NAMES"]

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
# Images that depend only on the request's parameters: the browser may keep them.
_IMAGE_HEADERS = {"Cache-Control": "private, max-age=3600"}

# Optional[...] in the signatures below: FastAPI reads them at run time, on Python 3.9 too.
InputQuery = Query(..., description="test/N, train/N or upload/TOKEN", max_length=80)
LayerQuery = Query(..., description="a layer name, from /api/info", max_length=200)
UnitQuery = Query(..., ge=0, description="a unit (channel or neuron) of the layer")


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _png(data: bytes) -> Response:
    return Response(content=data, media_type="image/png", headers=_IMAGE_HEADERS)


def _json(payload: Any, status: int = 200) -> Response:
    # Encoded here: FastAPI's own encoder walks every value, which the
    # activations' long lists make slow.
    return Response(content=json.dumps(payload, separators=(",", ":")), media_type="application/json",
                    status_code=status)


def _box(text: Optional[str]) -> Optional[tuple[int, int, int, int]]:
    if text is None:
        return None
    try:
        top, left, bottom, right = (int(v) for v in text.split(","))
    except ValueError:
        raise ExploreError(f"box must be four integers TOP,LEFT,BOTTOM,RIGHT, got {text!r}") from None
    return top, left, bottom, right


async def _read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadError(f"the upload is {int(declared):,} bytes; the largest accepted is {limit:,} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(f"the upload is over {limit:,} bytes, the largest accepted", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(explorer: Explorer, allowed_hosts: Sequence[str] | None = LOOPBACK_NAMES) -> FastAPI:
    """The web application serving ``explorer``; ``allowed_hosts`` None answers any host name."""
    app = FastAPI(
        title=f"fastconv explore: {explorer.run.name}",
        description="Look inside a trained fastconv network: activations, top images, projections, "
                    "feature visualizations, attributions and adversarial examples. Inputs are named "
                    "test/N, train/N (the run's data set) or upload/TOKEN (from POST /api/inputs).",
        version="1",
        # Their pages load scripts from the internet; the schema at /openapi.json is served from here.
        docs_url=None, redoc_url=None,
    )
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.exception_handler(ExploreError)
    @app.exception_handler(UploadError)
    async def refused(request: Request, error: Exception) -> JSONResponse:
        return _error(str(error), getattr(error, "status", 400))

    @app.exception_handler(ValueError)
    @app.exception_handler(TypeError)
    async def bad_value(request: Request, error: Exception) -> JSONResponse:
        return _error(" ".join(str(error).split()) or type(error).__name__, 400)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in error.errors():
            where = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {problem.get('msg', 'invalid')}")
        return _error("bad request: " + "; ".join(problems), 422)

    @app.exception_handler(Exception)
    async def broken(request: Request, error: Exception) -> JSONResponse:
        # Uvicorn still logs the traceback; the page gets one line instead of a bare status.
        return _error(f"the server failed: {type(error).__name__}: {' '.join(str(error).split())}", 500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(str(error.detail), error.status_code)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info", summary="The run: title, classes, input shape, layers, data set and limits")
    def info() -> Response:
        return _json(explorer.info())

    @app.get("/api/status", summary="Progress of the top-images index, built once per model in the background")
    def status() -> Response:
        if explorer.data is None:
            return _json({"state": "failed", "error": f"no data set: {explorer.dataset_error}"})
        return _json(explorer.index_job().status())

    @app.get("/api/images", summary="A page of the data set's images: by class, shuffled, or misclassified")
    def images(split: str = Query("test", description="test or train"),
               label: Optional[int] = Query(None, ge=0, description="only this class"),
               order: str = Query("first", description=f"one of {', '.join(ORDERS)}"),
               offset: int = Query(0, ge=0), count: int = Query(30, ge=1, le=500),
               seed: int = Query(0, ge=0, description="the shuffle, for order=random")) -> Response:
        return _json(explorer.browse(split, label, order, offset, count, seed))

    @app.get("/api/image", summary="An input as PNG, or the part of it inside a box",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def image(input: str = InputQuery,
              box: Optional[str] = Query(None, description="TOP,LEFT,BOTTOM,RIGHT (bottom, right exclusive)",
                                         max_length=40)) -> Response:
        return _png(explorer.image_png(explorer.picture(input), _box(box)))

    @app.post("/api/inputs", summary="Upload an image (the request body is the file): checked, resized, kept; "
                                     "answers its name and its activations")
    async def upload(request: Request) -> Response:
        data = await _read_body(request, explorer.max_upload_bytes)

        def work() -> dict[str, Any]:
            return explorer.activations(explorer.upload(data))

        return _json(await run_in_threadpool(work))

    @app.get("/api/activations", summary="The top-5 prediction and every layer's activations for an input")
    def activations(input: str = InputQuery) -> Response:
        return _json(explorer.activations(explorer.picture(input)))

    @app.get("/api/projection", summary="A unit's deconvnet or guided-backprop projection onto an input, as PNG",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def projection(input: str = InputQuery, layer: str = LayerQuery, unit: int = UnitQuery,
                   method: str = Query("deconvnet", description=f"one of {', '.join(PROJECTIONS)}"),
                   crop: bool = Query(False, description="only the receptive field of the strongest position")
                   ) -> Response:
        return _png(explorer.projection(explorer.picture(input), layer, unit, method, crop))

    @app.get("/api/top-images", summary="A unit's top images with their receptive-field boxes (or the index's "
                                        "progress)")
    def top_images(layer: str = LayerQuery, unit: int = UnitQuery) -> Response:
        return _json(explorer.top_images(layer, unit))

    @app.get("/api/feature-vis", summary="Start or follow a unit's feature visualization; 'url' once it is ready")
    def feature_vis(layer: str = LayerQuery, unit: int = UnitQuery) -> Response:
        job, _ = explorer.feature_job(layer, unit)
        answer: dict[str, Any] = {"layer": layer, "unit": unit, "status": job.status(), "url": None}
        if job.state == "done":
            answer["url"] = f"/api/feature-vis.png?{request_query(layer, unit)}"
        return _json(answer)

    @app.get("/api/feature-vis.png", summary="A unit's feature visualization as PNG (404 until it is computed)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def feature_vis_png(layer: str = LayerQuery, unit: int = UnitQuery) -> Response:
        data = explorer.feature_png(layer, unit)
        if data is None:
            return _error(f"the feature visualization of {layer} unit {unit} is not ready yet", 404)
        return _png(data)

    @app.get("/api/attribution", summary="Which pixels make the model say a class, as a PNG heat map",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def attribution(input: str = InputQuery,
                    method: str = Query(..., description=f"one of {', '.join(ATTRIBUTIONS)}"),
                    target: Optional[int] = Query(None, ge=0, description="the class (default: the predicted one)")
                    ) -> Response:
        return _png(explorer.attribution(explorer.picture(input), method, target))

    @app.post("/api/adversarial", summary="PGD towards a class (or away from the prediction) within eps: the "
                                          "perturbed image, the perturbation and the new prediction")
    def adversarial(input: str = InputQuery,
                    eps: float = Query(..., gt=0, le=1, description="L-infinity size in pixel units (0 to 1)"),
                    target: Optional[int] = Query(None, ge=0, description="the class to reach (default: untargeted)"),
                    steps: int = Query(10, ge=1, le=200)) -> Response:
        return _json(explorer.adversarial(explorer.picture(input), eps, target, steps))

    return app


def request_query(layer: str, unit: int) -> str:
    """The query string naming a unit."""
    from urllib.parse import urlencode

    return urlencode({"layer": layer, "unit": unit})
