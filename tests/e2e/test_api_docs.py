"""The gateway serves the OpenAPI document and the docs page, without a token or the internet."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx

from oih_gateway import layout


def test_openapi_document_is_served_without_a_token(rest: httpx.Client) -> None:
    response = rest.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.text == layout.OPENAPI.read_text()


def test_docs_page_and_everything_it_loads_are_served_locally(rest: httpx.Client) -> None:
    for page in ("/api-docs", "/api-docs/"):
        response = rest.get(page)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/html")
    html = rest.get("/api-docs").text
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(links) >= 5
    for link in links:
        assert link.startswith("/"), f"{link} is not served by the gateway"
        asset = rest.get(urljoin("/api-docs/", link))
        assert asset.status_code == 200, link
        assert asset.content
    initializer = rest.get("/api-docs/swagger-initializer.js").text
    assert 'url: "/openapi.json"' in initializer
    bundle = rest.get("/api-docs/swagger-ui-bundle.js")
    assert bundle.headers["content-type"] == "application/javascript"
    assert "SwaggerUIBundle" in bundle.text


def test_docs_routes_answer_only_get(rest: httpx.Client) -> None:
    response = rest.post("/openapi.json", content=b"{}")
    assert response.status_code in (401, 404)
    assert response.json()["code"] == response.status_code
