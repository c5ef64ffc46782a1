"""The API docs the gateway serves: `/openapi.json` and a Swagger UI page at `/api-docs`.

Envoy answers these itself (`direct_response` routes reading files at start), so no process of
ours is involved and nothing is fetched from the internet: the Swagger UI files come from the
`swagger-ui-py` wheel. `write_docs(directory)` puts every file the routes name into one folder;
`docs_routes(directory)` are the routes (render.py adds them when given a docs folder).
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ASSETS", "DOCS_PATHS", "docs_routes", "swagger_ui_dir", "write_docs"]

#: Where the page lives. `/api-docs/` (with the slash) answers the same page.
PAGE_PATH = "/api-docs"
OPENAPI_PATH = "/openapi.json"
#: Bigger than any file below (Envoy's default limit for a direct response is 4 KiB).
MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Asset:
    path: str  # URL path
    file: str  # file name in the docs folder
    content_type: str


_INDEX_HTML = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>Open Integration Hub — REST API</title>
    <link rel="stylesheet" type="text/css" href="/api-docs/swagger-ui.css">
    <link rel="stylesheet" type="text/css" href="/api-docs/index.css">
    <link rel="icon" type="image/png" href="/api-docs/favicon-32x32.png" sizes="32x32">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/api-docs/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="/api-docs/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="/api-docs/swagger-initializer.js" charset="UTF-8"></script>
  </body>
</html>
"""

# Our own initializer: the document of this gateway, "Try it out" against this gateway.
_INITIALIZER_JS = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
  });
};
"""

#: Files copied from the swagger-ui-py wheel's static folder.
_PACKAGED = {
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui-standalone-preset.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "index.css": "text/css",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}

ASSETS: tuple[Asset, ...] = (
    Asset(OPENAPI_PATH, "openapi.json", "application/json"),
    Asset(PAGE_PATH, "index.html", "text/html; charset=utf-8"),
    Asset(PAGE_PATH + "/", "index.html", "text/html; charset=utf-8"),
    Asset(PAGE_PATH + "/index.html", "index.html", "text/html; charset=utf-8"),
    Asset(PAGE_PATH + "/swagger-initializer.js", "swagger-initializer.js",
          "application/javascript"),
    *(Asset(f"{PAGE_PATH}/{name}", name, kind) for name, kind in _PACKAGED.items()),
)
#: Every URL path the docs routes answer (public: no token).
DOCS_PATHS: tuple[str, ...] = tuple(asset.path for asset in ASSETS)


def swagger_ui_dir() -> Path:
    """The static folder of the installed swagger-ui-py wheel (found without importing it)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def write_docs(directory: Path, openapi_json: str) -> Path:
    """Write the document, the page and the Swagger UI files into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "openapi.json").write_text(openapi_json)
    (directory / "index.html").write_text(_INDEX_HTML)
    (directory / "swagger-initializer.js").write_text(_INITIALIZER_JS)
    source = swagger_ui_dir()
    for name in _PACKAGED:
        shutil.copyfile(source / name, directory / name)
    return directory


def docs_routes(directory: str) -> list[dict[str, Any]]:
    """Envoy routes answering each docs path with its file (GET only)."""
    routes = []
    for asset in ASSETS:
        routes.append({
            "name": f"docs {asset.path}",
            "match": {"path": asset.path,
                      "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
            "direct_response": {"status": 200,
                                "body": {"filename": f"{directory.rstrip('/')}/{asset.file}"}},
            # The content type is set by the gateway's local-reply mappers (render.py): a
            # direct response is a local reply, whose body format would otherwise be JSON.
            "response_headers_to_add": [
                {"header": {"key": "cache-control", "value": "no-cache"},
                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
            ],
        })
    return routes
