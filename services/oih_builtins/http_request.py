"""`http-request`: calls an HTTP endpoint with the message data as its JSON body.

Config: `url` (required), `method` (default POST; GET/HEAD/DELETE send no body), `headers`,
`timeout` (seconds, default 30). Output: `{"status", "headers", "body"}` (body parsed as JSON
when the response says so). A non-2xx answer is an error: 4xx are non-retryable (the request
itself is wrong) except 408 and 429; 5xx and network errors are retried by the step's policy.
Uses the standard library (urllib), so the runtime needs no HTTP client dependency, through
`oih_sdk.egress`: a URL (or a redirect) leading to an internal address is refused, not retried.

Credentials (the node's `credentials` secret) authenticate the request, never logged or
emitted: a bearer token → `Authorization: Bearer …`; basic auth → `Authorization: Basic …`; an
API key → the header `api_key_header` (default `X-API-Key`). Other secret shapes are refused.
"""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.error
import urllib.request
from typing import Any

from oih_sdk import Message, NonRetryableError, egress

from ._meta import builtin

component = builtin("http-request", "Sends each message to an HTTP endpoint.")

SCHEMA = {
    "type": "object", "required": ["url"],
    "properties": {
        "url": {"type": "string"},
        "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "timeout": {"type": "number", "minimum": 0},
        "api_key_header": {"type": "string"},
    },
}
NO_BODY = {"GET", "HEAD", "DELETE"}


class HttpError(Exception):
    """A 5xx (or 408/429) answer: retried."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.status = status


class HttpClientError(HttpError, NonRetryableError):
    """A 4xx answer: the request is wrong, retrying cannot help."""


@component.action("request", description="Sends data as JSON; emits status, headers, body.",
                  config_schema=SCHEMA)
def request(message: Message, config: dict[str, Any], snapshot: dict[str, Any], *,
            credentials: dict[str, Any] | None = None) -> dict[str, Any]:
    url = str(config["url"])
    if not url.startswith(("http://", "https://")):
        raise NonRetryableError(f"unsupported URL scheme in {url!r}")
    method = str(config.get("method", "POST")).upper()
    headers = {"accept": "application/json", **(config.get("headers") or {})}
    if credentials is not None:
        headers.update(_authentication(credentials, config))
    body = None
    if method not in NO_BODY:
        body = json.dumps(message.data).encode()
        headers.setdefault("content-type", "application/json")
    req = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
    try:
        with egress.urlopen(req, timeout=float(config.get("timeout", 30))) as response:
            status, raw, answer_headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        exc.close()
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise HttpClientError(exc.code, url) from None
        raise HttpError(exc.code, url) from None
    content_type = answer_headers.get("content-type", "")
    parsed: Any = raw.decode("utf-8", "replace")
    if "json" in content_type and raw:
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw)
    return {"status": status, "headers": dict(answer_headers.items()), "body": parsed}


def _authentication(credentials: dict[str, Any], config: dict[str, Any]) -> dict[str, str]:
    """The header that carries the step's credentials (the error never quotes them)."""
    if set(credentials) == {"token"}:
        return {"authorization": f"Bearer {credentials['token']}"}
    if set(credentials) == {"username", "password"}:
        pair = f"{credentials['username']}:{credentials['password']}".encode()
        return {"authorization": f"Basic {base64.b64encode(pair).decode()}"}
    if set(credentials) == {"api_key"}:
        return {str(config.get("api_key_header") or "X-API-Key"): str(credentials["api_key"])}
    raise NonRetryableError("http-request authenticates with a bearer token, basic auth or an "
                            "API key secret; the step's credentials are none of these")
