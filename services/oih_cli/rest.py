"""A tiny JSON-over-HTTP client for the gateway (stdlib only: the run command needs no extras)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    body: Any

    def ok(self) -> Any:
        if self.status != 200:
            raise RestError(self)
        return self.body


class RestError(RuntimeError):
    def __init__(self, reply: Reply) -> None:
        super().__init__(f"HTTP {reply.status}: {json.dumps(reply.body)}")
        self.reply = reply


class Rest:
    def __init__(self, base_url: str, token: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def with_token(self, token: str) -> Rest:
        return Rest(self.base_url, token)

    def call(self, method: str, path: str, body: Any = None) -> Reply:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        if self.token:
            request.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Reply(response.status, _json(response.read()))
        except urllib.error.HTTPError as error:
            with error:
                return Reply(error.code, _json(error.read()))

    def raw(self, method: str, path: str, data: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """A request with a raw body and headers of the caller's choice (webhooks): status,
        response headers (lower-case names) and body."""
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return (response.status, {k.lower(): v for k, v in response.headers.items()},
                        response.read())
        except urllib.error.HTTPError as error:
            with error:
                return (error.code, {k.lower(): v for k, v in error.headers.items()},
                        error.read())

    def get(self, path: str) -> Any:
        return self.call("GET", path).ok()

    def post(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body).ok()

    def patch(self, path: str, body: Any) -> Any:
        return self.call("PATCH", path, body).ok()

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path).ok()


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")
