"""One OpenAPI document for the whole API, merged from every function's resolver (local only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.merge import OpenAPIMerge

if TYPE_CHECKING:
    from tollgate_local.gateway import Gateway

SWAGGER_UI_VERSION = "5.17.14"


def merged_openapi(gateway: Gateway) -> dict[str, Any]:
    merge = OpenAPIMerge(title="Tollgate", version="0.1.0", on_conflict="error")
    for function_id in sorted({route.function_id for route in gateway.template.routes}):
        app = getattr(gateway.runner.module(function_id), "app", None)
        if isinstance(app, APIGatewayHttpResolver):
            merge.add_schema(app.get_openapi_schema().model_dump(mode="json", by_alias=True, exclude_none=True))
    return merge.get_openapi_schema()


def swagger_html() -> str:
    cdn = f"https://cdn.jsdelivr.net/npm/swagger-ui-dist@{SWAGGER_UI_VERSION}"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Tollgate API</title>
<link rel="stylesheet" href="{cdn}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{cdn}/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui"}});</script>
</body></html>"""
