"""The platform as the CLI sees it: REST through the gateway with the caller's token, and
errors turned into one clear line and an exit code scripts can rely on."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from oih_cli import config as config_module
from oih_cli.config import Config
from oih_cli.rest import Reply, Rest

#: Exit codes (README, "The operator CLI").
OK = 0
ERROR = 1  # the platform refused or failed, or could not be reached
USAGE = 2  # bad arguments or an invalid file: nothing was sent
NOT_FOUND = 3
UNAUTHORIZED = 4  # not logged in, token expired or refused, or permission denied
CONFLICT = 5  # already exists, stale etag, or the object's state does not allow it

_EXIT_BY_STATUS = {400: USAGE, 401: UNAUTHORIZED, 403: UNAUTHORIZED, 404: NOT_FOUND,
                   409: CONFLICT}


class CliError(Exception):
    """An error to print as one line, with the exit code to leave with."""

    def __init__(self, message: str, exit_code: int = ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _reason(reply: Reply) -> str:
    body = reply.body
    if isinstance(body, dict):
        message = str(body.get("message") or "")
        violations = [v for d in body.get("details") or [] if isinstance(d, dict)
                      for v in d.get("field_violations") or []]
        if violations and all(v.get("field", "") not in message for v in violations):
            message += " (" + "; ".join(f"{v.get('field')}: {v.get('description')}"
                                        for v in violations) + ")"
        return message or f"HTTP {reply.status}"
    return str(body or f"HTTP {reply.status}").strip().splitlines()[0]


def error_for(reply: Reply, what: str) -> CliError:
    code = _EXIT_BY_STATUS.get(reply.status, ERROR)
    if reply.status == 400 and isinstance(reply.body, dict) and reply.body.get("code") == 9:
        code = CONFLICT  # FAILED_PRECONDITION: the state does not allow it
    hint = " (run `oih login`)" if reply.status == 401 else ""
    return CliError(f"{what}: {_reason(reply)} [HTTP {reply.status}]{hint}", code)


class Platform:
    """Authenticated REST calls; renews a service account's token before it expires."""

    def __init__(self, config: Config, *, save_renewed: bool = True) -> None:
        self.config = config
        self.save_renewed = save_renewed
        self.rest = Rest(config.gateway, config.token)

    def _renew_if_needed(self) -> None:
        if not self.config.expired():
            return
        if not (self.config.client_id and self.config.client_secret):
            raise CliError("the token has expired: run `oih login`", UNAUTHORIZED)
        exchanged = self.call("POST", "/v1/tokens:exchange", {
            "client_id": self.config.client_id, "client_secret": self.config.client_secret},
            what="renew the token", authenticated=False)
        self.config.token = exchanged["access_token"]
        self.config.expires_at = time.time() + int(exchanged.get("expires_in") or 0)
        self.rest = self.rest.with_token(self.config.token)
        if self.save_renewed:
            config_module.save(self.config)

    def call(self, method: str, path: str, body: Any = None, *, what: str = "",
             authenticated: bool = True) -> Any:
        if authenticated:
            if not self.config.token:
                raise CliError("not logged in: run `oih login`", UNAUTHORIZED)
            self._renew_if_needed()
        try:
            reply = self.rest.call(method, path, body)
        except OSError as error:
            raise CliError(f"cannot reach the gateway at {self.config.gateway}: "
                           f"{getattr(error, 'reason', error)}", ERROR) from error
        if reply.status != 200:
            raise error_for(reply, what or f"{method} {path}")
        return reply.body

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", with_query(path, query))

    def list_all(self, path: str, key: str, *, limit: int = 0, **query: Any) -> Iterator[Any]:
        """Every item of a paged list (or the first `limit`)."""
        token, seen = "", 0
        while True:
            page = self.get(path, page_token=token or None, **query)
            for item in page.get(key) or []:
                yield item
                seen += 1
                if limit and seen >= limit:
                    return
            token = page.get("next_page_token") or ""
            if not token:
                return


def with_query(path: str, query: dict[str, Any]) -> str:
    pairs = {k: v for k, v in query.items() if v not in (None, "")}
    return path + ("?" + urllib.parse.urlencode(pairs) if pairs else "")


def quote_name(name: str) -> str:
    """A resource name as a path (`flows/abc` stays `flows/abc`; odd characters escaped)."""
    return "/".join(urllib.parse.quote(part, safe="") for part in name.split("/"))
