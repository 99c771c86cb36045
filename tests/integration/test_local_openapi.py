"""The merged OpenAPI document, the committed docs/openapi.json, and Swagger UI served offline by the gateway."""

from __future__ import annotations

import json
import re

from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from tests.support import project_gateway
from tollgate_local.events import HttpRequest, HttpResponse
from tollgate_local.openapi import COMMITTED_OPENAPI, merged_openapi, openapi_text


def get(path: str) -> HttpResponse:
    return project_gateway().handle(HttpRequest("GET", path, "", [], b"", "127.0.0.1"))


def test_the_served_document_is_valid_openapi_3_1_with_both_security_schemes() -> None:
    # When the gateway serves /openapi.json
    response = get("/openapi.json")
    document = json.loads(response.body)
    # Then it passes an OpenAPI 3.1 validator
    assert response.status == 200 and document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)
    # And it declares the bearer token and the API key the authorizer accepts
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyAuth"] == {**schemes["apiKeyAuth"], "type": "apiKey", "in": "header", "name": "X-Api-Key"}


def test_exactly_the_authorized_routes_require_a_credential() -> None:
    gateway = project_gateway()
    document = merged_openapi(gateway)
    for route in gateway.template.routes:
        operation = document["paths"][route.path][route.method.lower()]
        if route.authorizer is None:
            assert "security" not in operation, route.route_key
        else:
            assert operation["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}], route.route_key


def test_every_operation_documents_its_success_and_error_bodies() -> None:
    # Given the merged document a front end generates its client from
    document = merged_openapi(project_gateway())
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            # Then every operation has a success answer, and every documented error carries the error body
            assert any(code.startswith(("2", "3")) for code in responses), (method, path)
            for code, response in responses.items():
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                if code.startswith(("4", "5")) and code != "422" and schema:
                    assert schema.get("$ref", "").endswith("/ErrorOut"), (method, path, code, schema)


def test_the_committed_document_is_current() -> None:
    # Front ends generate their typed client from docs/openapi.json: it must be what the handlers say.
    expected = openapi_text(merged_openapi(project_gateway()))
    assert COMMITTED_OPENAPI.read_text(encoding="utf-8") == expected, (
        "docs/openapi.json is out of date: run `.venv/bin/tollgate openapi --write`"
    )


def test_swagger_ui_loads_from_the_gateway_not_a_cdn() -> None:
    # Given the docs page
    page = get("/docs")
    html = page.body.decode()
    assert page.status == 200 and "http://" not in html and "https://" not in html
    # Then every asset it names is served by the gateway itself (no network needed)
    assets = re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', html)
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(assets)
    for asset in assets:
        response = get(asset)
        assert response.status == 200 and len(response.body) > 0, asset
    bundle = get("/docs/assets/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in bundle.body
    assert dict(bundle.headers)["content-type"].startswith(("text/javascript", "application/javascript"))
    # And nothing outside the package's folder is reachable
    assert get("/docs/assets/../../../../etc/passwd").status == 404
    assert get("/docs/assets/").status == 404
