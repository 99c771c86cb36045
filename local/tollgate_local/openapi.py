"""One OpenAPI document for the whole API, merged from every function's resolver (local only).

The merged document also says how callers authenticate: every route the template puts behind the Lambda
authorizer accepts a bearer access token or an `X-Api-Key`, so Swagger UI's "Authorize" works. Swagger UI itself
comes from the `swagger-ui-bundle-v2` package and is served by the local gateway: `/docs` works offline.
"""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.merge import OpenAPIMerge

from tollgate_local import PROJECT_ROOT

if TYPE_CHECKING:
    from tollgate_local.gateway import Gateway

# The committed copy front ends generate typed clients from (tests/unit/test_local_openapi.py keeps it current).
COMMITTED_OPENAPI = PROJECT_ROOT / "docs" / "openapi.json"
DOCS_ASSETS_PREFIX = "/docs/assets/"
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from POST /auth/login (15 minutes; refresh with POST /auth/refresh).",
    },
    "apiKeyAuth": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Api-Key",
        "description": "An API key from POST /auth/api-keys (its secret is shown once).",
    },
}
# Either scheme satisfies the authorizer (OpenAPI: alternatives are separate requirement objects).
AUTHORIZED: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}]


def merged_openapi(gateway: Gateway) -> dict[str, Any]:
    merge = OpenAPIMerge(title="Tollgate", version="0.1.0", on_conflict="error")
    for function_id in sorted({route.function_id for route in gateway.template.routes}):
        app = getattr(gateway.runner.module(function_id), "app", None)
        if isinstance(app, APIGatewayHttpResolver):
            merge.add_schema(app.get_openapi_schema().model_dump(mode="json", by_alias=True, exclude_none=True))
    document: dict[str, Any] = merge.get_openapi_schema()
    document.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    protected = {(r.method.lower(), r.path) for r in gateway.template.routes if r.authorizer is not None}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if isinstance(operation, dict) and ((method, path) in protected or ("any", path) in protected):
                operation["security"] = AUTHORIZED
    return document


def openapi_text(document: dict[str, Any]) -> str:
    """The document as committed: stable key order, one trailing newline (diffs stay readable)."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def swagger_assets_dir() -> Path:
    from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # no py.typed

    return Path(str(swagger_ui_path))


def swagger_asset(name: str) -> tuple[bytes, str] | None:
    """A file of the Swagger UI distribution and its content type; None for anything outside it."""
    folder = swagger_assets_dir().resolve()
    path = (folder / name).resolve()
    if not name or path.parent != folder or not path.is_file():
        return None
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind.endswith("javascript"):
        kind += "; charset=utf-8"
    return path.read_bytes(), kind


def swagger_html() -> str:
    assets = DOCS_ASSETS_PREFIX
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tollgate API</title>
<link rel="icon" href="{assets}favicon-32x32.png">
<link rel="stylesheet" href="{assets}swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{assets}swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui", persistAuthorization: true,
  deepLinking: true}});
</script>
</body></html>"""
