"""The API's documentation: Swagger UI at /docs and ReDoc at /redoc with their JavaScript, CSS and icon
served by the app itself from the fastapi-offline package (FastAPI's self-hosting recipe: the pages work
without network, no CDN), and the finishing of the OpenAPI document (/openapi.json): the statuses the
API really answers (FastAPI's 422 is never sent: validation errors are 400), and the classify query's
accepted values and defaults as configured."""

from __future__ import annotations

import importlib.resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

import haste

from .settings import Settings

#: Where the documentation pages' assets are served.
ASSETS_URL = "/docs/assets"
#: The assets: fastapi-offline's copies of swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and
#: favicon.png.
ASSETS_DIR = importlib.resources.files("fastapi_offline") / "static"
CLASSIFY_PATHS = ("/v1/classify", "/classify")


def install(app: FastAPI, settings: Settings) -> None:
    """Serve /docs, /redoc and their assets (GET and HEAD), and finish /openapi.json. The app must be
    created with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS_URL, StaticFiles(directory=str(ASSETS_DIR)), name="docs-assets")

    def urls(request: Request) -> tuple[str, str]:
        """(the OpenAPI document's URL, the assets' URL prefix) behind the request's root path."""
        root = request.scope.get("root_path", "").rstrip("/")
        return f"{root}{app.openapi_url}", f"{root}{ASSETS_URL}"

    async def swagger_ui(request: Request) -> HTMLResponse:
        openapi, assets = urls(request)
        return get_swagger_ui_html(
            openapi_url=openapi,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    async def redoc(request: Request) -> HTMLResponse:
        openapi, assets = urls(request)
        return get_redoc_html(
            openapi_url=openapi,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )

    # Starlette routes (not in the schema) answer HEAD as well as GET.
    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # FastAPI's, cached on the app; finishing it again is a no-op
        finish(schema, settings)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def finish(schema: dict[str, Any], settings: Settings) -> None:
    """Drop the 422 responses FastAPI adds (and their schemas); give the classify query parameters their
    accepted values and configured defaults."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path in CLASSIFY_PATHS:
        operation = schema.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        for param in operation.get("parameters", []):
            if param["name"] == "level":
                param["schema"] = {"type": "string", "enum": list(haste.LEVELS), "default": settings.default_level}
            elif param["name"] == "model":
                param["schema"] = {"type": "string", "enum": list(settings.models), "default": settings.default_model}
