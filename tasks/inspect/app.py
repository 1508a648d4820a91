"""The inspect web app (Starlette): pages rendered by Jinja2 with autoescaping (captions and
URLs come from the open web), images read from the tars by offset, queries from
``sql/inspect/`` with bound parameters, report files from inside the storage root only."""

from __future__ import annotations

import logging
import mimetypes
import posixpath
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from tasks.core.config import PipelineConfig
from tasks.core.storage import Storage
from tasks.curate.rules import RULES
from tasks.inspect.catalog import Catalog
from tasks.inspect.evaluation import Evaluation, rule_thresholds
from tasks.inspect.files import PathRefused, resolve
from tasks.inspect.images import TarImages
from tasks.inspect.search import ImageSearch
from tasks.inspect.similarity import matcher_similarities

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 200
MAX_INT_PARAM = 2**62  # an offset or size past it would overflow DuckDB's BIGINT
PAGE_POLICY = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The app's pages run no script at all: escaping keeps web captions text, and this policy
is the second wall should a value ever slip through."""
REPORT_POLICY = "sandbox allow-scripts"
"""Report files (the Data Docs run their own scripts) are served as an opaque origin: their
scripts cannot reach the app's pages."""


def web_link(url: Any) -> str | None:
    """``url`` when it is an http(s) URL a link may point to; None otherwise (a
    ``javascript:`` or ``data:`` URL from a crawled page is shown as text, never linked)."""
    if not isinstance(url, str):
        return None
    return url if urlsplit(url).scheme.lower() in ("http", "https") else None


def _templates() -> Jinja2Templates:
    loader = jinja2.FileSystemLoader(str(files("tasks.inspect").joinpath("templates")))
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["web_link"] = web_link
    return Jinja2Templates(env=env)


def _int_param(request: Request, name: str, default: int | None = None) -> int | None:
    value = request.query_params.get(name, "").strip()
    if not value:
        return default
    try:
        return min(max(0, int(value)), MAX_INT_PARAM)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number") from None


def _offset(request: Request) -> int:
    return _int_param(request, "offset", 0) or 0


def _text_param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value[:MAX_QUERY_CHARS] or None


class InspectApp:
    """The pages; one instance per served config. Handlers are plain functions: Starlette
    runs them in its thread pool, so a slow query or image read never blocks the server."""

    def __init__(self, cfg: PipelineConfig, storage: Storage) -> None:
        self.cfg = cfg
        self.storage = storage
        self.catalog = Catalog(storage)
        self.images = TarImages(storage, cfg.inspect.thumbnail_px)
        self.evaluation = Evaluation(cfg, storage, self.images)
        self.search = ImageSearch(cfg, storage, self.catalog)
        self.templates = _templates()
        self.page_size = cfg.inspect.page_size

    def render(self, request: Request, name: str, **context: Any) -> Response:
        context |= {"cfg": self.cfg, "root": self.storage.root,
                    "search_available": self.search.available()}  # fmt: skip
        return self.templates.TemplateResponse(
            request, name, context, headers={"Content-Security-Policy": PAGE_POLICY}
        )

    def _require_samples(self) -> None:
        if not self.catalog.has_samples():
            raise HTTPException(404, "no curate output yet: run the curate stage")

    def overview(self, request: Request) -> Response:
        self._require_samples()
        totals = self.catalog.query("totals")[0]
        counts = {r["reason"]: r for r in self.catalog.query("curate/funnel")}
        remaining = totals["input"]
        funnel = []
        for rule in RULES:
            if rule in counts and counts[rule]["first"]:
                remaining -= counts[rule]["first"]
                funnel.append({**counts[rule], "remaining": remaining})
        return self.render(request, "overview.html", totals=totals, funnel=funnel,
                           results=self.evaluation.results())  # fmt: skip

    def rule(self, request: Request) -> Response:
        self._require_samples()
        reason = request.path_params["reason"]
        if reason not in RULES:
            raise HTTPException(404, "no such rule")
        page = self.catalog.page("dropped_by_rule", {"reason": reason},
                                 _offset(request), self.page_size)  # fmt: skip
        return self.render(request, "gallery.html", title=f"dropped: {reason}", page=page,
                           rule=reason, thresholds=rule_thresholds(self.cfg.curate, reason),
                           filters=None)  # fmt: skip

    def kept(self, request: Request) -> Response:
        self._require_samples()
        filters = {
            "caption_contains": _text_param(request, "caption"),
            "language": _text_param(request, "language"),
            "min_side": _int_param(request, "min_side"),
            "max_side": _int_param(request, "max_side"),
        }
        page = self.catalog.page("kept", filters, _offset(request),
                                 self.page_size)  # fmt: skip
        languages = self.catalog.query("languages")
        return self.render(request, "gallery.html", title="kept samples", page=page, rule=None,
                           thresholds={}, filters=filters, languages=languages)  # fmt: skip

    def sample(self, request: Request) -> Response:
        self._require_samples()
        key = request.path_params["key"]
        rows = self.catalog.query("samples_by_key", {"keys": [key]})
        if not rows:
            raise HTTPException(404, "no such sample")
        similar = []
        if rows[0]["keep"] and self.search.available():
            similar = self._with_rows(self.search.by_image(key, self.cfg.inspect.search_results))
        return self.render(request, "sample.html", row=rows[0], similar=similar)

    def duplicates(self, request: Request) -> Response:
        self._require_samples()
        page = self.catalog.page("duplicate_clusters", {}, _offset(request),
                                 self.page_size)  # fmt: skip
        return self.render(request, "duplicates.html", page=page)

    def cluster(self, request: Request) -> Response:
        self._require_samples()
        rows = self.catalog.query("cluster", {"key": request.path_params["key"]})
        if not rows or not rows[0]["is_survivor"]:
            raise HTTPException(404, "no such duplicate cluster")
        images = [self._training_image(r) for r in rows]
        if images[0] is not None:
            for row, score in zip(rows, matcher_similarities(images[0], images), strict=True):
                row["similarity"] = score
        return self.render(request, "cluster.html", rows=rows,
                           threshold=self.cfg.curate.near_dup_min_similarity,
                           band=self.cfg.curate.near_dup_band_min_similarity)  # fmt: skip

    def _training_image(self, row: dict[str, Any]) -> bytes | None:
        if row["image_state"] != "ok":
            return None
        shard = posixpath.basename(row["download_shard"])
        return self.images.image(self.storage.uri("download", shard), row["key"])

    def decontamination(self, request: Request) -> Response:
        self._require_samples()
        page = self.catalog.page("decontamination", {}, _offset(request),
                                 self.page_size)  # fmt: skip
        return self.render(request, "decontamination.html", page=page)

    def _with_rows(self, hits: list[tuple[str, float]]) -> list[dict[str, Any]]:
        rows = {r["key"]: r for r in self.catalog.query("samples_by_key",
                                                        {"keys": [k for k, _ in hits]})}  # fmt: skip
        return [{**rows[k], "score": s} for k, s in hits if k in rows]

    def search_page(self, request: Request) -> Response:
        text, like = _text_param(request, "q"), _text_param(request, "like")
        hits: list[dict[str, Any]] = []
        if self.search.available():
            k = self.cfg.inspect.search_results
            if text:
                hits = self._with_rows(self.search.by_text(text, k))
            elif like:
                hits = self._with_rows(self.search.by_image(like, k))
        return self.render(request, "search.html", q=text or "", like=like, hits=hits)

    def evaluation_index(self, request: Request) -> Response:
        return self.render(request, "evaluation.html", results=self.evaluation.results())

    def evaluation_dataset(self, request: Request) -> Response:
        name = request.path_params["name"]
        found = self.evaluation.dataset(name)
        if found is None:
            raise HTTPException(404, "no such evaluation dataset in the config")
        index, spec = found
        per_class = self.evaluation.per_class(name)
        classnames = [row["class"] for row in per_class]
        target = _int_param(request, "target")
        pairs = self.catalog.predictions(index, name, "confused_pairs", {"limit": 10})
        confused = self.catalog.predictions(
            index, name, "most_confused", {"limit": self.page_size, "target": target}
        )
        has_matrix = self.storage.exists(self.storage.uri("eval", name, "confusion_matrix.png"))
        return self.render(request, "evaluation_dataset.html", spec=spec, per_class=per_class,
                           classnames=classnames, pairs=pairs, confused=confused,
                           target=target, has_matrix=has_matrix)  # fmt: skip

    def _image_response(self, data: bytes | None) -> Response:
        if data is None:
            raise HTTPException(404, "no such image")
        try:
            body, media_type = self.images.thumbnail(data)
        except OSError:
            raise HTTPException(404, "not a readable image") from None
        return Response(body, media_type=media_type,
                        headers={"Cache-Control": "max-age=3600"})  # fmt: skip

    def sample_image(self, request: Request) -> Response:
        key = request.path_params["key"]
        rows = self.catalog.query("image_location", {"key": key})
        if not rows:
            raise HTTPException(404, "no image for this sample")
        return self._image_response(self._training_image({**rows[0], "key": key}))

    def eval_image(self, request: Request) -> Response:
        found = self.evaluation.dataset(request.path_params["name"])
        if found is None:
            raise HTTPException(404, "no such evaluation dataset in the config")
        tar = request.query_params.get("tar")
        return self._image_response(
            self.evaluation.image(found[1], request.path_params["key"], tar)
        )

    def report_file(self, request: Request) -> Response:
        # The path as the client sent it, still encoded: resolve() decodes it itself, until
        # it stops changing, so %2e%2e%2f is refused like ../
        raw = request.scope.get("raw_path") or request.url.path.encode()
        requested = raw.decode("latin-1").split("?")[0].removeprefix("/files/")
        try:
            uri = resolve(self.storage, requested)
        except PathRefused as refused:
            log.warning("inspect: refused %s", refused)
            return PlainTextResponse("refused: outside the report folders", status_code=403)
        if not self.storage.exists(uri):
            raise HTTPException(404, "no such report file")
        media_type = mimetypes.guess_type(uri)[0] or "application/octet-stream"
        return Response(self.storage.read_bytes(uri), media_type=media_type,
                        headers={"Content-Security-Policy": REPORT_POLICY})  # fmt: skip


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return PlainTextResponse(str(exc.detail), status_code=exc.status_code)


def create_app(cfg: PipelineConfig, storage: Storage | None = None) -> Starlette:
    """The ASGI app serving ``cfg``'s storage root."""
    app = InspectApp(cfg, storage or Storage(cfg.storage))
    routes = [
        Route("/", app.overview, name="overview"),
        Route("/rule/{reason}", app.rule, name="rule"),
        Route("/kept", app.kept, name="kept"),
        Route("/sample/{key}", app.sample, name="sample"),
        Route("/duplicates", app.duplicates, name="duplicates"),
        Route("/duplicates/{key}", app.cluster, name="cluster"),
        Route("/decontamination", app.decontamination, name="decontamination"),
        Route("/search", app.search_page, name="search"),
        Route("/eval", app.evaluation_index, name="evaluation"),
        Route("/eval/{name}", app.evaluation_dataset, name="evaluation_dataset"),
        Route("/img/sample/{key}", app.sample_image, name="sample_image"),
        Route("/img/eval/{name}/{key}", app.eval_image, name="eval_image"),
        Route("/files/{path:path}", app.report_file, name="files"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _error})


def serve(cfg: PipelineConfig, host: str | None = None, port: int | None = None) -> None:
    """Serve the app until interrupted (``clipflow inspect``); binds ``inspect.host``,
    127.0.0.1 by default."""
    import uvicorn

    host = host or cfg.inspect.host
    port = port or cfg.inspect.port
    print(f"clipflow inspect: http://{host}:{port}/ serving {Storage(cfg.storage).root}")
    uvicorn.run(create_app(cfg), host=host, port=port, log_level="warning")
